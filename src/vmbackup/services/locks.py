"""The lock keys transactions carry and API changes hold (`db.models.Lock`): one vocabulary for every caller.

A worker runs a transaction only while it holds all of its keys, and API changes to a VM or disk hold theirs while
they commit, so nothing changes or deletes what a running transaction reads or writes (issue 10, F2 and F18). The
first key of a transaction is the one job delivery serialises on.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from vmbackup.db.base import utcnow
from vmbackup.db.queries import transactions as tx_queries
from vmbackup.errors import Conflict


def vm_key(vm_id: int) -> str:
    # Takes and restores of one VM's disks run one at a time: a restore must never overlap a backup of the
    # same disk, and two backups of a disk gain nothing from running together.
    return f"vm:{vm_id}"


def disk_key(disk_id: int) -> str:
    return f"disk:{disk_id}"


def backup_key(backup_id: int) -> str:
    return f"backup:{backup_id}"


def template_key(template_id: int) -> str:
    return f"template:{template_id}"


def commit_unless_busy(db: Session, keys: list[str], what: str) -> None:
    """Commit the caller's change only if no running transaction holds ``keys``: the keys are taken for the length
    of this database transaction, so a worker cannot start on them either until it commits (F18)."""
    if not tx_queries.hold(db, keys, "api", utcnow()):
        raise Conflict(f"{what} is in use by a running transaction")
    tx_queries.unhold(db, keys)
    db.commit()
