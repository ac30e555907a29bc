"""The fleet as the API shows it: which hypervisors (and backup servers) have a live worker.

A worker heartbeats into the ``workers`` table (jobs/worker.py, jobs/procrastinate_queue.py); one is live while its
last beat is younger than ``LIVE_SECONDS``. A worker started with no ids runs everything, so it serves every
hypervisor and backup server too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmbackup.db.models import WorkerHeartbeat

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
