"""Workers that run where the disk is, as real OS processes on PostgreSQL: `vmbackup worker --hypervisor 1`,
`--hypervisor 2` and `--backup-server 1` beside an API (in this process, VMBACKUP_WORKER=external). Each backup runs
on its hypervisor's worker; with one worker killed its transactions wait, saying so, while the others go on; a
VM moved to another hypervisor goes to that one's worker, pending work included; a delete runs on the backup
server's worker."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from tests.acceptance.serve_process import serve_env
from tests.failure.conftest import Service, make_settings, running_service, wait_for
from tests.images import MiB, write_image
from vmbackup.db.base import Base
from vmbackup.db.models import BackupServerJoin, Hypervisor, Transaction, VirtualMachine, WorkerHeartbeat
from vmbackup.db.session import make_engine
from vmbackup.services import routing

PROCRASTINATE_TABLES = ("procrastinate_jobs", "procrastinate_events", "procrastinate_periodic_defers")


def _worker_env(tmp_path: Path, name: str, database_url: str) -> dict[str, str]:
    env = serve_env(tmp_path / name, 0, {"VMBACKUP_DATABASE_URL": database_url})
    env.pop("VMBACKUP_LISTEN")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(tmp_path: Path, database_url: str, *args: str) -> WorkerProcess:
    tag = "-".join(a.strip("-") for a in args) + f"-{time.monotonic_ns()}"
    log = tmp_path / f"worker-{tag}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmbackup.cli.main", "worker", *args],
            env=_worker_env(tmp_path, tag, database_url),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(proc, log)


def _stop(worker: WorkerProcess, sig: int = signal.SIGTERM) -> None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(sig)
        try:
            worker.proc.wait(60)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture
def database(pg_database: str) -> str:
    engine = make_engine(pg_database)
    with engine.begin() as conn:
        tables = [t.name for t in Base.metadata.sorted_tables] + list(PROCRASTINATE_TABLES)
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database


@contextmanager
def fleet(tmp_path: Path, database_url: str) -> Iterator[tuple[Service, dict[str, WorkerProcess]]]:
    settings = make_settings(tmp_path, database_url=database_url, worker="external")
    with running_service(settings) as service:
        with service.app.state.sessions() as db:
            db.add_all(
                [Hypervisor(label="hv-1", ip_address="10.0.0.1"), Hypervisor(label="hv-2", ip_address="10.0.0.2")]
            )
            db.flush()
            # Both hypervisors' backups go to backup server 1 (placement takes only the servers joined to them).
            db.add_all(
                BackupServerJoin(backup_server_id=1, target_join_type="Hypervisor", target_join_id=hv_id)
                for hv_id in (1, 2)
            )
            db.commit()
        workers: dict[str, WorkerProcess] = {}
        try:
            for key, args in (
                ("hv1", ("--hypervisor", "1")),
                ("hv2", ("--hypervisor", "2")),
                ("bs1", ("--backup-server", "1")),
            ):
                workers[key] = _start(tmp_path, database_url, *args)
            for worker in workers.values():
                _wait_live(service, worker)
            yield service, workers
        finally:
            for worker in workers.values():
                _stop(worker)


def _wait_live(service: Service, worker: WorkerProcess) -> None:
    def live() -> bool:
        assert worker.proc.poll() is None, worker.output()
        with service.app.state.sessions() as db:
            return db.get(WorkerHeartbeat, worker.name) is not None

    wait_for(live, 60, f"worker {worker.name} heartbeating")


def _tx(service: Service, tx_id: int) -> Transaction:
    with service.app.state.sessions() as db:
        tx = db.get(Transaction, tx_id)
        assert tx is not None
        return tx


def _take(service: Service, disk_id: int) -> tuple[int, int]:
    """(backup id, its transaction id)."""
    backup = service.take_normal(disk_id)
    with service.app.state.sessions() as db:
        tx_id = db.scalar(
            select(Transaction.id).where(Transaction.parent_type == "Backup", Transaction.parent_id == backup["id"])
        )
        assert tx_id is not None
        return backup["id"], tx_id


def _finished(service: Service, tx_id: int, timeout: float = 60) -> Transaction:
    tx = wait_for(lambda: (t := _tx(service, tx_id)).status in ("complete", "failed") and t, timeout, f"tx {tx_id}")
    assert tx.status == "complete", tx.log_output
    return tx


def _ran_on(tx: Transaction, worker: WorkerProcess, serving: str) -> None:
    assert tx.worker == worker.name, (tx.worker, tx.log_output)
    assert f"by worker {worker.name} serving {serving}" in tx.log_output
    assert f"Started on host {socket.gethostname()}" in tx.log_output


def _move(service: Service, vm_id: int, hypervisor_id: int) -> None:
    with service.app.state.sessions() as db:  # what the VM update does (another module's endpoint)
        db.execute(update(VirtualMachine).where(VirtualMachine.id == vm_id).values(hypervisor_id=hypervisor_id))
        routing.reroute_vm(db, vm_id)
        db.commit()


def _vm_with_disk(
    service: Service, tmp_path: Path, user: dict[str, Any], tpl: int, ds: int, hv: int, n: int
) -> dict[str, Any]:
    vm = service.api.vm(user["id"], tpl, label=f"vm{n}", hostname=f"vm{n}.example.com")
    image = write_image(tmp_path / f"disk{n}.img", 2 * MiB, seed=n)
    disk = service.api.disk(vm["id"], ds, image_path=str(image))
    _move(service, vm["id"], hv)
    return {"vm": vm["id"], "disk": disk["id"]}


def test_each_hypervisors_backups_run_on_its_worker_and_wait_for_it_when_it_is_down(tmp_path, database):
    with fleet(tmp_path, database) as (service, workers):
        api = service.api
        user, tpl, ds = api.user("alice"), api.template()["id"], api.data_store()["id"]
        a, b, c = (_vm_with_disk(service, tmp_path, user, tpl, ds, hv, n) for n, hv in ((1, 1), (2, 2), (3, 2)))

        # Each hypervisor's backups on its own worker.
        (backup_a, tx_a), (_, tx_b) = _take(service, a["disk"]), _take(service, b["disk"])
        _ran_on(_finished(service, tx_a), workers["hv1"], "hypervisor 1")
        _ran_on(_finished(service, tx_b), workers["hv2"], "hypervisor 2")

        # Hypervisor 2's worker is killed (no clean stop: its heartbeat row stays until it is 30 s old): its new
        # transactions wait, and say so once the row is stale (at the next beat of a live worker); hypervisor 1's
        # go on meanwhile.
        _stop(workers["hv2"], signal.SIGKILL)
        (_, waiting_b), (_, waiting_c) = _take(service, b["disk"]), _take(service, c["disk"])
        _, tx_a2 = _take(service, a["disk"])
        _ran_on(_finished(service, tx_a2), workers["hv1"], "hypervisor 1")

        def said_waiting(tx_id: int) -> bool:
            tx = _tx(service, tx_id)
            assert tx.status == "pending", tx.log_output
            return "waiting for a worker on hypervisor 2" in tx.log_output

        for tx_id in (waiting_b, waiting_c):
            wait_for(lambda tx_id=tx_id: said_waiting(tx_id), 90, f"tx {tx_id} saying it waits")

        # A VM moved to hypervisor 1 while its take waits: hypervisor 1's worker runs it.
        _move(service, c["vm"], 1)
        moved = _finished(service, waiting_c)
        _ran_on(moved, workers["hv1"], "hypervisor 1")
        assert moved.log_output.count("waiting for a worker") == 1
        assert _tx(service, waiting_b).status == "pending"

        # Hypervisor 2's worker back: what waited for it runs on it.
        workers["hv2"] = _start(tmp_path, database, "--hypervisor", "2")
        _ran_on(_finished(service, waiting_b), workers["hv2"], "hypervisor 2")

        # From now on the moved VM's takes go to hypervisor 1.
        _, tx_c2 = _take(service, c["disk"])
        _ran_on(_finished(service, tx_c2), workers["hv1"], "hypervisor 1")

        # Work on stored data only: on the backup server's worker.
        assert api.delete(f"/backups/{backup_a}.json").status_code in (200, 204)
        with service.app.state.sessions() as db:
            delete_tx = db.scalar(
                select(Transaction.id).where(Transaction.parent_id == backup_a, Transaction.action != "take_backup")
            )
        assert delete_tx is not None
        done = _finished(service, delete_tx)
        assert done.queue == routing.backup_server_queue(1)
        _ran_on(done, workers["bs1"], "backup server 1")


def test_a_worker_for_an_unknown_hypervisor_refuses_to_start(tmp_path):
    env = serve_env(tmp_path, 0)
    env.pop("VMBACKUP_LISTEN")
    r = subprocess.run(
        [sys.executable, "-m", "vmbackup.cli.main", "worker", "--hypervisor", "99"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, r.stderr  # errors.NotFound
    assert "There is no hypervisor with id 99" in r.stderr
