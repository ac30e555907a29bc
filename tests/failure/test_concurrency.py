"""Concurrent requests on one VM, with the in-process worker running two transactions at a time.

Each test holds the first transaction inside the engine on an event (no sleeps), asks the worker to start more work
(`Worker.run_pending`, deterministic), and records how many engine calls run at once. That the waiting transaction
waits for its lock key and not for a free worker slot is checked too: a backup of another VM runs to the end meanwhile.
- two backups of the same disk: the second waits (pending) while the first runs, and starts after it ended;
- a restore while a backup of the same VM runs: the restore waits, then runs after it;
- a delete of an incremental racing the next incremental that reuses its chunks: the delete finishes first, the
  running take's reused chunks survive the collection, and the new backup verifies and restores byte for byte.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.failure.conftest import Gate, MiB, Service, sha, wait_for
from tests.images import write_image
from vmbackup.db.models import Transaction
from vmbackup.engine import Engine, gc
from vmbackup.engine.chunkstore import ChunkWriter
from vmbackup.engine.manifest import decode
from vmbackup.storage.local import LocalStorage


def _span(s: Service, tx: dict[str, Any]) -> tuple[Any, Any]:
    """(started_at, finished_at) from the database (the API shows no finish time)."""
    with s.app.state.sessions() as db:
        row = db.get(Transaction, tx["id"])
        assert row is not None
        return row.started_at, row.finished_at


def _vm(s: Service, tmp_path: Path, owner: str = "alice") -> tuple[dict[str, Any], dict[str, Any], Path]:
    api = s.api
    vm = api.vm(api.user(owner)["id"], api.template()["id"])
    image = write_image(tmp_path / f"{owner}.img", 6 * MiB, seed=11)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    return vm, disk, image


def _another_vm_runs_meanwhile(s: Service, tmp_path: Path, held: dict[str, Any]) -> None:
    """While ``held`` is stopped in the engine, a backup of another VM runs to the end: the worker had a free slot,
    so whatever is still pending waits for its lock key, not for capacity."""
    _, disk, _ = _vm(s, tmp_path, owner="bob")
    other = s.take_normal(disk["id"])
    assert s.done(other["id"], timeout=60)["status"] == "complete"
    assert s.tx_of(held["id"])["status"] == "running"


def test_two_backups_of_one_disk_never_overlap(service: Service, gate: Gate, tmp_path: Path) -> None:
    s = service
    _, disk, _ = _vm(s, tmp_path)
    first = s.take_normal(disk["id"])
    assert gate.entered.wait(120)
    second = s.take_normal(disk["id"])
    assert s.app.state.worker.run_pending() == 0  # the VM's lock key is busy: nothing starts
    assert s.tx_of(second["id"])["status"] == "pending"
    assert s.tx_of(first["id"])["status"] == "running"
    _another_vm_runs_meanwhile(s, tmp_path, first)
    assert s.tx_of(second["id"])["status"] == "pending"
    gate.released.set()
    t1, t2 = s.done(first["id"]), s.done(second["id"])
    assert t1["status"] == t2["status"] == "complete"
    assert gate.calls == 3  # first, the other VM's, second
    assert _span(s, t2)[0] >= _span(s, t1)[1]


def test_restore_waits_for_a_running_backup(service: Service, gate: Gate, tmp_path: Path) -> None:
    s = service
    _, disk, image = _vm(s, tmp_path)
    gate.released.set()  # the first backup runs freely
    older = s.take_normal(disk["id"])
    assert s.done(older["id"])["status"] == "complete"
    with open(image, "r+b") as f:
        f.write(os.urandom(MiB))
    gate.hold_next()
    running = s.take_normal(disk["id"])
    assert gate.entered.wait(120)
    s.restore(older["id"])
    assert s.app.state.worker.run_pending() == 0
    assert s.tx_of(older["id"], "restore_backup")["status"] == "pending"
    _another_vm_runs_meanwhile(s, tmp_path, running)
    assert s.tx_of(older["id"], "restore_backup")["status"] == "pending"
    gate.released.set()
    take_tx, restore_tx = s.done(running["id"]), s.done(older["id"], "restore_backup")
    assert take_tx["status"] == restore_tx["status"] == "complete", restore_tx["log_output"]
    assert gate.calls == 3  # the held take, the other VM's, the restore
    assert _span(s, restore_tx)[0] >= _span(s, take_tx)[1]


def test_delete_racing_an_incremental_that_shares_its_chunks(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = service
    vm, _, image = _vm(s, tmp_path)
    older = s.take_incremental(vm["id"])
    assert s.done(older["id"])["status"] == "complete"
    with open(image, "r+b") as f:  # the next backup reuses most chunks of the older one
        f.seek(3 * MiB)
        f.write(os.urandom(256 * 1024))
    expected = sha(image)

    reusing, release = threading.Event(), threading.Event()
    orig = ChunkWriter.store

    def store(self: ChunkWriter, digest: bytes, data: Any) -> int:
        n = orig(self, digest, data)
        if n == 0 and not reusing.is_set():  # the take has decided to reuse a chunk of the older backup
            reusing.set()
            assert release.wait(120), "never released"
        return n

    monkeypatch.setattr(ChunkWriter, "store", store)
    newer = s.take_incremental(vm["id"])
    assert reusing.wait(120)
    assert s.api.delete(f"/backups/{older['id']}.json").status_code == 204
    # The delete runs beside the take (another lock key) and does not wait for it: collection is deferred.
    wait_for(lambda: s.api.get(f"/backups/{older['id']}.json").status_code == 404, what="delete")
    assert (s.storage / gc.PENDING_KEY).exists()
    release.set()
    assert s.done(newer["id"])["status"] == "complete"

    engine = Engine(LocalStorage(s.storage))
    ident = s.backup(newer["id"])["identifier"]
    assert engine.verify(ident).ok
    out = tmp_path / "restored.img"
    engine.restore(ident, str(out))
    assert sha(out) == expected
    # The deferred collection ran when the take ended: only the newer backup's chunks are left.
    assert not (s.storage / gc.PENDING_KEY).exists()
    referenced = {c.hex() for c in decode((s.storage / f"manifests/{ident}.json").read_bytes(), ident).referenced()}
    stored = {p.name for p in (s.storage / "chunks").rglob("*") if p.is_file()}
    assert stored == referenced
