"""A real `vmbackup serve` process for tests: started with only the VMBACKUP_* variables a test gives."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ADMIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(tmp_path: Path, port: int, extra: Mapping[str, str] = {}) -> dict[str, str]:  # noqa: B006
    """The caller's environment without its VMBACKUP_* variables, plus a private data dir and cheap argon2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env |= {
        "VMBACKUP_DATA_DIR": str(tmp_path / "data"),
        "VMBACKUP_LISTEN": f"127.0.0.1:{port}",
        "VMBACKUP_ADMIN_PASSWORD": ADMIN[1],
        "VMBACKUP_PASSWORD_MEMORY_KIB": "19456",
        "VMBACKUP_PASSWORD_TIME_COST": "2",
    }
    return env | dict(extra)


def serve_command() -> list[str]:
    return [sys.executable, "-m", "vmbackup.cli.main", "serve"]


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(
    tmp_path: Path,
    extra: Mapping[str, str] = {},  # noqa: B006
    timeout: float = 30,
    open_files: int | None = None,
) -> Iterator[Served]:
    """Start `vmbackup serve`, wait until it answers, and stop it at the end. ``open_files``: its RLIMIT_NOFILE."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"

    def limit() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            serve_command(), env=serve_env(tmp_path, port, extra), stdout=out, stderr=out, preexec_fn=limit
        )
    served = Served(proc, f"http://127.0.0.1:{port}", port, log)
    try:
        deadline = time.monotonic() + timeout
        while "Application startup complete" not in served.output():
            assert proc.poll() is None, served.output()
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.05)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
