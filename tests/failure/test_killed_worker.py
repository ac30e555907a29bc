"""kill -9 of a `vmbackup worker` process in the middle of a backup.

Proves: no backup is built over partial data, the interrupted transaction ends `failed` with a reason once a
worker starts again, no temporary file is left behind, and a backup built earlier still verifies and restores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api_client import Api
from tests.conftest import ADMIN
from tests.images import MiB, write_image
from tests.integration.api.helpers import sha256
from vmbackup.api.app import create_app
from vmbackup.config import load_settings
from vmbackup.engine import Engine
from vmbackup.storage.local import LocalStorage

BIG = 384 * MiB


@pytest.fixture
def setup(tmp_path: Path, sqlite_template: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    settings = load_settings(
        {},
        data_dir=str(data),
        admin_login=ADMIN[0],
        admin_password=ADMIN[1],
        worker="external",
        password_memory_kib=19456,
        password_time_cost=2,
    )
    app = create_app(settings)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")},
        "VMBACKUP_DATA_DIR": str(data),
        "VMBACKUP_LOG_LEVEL": "warning",
    }
    with TestClient(app) as client:
        api = Api(client)
        user = api.user("alice")
        vm = api.vm(user["id"], api.template()["id"])
        ds = api.data_store()
        small = write_image(tmp_path / "small.img", 4 * MiB, seed=3)
        big = tmp_path / "big.img"
        with open(big, "wb") as f:  # incompressible, so the backup takes long enough to be interrupted
            for _ in range(BIG // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        yield {
            "api": api,
            "app": app,
            "env": env,
            "storage": settings.storage_dir,
            "small": small,
            "big": big,
            "small_disk": api.disk(vm["id"], ds["id"], label="small", image_path=str(small)),
            "big_disk": api.disk(vm["id"], ds["id"], label="big", primary=False, image_path=str(big)),
            "vm": vm,
        }
    app.state.engine.dispose()


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = Path(env["VMBACKUP_DATA_DIR"]) / "worker.log"
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "vmbackup.cli.main", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


def _tx(api: Api, backup_id: int) -> dict[str, Any]:
    txs = [t["transaction"] for t in api.get("/transactions.json?per_page=100&detailed").json()]
    return next(t for t in txs if t["parent_id"] == backup_id)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


def _stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["normal", "incremental"])
def test_worker_killed_mid_backup_leaves_no_built_backup(setup: dict[str, Any], kind: str) -> None:
    api, storage = setup["api"], setup["storage"]
    # A backup built before the crash, which must survive it intact.
    earlier = api.post(f"/settings/disks/{setup['small_disk']['id']}/backups.json").json()["backup"]
    worker = _worker(setup["env"])
    try:
        _wait(lambda: api.get(f"/backups/{earlier['id']}.json").json()["backup"]["built"], what="first backup")
        before = _stored_bytes(storage)
        if kind == "normal":
            path = f"/settings/disks/{setup['big_disk']['id']}/backups.json"
        else:
            path = f"/virtual_machines/{setup['vm']['id']}/backups.json"
        victim = api.post(path).json()["backup"]
        # Kill once data is being written: 8 MiB beyond what was stored before.
        _wait(lambda: _stored_bytes(storage) > before + 8 * MiB, what="backup writing data")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    assert _tx(api, victim["id"])["status"] == "running"  # what the dead worker left behind
    assert api.get(f"/backups/{victim['id']}.json").json()["backup"]["built"] is False
    # The kill left partial data behind, so the "no temporary file" check after recovery is one that recovery has to
    # earn. A normal backup writes its archive to one temporary file from start to end; an incremental's temporary
    # chunk files live for milliseconds each, so a kill may fall between them.
    if kind == "normal":
        assert _temp_files(storage) != []

    restarted = _worker(setup["env"])  # a worker recovers at start-up
    try:
        tx = _wait(lambda: (t := _tx(api, victim["id"]))["status"] != "running" and t, what="recovery")
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)
    assert tx["status"] == "failed"
    assert "stopped while this transaction was running" in tx["log_output"]
    got = api.get(f"/backups/{victim['id']}.json").json()["backup"]
    assert got["built"] is False and got["locked"] is False
    assert _temp_files(storage) == []
    engine = Engine(LocalStorage(storage))
    assert engine.verify(earlier["identifier"]).ok
    restored = setup["small"].parent / "restored.img"
    engine.restore(earlier["identifier"], str(restored))
    assert sha256(restored) == sha256(setup["small"])
