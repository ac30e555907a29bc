"""Change feeds (db/changes.py) see every commit that can change a listing, from any connection, and nothing else."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from vmbackup.db.changes import WATCHED_TABLES, PostgresChanges, SqliteChanges, change_feed, track_commits
from vmbackup.db.models import User
from vmbackup.db.session import make_engine, make_session_factory

TRIGGERS = """SELECT DISTINCT event_object_table FROM information_schema.triggers
              WHERE trigger_name LIKE '%_notify_change'"""


def _moved(feed, before, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if feed.version() != before:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def feed(database_url, engine):  # after `engine`, whose set-up write would otherwise arrive during a test
    feed = change_feed(database_url)
    feed.start()
    assert feed.wait_ready(10)
    yield feed
    feed.stop()


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    with make_session_factory(engine)() as db:  # one row to change (SQLite counts only writes that change pages)
        db.add(User(id=1, login="u", email="u@example.com", password_hash="x"))
        db.commit()
    yield engine
    engine.dispose()


def test_a_committed_write_moves_the_feed_and_a_read_or_rollback_does_not(feed, engine):
    before = feed.version()
    assert before is not None
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM backups"))
        conn.commit()
        conn.execute(text("UPDATE users SET first_name = 'x' WHERE id = 1"))
        conn.rollback()
    assert not _moved(feed, before, timeout=0.3)
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET first_name = 'y' WHERE id = 1"))
    assert _moved(feed, before)


@pytest.mark.postgres
def test_postgres_every_watched_table_notifies_and_other_tables_do_not(database_url, feed, engine):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL triggers")
    with engine.connect() as conn:
        triggers = conn.execute(text(TRIGGERS)).scalars()
        assert sorted(triggers) == sorted(WATCHED_TABLES)
    before = feed.version()
    with engine.begin() as conn:  # hot tables the listing never reads (heartbeats) must not end cached listings
        conn.execute(text("UPDATE transactions SET log_output = log_output"))
        conn.execute(text("UPDATE schedules SET status = status"))
    assert not _moved(feed, before, timeout=0.3)
    for table in WATCHED_TABLES:
        before = feed.version()
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET id = id WHERE false"))  # statement-level: even zero rows
        assert _moved(feed, before), table


@pytest.mark.postgres
def test_postgres_feed_reconnects_after_losing_its_connection(database_url, engine):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL LISTEN connection")
    feed = change_feed(database_url)
    feed.start()
    try:
        assert feed.wait_ready(10)
        before = feed.version()
        with engine.begin() as conn:  # as a server restart or a DBA's pg_terminate_backend would
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            ).all()
        assert killed
        deadline = time.monotonic() + 10
        while (feed.version() in (None, before)) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Back, with a number no entry filled before the loss can match (commits in between were not seen).
        assert feed.version() not in (None, before)
    finally:
        feed.stop()


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: PostgresChanges("postgresql://nobody@127.0.0.1:1/none", retry_seconds=0.05),
        lambda tmp: SqliteChanges(str(tmp / "missing-dir" / "db.sqlite"), retry_seconds=0.05),
    ],
    ids=["postgres-unreachable", "sqlite-unreadable"],
)
def test_a_feed_is_unknown_while_it_cannot_watch(make, tmp_path):
    feed = make(tmp_path)
    assert feed.version() is None  # not started
    feed.start()
    try:
        assert not feed.wait_ready(0.5)
        assert feed.version() is None
    finally:
        feed.stop()


def test_in_memory_sqlite_has_no_feed():
    assert change_feed("sqlite://") is None
    assert change_feed("sqlite:///:memory:") is None


def test_track_commits_counts_commits_that_wrote(engine):
    sessions = make_session_factory(engine)
    calls = []
    track_commits(sessions, lambda: calls.append(1))
    with sessions() as db:
        db.execute(text("SELECT 1"))
        db.commit()
        assert calls == []
        db.execute(text("UPDATE users SET first_name = 'z' WHERE id = 1"))
        db.rollback()
        db.commit()
        assert calls == []
        db.execute(text("UPDATE users SET first_name = 'z' WHERE id = 1"))
        db.commit()
        assert calls == [1]
