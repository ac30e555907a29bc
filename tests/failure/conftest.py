"""Fixtures of the fault-injection tests: a service with its in-process worker, and helpers to poll it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_client import Api
from tests.conftest import ADMIN
from vmbackup.api.app import create_app
from vmbackup.config import Settings, load_settings
from vmbackup.engine import Engine

MiB = 1 << 20


def sha(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def wait_for(pred: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it is truthy; generous timeouts, no timing assumption."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


class Service:
    def __init__(self, api: Api, app: Any, settings: Settings) -> None:
        self.api, self.app, self.settings = api, app, settings
        self.storage = settings.storage_dir

    def backup(self, backup_id: int) -> dict[str, Any]:
        return self.api.get(f"/backups/{backup_id}.json").json()["backup"]

    def txs(self) -> list[dict[str, Any]]:
        return [t["transaction"] for t in self.api.get("/transactions.json?per_page=1000&detailed").json()]

    def tx_of(self, backup_id: int, action: str | None = None) -> dict[str, Any]:
        """The newest transaction about ``backup_id`` (of ``action`` if given)."""
        return next(t for t in self.txs() if t["parent_id"] == backup_id and (action is None or t["action"] == action))

    def done(self, backup_id: int, action: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            t = self.tx_of(backup_id, action)
            return t if t["status"] in ("complete", "failed", "cancelled") else None

        result: dict[str, Any] = wait_for(finished, timeout, f"transaction of backup {backup_id}")
        return result

    def take_normal(self, disk_id: int) -> dict[str, Any]:
        r = self.api.post(f"/settings/disks/{disk_id}/backups.json")
        assert r.status_code == 201, r.text
        return dict(r.json()["backup"])

    def take_incremental(self, vm_id: int) -> dict[str, Any]:
        r = self.api.post(f"/virtual_machines/{vm_id}/backups.json")
        assert r.status_code == 201, r.text
        return dict(r.json()["backup"])

    def restore(self, backup_id: int) -> None:
        r = self.api.post(f"/backups/{backup_id}/restore.json")
        assert r.status_code == 201, r.text


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(
        {},
        data_dir=str(tmp_path / "data"),
        admin_login=ADMIN[0],
        admin_password=ADMIN[1],
        password_memory_kib=19456,
        password_time_cost=2,
        **overrides,
    )


@contextmanager
def running_service(settings: Settings) -> Iterator[Service]:
    """The API with its in-process worker (unless ``settings.worker`` says otherwise)."""
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            yield Service(Api(client), app, settings)
    finally:
        app.state.engine.dispose()


@contextmanager
def on_small_tmpfs(mount: Path, size: str) -> Iterator[None]:
    """``mount`` on a tmpfs of ``size`` (e.g. "48m") for the block; skipped where mounting is not allowed."""
    mount.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def service(tmp_path: Path, sqlite_template: Path) -> Iterator[Service]:
    with running_service(make_settings(tmp_path)) as s:
        yield s


class Gate:
    """Wraps engine methods: counts calls; the first call waits until ``released``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold_next(self) -> None:
        """Hold the next call (the first after this) until ``released`` is set again."""
        self.calls, self.released = 0, threading.Event()
        self.entered.clear()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            with self.lock:
                self.calls += 1
                first = self.calls == 1
            if first:
                self.entered.set()
                assert self.released.wait(120), "gate never released"
            return fn(*args, **kw)

        return wrapper


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate()
    for name in ("take_normal", "take_incremental", "restore"):
        monkeypatch.setattr(Engine, name, g.wrap(getattr(Engine, name)))
    yield g
    g.released.set()
