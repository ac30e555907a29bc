"""The database goes away while workers run.

- PostgreSQL restarted (pg_ctlcluster) while two `vmbackup worker` processes (procrastinate) run backups: every
  transaction ends `complete` or `failed` (none stuck `running` or `pending`), no built backup fails to verify,
  the workers are still alive and finish a backup queued after the restart. Slow, and it restarts the shared
  server: opt-in and run alone (`TEST_RESTART_POSTGRES=1 pytest -m slow tests/failure/test_database_restart.py`); it
  always leaves the server running.
- SQLite held locked by another writer while a transaction ends: the worker waits (busy timeout) and completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import PG_URL
from tests.failure.conftest import MiB, Service, make_settings, running_service, wait_for
from tests.images import write_image
from vmbackup.db.migrate import upgrade
from vmbackup.db.session import make_engine
from vmbackup.engine import Engine
from vmbackup.storage.local import LocalStorage


def _cluster() -> list[str] | None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


@pytest.fixture
def pg_service(tmp_path: Path) -> Iterator[Service]:
    """A database of its own, created and dropped with engines that keep no connection across the restart (the
    session's shared `pg_database` fixture would meet a closed connection at teardown)."""
    if os.environ.get("TEST_RESTART_POSTGRES") != "1":
        pytest.skip("restarts the PostgreSQL server other tests share: run alone with TEST_RESTART_POSTGRES=1")
    if os.geteuid() != 0 or _cluster() is None:
        pytest.skip("restarting PostgreSQL needs root and a local pg_ctlcluster cluster")
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            name = f"vmbackup_restart_{uuid.uuid4().hex[:10]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        with running_service(make_settings(tmp_path, database_url=url, worker="external")) as s:
            yield s
    finally:
        cluster = _cluster()
        assert cluster is not None
        _ensure_running(cluster)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _ensure_running(cmd: list[str]) -> None:
    if subprocess.run([*cmd, "status"], capture_output=True).returncode != 0:
        subprocess.run([*cmd, "start"], check=True)


def _retrying(fn: Any) -> Any:
    """An API read that may meet a connection the restart closed: try again."""

    def call() -> Any:
        try:
            return fn()
        except Exception:
            return None

    return call


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restart_while_workers_run(pg_service: Service, tmp_path: Path) -> None:
    s, api = pg_service, pg_service.api
    cluster = _cluster()
    assert cluster is not None
    user = api.user("alice")
    tpl, ds = api.template(), api.data_store()
    disks = []
    for i in range(4):
        vm = api.vm(user["id"], tpl["id"], label=f"vm{i}")
        image = tmp_path / f"disk{i}.img"
        with open(image, "wb") as f:
            f.write(os.urandom(96 * MiB))
        disks.append(api.disk(vm["id"], ds["id"], image_path=str(image)))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")},
        "VMBACKUP_DATA_DIR": str(s.settings.data_dir),
        "VMBACKUP_DATABASE_URL": s.settings.database_url,
        "VMBACKUP_LOG_LEVEL": "warning",
    }
    log = open(tmp_path / "workers.log", "ab")  # noqa: SIM115 - closed at the end
    workers = [
        subprocess.Popen([sys.executable, "-m", "vmbackup.cli.main", "worker"], env=env, stdout=log, stderr=log)
        for _ in range(2)
    ]
    try:
        backups = [s.take_normal(d["id"]) for d in disks]
        wait_for(lambda: any(t["status"] == "running" for t in s.txs()), 120, "a running backup")
        subprocess.run([*cluster, "restart"], check=True)
        _ensure_running(cluster)

        def settled() -> list[dict[str, Any]] | None:
            txs = s.txs()
            return txs if all(t["status"] in ("complete", "failed") for t in txs) else None

        txs = wait_for(_retrying(settled), 300, "every transaction ends")
        assert len(txs) == len(backups)
        assert all(w.poll() is None for w in workers), "a worker died with the database"
        engine = Engine(LocalStorage(s.storage))
        outcome = {"complete": 0, "failed": 0}
        for b in backups:
            got = wait_for(_retrying(lambda b=b: s.backup(b["id"])), 60)
            tx = s.tx_of(b["id"])
            outcome[tx["status"]] += 1
            assert got["locked"] is False
            if got["built"]:
                assert engine.verify(got["identifier"]).ok
            else:
                assert tx["status"] == "failed"
        # Reconnected: a backup queued after the restart runs to completion.
        after = s.take_normal(disks[0]["id"])
        assert wait_for(_retrying(lambda: s.done(after["id"], timeout=5)), 300)["status"] == "complete"
        print(f"postgres restart: {outcome} of {len(backups)} running/queued backups, then 1 more complete")
    finally:
        _ensure_running(cluster)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(120)
            except subprocess.TimeoutExpired:
                w.kill()
        log.close()


def test_sqlite_busy_while_a_transaction_ends(tmp_path: Path, sqlite_template: Path) -> None:
    settings = make_settings(tmp_path)
    with running_service(settings) as s:
        api = s.api
        vm = api.vm(api.user("alice")["id"], api.template()["id"])
        image = write_image(tmp_path / "disk.img", 6 * MiB, seed=2)
        disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
        backup = s.take_normal(disk["id"])
        # Another writer holds the database (BEGIN EXCLUSIVE on its own connection) while the worker claims, beats
        # and records this transaction: its writes wait for the lock (busy timeout) instead of failing.
        blocker = make_engine(settings.database_url)
        conn = blocker.raw_connection()
        try:
            conn.cursor().execute("BEGIN EXCLUSIVE")
            threading.Event().wait(2.0)  # how long the lock is held; the outcome does not depend on it
        finally:
            conn.rollback()
            conn.close()
            blocker.dispose()
        tx = s.done(backup["id"])
        assert tx["status"] == "complete", tx["log_output"]
        assert Engine(LocalStorage(s.storage)).verify(s.backup(backup["id"])["identifier"]).ok
