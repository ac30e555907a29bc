"""A backup server directory on a 48 MiB tmpfs that fills up in the middle of a backup.

Proves: the transaction fails with "storage full while writing ...", the backup is not built and not locked, older
backups still verify and restore byte for byte, no temporary file is left and the space the failed backup used is
given back (free space returns to what it was before it), for a normal and an incremental backup.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.failure.conftest import MiB, Service, make_settings, on_small_tmpfs, running_service, sha
from tests.images import write_image
from vmbackup.engine import Engine
from vmbackup.storage.local import LocalStorage

SIZE = "48m"


@pytest.fixture
def small_storage(tmp_path: Path, sqlite_template: Path) -> Iterator[Service]:
    settings = make_settings(tmp_path)
    with on_small_tmpfs(settings.storage_dir, SIZE), running_service(settings) as s:
        yield s


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_storage_fills_up_mid_backup(small_storage: Service, tmp_path: Path) -> None:
    s, api = small_storage, small_storage.api
    user = api.user("alice")
    tpl, ds = api.template(), api.data_store()
    small_vm = api.vm(user["id"], tpl["id"], label="small")
    big_vm = api.vm(user["id"], tpl["id"], label="big")
    small = write_image(tmp_path / "small.img", 4 * MiB, seed=1)
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.write(os.urandom(64 * MiB))  # incompressible, bigger than the file system; chunks flushed at 32 MiB
    small_disk = api.disk(small_vm["id"], ds["id"], image_path=str(small))
    big_disk = api.disk(big_vm["id"], ds["id"], image_path=str(big))

    older = [s.take_normal(small_disk["id"]), s.take_incremental(small_vm["id"])]
    for b in older:
        assert s.done(b["id"])["status"] == "complete"
    before = _free(s.storage)
    engine = Engine(LocalStorage(s.storage))

    failures = []
    for take, where in (
        (lambda: s.take_normal(big_disk["id"]), "normal/"),
        (lambda: s.take_incremental(big_vm["id"]), "chunks/"),
    ):
        victim = take()
        tx = s.done(victim["id"])
        assert tx["status"] == "failed", tx["log_output"]
        assert "storage full while writing " + where in tx["log_output"], tx["log_output"]
        got = s.backup(victim["id"])
        assert got["built"] is False and got["locked"] is False
        assert [p for p in s.storage.rglob(".tmp-*")] == []
        assert victim["identifier"] not in {i.backup_id for i in engine.list()}
        # Space is given back: what the failed backup wrote is gone (a few KiB of directories may stay).
        assert _free(s.storage) >= before - 64 * 1024, (before, _free(s.storage), sorted(s.storage.rglob("*")))
        failures.append(tx)

    for b in older:
        ident = s.backup(b["id"])["identifier"]
        assert engine.verify(ident).ok
        out = tmp_path / f"restored-{ident}.img"
        engine.restore(ident, str(out))
        assert sha(out) == sha(small)
    print(f"full storage: {len(failures)} backups failed cleanly, {len(older)} older backups intact")
