"""Fixtures for the security tests: the integration fixtures, plus an app with no worker for fuzzing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_client import Api
from tests.integration.conftest import api, app, world  # noqa: F401  (fixtures shared with the integration tests)
from vmbackup.api.app import create_app
from vmbackup.config import Settings


def basic(login: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()}


@pytest.fixture
def idle_app(settings: Settings) -> Iterator[Any]:
    """An app (on SQLite and on PostgreSQL, as ``settings`` is) whose transactions are left to absent external
    workers: restore, take and delete requests are answered and queued, and nothing touches a disk image."""
    application = create_app(settings.model_copy(update={"worker": "external"}))
    yield application
    application.state.engine.dispose()


@pytest.fixture
def idle_api(idle_app: Any) -> Iterator[Api]:
    with TestClient(idle_app) as client:
        yield Api(client)
