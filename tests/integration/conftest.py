from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN
from vmbackup.api.app import create_app
from vmbackup.config import Settings


class Api:
    """A thin client for tests: admin by default, JSON unless told, and helpers that build inventory."""

    def __init__(self, client: TestClient, auth: tuple[str, str] = ADMIN) -> None:
        self.client = client
        self.auth = auth

    def as_(self, login: str, password: str) -> Api:
        return Api(self.client, (login, password))

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        kw.setdefault("auth", self.auth)
        if body is not None:
            kw["json"] = body
        return self.client.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def create(self, path: str, root: str, **fields: Any) -> dict[str, Any]:
        r = self.post(path, {root: fields})
        assert r.status_code == 201, r.text
        return r.json()[root]

    # inventory builders
    def user(self, login: str = "alice", **kw: Any) -> dict[str, Any]:
        fields = {"login": login, "email": f"{login}@example.com", "password": f"{login}-password", **kw}
        return self.create("/users.json", "user", **fields)

    def template(self, **kw: Any) -> dict[str, Any]:
        fields = {
            "label": "Ubuntu 22.04",
            "operating_system": "linux",
            "operating_system_distro": "ubuntu",
            "min_disk_size": 5,
            "min_memory_size": 384,
            "allowed_hot_migrate": True,
            **kw,
        }
        return self.create("/templates.json", "image_template", **fields)

    def data_store(self, **kw: Any) -> dict[str, Any]:
        return self.create(
            "/settings/data_stores.json", "data_store", **{"label": "ds1", "data_store_type": "lvm", **kw}
        )

    def vm(self, user_id: int, template_id: int, **kw: Any) -> dict[str, Any]:
        fields = {
            "label": "web1",
            "hostname": "web1.example.com",
            "user_id": user_id,
            "template_id": template_id,
            "memory": 1024,
            "cpus": 2,
            **kw,
        }
        return self.create("/virtual_machines.json", "virtual_machine", **fields)

    def disk(self, vm_id: int, data_store_id: int, **kw: Any) -> dict[str, Any]:
        fields = {"label": "root", "disk_size": 5, "primary": True, "data_store_id": data_store_id, **kw}
        return self.create(f"/virtual_machines/{vm_id}/disks.json", "disk", **fields)


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
