"""Making backup rows through the service layer, for listing tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vmbackup.db.models import Disk, VirtualMachine
from vmbackup.services import backups


def make_backup(
    app: Any,
    *,
    disk_id: int | None = None,
    vm_id: int | None = None,
    built: bool = True,
    size_kb: int = 930584,
    **fields: Any,
) -> int:
    with app.state.sessions() as db:
        if disk_id is not None:
            backup = backups.new_normal(db, db.get(Disk, disk_id), 1)
        else:
            vm = db.get(VirtualMachine, vm_id)
            backup = backups.new_incremental(db, vm, list(vm.disks), 1)
        if built:
            backup.built, backup.built_at, backup.backup_size = (
                True,
                datetime(2015, 8, 13, 2, 0, 49, tzinfo=UTC),
                size_kb,
            )
        for key, value in fields.items():
            setattr(backup, key, value)
        db.commit()
        return backup.id


def wait_idle(api: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Poll the API until no transaction is pending or running; returns the transactions, newest first."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        txs = [t["transaction"] for t in api.get("/transactions.json?per_page=1000").json()]
        if all(t["status"] not in ("pending", "running") for t in txs):
            return txs
        if time.monotonic() > deadline:
            raise TimeoutError(f"transactions still busy: {txs}")
        time.sleep(0.05)


def sha256(path: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
