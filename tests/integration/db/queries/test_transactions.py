"""The worker's claim and the API's hold (db/queries/transactions.py) read back row by row, on SQLite and
PostgreSQL: what a claim writes is what recovery and the transaction log rely on, and what a refused claim or a
hold leaves behind must be nothing (issue 10, F2 and F18; killed survivors listed in docs/mutation.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import Lock, Transaction
from vmbackup.db.queries import transactions as q
from vmbackup.db.session import make_engine, make_session_factory

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _tx(db: Session, keys: list[str], status: str = "pending") -> int:
    tx = Transaction(action="take_backup", parent_type="Backup", parent_id=0, lock_keys=keys, status=status)
    db.add(tx)
    db.commit()
    return tx.id


def _locks(db: Session) -> dict[str, tuple[int | None, str]]:
    return {lock.key: (lock.transaction_id, lock.holder) for lock in db.scalars(select(Lock))}


def test_a_claim_marks_the_transaction_running_by_this_worker_and_holds_every_key(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as db:
        tx_id = _tx(db, ["vm:1", "disk:1"])
        assert q.claim(db, tx_id, ["vm:1", "disk:1", "vm:1"], "host:7", 7, NOW)
    with sessions() as db:
        tx = db.get(Transaction, tx_id)
        assert tx is not None
        assert (tx.status, tx.worker, tx.pid, tx.attempts) == ("running", "host:7", 7, 1)
        # Recovery judges a worker by these: a claim must start the heartbeat now, not leave it empty.
        assert tx.started_at == NOW and tx.heartbeat_at == NOW and tx.updated_at == NOW
        assert _locks(db) == {"vm:1": (tx_id, "host:7"), "disk:1": (tx_id, "host:7")}
        assert all(lock.acquired_at == NOW for lock in db.scalars(select(Lock)))


def test_a_claim_counts_attempts(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        tx_id = _tx(db, ["vm:1"])
        db.get(Transaction, tx_id).attempts = 2  # type: ignore[union-attr]
        db.commit()
        assert q.claim(db, tx_id, ["vm:1"], "w", 1, NOW)
    with sessions() as db:
        assert db.get(Transaction, tx_id).attempts == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("status", ["running", "complete", "failed", "cancelled"])
def test_only_a_pending_transaction_can_be_claimed(sessions: sessionmaker[Session], status: str) -> None:
    with sessions() as db:
        tx_id = _tx(db, ["vm:1"], status=status)
        assert not q.claim(db, tx_id, ["vm:1"], "w", 1, NOW)
    with sessions() as db:
        assert db.get(Transaction, tx_id).status == status  # type: ignore[union-attr]
        assert _locks(db) == {}


def test_a_claim_refused_on_one_held_key_takes_none_of_the_others(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        holder = _tx(db, ["backup:1"])
        assert q.claim(db, holder, ["backup:1"], "w", 1, NOW)
        tx_id = _tx(db, ["vm:1", "disk:1", "backup:1"])
        assert not q.claim(db, tx_id, ["vm:1", "disk:1", "backup:1"], "w", 1, NOW)
    with sessions() as db:
        tx = db.get(Transaction, tx_id)
        assert tx is not None and (tx.status, tx.worker, tx.attempts) == ("pending", None, 0)
        assert _locks(db) == {"backup:1": (holder, "w")}


def test_release_gives_up_only_that_transactions_keys(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        a, b = _tx(db, ["vm:1", "disk:1"]), _tx(db, ["vm:2"])
        assert q.claim(db, a, ["vm:1", "disk:1"], "w", 1, NOW)
        assert q.claim(db, b, ["vm:2"], "w", 1, NOW)
        q.release_locks(db, a)
        db.commit()
    with sessions() as db:
        assert _locks(db) == {"vm:2": (b, "w")}


def test_stray_locks_are_those_of_transactions_no_longer_running(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        ended, running = _tx(db, ["vm:1"]), _tx(db, ["vm:2"])
        assert q.claim(db, ended, ["vm:1", "disk:1"], "w", 1, NOW)
        assert q.claim(db, running, ["vm:2"], "w", 1, NOW)
        db.get(Transaction, ended).status = "failed"  # type: ignore[union-attr]
        db.commit()
        assert q.release_stray_locks(db) == 2
        db.commit()
        assert _locks(db) == {"vm:2": (running, "w")}
        assert q.release_stray_locks(db) == 0


def test_a_stray_lock_sweep_leaves_an_api_hold_alone(sessions: sessionmaker[Session]) -> None:
    with sessions() as db, sessions() as sweeper:
        assert q.hold(db, ["vm:3"], "api", NOW)
        db.commit()  # committed only here, to see it from the sweeper (a real hold is never committed)
        assert q.release_stray_locks(sweeper) == 0
        sweeper.commit()
        assert _locks(sweeper) == {"vm:3": (None, "api")}


def test_a_hold_takes_the_keys_until_unheld(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        assert q.hold(db, ["vm:1", "disk:1", "vm:1"], "api", NOW)
        assert _locks(db) == {"vm:1": (None, "api"), "disk:1": (None, "api")}
        q.unhold(db, ["vm:1", "disk:1"])
        assert _locks(db) == {}
        db.commit()


def test_unhold_never_gives_up_a_running_transactions_key(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        tx_id = _tx(db, ["vm:1"])
        assert q.claim(db, tx_id, ["vm:1"], "w", 1, NOW)
        assert q.hold(db, ["disk:1"], "api", NOW + timedelta(seconds=1))
        q.unhold(db, ["vm:1", "disk:1"])
        db.commit()
        assert _locks(db) == {"vm:1": (tx_id, "w")}


def test_a_hold_on_a_key_a_transaction_holds_is_refused_and_rolled_back(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        tx_id = _tx(db, ["disk:1"])
        assert q.claim(db, tx_id, ["disk:1"], "w", 1, NOW)
        assert not q.hold(db, ["vm:1", "disk:1"], "api", NOW)
        assert _locks(db) == {"disk:1": (tx_id, "w")}


def test_unhold_gives_up_only_the_keys_it_names(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        assert q.hold(db, ["vm:1", "disk:1"], "api", NOW)
        q.unhold(db, ["vm:1"])
        assert _locks(db) == {"disk:1": (None, "api")}
        db.rollback()
