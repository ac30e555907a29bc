from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vmbackup.db.models import Lock, Transaction


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
    return set(db.scalars(select(Lock.key)))


def _take_keys(db: Session, keys: list[str], tx_id: int | None, holder: str, now: datetime) -> None:
    # One INSERT per key inside the caller's database transaction: a key someone else holds (or is taking right
    # now, uncommitted) fails on the primary key, on SQLite and PostgreSQL alike.
    for key in dict.fromkeys(keys):
        db.execute(insert(Lock).values(key=key, transaction_id=tx_id, holder=holder, acquired_at=now))


def claim(db: Session, tx_id: int, lock_keys: list[str], worker: str, pid: int, now: datetime) -> bool:
    """pending -> running, only if still pending and every lock key can be taken, all in one database transaction:
    either the transaction runs holding all its keys, or nothing changed."""
    stmt = (
        update(Transaction)
        .where(Transaction.id == tx_id, Transaction.status == "pending")
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
    try:
        if db.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
            db.rollback()
            return False
        _take_keys(db, lock_keys, tx_id, worker, now)
        db.commit()
    except IntegrityError:
        db.rollback()
        return False
    return True


def release_locks(db: Session, tx_id: int) -> None:
    """Give up the keys of transaction ``tx_id`` (in the caller's database transaction, with its final status)."""
    db.execute(delete(Lock).where(Lock.transaction_id == tx_id))


def release_stray_locks(db: Session) -> int:
    """Keys held for transactions that are no longer running (none should be: claims and endings are atomic)."""
    running = select(Transaction.id).where(Transaction.status == "running")
    return db.execute(  # type: ignore[attr-defined, no-any-return]
        delete(Lock).where(Lock.transaction_id.is_not(None), Lock.transaction_id.not_in(running))
    ).rowcount


def hold(db: Session, lock_keys: list[str], holder: str, now: datetime) -> bool:
    """Take ``lock_keys`` for the rest of the caller's database transaction (an API change to a VM or disk that
    must not happen under a running transaction). Returns False, with the session rolled back, if one is held
    (no savepoint: pysqlite's are unreliable, and the caller gives up anyway). The caller removes them with
    ``unhold`` before committing; a crash or rollback drops them anyway."""
    try:
        _take_keys(db, lock_keys, None, holder, now)
        db.flush()
    except IntegrityError:
        db.rollback()
        return False
    return True


def unhold(db: Session, lock_keys: list[str]) -> None:
    db.execute(delete(Lock).where(Lock.key.in_(lock_keys), Lock.transaction_id.is_(None)))
