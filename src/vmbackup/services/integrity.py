"""Periodic integrity checks: re-verify stored backups, oldest check first, at a bounded read rate.

A damaged backup is flagged (``integrity = "damaged"`` with the problems in ``integrity_log``). Damaged chunks are
moved out of the chunk store, so the next backup of the target stores fresh copies of them; because chunks are
content-addressed, that also heals every older backup that referenced the same data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.base import utcnow
from vmbackup.db.models import Backup, BackupServer
from vmbackup.errors import VmbackupError
from vmbackup.services.tasks import engine_for

log = logging.getLogger(__name__)


class Throttle:
    """A progress callback that sleeps so reading stays under ``mib_per_second`` (bounded I/O)."""

    def __init__(self, mib_per_second: float) -> None:
        self.rate = mib_per_second * 1024 * 1024
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        ahead = done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(min(ahead, 5.0))


def due(
    db: Session, now: datetime, interval: timedelta, limit: int, backup_server_ids: Collection[int] | None = None
) -> list[int]:
    """Backups to check next; on ``backup_server_ids`` only unless None (a worker reads only the stored data of
    the backup servers it serves: another one's storage may not even be mounted on its host)."""
    q = (
        select(Backup.id)
        .where(Backup.built.is_(True), Backup.locked.is_(False), Backup.marked_for_delete.is_(False))
        .where(or_(Backup.verified_at.is_(None), Backup.verified_at <= now - interval))
        .order_by(Backup.verified_at.is_not(None), Backup.verified_at, Backup.id)
        .limit(limit)
    )
    if backup_server_ids is not None:
        q = q.where(Backup.backup_server_id.in_(list(backup_server_ids)))
    return list(db.scalars(q))


def check(sessions: sessionmaker[Session], backup_id: int, mib_per_second: float) -> bool:
    """Verify one backup and record the outcome; returns True when it is intact."""
    with sessions() as db:
        backup = db.get(Backup, backup_id)
        server = db.get(BackupServer, backup.backup_server_id) if backup and backup.backup_server_id else None
        if backup is None or server is None or backup.locked:
            return True
        identifier = backup.identifier
    engine = engine_for(server)
    try:
        report = engine.verify(identifier, Throttle(mib_per_second))
        problems = report.problems
        if report.damaged_chunks:
            moved = engine.quarantine(report.damaged_chunks)
            if moved:
                problems = [*problems, f"{moved} damaged chunk(s) moved aside; the next backup stores them again"]
    except VmbackupError as exc:
        problems = [exc.message]
    with sessions() as db:
        backup = db.get(Backup, backup_id)
        if backup is not None:
            backup.verified_at = utcnow()
            backup.integrity = "damaged" if problems else "ok"
            backup.integrity_log = "\n".join(problems) or None
            db.commit()
    if problems:
        log.warning("backup %s is damaged: %s", identifier, "; ".join(problems))
    return not problems


def run_due(
    sessions: sessionmaker[Session],
    *,
    interval_hours: float,
    mib_per_second: float,
    limit: int = 10,
    now: datetime | None = None,
    backup_server_ids: Collection[int] | None = None,
) -> dict[int, bool]:
    """Check up to ``limit`` backups whose last check is older than the interval, of ``backup_server_ids`` only
    unless None; returns id -> intact."""
    if interval_hours <= 0 or (backup_server_ids is not None and not backup_server_ids):
        return {}
    with sessions() as db:
        ids = due(db, now or utcnow(), timedelta(hours=interval_hours), limit, backup_server_ids)
    return {backup_id: check(sessions, backup_id, mib_per_second) for backup_id in ids}
