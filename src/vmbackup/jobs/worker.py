"""The database-polling worker: runs pending transactions, at most ``concurrency`` at once and one per lock key.

Used in-process by ``vmbackup serve`` (the embedded default) and standalone by ``vmbackup worker``. The
transactions table is the queue: a claim is one conditional UPDATE, so several workers never run the same
transaction or two transactions with the same lock key. A worker started for hypervisors or backup servers takes
only the transactions of their queues (services/routing.py); its row in ``workers`` says what it serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import Transaction
from vmbackup.services import execution, fleet, routing

log = logging.getLogger(__name__)

RECOVERY_EVERY_SECONDS = 30.0


class Worker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        concurrency: int = 2,
        poll_seconds: float = 1.0,
        hypervisor_ids: Collection[int] = (),
        backup_server_ids: Collection[int] = (),
        name: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.me = name or execution.worker_id()
        self.hypervisor_ids, self.backup_server_ids = list(hypervisor_ids), list(backup_server_ids)
        self.queues = routing.queues_of(self.hypervisor_ids, self.backup_server_ids)  # None: every queue
        self.heartbeat = fleet.Heartbeat(sessions, self.me, self.hypervisor_ids, self.backup_server_ids)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vmbackup-tx")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, tuple[list[str], Future[str | None]]] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        storage = routing.storage_of(self.queues, self.backup_server_ids)
        execution.recover(self.sessions, clean_storage=True, backup_server_ids=storage)
        self.heartbeat.start()
        self._thread = threading.Thread(target=self._loop, name="vmbackup-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (called after a transaction is queued)."""
        self._wake.set()

    def submit(self, tx: Transaction) -> None:
        """`JobQueue`: the transactions table is this worker's queue, so delivering is waking up."""
        self.wake()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.heartbeat.stop()

    def _loop(self) -> None:
        since_recovery = 0.0
        while not self._stop.is_set():
            try:
                self.run_pending()
                since_recovery += self.poll_seconds
                if since_recovery >= RECOVERY_EVERY_SECONDS:
                    execution.recover(self.sessions)
                    fleet.prune_workers(self.sessions)
                    since_recovery = 0.0
            except Exception:  # keep polling through database restarts; the failure is logged
                log.exception("worker loop error")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def run_pending(self) -> int:
        """Start what can start now; returns how many were started."""
        self._inflight = {k: v for k, v in self._inflight.items() if not v[1].done()}
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return 0
        with self.sessions() as db:
            busy = execution.busy_lock_keys(db) | {key for keys, _ in self._inflight.values() for key in keys}
            candidates = [(tx.id, list(tx.lock_keys)) for tx in execution.pending(db, queues=self.queues)]
        started = 0
        for tx_id, lock_keys in candidates:
            if started >= free:
                break
            if busy.intersection(lock_keys) or tx_id in self._inflight:
                continue
            busy.update(lock_keys)
            future = self._pool.submit(self._run, tx_id)
            self._inflight[tx_id] = (lock_keys, future)
            started += 1
        return started

    def _run(self, tx_id: int) -> str | None:
        try:
            return execution.execute(self.sessions, tx_id, self.me, self.queues)
        finally:
            self._wake.set()  # a finished transaction may unblock one waiting on its lock key

    def run_until_idle(self, timeout: float = 60.0) -> None:
        """Foreground helper for tests and one-shot runs: process until nothing is pending or running here."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.run_pending()
            for _, future in list(self._inflight.values()):
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            with self.sessions() as db:
                if not execution.pending(db, limit=1, queues=self.queues) and not self._inflight_running():
                    return
            time.sleep(0.01)
        raise TimeoutError("transactions still pending")

    def _inflight_running(self) -> bool:
        return any(not f.done() for _, f in self._inflight.values())
