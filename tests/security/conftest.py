"""Fixtures for the security tests: the integration fixtures, plus a SQLite-only app with no worker for fuzzing."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_client import Api
from tests.conftest import ADMIN
from tests.integration.conftest import api, app, world  # noqa: F401  (fixtures shared with the integration tests)
from vmbackup.api.app import create_app
from vmbackup.config import load_settings


def basic(login: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()}


@pytest.fixture
def sqlite_app(tmp_path: Path, sqlite_template: Path) -> Iterator[Any]:
    """An app on SQLite whose transactions are left to (absent) external workers: restore, take and delete requests
    are answered and queued, and nothing touches a disk image."""
    db = tmp_path / "data" / "vmbackup.db"
    db.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, db)
    settings = load_settings(
        {},
        data_dir=str(tmp_path / "data"),
        database_url=f"sqlite:///{db}",
        admin_login=ADMIN[0],
        admin_password=ADMIN[1],
        password_memory_kib=19456,
        password_time_cost=2,
        worker="external",
    )
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def sqlite_api(sqlite_app: Any) -> Iterator[Api]:
    with TestClient(sqlite_app) as client:
        yield Api(client)
