from __future__ import annotations

from datetime import datetime

from sqlalchemy import false, func, select, text, update
from sqlalchemy.orm import Session

from vmbackup.db.models import Transaction


def page(db: Session, *, user_id: int | None, vm_id: int | None, offset: int, limit: int) -> list[Transaction]:
    q = select(Transaction).order_by(Transaction.id.desc()).offset(offset).limit(limit)
    if user_id is not None:
        q = q.where(Transaction.user_id == user_id)
    if vm_id is not None:
        q = q.where(Transaction.associated_object_type == "VirtualMachine", Transaction.associated_object_id == vm_id)
    return list(db.scalars(q))


def pending(db: Session, limit: int = 50) -> list[Transaction]:
    q = select(Transaction).where(Transaction.status == "pending").order_by(Transaction.priority, Transaction.id)
    return list(db.scalars(q.limit(limit)))


def running(db: Session) -> list[Transaction]:
    return list(db.scalars(select(Transaction).where(Transaction.status == "running").order_by(Transaction.id)))


def busy_lock_keys(db: Session) -> set[str]:
    return set(db.scalars(select(Transaction.lock_key).where(Transaction.status == "running")))


def claim(db: Session, tx_id: int, lock_key: str, worker: str, pid: int, now: datetime) -> bool:
    """pending -> running, only if still pending and nothing else holds its lock key. Atomic in one UPDATE."""
    others = (
        select(Transaction.id)
        .where(Transaction.lock_key == lock_key, Transaction.status == "running", Transaction.id != tx_id)
        .exists()
    )
    stmt = (
        update(Transaction)
        .where(Transaction.id == tx_id, Transaction.status == "pending", ~others)
        .values(
            status="running",
            worker=worker,
            pid=pid,
            started_at=now,
            heartbeat_at=now,
            attempts=Transaction.attempts + 1,
            updated_at=now,
        )
    )
    claimed = db.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    db.commit()
    return claimed


# First key of PostgreSQL's two-key advisory locks for queueing (ASCII "vmbq"), so they meet no other lock.
_QUEUE_LOCK_CLASS = 0x766D6271


def lock_user_queue(db: Session, user_id: int) -> None:
    """Serialize queueing for one user until this database transaction ends (commit or rollback), so that a count
    of the user's queued transactions stays true until the new one is inserted."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:c, :u)"), {"c": _QUEUE_LOCK_CLASS, "u": user_id})
    else:
        # SQLite has one writer at a time and takes that lock at a transaction's first write: this write of no row
        # takes it now, before the count, instead of at the INSERT after it (every queueing request waits here).
        stmt = update(Transaction).where(false()).values(status=Transaction.status)
        db.execute(stmt, execution_options={"synchronize_session": False})


def queued_count(db: Session, user_id: int) -> int:
    """Transactions of this user's objects that are pending or running."""
    q = select(func.count()).where(Transaction.user_id == user_id, Transaction.status.in_(("pending", "running")))
    return int(db.scalar(q) or 0)


def in_progress(db: Session, action: str, parent_type: str, parent_id: int) -> bool:
    """A transaction ``action`` of this object is pending or running."""
    q = select(Transaction.id).where(
        Transaction.action == action,
        Transaction.parent_type == parent_type,
        Transaction.parent_id == parent_id,
        Transaction.status.in_(("pending", "running")),
    )
    return db.scalars(q.limit(1)).first() is not None
