"""The fleet as the API shows it: which hypervisors (and backup servers) have a live worker.

A worker heartbeats into the ``workers`` table (`Heartbeat`, run by jobs/worker.py and jobs/procrastinate_queue.py,
the one inside ``vmbackup serve`` included); one is live while its last beat is younger than ``LIVE_SECONDS``.
A worker started with no ids runs everything, so it serves every hypervisor and backup server too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.base import utcnow
from vmbackup.db.models import BackupServer, Hypervisor, Transaction, WorkerHeartbeat
from vmbackup.errors import NotFound
from vmbackup.services import routing

log = logging.getLogger(__name__)

# Three missed beats of WORKER_HEARTBEAT_SECONDS (10 s): a worker this silent is stopped, hung or cut off.
LIVE_SECONDS = 30.0


@dataclass(frozen=True)
class Served:
    """What the live workers serve: ``everything`` when one of them runs any transaction."""

    everything: bool
    hypervisor_ids: frozenset[int]
    backup_server_ids: frozenset[int]

    def hypervisor(self, hypervisor_id: int) -> bool:
        return self.everything or hypervisor_id in self.hypervisor_ids

    def backup_server(self, server_id: int) -> bool:
        return self.everything or server_id in self.backup_server_ids

    def queue(self, queue: str) -> bool:
        """A live worker takes this queue's transactions ("default" only a worker serving everything)."""
        served = routing.queues_of(sorted(self.hypervisor_ids), sorted(self.backup_server_ids)) or []
        return self.everything or queue in served


def live_workers(db: Session, now: datetime | None = None) -> list[WorkerHeartbeat]:
    since = (now or datetime.now(UTC)) - timedelta(seconds=LIVE_SECONDS)
    q = select(WorkerHeartbeat).where(WorkerHeartbeat.heartbeat_at >= since).order_by(WorkerHeartbeat.name)
    return list(db.scalars(q))


def served(db: Session, now: datetime | None = None) -> Served:
    workers = live_workers(db, now)
    return Served(
        everything=any(not w.hypervisor_ids and not w.backup_server_ids for w in workers),
        hypervisor_ids=frozenset(i for w in workers for i in w.hypervisor_ids),
        backup_server_ids=frozenset(i for w in workers for i in w.backup_server_ids),
    )


# The write side: each worker process keeps its own row fresh (`Heartbeat`), and the waiting transactions say so.

HEARTBEAT_SECONDS = 10.0
# A row this old belongs to a worker that died without its clean stop (kill -9, power loss): dropped by maintenance.
PRUNE_AFTER = timedelta(days=1)


def cpu_idle() -> int | None:
    """0..100 from the 1-minute load average over the CPUs (OnApp's ``cpu_idle``); None where there is none."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    return max(0, min(100, round(100 * (1 - load / (os.cpu_count() or 1)))))


def beat(
    db: Session,
    name: str,
    *,
    hypervisor_ids: Collection[int] = (),
    backup_server_ids: Collection[int] = (),
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> None:
    """Insert or refresh worker ``name``'s row (host:pid); one statement, so two beats never race to insert."""
    now = now or utcnow()
    host, _, pid = name.rpartition(":")
    values = {
        "name": name,
        "host": host or name,
        "pid": int(pid) if pid.isdigit() else os.getpid(),
        "hypervisor_ids": sorted(hypervisor_ids),
        "backup_server_ids": sorted(backup_server_ids),
        "cpu_idle": cpu_idle(),
        "started_at": started_at or now,
        "heartbeat_at": now,
    }
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(WorkerHeartbeat).values(**values)
    refreshed = ("host", "pid", "hypervisor_ids", "backup_server_ids", "cpu_idle", "heartbeat_at")
    db.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={k: stmt.excluded[k] for k in refreshed}))


def forget(db: Session, name: str) -> None:
    """A clean stop: the worker is gone at once, not after `LIVE_SECONDS`."""
    db.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def prune(db: Session, now: datetime | None = None) -> int:
    """Drop the rows of workers silent for `PRUNE_AFTER`; returns how many."""
    since = (now or utcnow()) - PRUNE_AFTER
    return db.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.heartbeat_at < since)).rowcount  # type: ignore[attr-defined,no-any-return]


def prune_workers(sessions: sessionmaker[Session]) -> int:
    """`prune` in a session of its own (the workers' periodic upkeep); returns how many rows went."""
    with sessions() as db:
        pruned = prune(db)
        db.commit()
        return pruned


def check_ids(db: Session, hypervisor_ids: Collection[int], backup_server_ids: Collection[int]) -> None:
    """A worker is started for hypervisors and backup servers that exist; NotFound names the first unknown one."""
    kinds = ((Hypervisor, hypervisor_ids, "hypervisor"), (BackupServer, backup_server_ids, "backup server"))
    for model, ids, what in kinds:
        known = set(db.scalars(select(model.id).where(model.id.in_(list(ids))))) if ids else set()
        if missing := sorted(set(ids) - known):
            raise NotFound(f"There is no {what} with id {missing[0]}")


def serving(queues: Collection[str] | None) -> str:
    """For logs: what a worker serving ``queues`` runs ('hypervisor 1, backup server 2', 'every queue')."""
    return "every queue" if queues is None else ", ".join(map(routing.describe, queues))


def waiting(queue: str) -> str:
    """What a transaction of ``queue`` with no live worker says (once) in its log."""
    if queue == routing.DEFAULT:  # a take of a VM on no hypervisor, and the like: only a catch-all worker runs it
        return "waiting for a worker that serves every queue"
    return f"waiting for a worker on {routing.describe(queue)}"


def _waiting_line(queue: str, now: datetime) -> str:
    # The format of execution.TxLog's lines, which keeps it when the transaction starts.
    return f"[{now.isoformat()}] Pending: {waiting(queue)}; it runs once one starts\n"


def waiting_log(db: Session, queue: str, now: datetime | None = None) -> str:
    """The first log line of a transaction queued now to ``queue``: "" while a live worker serves it."""
    return "" if served(db, now).queue(queue) else _waiting_line(queue, now or utcnow())


def note_waiting(db: Session, now: datetime | None = None) -> int:
    """Say in the log of every pending transaction whose queue has no live worker that it waits for one, once per
    queue (a worker that died after it was queued, a VM moved to a hypervisor without one). Returns how many."""
    now = now or utcnow()
    live = served(db, now)
    if live.everything:
        return 0
    pending = select(Transaction.queue).where(Transaction.status == "pending").distinct()
    noted = 0
    for queue in db.scalars(pending):
        if live.queue(queue):
            continue
        marker = waiting(queue)
        stmt = (
            update(Transaction)
            .where(Transaction.status == "pending", Transaction.queue == queue)
            .where(~Transaction.log_output.contains(marker, autoescape=True))
            .values(log_output=Transaction.log_output + _waiting_line(queue, now))
        )
        noted += db.execute(stmt, execution_options={"synchronize_session": False}).rowcount  # type: ignore[attr-defined]
    return noted


class Heartbeat:
    """A worker's row in ``workers``: written at `start`, refreshed every `HEARTBEAT_SECONDS` by a thread (which
    also notes the transactions waiting for a worker that is not there), deleted at `stop`. A database blip skips
    a beat; three in a row make the worker look gone until the next one."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        name: str,
        hypervisor_ids: Collection[int] = (),
        backup_server_ids: Collection[int] = (),
        every: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.sessions, self.name, self.every = sessions, name, every
        self.hypervisor_ids, self.backup_server_ids = list(hypervisor_ids), list(backup_server_ids)
        self.started_at = utcnow()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        with self.sessions() as db:
            beat(
                db,
                self.name,
                hypervisor_ids=self.hypervisor_ids,
                backup_server_ids=self.backup_server_ids,
                started_at=self.started_at,
            )
            db.commit()
        with self.sessions() as db:
            if note_waiting(db):
                db.commit()

    def _beat_safely(self) -> None:
        try:
            self.beat()
        except Exception:  # the database may be restarting: the next beat tries again
            log.warning("heartbeat of worker %s failed", self.name, exc_info=True)

    def start(self) -> None:
        self._stop.clear()
        self._beat_safely()
        self._thread = threading.Thread(target=self._loop, name="vmbackup-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._beat_safely()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            with self.sessions() as db:
                forget(db, self.name)
                db.commit()
        except Exception:  # it ages out of `live_workers` anyway
            log.warning("could not remove worker %s from the workers table", self.name, exc_info=True)
