"""Transactions delivered through procrastinate on PostgreSQL: one job per transaction, one run per lock key at a
time, and nothing left running or undelivered after a worker dies."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from tests.api_client import Api
from tests.images import MiB, write_image
from tests.integration.api.helpers import wait_idle
from tests.integration.jobs.conftest import add_tx, jobs, now, run_until, tx_of
from vmbackup.api.app import create_app
from vmbackup.db.models import Transaction
from vmbackup.jobs.procrastinate_queue import (
    MAINTENANCE,
    MAINTENANCE_CRON,
    ProcrastinateQueue,
    ProcrastinateRunner,
    conninfo,
    maintain,
)
from vmbackup.services import tasks

pytestmark = pytest.mark.postgres

FAST = {"fetch_job_polling_interval": 0.1}


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, float]]:
    """A stand-in action that takes 0.3 s and records (lock key, start, end) of every run."""
    runs: list[tuple[str, float, float]] = []
    guard = threading.Lock()

    def action(sessions: Any, tx: Transaction, log: Any) -> None:
        start = time.monotonic()
        time.sleep(0.3)
        with guard:
            runs.append((tx.lock_key, start, time.monotonic()))

    monkeypatch.setitem(tasks.ACTIONS, "quick", action)
    return runs


def _disk(api: Api, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    vm = api.vm(api.user("alice")["id"], api.template()["id"])
    image = write_image(tmp_path / "root.img", 2 * MiB, seed=5)
    return vm, api.disk(vm["id"], api.data_store()["id"], image_path=str(image))


def test_conninfo_is_the_libpq_form_of_the_database_url() -> None:
    assert conninfo("postgresql+psycopg://u:p%40ss@db.example:5433/vmb") == "postgresql://u:p%40ss@db.example:5433/vmb"


def test_a_queued_transaction_becomes_one_job_with_its_lock_key(make_settings, tmp_path):
    app = create_app(make_settings(worker="external"))  # no worker here: the job stays waiting
    assert app.state.worker is None and isinstance(app.state.queue, ProcrastinateQueue)
    try:
        with TestClient(app) as client:
            api = Api(client)
            vm, disk = _disk(api, tmp_path)
            assert api.post(f"/settings/disks/{disk['id']}/backups.json").status_code == 201
            with app.state.sessions() as db:
                [tx] = db.query(Transaction).all()
            [job] = jobs(app.state.engine)
            assert job["status"] == "todo" and job["lock"] == f"vm:{vm['id']}" == tx.lock_key
            assert job["args"] == {"transaction_id": tx.id, "identifier": tx.identifier}
            app.state.queue.submit(tx)  # delivered twice (a retried request, the maintenance task): still one job
            assert len(jobs(app.state.engine)) == 1
    finally:
        app.state.engine.dispose()


def test_the_inprocess_worker_takes_a_backup_to_complete(make_settings, tmp_path):
    app = create_app(make_settings(worker_concurrency=2))
    assert isinstance(app.state.worker, ProcrastinateRunner)
    try:
        with TestClient(app) as client:
            api = Api(client)
            _, disk = _disk(api, tmp_path)
            backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
            [tx] = wait_idle(api, timeout=15)
            assert tx["status"] == "complete", tx["log_output"]
            got = api.get(f"/backups/{backup['id']}.json").json()["backup"]
            assert got["built"] is True and got["locked"] is False and got["backup_size"] > 0
            deadline = time.monotonic() + 5
            while jobs(app.state.engine) and time.monotonic() < deadline:  # finished a moment after the row
                time.sleep(0.05)
            assert jobs(app.state.engine) == []  # succeeded jobs are dropped: the transaction row is the record
    finally:
        app.state.engine.dispose()


def test_transactions_with_the_same_lock_key_never_run_at_once(pg_url, engine, sessions, quick):
    txs = [add_tx(sessions, key, action="quick") for key in ("vm:1", "vm:1", "vm:1", "vm:2")]
    runner = ProcrastinateRunner(pg_url, engine, sessions, concurrency=4, **FAST)
    for tx in txs:
        runner.queue.submit(tx)
    run_until(runner.start, runner.aclose, lambda: all(tx_of(sessions, t.id).status == "complete" for t in txs))
    same = sorted((start, end) for key, start, end in quick if key == "vm:1")
    assert len(same) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(same, same[1:], strict=False))
    [(_, other_start, _)] = [run for run in quick if run[0] == "vm:2"]
    assert other_start < same[0][1]  # with free slots, another key runs alongside: only the lock serialises


def test_the_periodic_task_fails_a_transaction_left_running_by_a_dead_worker(pg_url, engine, sessions, quick):
    assert any(p.task.name == MAINTENANCE and p.cron == MAINTENANCE_CRON for p in _periodic(pg_url, engine, sessions))
    stalled = add_tx(sessions, "vm:1", action="quick")
    waiting = add_tx(sessions, "vm:1", action="quick")
    runner = ProcrastinateRunner(pg_url, engine, sessions, concurrency=2, **FAST)
    runner.queue.submit(stalled)
    runner.queue.submit(waiting)
    # A worker took the first job and was killed: its job stays `doing` under no live worker, holding vm:1 (the
    # second job cannot start), and the transaction stays `running` with a heartbeat an hour old.
    hour_ago = now() - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE procrastinate_jobs SET status = 'doing' WHERE (args->>'transaction_id')::int = :id"),
            {"id": stalled.id},
        )
        conn.execute(
            update(Transaction)
            .where(Transaction.id == stalled.id)
            .values(status="running", worker="gone-host:4242", started_at=hour_ago, heartbeat_at=hour_ago)
        )
    app, worker = runner.app, None

    async def run_worker() -> None:  # the bare procrastinate worker: no start-up recovery, only the periodic task
        async with app.open_async():
            await app.run_worker_async(install_signal_handlers=False, concurrency=2, **FAST)

    def start() -> None:
        nonlocal worker
        worker = asyncio.ensure_future(run_worker())

    async def stop() -> None:
        assert worker is not None
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    run_until(start, stop, lambda: tx_of(sessions, waiting.id).status == "complete")
    failed = tx_of(sessions, stalled.id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert "worker gone-host:4242 stopped while this transaction was running" in failed.log_output
    assert [j["status"] for j in jobs(engine) if j["args"]["transaction_id"] == stalled.id] == ["failed"]
    assert [key for key, *_ in quick] == ["vm:1"]  # only the waiting one ran; the dead one was not run again


def test_maintenance_defers_again_a_pending_transaction_that_lost_its_job(pg_url, engine, sessions):
    lost = add_tx(sessions, "vm:1", action="quick")  # committed, then the process died before deferring it
    done = add_tx(sessions, "vm:2", action="quick", status="complete")
    runner = ProcrastinateRunner(pg_url, engine, sessions, **FAST)

    async def maintain_once() -> dict[str, list[int]]:
        async with runner.app.open_async():
            return await maintain(runner.app, sessions, runner.queue)

    assert asyncio.run(maintain_once())["redeferred"] == [lost.id]
    assert [j["args"]["transaction_id"] for j in jobs(engine)] == [lost.id] != [done.id]
    assert asyncio.run(maintain_once())["redeferred"] == []  # its job is waiting: no second one


def test_a_transaction_queued_outside_the_api_is_picked_up_by_a_worker(pg_url, engine, sessions, quick):
    tx = add_tx(sessions, "vm:1", action="quick")  # e.g. by the auto-backup scheduler: nobody deferred it
    runner = ProcrastinateRunner(pg_url, engine, sessions, **FAST)
    started = time.monotonic()
    run_until(runner.start, runner.aclose, lambda: tx_of(sessions, tx.id).status == "complete", timeout=5)
    assert time.monotonic() - started < 3  # within a pickup round or two, not a maintenance period
    assert len(quick) == 1


def _periodic(pg_url, engine, sessions) -> list[Any]:
    return list(ProcrastinateRunner(pg_url, engine, sessions).app.periodic_registry.periodic_tasks.values())
