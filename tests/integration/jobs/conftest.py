"""PostgreSQL only: procrastinate delivers the jobs. Each test starts with empty tables, procrastinate's included."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import ADMIN
from vmbackup.config import Settings, load_settings
from vmbackup.db.base import Base
from vmbackup.db.models import Transaction
from vmbackup.db.session import make_engine, make_session_factory
from vmbackup.jobs.procrastinate_queue import TASK

PROCRASTINATE_TABLES = (
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_workers",
)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    engine = make_engine(pg_database)
    with engine.begin() as conn:
        tables = [t.name for t in Base.metadata.sorted_tables] + list(PROCRASTINATE_TABLES)
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database


@pytest.fixture
def make_settings(tmp_path: Path, pg_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return load_settings(
            {},
            data_dir=str(tmp_path / "data"),
            database_url=pg_url,
            admin_login=ADMIN[0],
            admin_password=ADMIN[1],
            password_memory_kib=19456,
            password_time_cost=2,
            **overrides,
        )

    return make


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def add_tx(sessions: sessionmaker[Session], lock_key: str, **fields: Any) -> Transaction:
    """A transaction row as the services make them, for an action the test chooses (see `fake_actions`)."""
    fields = {"action": "take_backup", "parent_type": "Backup", "parent_id": 0, "lock_keys": [lock_key], **fields}
    with sessions() as db:
        tx = Transaction(**fields)
        db.add(tx)
        db.commit()
        return tx


def tx_of(sessions: sessionmaker[Session], tx_id: int) -> Transaction:
    with sessions() as db:
        tx = db.get(Transaction, tx_id)
        assert tx is not None
        return tx


def jobs(engine: Engine, task: str = TASK) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, status, lock, queueing_lock, args FROM procrastinate_jobs WHERE task_name = :t ORDER BY id"
            ),
            {"t": task},
        )
        return [dict(r) for r in rows.mappings()]


def run_until(start: Callable[[], Any], stop: Callable[[], Any], done: Callable[[], bool], timeout: float = 10) -> None:
    """Run a worker in a fresh event loop (``start`` in the loop, ``await stop()`` at the end) until ``done()``."""

    async def main() -> None:
        start()
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not await asyncio.to_thread(done):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("worker did not get there in time")
                await asyncio.sleep(0.05)
        finally:
            await stop()

    asyncio.run(main())


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
