"""`vmbackup backups ...` and the database commands as a user runs them: bad ids and bad databases are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.serve_process import free_port
from vmbackup.errors import DatabaseUnavailable, NotFound


def vmbackup(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    environ |= {"VMBACKUP_DATA_DIR": str(data_dir), "VMBACKUP_LISTEN": "127.0.0.1:1", **env}
    return subprocess.run(
        [sys.executable, "-m", "vmbackup.cli.main", *args], env=environ, capture_output=True, text=True, timeout=120
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vmbackup:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert vmbackup("migrate", data_dir=data).returncode == 0
    return data


@pytest.mark.parametrize("backup_id", ["99999999999999999999", "2147483648", "0", "-5", "12345"])
def test_verify_of_an_id_that_names_no_backup_is_not_found(migrated: Path, backup_id: str) -> None:
    proc = vmbackup("backups", "verify", "--", backup_id, data_dir=migrated)
    assert proc.returncode == NotFound.exit_code, proc.stderr
    assert _one_line(proc) == f"vmbackup: backup {backup_id} not found"


@pytest.mark.parametrize("args", [("backups", "list"), ("backups", "verify", "1")])
def test_a_missing_database_is_reported_not_created(tmp_path: Path, args: tuple[str, ...]) -> None:
    data = tmp_path / "typo"
    proc = vmbackup(*args, data_dir=data)
    assert proc.returncode == DatabaseUnavailable.exit_code
    assert "no database at" in _one_line(proc)
    assert not data.exists()


def test_an_empty_database_file_is_not_a_vmbackup_database(tmp_path: Path) -> None:
    (tmp_path / "vmbackup.db").write_bytes(b"")
    proc = vmbackup("backups", "list", data_dir=tmp_path)
    assert proc.returncode == DatabaseUnavailable.exit_code
    assert "not a vmbackup database" in _one_line(proc)


@pytest.mark.parametrize("args", [("backups", "list"), ("backups", "verify", "1"), ("migrate",), ("serve",)])
def test_a_corrupt_database_is_one_line_and_a_non_zero_exit(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "vmbackup.db").write_bytes(os.urandom(8192))
    proc = vmbackup(*args, data_dir=tmp_path, VMBACKUP_LISTEN=f"127.0.0.1:{free_port()}")
    assert proc.returncode == DatabaseUnavailable.exit_code, proc.stderr
    assert _one_line(proc) == "vmbackup: the database cannot be used: file is not a database"


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    proc = vmbackup(
        "backups", "list", data_dir=tmp_path, VMBACKUP_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    assert proc.returncode == DatabaseUnavailable.exit_code
    assert "Connection refused" in _one_line(proc) or "connection" in _one_line(proc).lower()
