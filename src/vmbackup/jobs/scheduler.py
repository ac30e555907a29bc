"""The embedded scheduler: a thread that fires due auto-backups and runs the periodic integrity checks.

Every `vmbackup serve` process may run one; a run is claimed by compare-and-set in the database
(`services.autobackups.tick`), so several processes never fire the same run twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.config import Settings
from vmbackup.db.models import Transaction
from vmbackup.jobs.queue import JobQueue
from vmbackup.services import autobackups, integrity

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        every_seconds: float,
        verify_interval_hours: float,
        verify_mib_per_second: float,
        on_queued: Callable[[list[int]], None] | None = None,
        backup_server_ids: list[int] | None = None,
    ) -> None:
        self.sessions = sessions
        # The integrity checks read stored data: those of these backup servers only (None: all), the ones the
        # worker running them serves.
        self.backup_server_ids = backup_server_ids
        self.every = every_seconds
        self.verify_interval_hours = verify_interval_hours
        self.verify_rate = verify_mib_per_second
        self.on_queued = on_queued
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # Two loops, so a long (throttled) integrity check never delays a due auto-backup.
        for name, step in (("scheduler", self.fire_due), ("integrity", self.check_one)):
            thread = threading.Thread(target=self._loop, args=(step,), name=f"vmbackup-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def fire_due(self) -> None:
        queued = autobackups.tick(self.sessions)
        if queued and self.on_queued:
            self.on_queued(queued)

    def check_one(self) -> None:
        integrity.run_due(
            self.sessions,
            interval_hours=self.verify_interval_hours,
            mib_per_second=self.verify_rate,
            limit=1,
            backup_server_ids=self.backup_server_ids,
        )

    def _loop(self, step: Callable[[], None]) -> None:
        # The first pass runs at once: a run missed while the service was down fires on start-up.
        while not self._stop.is_set():
            try:
                step()
            except Exception:  # a database blip must not stop scheduling; the next pass tries again
                log.exception("%s failed", step.__name__)
            self._stop.wait(self.every)


def make_scheduler(
    settings: Settings,
    sessions: sessionmaker[Session],
    queue: JobQueue | None,
    backup_server_ids: list[int] | None = None,
) -> Scheduler:
    def deliver(tx_ids: list[int]) -> None:
        if queue is None:
            return  # external workers find pending transactions themselves
        with sessions() as db:
            for tx_id in tx_ids:
                tx = db.get(Transaction, tx_id)
                if tx is not None:
                    queue.submit(tx)

    return Scheduler(
        sessions,
        every_seconds=settings.scheduler_seconds,
        verify_interval_hours=settings.verify_interval_hours,
        verify_mib_per_second=settings.verify_max_mib_per_second,
        on_queued=deliver,
        backup_server_ids=backup_server_ids,
    )
