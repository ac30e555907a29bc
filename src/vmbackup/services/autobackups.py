"""Running auto-backups: firing due schedules, rotating old auto-backups out, counting failures.

``tick`` is called periodically by every scheduler process (the embedded service's thread, or procrastinate's
periodic task on PostgreSQL). Several processes may tick at once: each run is claimed by a compare-and-set on
the schedule's ``start_at``, so exactly one of them fires it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.base import utcnow
from vmbackup.db.models import Backup, Schedule, ScheduleLog, Transaction, User
from vmbackup.db.queries import schedules as q
from vmbackup.errors import VmbackupError
from vmbackup.services import actions
from vmbackup.services.periods import next_after
from vmbackup.services.schedules import flag_disks, owner_zone

log = logging.getLogger(__name__)


def _log(db: Session, schedule_id: int, status: str, text: str, tx_id: int | None = None) -> None:
    db.add(ScheduleLog(schedule_id=schedule_id, status=status, log_output=text, transaction_id=tx_id))


def tick(sessions: sessionmaker[Session], now: datetime | None = None) -> list[int]:
    """Fire every due schedule once; returns the ids of the transactions queued.

    Each schedule is read and fired in its own session under its own error handling: a schedule that cannot run is
    disabled or counted as failed, with the reason in its log, and the others still fire (F4)."""
    now = now or utcnow()
    queued: list[int] = []
    with sessions() as db:
        due = q.due(db, now)
    for schedule_id in due:
        try:
            with sessions() as db:
                tx = _fire(db, schedule_id, now)
        except Exception as exc:  # a bug or a database error: this run fails, the next schedule still fires
            log.exception("schedule %s: the auto-backup could not be started", schedule_id)
            _record_failure(sessions, schedule_id, f"could not start the auto-backup: internal error: {_reason(exc)}")
            continue
        if tx is not None:
            queued.append(tx)
    return queued


def _reason(exc: BaseException) -> str:
    # A database error's own message, without SQLAlchemy's statement and parameters.
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _next_run(db: Session, schedule_id: int, now: datetime) -> tuple[Schedule, User | None, datetime] | None:
    schedule = db.get(Schedule, schedule_id)
    if schedule is None or schedule.status != "enabled" or schedule.start_at > now:
        return None  # deleted, disabled, or fired by another scheduler since the due query
    owner = db.get(User, schedule.user_id)
    # Runs missed while the service was down collapse into this one: the next run is the first one after now.
    return schedule, owner, next_after(schedule.anchor_at, owner_zone(owner), schedule.period, schedule.duration, now)


def _fire(db: Session, schedule_id: int, now: datetime) -> int | None:
    try:
        found = _next_run(db, schedule_id, now)
    except Exception as exc:
        if isinstance(exc, DBAPIError) and not isinstance(exc, DataError):
            raise  # the database, not the row: nothing to hold against the schedule
        # The row itself cannot be run (dates out of range, a zero duration, an unknown period or zone, all
        # refused by the API today but possible in rows from older versions or written directly): it would fail
        # the same way every pass, so it is switched off with the reason, for its owner to correct.
        db.rollback()
        _disable(db, schedule_id, now, _reason(exc))
        return None
    if found is None:
        return None
    schedule, owner, nxt = found
    seen_start = schedule.start_at
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
        q.add_failure(db, schedule_id)
        _log(db, schedule_id, "failed", f"could not start the auto-backup: {exc.message}")
        db.commit()
        log.warning("schedule %s: %s", schedule_id, exc.message)
        return None
    _log(db, schedule.id, "queued", f"backup {backup.identifier} queued", tx.id)
    db.commit()
    return tx.id


def _disable(db: Session, schedule_id: int, now: datetime, reason: str) -> None:
    if not q.disable(db, schedule_id, now):
        db.rollback()
        return  # another scheduler disabled it (and logged why)
    text = (
        f"auto-backups disabled: the next run cannot be computed from this schedule ({reason}); "
        "correct its period, duration or start and enable it again"
    )
    _log(db, schedule_id, "failed", text)
    target = q.target_of(db, schedule_id)
    if target is not None:
        flag_disks(db, *target)
    db.commit()
    log.warning("schedule %s: %s", schedule_id, text)


def _record_failure(sessions: sessionmaker[Session], schedule_id: int, text: str) -> None:
    try:
        with sessions() as db:
            q.add_failure(db, schedule_id)
            _log(db, schedule_id, "failed", text)
            db.commit()
    except Exception:  # the database is unreachable: the log line above is all that can be kept
        log.warning("schedule %s: could not record the failure", schedule_id, exc_info=True)


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
            q.add_failure(db, schedule.id)
            _log(db, schedule.id, "failed", f"auto-backup {backup.identifier} failed (transaction {tx_id})", tx_id)
            db.commit()
            return []
        _log(db, schedule.id, "complete", f"auto-backup {backup.identifier} built", tx_id)
        db.commit()
        return [tx.id for tx in rotate(db, schedule.id)]
