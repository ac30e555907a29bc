"""Routing through procrastinate's queues on PostgreSQL: a job goes to its transaction's queue, a dedicated worker
listens to its queues and the periodic ones, and a job left behind by a moved VM neither runs nor blocks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import select, text, update

from tests.integration.jobs.conftest import add_tx, jobs, run_until, tx_of
from vmbackup.db.models import Transaction, WorkerHeartbeat
from vmbackup.jobs.procrastinate_queue import (
    AUTOBACKUPS,
    INTEGRITY,
    INTEGRITY_QUEUE,
    MAINTENANCE,
    PERIODIC_QUEUE,
    TASK,
    ProcrastinateRunner,
    deliver_orphans,
    listened,
    maintain,
)
from vmbackup.jobs.scheduler import Scheduler
from vmbackup.services import routing, tasks

pytestmark = pytest.mark.postgres

FAST = {"fetch_job_polling_interval": 0.1}
H1, H2 = routing.hypervisor_queue(1), routing.hypervisor_queue(2)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """A stand-in action recording (transaction id, worker) of every run."""
    runs: list[tuple[int, str]] = []
    guard = threading.Lock()

    def action(sessions: Any, tx: Transaction, log: Any) -> None:
        with guard:
            runs.append((tx.id, tx.worker or ""))

    monkeypatch.setitem(tasks.ACTIONS, "quick", action)
    return runs


def _queues(engine) -> list[tuple[int, str, str]]:
    return [(j["args"]["transaction_id"], j["status"], j["queue_name"]) for j in _jobs_with_queue(engine)]


def _jobs_with_queue(engine) -> list[dict[str, Any]]:
    """The transactions' jobs (not the periodic tasks')."""
    with engine.connect() as conn:
        query = text("SELECT id, status, queue_name, args FROM procrastinate_jobs WHERE task_name = :t ORDER BY id")
        return [dict(r) for r in conn.execute(query, {"t": TASK}).mappings()]


def test_a_job_is_deferred_to_its_transactions_queue(pg_url, engine, sessions):
    tx = add_tx(sessions, "vm:1", action="quick", queue=H2)
    runner = ProcrastinateRunner(pg_url, engine, sessions)
    runner.queue.submit(tx)
    assert _queues(engine) == [(tx.id, "todo", H2)]
    [job] = jobs(engine)
    assert job["queueing_lock"] == f"tx:{tx.id}:{tx.identifier}@{H2}"


def test_a_dedicated_worker_listens_to_its_queues_and_the_periodic_ones(pg_url, engine, sessions):
    assert listened(None, []) is None  # no ids: every queue
    assert listened([H1], []) == [H1, PERIODIC_QUEUE]
    assert listened([H1, "backup_server-1"], [1]) == [H1, "backup_server-1", PERIODIC_QUEUE, INTEGRITY_QUEUE]
    scheduler = Scheduler(sessions, every_seconds=5, verify_interval_hours=1, verify_mib_per_second=1)
    runner = ProcrastinateRunner(pg_url, engine, sessions, scheduler=scheduler)
    periodic = {p.task.name: p.task.queue for p in runner.app.periodic_registry.periodic_tasks.values()}
    assert periodic == {MAINTENANCE: PERIODIC_QUEUE, AUTOBACKUPS: PERIODIC_QUEUE, INTEGRITY: INTEGRITY_QUEUE}


def test_workers_run_only_their_queues_jobs_and_heartbeat_while_they_run(pg_url, engine, sessions, quick):
    one, two = add_tx(sessions, "vm:1", action="quick", queue=H1), add_tx(sessions, "vm:2", action="quick", queue=H2)
    hv1 = ProcrastinateRunner(pg_url, engine, sessions, hypervisor_ids=[1], name="hv1-host:11", **FAST)
    hv1.queue.submit(one)
    hv1.queue.submit(two)
    seen: list[list[int]] = []

    def beating() -> bool:
        with sessions() as db:
            seen.append([i for w in db.scalars(select(WorkerHeartbeat)) for i in w.hypervisor_ids])
        return tx_of(sessions, one.id).status == "complete"

    run_until(hv1.start, hv1.aclose, beating)
    assert quick == [(one.id, "hv1-host:11")] and tx_of(sessions, two.id).status == "pending"
    assert [1] in seen
    with sessions() as db:
        assert db.scalars(select(WorkerHeartbeat)).all() == []  # a clean stop removes the row
    hv2 = ProcrastinateRunner(pg_url, engine, sessions, hypervisor_ids=[2], name="hv2-host:12", **FAST)
    run_until(hv2.start, hv2.aclose, lambda: tx_of(sessions, two.id).status == "complete")
    assert quick[1:] == [(two.id, "hv2-host:12")]
    assert "by worker hv2-host:12 serving hypervisor 2" in tx_of(sessions, two.id).log_output


def test_a_job_left_in_the_old_queue_of_a_moved_vm_is_not_run_there_and_the_transaction_is_redelivered(
    pg_url, engine, sessions, quick
):
    tx = add_tx(sessions, "vm:1", action="quick", queue=H1)
    hv1 = ProcrastinateRunner(pg_url, engine, sessions, hypervisor_ids=[1], name="hv1-host:11", **FAST)
    hv1.queue.submit(tx)
    with sessions() as db:  # the VM moved to hypervisor 2 (services.routing.reroute_vm) before the job ran
        db.execute(update(Transaction).where(Transaction.id == tx.id).values(queue=H2))
        db.commit()
    assert deliver_orphans(sessions, hv1.queue) == [tx.id]  # its only job sits in another queue: an orphan
    assert sorted(_queues(engine)) == [(tx.id, "todo", H1), (tx.id, "todo", H2)]
    assert deliver_orphans(sessions, hv1.queue) == []  # its job in hypervisor-2 waits: no second one

    def stale_job_done() -> bool:
        return [q for _, _, q in _queues(engine)] == [H2]  # the stale one succeeded (and was dropped)

    run_until(hv1.start, hv1.aclose, stale_job_done)
    assert quick == [] and tx_of(sessions, tx.id).status == "pending"
    hv2 = ProcrastinateRunner(pg_url, engine, sessions, hypervisor_ids=[2], name="hv2-host:12", **FAST)
    run_until(hv2.start, hv2.aclose, lambda: tx_of(sessions, tx.id).status == "complete")
    assert quick == [(tx.id, "hv2-host:12")]


def test_maintenance_drops_a_waiting_job_whose_transaction_moved(pg_url, engine, sessions):
    tx = add_tx(sessions, "vm:1", action="quick", queue=H1)
    runner = ProcrastinateRunner(pg_url, engine, sessions)
    runner.queue.submit(tx)  # waits in hypervisor-1, whose worker is down
    with sessions() as db:
        db.execute(update(Transaction).where(Transaction.id == tx.id).values(queue=H2))
        db.commit()

    async def maintain_once() -> dict[str, list[int]]:
        async with runner.app.open_async():
            return await maintain(runner.app, sessions, runner.queue)

    done = asyncio.run(maintain_once())
    assert done["redeferred"] == [tx.id] and len(done["dropped_jobs"]) == 1
    assert _queues(engine) == [(tx.id, "todo", H2)]
