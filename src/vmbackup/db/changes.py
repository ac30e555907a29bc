"""Change feeds: a number that moves whenever another connection may have changed what API listings show.

The API keeps rendered backup listings in memory (api/listing_cache.py). An entry is served only while the
number it was filled under is still current, so the feed must move for every commit that can change a listing,
whichever process made it (the API itself, `vmbackup worker` processes, the CLI, an operator with psql):

- SQLite: ``PRAGMA data_version`` on a connection of our own, polled every 10 ms. SQLite changes it whenever any
  *other* connection, in this process or another, commits a write to the file; reading it takes no lock.
- PostgreSQL: the triggers of migration 0004 ``NOTIFY vmbackup_changes`` on every statement that writes users,
  virtual_machines, disks or backups (the tables a listing reads); a thread here LISTENs and counts the
  notifications. PostgreSQL delivers them at commit, so a listing can trail a commit made by another process by
  the delivery time (well under a millisecond on one host).

While a watcher is not running (not started, or its connection failed), ``version()`` is None and nothing is cached
or served from the cache.

Writes made through this process's own sessions also move a local counter right after their commit
(``track_commits``), so a client reading after its own write never sees the listing from before it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import TextClause, event, make_url
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction, sessionmaker

log = logging.getLogger("vmbackup.changes")

CHANNEL = "vmbackup_changes"
# The tables whose rows a backup listing reads (rows, visibility through VM/disk owner, the caller's account and
# time zone). Migration 0004 puts the PostgreSQL triggers on exactly these; a presenter that starts reading
# another table must add it there.
WATCHED_TABLES = ("users", "virtual_machines", "disks", "backups")


class ChangeFeed(Protocol):
    def version(self) -> int | None:
        """A number that differs after any committed change; None when changes cannot be seen right now."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _Watcher:
    """A thread that watches for changes and counts them; while it is not connected, ``version()`` is None."""

    def __init__(self, retry_seconds: float) -> None:
        self._retry = retry_seconds
        self._count = 0
        self._live = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def version(self) -> int | None:
        return self._count if self._live else None

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="vmbackup-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._retry + 10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # noqa: BLE001 - any failure: stop serving cached listings, reconnect
                if not self._stop.is_set():
                    log.warning("change feed lost (%s); listings are not cached until it reconnects", exc)
            finally:
                self._live = False
                self._ready.clear()
                self._count += 1
            self._stop.wait(self._retry)

    def _watching(self) -> None:
        """Called once connected. Changes committed before could not be seen: move the number, so entries filled
        earlier (or while disconnected) are never served."""
        self._count += 1
        self._live = True
        self._ready.set()

    def _changed(self) -> None:
        self._count += 1  # only the watcher thread writes it; readers need it to differ, not to be exact

    def _watch(self) -> None:
        raise NotImplementedError


class SqliteChanges(_Watcher):
    """Polls ``PRAGMA data_version`` on a private connection every ``poll_seconds`` (10 ms).

    Polled rather than read per request: the pragma costs ~4 us, 8% of a cached listing's server time (py-spy,
    bench/api_bench.py), and commits made through this process are already seen exactly by ``track_commits``;
    only another process's commits (an external worker, the CLI) can trail, by the poll interval, as PostgreSQL's
    trail by the notification's delivery.
    """

    def __init__(self, path: str, *, poll_seconds: float = 0.01, retry_seconds: float = 1.0) -> None:
        super().__init__(retry_seconds)
        self._path = path
        self._poll = poll_seconds

    def _watch(self) -> None:
        # Autocommit, so the pragma never leaves a read transaction open (which would hold back WAL checkpoints);
        # timeout 0: it takes no lock anyway.
        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            self._watching()
            while not self._stop.wait(self._poll):
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != seen:
                    seen = now
                    self._changed()
        finally:
            conn.close()


class PostgresChanges(_Watcher):
    """LISTENs on ``CHANNEL``; probes the connection every ``probe_seconds`` so a dead server is noticed."""

    def __init__(self, conninfo: str, *, probe_seconds: float = 5.0, retry_seconds: float = 1.0) -> None:
        super().__init__(retry_seconds)
        self._conninfo = conninfo
        self._probe = probe_seconds

    def _watch(self) -> None:
        import psycopg  # only PostgreSQL deployments pay for the import

        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._watching()
            probe_at = time.monotonic() + self._probe
            while not self._stop.is_set():
                # Short waits, so stop() returns quickly (it joins the thread).
                for _ in conn.notifies(timeout=0.2):
                    self._changed()
                if time.monotonic() >= probe_at:
                    conn.execute("SELECT 1")  # a dead server shows here, not only at the next notification
                    probe_at = time.monotonic() + self._probe


class ChangeClock:
    """The change feed's number plus this process's own write commits (``bump``, see ``track_commits``).

    Two equal readings mean nothing a listing or a login reads has been committed in between, by this process or
    any other (up to the feed's delivery delay for other processes). Read it *before* reading the database: a
    result stored under that reading is then never newer than the data it stands for.
    """

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed
        self._local = 0
        self._lock = threading.Lock()

    def bump(self) -> None:
        """A write was committed through this process (called from any thread, right after the commit)."""
        with self._lock:
            self._local += 1

    def version(self) -> tuple[int, int] | None:
        feed = self.feed.version()
        return None if feed is None else (feed, self._local)


def change_feed(database_url: str) -> ChangeFeed | None:
    """The feed for ``database_url``; None for an in-memory SQLite database (nothing else can open it)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
            return None
        return SqliteChanges(url.database)
    return PostgresChanges(url.set(drivername="postgresql").render_as_string(hide_password=False))


def track_commits(sessions: sessionmaker[Session], on_commit: Callable[[], None]) -> None:
    """Call ``on_commit`` right after each commit of a session from ``sessions`` that wrote anything.

    "Wrote": flushed ORM changes, or executed any statement that is not a SELECT (Core UPDATE/DELETE, text SQL).
    Read-only commits (every request commits after authenticating) do not count, or nothing would stay cached.
    """
    flag = "vmbackup_wrote"

    def wrote_flush(session: Session, _tx: UOWTransaction) -> None:
        session.info[flag] = True

    def wrote_execute(state: ORMExecuteState) -> None:
        stmt = state.statement
        reads = state.is_select or (isinstance(stmt, TextClause) and stmt.text.lstrip()[:6].upper() == "SELECT")
        if not reads:
            state.session.info[flag] = True

    def committed(session: Session) -> None:
        if session.info.pop(flag, False):
            on_commit()

    def rolled_back(session: Session) -> None:
        session.info.pop(flag, None)

    listeners: list[tuple[str, Any]] = [
        ("after_flush", wrote_flush),
        ("do_orm_execute", wrote_execute),
        ("after_commit", committed),
        ("after_rollback", rolled_back),
    ]
    for name, fn in listeners:
        event.listen(sessions, name, fn)
