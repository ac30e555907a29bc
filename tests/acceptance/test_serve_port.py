"""A second `vmbackup serve` on a busy port stops before it touches the database (api/serving.py, cli/main.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from tests.acceptance.serve_process import free_port, serve_command, serve_env
from vmbackup.db.models import Transaction, User
from vmbackup.db.session import make_engine, make_session_factory


def test_serve_on_a_busy_port_exits_at_once_and_runs_or_recovers_nothing(tmp_path: Path, database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions() as db:
        pending = Transaction(action="take_backup", parent_type="Disk", parent_id=1, status="pending")
        # Running under a worker that is gone: the start-up recovery of a worker would fail it.
        orphan = Transaction(action="take_backup", parent_type="Disk", parent_id=2, status="running", worker="gone:1")
        db.add_all([pending, orphan])
        db.commit()
        ids = pending.id, orphan.id
    port = free_port()
    with socket.socket() as holder:  # what the first serve holds
        holder.bind(("127.0.0.1", port))
        holder.listen()
        env = serve_env(tmp_path, port, {"VMBACKUP_DATABASE_URL": database_url})
        started = time.monotonic()
        done = subprocess.run(serve_command(), env=env, capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
    try:
        with sessions() as db:
            assert db.get(Transaction, ids[0]).status == "pending"  # type: ignore[union-attr]
            assert db.get(Transaction, ids[1]).status == "running"  # type: ignore[union-attr]
            assert db.scalar(select(func.count()).select_from(User)) == 0, "the first-start admin was created"
    finally:
        engine.dispose()
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert elapsed < 10, "it gave up only after starting the service"
