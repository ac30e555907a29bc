from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, false, func, insert, select, text, update
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


def pending(db: Session, limit: int = 50, queues: Collection[str] | None = None) -> list[Transaction]:
    """Pending transactions in start order; of ``queues`` only, unless None."""
    q = select(Transaction).where(Transaction.status == "pending").order_by(Transaction.priority, Transaction.id)
    if queues is not None:
        q = q.where(Transaction.queue.in_(list(queues)))
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


def claim(
    db: Session,
    tx_id: int,
    lock_keys: list[str],
    worker: str,
    pid: int,
    now: datetime,
    queues: Collection[str] | None = None,
) -> bool:
    """pending -> running, only if still pending (in one of ``queues`` unless None: a VM moved meanwhile is not
    claimed by its old hypervisor's worker) and every lock key can be taken, all in one database transaction:
    either the transaction runs holding all its keys, or nothing changed."""
    where = [Transaction.id == tx_id, Transaction.status == "pending"]
    if queues is not None:
        where.append(Transaction.queue.in_(list(queues)))
    stmt = (
        update(Transaction)
        .where(*where)
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
