from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_client import Api
from vmbackup.api.app import create_app
from vmbackup.config import Settings


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def api(app: Any) -> Iterator[Api]:
    with TestClient(app) as client:
        yield Api(client)


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    """Two users, each with a VM and a disk, built by the admin."""
    alice = api.user("alice")
    bob = api.user("bob")
    tpl = api.template()
    ds = api.data_store()
    vm_a = api.vm(alice["id"], tpl["id"], label="alice-vm")
    vm_b = api.vm(bob["id"], tpl["id"], label="bob-vm")
    disk_a = api.disk(vm_a["id"], ds["id"], image_path="/srv/images/alice.img")
    disk_b = api.disk(vm_b["id"], ds["id"], image_path="/srv/images/bob.img")
    return {
        "alice": alice,
        "bob": bob,
        "template": tpl,
        "data_store": ds,
        "vm_a": vm_a,
        "vm_b": vm_b,
        "disk_a": disk_a,
        "disk_b": disk_b,
        "as_alice": api.as_("alice", "alice-password"),
        "as_bob": api.as_("bob", "bob-password"),
    }
