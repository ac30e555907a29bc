from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vmbackup.db.models import Backup, Schedule, ScheduleLog


def for_target(db: Session, target_type: str, target_id: int) -> list[Schedule]:
    q = select(Schedule).where(Schedule.target_type == target_type, Schedule.target_id == target_id)
    return list(db.scalars(q.order_by(Schedule.id)))


def enabled_for(db: Session, target_type: str, target_id: int) -> bool:
    """An enabled schedule covers this target. Reads ids only, so a row with unreadable dates cannot break it."""
    q = select(Schedule.id).where(
        Schedule.target_type == target_type, Schedule.target_id == target_id, Schedule.status == "enabled"
    )
    return db.scalars(q.limit(1)).first() is not None


def for_user(db: Session, user_id: int | None) -> list[Schedule]:
    q = select(Schedule).order_by(Schedule.id)
    if user_id is not None:
        q = q.where(Schedule.user_id == user_id)
    return list(db.scalars(q))


def due(db: Session, now: datetime, limit: int = 100) -> list[int]:
    """Ids of the enabled schedules whose next run has come, earliest first. Ids only: each schedule is then read
    on its own, so one row with unreadable values fails alone (F4)."""
    q = select(Schedule.id).where(Schedule.status == "enabled", Schedule.start_at <= now)
    return list(db.scalars(q.order_by(Schedule.start_at, Schedule.id).limit(limit)))


def target_of(db: Session, schedule_id: int) -> tuple[str, int] | None:
    """A schedule's target, read without its dates."""
    row = db.execute(select(Schedule.target_type, Schedule.target_id).where(Schedule.id == schedule_id)).first()
    return (row[0], row[1]) if row else None


def disable(db: Session, schedule_id: int, now: datetime) -> bool:
    """Disable an enabled schedule and count a failure; False if it was not enabled (another scheduler got there
    first). Touches no date the scheduler could not read."""
    stmt = (
        update(Schedule)
        .where(Schedule.id == schedule_id, Schedule.status == "enabled")
        .values(status="disabled", failure_count=Schedule.failure_count + 1, updated_at=now)
    )
    return db.execute(stmt).rowcount == 1  # type: ignore[attr-defined]


def advance(db: Session, schedule_id: int, seen_start: datetime, next_start: datetime, now: datetime) -> bool:
    """Move a schedule to its next run, only if nobody else did since we read it (compare-and-set).

    This is what keeps several scheduler processes from firing the same run twice: exactly one UPDATE matches."""
    stmt = (
        update(Schedule)
        .where(Schedule.id == schedule_id, Schedule.start_at == seen_start, Schedule.status == "enabled")
        .values(start_at=next_start, last_run_at=now, updated_at=now)
    )
    won = db.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    db.commit()
    return won


def add_failure(db: Session, schedule_id: int) -> None:
    """Count a failed run, in the database (concurrent failures of one schedule all count)."""
    db.execute(update(Schedule).where(Schedule.id == schedule_id).values(failure_count=Schedule.failure_count + 1))


def in_flight(db: Session, schedule_id: int) -> bool:
    """An auto-backup of this schedule is still pending or running (its backup is locked and unbuilt)."""
    q = select(Backup.id).where(Backup.schedule_id == schedule_id, Backup.built.is_(False), Backup.locked.is_(True))
    return db.scalars(q.limit(1)).first() is not None


def kept_backups(db: Session, schedule_id: int) -> list[Backup]:
    """Built auto-backups of a schedule not yet rotated out, newest first."""
    q = select(Backup).where(
        Backup.schedule_id == schedule_id, Backup.built.is_(True), Backup.marked_for_delete.is_(False)
    )
    return list(db.scalars(q.order_by(Backup.built_at.desc(), Backup.id.desc())))


def logs(db: Session, schedule_id: int) -> list[ScheduleLog]:
    q = select(ScheduleLog).where(ScheduleLog.schedule_id == schedule_id).order_by(ScheduleLog.id.desc())
    return list(db.scalars(q.limit(100)))
