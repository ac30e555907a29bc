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
            backup = backups.new_incremental(db, db.get(VirtualMachine, vm_id), 1)
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
