"""How a queued transaction reaches a worker, seen from the API: one method, whatever the delivery.

Two deliveries implement it: the database-polling `worker.Worker` (SQLite, the embedded default: ``submit`` only
wakes it up) and `procrastinate_queue.ProcrastinateQueue` (PostgreSQL: ``submit`` defers a procrastinate job
"run transaction N"). Either way the transaction row, committed before ``submit``, is the record of the work.
"""

from __future__ import annotations

from typing import Protocol

from vmbackup.db.models import Transaction


class JobQueue(Protocol):
    def submit(self, tx: Transaction) -> None:
        """Deliver committed pending transaction ``tx`` to a worker. Never raises for a delivery problem: a
        transaction whose delivery was lost stays pending and is picked up again (polling, or re-deferred by the
        procrastinate maintenance task)."""
        ...
