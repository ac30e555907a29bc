"""Job delivery on PostgreSQL through procrastinate: the queue only says "run transaction N".

The transaction row stays the single record of what happened (`execution.execute` claims it, heartbeats it and
records the outcome); procrastinate adds delivery to any number of worker processes, one job at a time per lock
key (``lock=tx.lock_key``: the first of the transaction's keys, e.g. ``vm:7``; the claim then takes all of them),
no duplicate waiting job per transaction (``queueing_lock``), worker heartbeats, and a periodic maintenance task.
Two sides:

- `ProcrastinateQueue` (API processes, and the maintenance task): defers jobs synchronously through our own
  SQLAlchemy engine's connections, so an API process opens no second pool and needs no event loop.
- `ProcrastinateRunner` (``vmbackup serve`` with ``VMBACKUP_WORKER=inprocess``, and ``vmbackup worker``): runs a
  procrastinate worker (async, its own psycopg pool) whose tasks call `execution.execute`.

What a crash leaves behind, and who cleans it (`maintain`, every `MAINTENANCE_CRON`, in one worker at a time):

- a transaction ``running`` under a dead worker: `execution.recover` marks it failed with the reason in its log;
- that worker's procrastinate job, stuck in ``doing`` and holding the VM's lock: finished as failed once its
  transaction is no longer running (re-delivered instead if the transaction was never claimed);
- a transaction ``pending`` with no waiting or running job in its queue (queued outside the API, crash between
  commit and defer, a failed defer, a job that gave up, a VM moved to another hypervisor since): deferred to its
  queue by `deliver_orphans`, which every worker also runs each `PICKUP_SECONDS`;
- a waiting job left in a queue its transaction no longer has (the VM moved): dropped;
- the rows of workers dead for a day: pruned.

Routing (services/routing.py): a transaction's job is deferred to the procrastinate queue ``tx.queue``
("hypervisor-3", "backup_server-2", "default"). A worker started for hypervisors or backup servers listens to
their queues and to `PERIODIC_QUEUE` (maintenance, auto-backups: they must run in a fleet of dedicated workers
only), plus `INTEGRITY_QUEUE` if it serves a backup server (an integrity check reads stored data, and picks only
backups of the servers its worker serves); a worker with neither listens to every queue. A job that reaches a
worker whose queues its transaction has left is not run there (``execution.execute`` refuses it) and succeeds
without doing anything; the transaction, now an orphan of its new queue, is deferred there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

from procrastinate import App, PsycopgConnector, RetryStrategy, SyncPsycopgConnector
from procrastinate import exceptions as pq_exceptions
from procrastinate.jobs import Status
from procrastinate.worker import Worker as ProcrastinateWorker
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import Transaction
from vmbackup.jobs.scheduler import Scheduler
from vmbackup.services import execution, fleet, routing

log = logging.getLogger(__name__)

TASK = "vmbackup.run_transaction"
MAINTENANCE = "vmbackup.maintenance"
AUTOBACKUPS = "vmbackup.autobackups"
INTEGRITY = "vmbackup.integrity"
# Every worker listens to the first (the periodic tasks must run whoever is up); workers that may read stored data
# (serving a backup server, or everything) to the second.
PERIODIC_QUEUE = "periodic"
INTEGRITY_QUEUE = "integrity"
# Every 30 s (the 6th cron field is seconds): with STALL_SECONDS = 60 a killed worker's transaction is failed
# within about 90 s; the task itself is a few indexed queries.
MAINTENANCE_CRON = "* * * * * */30"
# procrastinate's own defaults, named here because `maintain` relies on them: a worker beats every 10 s and is
# stalled (its ``doing`` jobs orphaned) after 30 s of silence.
WORKER_HEARTBEAT_SECONDS = 10.0
STALLED_WORKER_SECONDS = 30.0
# How often each worker defers pending transactions that have no job. The API defers what it queues at once; this
# delivers what is queued elsewhere (the auto-backup scheduler, retention inside a running backup, scripts) and
# what a crash or a failed defer lost. Duplicates are harmless: a job whose transaction is no longer pending does
# nothing, and the queueing lock refuses a second waiting one.
PICKUP_SECONDS = 1.0
# procrastinate notifies new jobs but not released locks: a job waiting behind another with its lock key is fetched
# at the next poll. One indexed query a second per worker, like the polling worker.
FETCH_POLL_SECONDS = 1.0
# Supervision of the in-process worker: restart after this pause if it stops on a database error.
RESTART_SECONDS = 5.0

Sessions = sessionmaker[Session]


class NotClaimed(Exception):
    """The transaction is still pending but could not be claimed (its lock key is busy): try again shortly."""


# procrastinate's lock already keeps one job per lock key; this covers a running transaction it does not know
# (e.g. one still being recovered). After the last attempt the job fails and `maintain` defers it again.
RETRY_NOT_CLAIMED = RetryStrategy(max_attempts=60, wait=5, retry_exceptions={NotClaimed})


def conninfo(database_url: str) -> str:
    """libpq connection string for a SQLAlchemy URL (``postgresql+psycopg://u:p@h/db`` -> ``postgresql://...``)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def queueing_lock(tx_id: int, identifier: str, queue: str = routing.DEFAULT) -> str:
    # The identifier makes it unique for the life of the database: ids restart after a restore or a truncate, and a
    # job left from before must neither block nor run the new transaction with the same id. The queue: a job left
    # waiting in the queue of a hypervisor the VM has left must not block the one deferred to its new queue.
    return f"tx:{tx_id}:{identifier}@{queue}"


def listened(queues: list[str] | None, backup_server_ids: list[int]) -> list[str] | None:
    """The procrastinate queues of a worker serving ``queues`` (None: all of them)."""
    if queues is None:
        return None
    return [*queues, PERIODIC_QUEUE, *([INTEGRITY_QUEUE] if backup_server_ids else [])]


class _EnginePool:
    """Just enough of psycopg_pool's interface for `SyncPsycopgConnector`: connections borrowed from our engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        raw = self.engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            raw.close()  # back to the engine's pool


class ProcrastinateQueue:
    """`JobQueue` on PostgreSQL: ``submit`` defers "run transaction N" with the transaction's lock key."""

    def __init__(self, engine: Engine) -> None:
        connector = SyncPsycopgConnector()
        connector.open(_EnginePool(engine))  # type: ignore[arg-type]  # duck-typed pool; closed with the engine
        self.app = App(connector=connector)

    def submit(self, tx: Transaction) -> None:
        self.defer(tx.id, tx.identifier, tx.lock_key, tx.queue)

    def defer(self, tx_id: int, identifier: str, lock_key: str, queue: str = routing.DEFAULT) -> int | None:
        """The job's id, or None when one is already waiting for this transaction in ``queue`` or the defer failed."""
        task = self.app.configure_task(
            TASK, queue=queue, lock=lock_key or None, queueing_lock=queueing_lock(tx_id, identifier, queue)
        )
        try:
            return task.defer(transaction_id=tx_id, identifier=identifier)
        except pq_exceptions.AlreadyEnqueued:
            return None
        except pq_exceptions.ConnectorException:
            # The transaction is committed and stays pending: a worker's `deliver_orphans` defers it again.
            log.warning("deferring transaction %s failed; a worker will pick it up", tx_id, exc_info=True)
            return None


def _tx_state(sessions: Sessions, kwargs: dict[str, Any]) -> tuple[str | None, str]:
    """(status, queue) of the transaction a job is about; status None if it no longer exists (or is another one
    by now)."""
    wanted = kwargs.get("identifier")
    with sessions() as db:
        tx = db.get(Transaction, kwargs.get("transaction_id"))
        if tx is None or (wanted is not None and tx.identifier != wanted):
            return None, routing.DEFAULT
        return tx.status, tx.queue


def _tx_status(sessions: Sessions, kwargs: dict[str, Any]) -> str | None:
    return _tx_state(sessions, kwargs)[0]


# Pending transactions with no job waiting or running for them in their queue (a job in another queue is stale: the
# VM moved). These two read procrastinate's table: the only queries of ours that do, kept here with the queue.
_ORPHANS = text(
    """
    SELECT t.id, t.identifier, COALESCE(t.lock_keys->>0, ''), t.queue FROM transactions t
     WHERE t.status = 'pending'
       AND NOT EXISTS (
           SELECT 1 FROM procrastinate_jobs j
            WHERE j.task_name = :task AND j.status IN ('todo', 'doing')
              AND j.args->>'transaction_id' = t.id::text AND j.args->>'identifier' = t.identifier
              AND j.queue_name = t.queue)
     ORDER BY t.priority, t.id
     LIMIT 500
    """
)
# Waiting jobs whose transaction went to another queue: nobody should run them.
_STALE_JOBS = text(
    """
    SELECT j.id FROM procrastinate_jobs j JOIN transactions t
        ON j.args->>'transaction_id' = t.id::text AND j.args->>'identifier' = t.identifier
     WHERE j.task_name = :task AND j.status = 'todo' AND t.status = 'pending' AND j.queue_name <> t.queue
     LIMIT 500
    """
)


def deliver_orphans(sessions: Sessions, queue: ProcrastinateQueue) -> list[int]:
    """Defer every pending transaction that has no job in its queue, to its queue; returns their ids."""
    with sessions() as db:
        orphans = db.execute(_ORPHANS, {"task": TASK}).all()
    return [
        tx_id
        for tx_id, identifier, lock_key, tx_queue in orphans
        if queue.defer(tx_id, identifier, lock_key, tx_queue) is not None
    ]


def _stale_jobs(sessions: Sessions) -> list[int]:
    with sessions() as db:
        return list(db.scalars(_STALE_JOBS, {"task": TASK}))


async def maintain(app: App, sessions: Sessions, queue: ProcrastinateQueue) -> dict[str, list[int]]:
    """Leave no transaction running for a dead worker, no job stuck on one, no pending transaction without a job.

    Returns what it did: recovered transaction ids, finished and re-delivered job ids, re-deferred transaction ids."""
    done: dict[str, list[int]] = {
        "recovered": [],
        "finished_jobs": [],
        "retried_jobs": [],
        "redeferred": [],
        "dropped_jobs": [],
    }
    done["recovered"] = await asyncio.to_thread(execution.recover, sessions)
    manager = app.job_manager
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_WORKER_SECONDS):
        assert job.id is not None
        status = await asyncio.to_thread(_tx_status, sessions, job.task_kwargs) if job.task_name == TASK else None
        if status == "running":
            continue  # our heartbeat is the judge: `execution.recover` fails it once it is stale, next round
        if status == "pending":  # the worker died before claiming it: deliver it again
            await manager.retry_job(job)
            done["retried_jobs"].append(job.id)
        else:  # finished, recovered above, or not ours: release the job and its lock
            await manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
            done["finished_jobs"].append(job.id)
    done["redeferred"] = await asyncio.to_thread(deliver_orphans, sessions, queue)
    for job_id in await asyncio.to_thread(_stale_jobs, sessions):
        if await manager.cancel_job_by_id_async(job_id, delete_job=True):
            done["dropped_jobs"].append(job_id)
    if pruned := await asyncio.to_thread(fleet.prune_workers, sessions):
        log.info("pruned %s workers silent for %s", pruned, fleet.PRUNE_AFTER)
    if any(done.values()):
        log.warning("job maintenance: %s", done)
    return done


def build_app(
    database_url: str,
    sessions: Sessions,
    queue: ProcrastinateQueue,
    *,
    max_pool: int = 4,
    scheduler: Scheduler | None = None,
    queues: list[str] | None = None,
    worker_name: str | None = None,
) -> App:
    """The worker-side app: an async psycopg pool of its own and its tasks, bound to ``sessions``; its jobs run
    transactions of ``queues`` only (None: of every queue), as ``worker_name`` (default: host:pid)."""
    app = App(connector=PsycopgConnector(conninfo=conninfo(database_url), min_size=1, max_size=max_pool))
    if scheduler is not None:
        _add_scheduling(app, scheduler)

    @app.task(name=TASK, retry=RETRY_NOT_CLAIMED)
    def run_transaction(transaction_id: int, identifier: str | None = None) -> str | None:
        status, tx_queue = _tx_state(sessions, {"transaction_id": transaction_id, "identifier": identifier})
        if status != "pending":
            return status  # already run, cancelled, or a job from a former life of the database: nothing to do
        if not execution.serves(queues, tx_queue):
            return f"moved to {tx_queue}"  # a stale job: `deliver_orphans` defers the transaction to its queue
        result = execution.execute(sessions, transaction_id, worker_name, queues)
        status, tx_queue = _tx_state(sessions, {"transaction_id": transaction_id})
        if result is None and status == "pending" and execution.serves(queues, tx_queue):
            raise NotClaimed(f"transaction {transaction_id} could not be claimed yet")
        return result

    # queueing_lock: if every worker is busy, ticks do not pile up behind one another. No `lock`: a maintenance job
    # orphaned by a killed worker must not block the next one, which finishes it.
    @app.periodic(cron=MAINTENANCE_CRON)
    @app.task(name=MAINTENANCE, queue=PERIODIC_QUEUE, queueing_lock=MAINTENANCE)
    async def maintenance(timestamp: int) -> dict[str, list[int]]:
        return await maintain(app, sessions, queue)

    return app


def _add_scheduling(app: App, scheduler: Scheduler) -> None:
    """On PostgreSQL the auto-backup scheduler and the integrity checks are procrastinate periodic tasks: each tick
    is deferred once per timestamp whatever the number of workers, and the schedules' compare-and-set makes a run
    fire once even if two ticks overlap."""
    every = max(1, min(59, int(scheduler.every)))

    @app.periodic(cron=f"* * * * * */{every}")
    @app.task(name=AUTOBACKUPS, queue=PERIODIC_QUEUE, queueing_lock=AUTOBACKUPS)
    def autobackup_tick(timestamp: int) -> None:
        scheduler.fire_due()

    # A lock as well: one integrity check at a time across all workers keeps the I/O bound global. Its own queue:
    # only workers that can read stored data take it, each checking the backups of the servers it serves.
    @app.periodic(cron="* * * * *")
    @app.task(name=INTEGRITY, queue=INTEGRITY_QUEUE, queueing_lock=INTEGRITY, lock=INTEGRITY)
    def integrity_check(timestamp: int) -> None:
        scheduler.check_one()


class ProcrastinateRunner:
    """A procrastinate worker: ``run()`` in the foreground, or ``start()``/``stop()`` inside a running event loop
    (the API's lifespan). Jobs are synchronous and run in threads, ``concurrency`` at a time.

    Stopping never cancels the worker's task: a cancel that lands while the pool is still connecting is swallowed
    by psycopg_pool, which then retries forever. Instead the procrastinate worker is asked to stop, which it does
    after the transactions it runs have finished."""

    def __init__(
        self,
        database_url: str,
        engine: Engine,
        sessions: Sessions,
        *,
        concurrency: int = 2,
        scheduler: Scheduler | None = None,
        hypervisor_ids: list[int] | tuple[int, ...] = (),
        backup_server_ids: list[int] | tuple[int, ...] = (),
        name: str | None = None,
        **worker_options: Any,
    ) -> None:
        self.sessions = sessions
        self.concurrency = concurrency
        self.hypervisor_ids, self.backup_server_ids = list(hypervisor_ids), list(backup_server_ids)
        self.queues = routing.queues_of(self.hypervisor_ids, self.backup_server_ids)  # None: every queue
        self.queue = ProcrastinateQueue(engine)
        self.me = name or execution.worker_id()
        self.app = build_app(
            database_url,
            sessions,
            self.queue,
            max_pool=concurrency + 3,
            scheduler=scheduler,
            queues=self.queues,
            worker_name=self.me,
        )
        self.heartbeat = fleet.Heartbeat(sessions, self.me, self.hypervisor_ids, self.backup_server_ids)
        self.worker_options = worker_options
        self._worker: ProcrastinateWorker | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def recover(self) -> None:
        """Before taking jobs: fail what a killed worker left running and clear its temporary files. Synchronous, so
        that no recovery thread outlives a worker stopped right after its start (and the engine it uses)."""
        storage = routing.storage_of(self.queues, self.backup_server_ids)
        execution.recover(self.sessions, clean_storage=True, backup_server_ids=storage)

    async def run(self, *, wait: bool = True, install_signal_handlers: bool = False) -> None:
        """Take jobs until stopped (or, with ``wait=False``, until none can start)."""
        options: dict[str, Any] = {
            "name": self.me,
            "queues": listened(self.queues, self.backup_server_ids),
            "concurrency": self.concurrency,
            "wait": wait,
            "install_signal_handlers": install_signal_handlers,
            # The transaction row keeps the history; a succeeded job says nothing more.
            "delete_jobs": "successful",
            "update_heartbeat_interval": WORKER_HEARTBEAT_SECONDS,
            "stalled_worker_timeout": STALLED_WORKER_SECONDS,
            "fetch_job_polling_interval": FETCH_POLL_SECONDS,
            # Running transactions are finished, not abandoned: a stop waits for them.
            "shutdown_graceful_timeout": None,
            **self.worker_options,
        }
        async with self.app.open_async():
            self._worker = ProcrastinateWorker(app=self.app, **options)
            done = asyncio.Event()
            pickup = asyncio.create_task(self._pickup(done), name="vmbackup-pickup")
            try:
                if not self._stopping:
                    await self._worker.run()
            finally:
                done.set()
                await pickup  # not cancelled: its thread would outlive the engine it uses
                self._worker = None

    async def _pickup(self, done: asyncio.Event) -> None:
        while not done.is_set():
            try:
                if ids := await asyncio.to_thread(deliver_orphans, self.sessions, self.queue):
                    log.info("deferred pending transactions %s", ids)
            except Exception:  # the database may be restarting: next round
                log.warning("delivering pending transactions failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), PICKUP_SECONDS)

    async def _supervise(self) -> None:
        # The heartbeat spans the restarts: the worker is there, only its database connection is not.
        await asyncio.to_thread(self.heartbeat.start)
        try:
            while not self._stopping:
                try:
                    await self.run()
                except Exception:
                    log.exception("procrastinate worker failed")
                if not self._stopping:
                    log.error("procrastinate worker stopped; restarting in %ss", RESTART_SECONDS)
                    for _ in range(int(RESTART_SECONDS * 10)):
                        if self._stopping:
                            break
                        await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(self.heartbeat.stop)

    async def run_forever(self) -> None:
        """Foreground (`vmbackup worker`): run, restarting after database errors (procrastinate's worker stops
        when its listener loses the database, e.g. during a PostgreSQL restart), until SIGINT or SIGTERM, which
        stop it after the transactions it runs."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._request_stop)
        await self._supervise()

    def _request_stop(self) -> None:
        self._stopping = True
        if self._worker is not None:
            self._worker.stop()

    def start(self) -> None:
        """Recover, then run the worker as a task of the current event loop (call from async code: a lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.recover()
        self._task = self._loop.create_task(self._supervise(), name="vmbackup-procrastinate-worker")

    async def aclose(self) -> None:
        """Stop from the worker's own event loop; returns once the running transactions have finished."""
        self._stopping = True
        task = self._task
        while task is not None and not task.done():
            if self._worker is not None:
                # Repeated: a stop asked before the worker's run() began is reset by it.
                self._worker.stop()
            await asyncio.wait([task], timeout=0.1)

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop from another thread (tests, the lifespan's helper thread); blocks like `aclose`."""
        loop = self._loop
        if self._task is None or loop is None or self._task.done():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("ProcrastinateRunner.stop() would block its own event loop; use `await aclose()`")
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout)
