"""Running auto-backups: firing due schedules, rotating old auto-backups out, counting failures.

``tick`` is called periodically by every scheduler process (the embedded service's thread, or procrastinate's
periodic task on PostgreSQL). Several processes may tick at once: each run is claimed by a compare-and-set on
the schedule's ``start_at``, so exactly one of them fires it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import Backup, Schedule, ScheduleLog, Transaction, User
from vmbackup.db.queries import schedules as q
from vmbackup.errors import VmbackupError
from vmbackup.services import actions
from vmbackup.services.periods import next_after

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _log(db: Session, schedule_id: int, status: str, text: str, tx_id: int | None = None) -> None:
    db.add(ScheduleLog(schedule_id=schedule_id, status=status, log_output=text, transaction_id=tx_id))


def tick(sessions: sessionmaker[Session], now: datetime | None = None) -> list[int]:
    """Fire every due schedule once; returns the ids of the transactions queued."""
    now = now or _now()
    queued: list[int] = []
    with sessions() as db:
        due = [(s.id, s.start_at) for s in q.due(db, now)]
    for schedule_id, seen_start in due:
        with sessions() as db:
            tx = _fire(db, schedule_id, seen_start, now)
            if tx is not None:
                queued.append(tx)
    return queued


def _fire(db: Session, schedule_id: int, seen_start: datetime, now: datetime) -> int | None:
    schedule = db.get(Schedule, schedule_id)
    owner = db.get(User, schedule.user_id) if schedule else None
    if schedule is None:
        return None
    zone = ZoneInfo(owner.time_zone if owner else "UTC")
    # Runs missed while the service was down collapse into this one: the next run is the first one after now.
    nxt = next_after(schedule.anchor_at, zone, schedule.period, schedule.duration, now)
    if not q.advance(db, schedule.id, seen_start, nxt, now):
        return None  # another scheduler fired this run
    db.refresh(schedule)
    if q.in_flight(db, schedule.id):
        _log(db, schedule.id, "skipped", "the previous auto-backup of this schedule is still pending or running")
        db.commit()
        return None
    try:
        if owner is None:
            raise VmbackupError("the schedule's owner no longer exists")
        if schedule.target_type == "Disk":
            backup, tx = actions.take_normal(
                db, owner, schedule.target_id, None, initiated=schedule.period, schedule_id=schedule.id
            )
        else:
            backup, tx = actions.take_incremental(
                db, owner, schedule.target_id, None, initiated=schedule.period, schedule_id=schedule.id
            )
    except VmbackupError as exc:
        db.rollback()
        schedule = db.get(Schedule, schedule_id)
        assert schedule is not None
        schedule.failure_count += 1
        _log(db, schedule.id, "failed", f"could not start the auto-backup: {exc.message}")
        db.commit()
        log.warning("schedule %s: %s", schedule_id, exc.message)
        return None
    _log(db, schedule.id, "queued", f"backup {backup.identifier} queued", tx.id)
    db.commit()
    return tx.id


def rotate(db: Session, schedule_id: int) -> list[Transaction]:
    """Keep the schedule's newest ``rotation_period`` built auto-backups; mark the rest and queue their deletion.

    Only backups this schedule made are considered, so manual backups are never rotated."""
    schedule = db.get(Schedule, schedule_id)
    if schedule is None:
        return []
    queued = []
    for backup in q.kept_backups(db, schedule_id)[max(schedule.rotation_period, 1) :]:
        tx = actions.queue_destroy(db, backup)
        if tx is None:
            continue  # busy (being restored or converted): the next rotation takes it
        backup.marked_for_delete = True
        queued.append(tx)
    db.commit()
    return queued


def after_backup(sessions: sessionmaker[Session], backup_id: int, ok: bool, tx_id: int) -> list[int]:
    """Called by the take tasks when an auto-backup finished: log it, rotate, count failures."""
    with sessions() as db:
        backup = db.get(Backup, backup_id)
        if backup is None or backup.schedule_id is None:
            return []
        schedule = db.get(Schedule, backup.schedule_id)
        if schedule is None:
            return []
        if not ok:
            schedule.failure_count += 1
            _log(db, schedule.id, "failed", f"auto-backup {backup.identifier} failed (transaction {tx_id})", tx_id)
            db.commit()
            return []
        _log(db, schedule.id, "complete", f"auto-backup {backup.identifier} built", tx_id)
        db.commit()
        return [tx.id for tx in rotate(db, schedule.id)]
