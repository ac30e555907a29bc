from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
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
