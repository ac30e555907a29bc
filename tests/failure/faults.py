"""Kill a real `vmbackup worker` at a chosen point: a test-only fault hook that lives outside the product.

`Zygote` starts this file as a child process (``python tests/failure/faults.py``) that imports vmbackup once and
then, for each request, forks a worker: the forked child patches one storage/engine/service function so that its
Nth call (or the Nth byte written to an archive) sends the process SIGKILL, and runs ``vmbackup worker`` exactly as
the CLI does. Forking from a process that has imported everything but opened no database and started no thread
is safe, and makes a kill point cost milliseconds of start-up instead of a second of imports.

Nothing here is reachable from the product: no setting, no environment variable that config.py would read.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Fault:
    """Kill the worker at the ``at``-th call of ``site`` (``before`` or ``after`` the call), counting only calls whose
    storage key contains ``key`` when given; for ``archive_bytes``, once ``at`` bytes of an archive are written."""

    site: str
    at: int
    when: str = "before"
    key: str = ""

    def __str__(self) -> str:
        return f"{self.site}{f'[{self.key}]' if self.key else ''}#{self.at}/{self.when}"


# --------------------------------------------------------------------------------------------- in the forked child


def _install(fault: Fault, mark: str) -> None:
    from vmbackup.engine import facade, target
    from vmbackup.services import tasks
    from vmbackup.storage import local

    lock = threading.Lock()
    count = 0

    def die() -> None:
        Path(mark).write_text(str(fault))
        os.kill(os.getpid(), signal.SIGKILL)

    def hit(key: object = None) -> int:
        nonlocal count
        if fault.key and fault.key not in str(key):
            return 0
        with lock:
            count += 1
            return count

    def around(owner: Any, name: str, keyed: bool = False) -> None:
        orig = getattr(owner, name)

        def wrapper(*args: Any, **kw: Any) -> Any:
            n = hit(args[1] if keyed and len(args) > 1 else None)
            if n == fault.at and fault.when == "before":
                die()
            result = orig(*args, **kw)
            if n == fault.at and fault.when == "after":
                die()
            return result

        setattr(owner, name, wrapper)

    def around_writer() -> None:
        orig = local.LocalStorage.open_writer

        @contextmanager
        def open_writer(self: Any, key: str) -> Iterator[Any]:
            n = hit(key)
            if n == fault.at and fault.when == "before":
                die()
            with orig(self, key) as w:
                yield w
            if n == fault.at and fault.when == "after":
                die()

        local.LocalStorage.open_writer = open_writer  # type: ignore[method-assign]

    def archive_bytes() -> None:
        orig = local.LocalStorage.open_writer
        written = 0

        class Cut:
            def __init__(self, f: Any) -> None:
                self.f = f

            def write(self, data: Any) -> int:
                nonlocal written
                view = memoryview(data)
                if written + len(view) >= fault.at:
                    self.f.write(view[: fault.at - written])
                    self.f.flush()
                    die()
                written += len(view)
                return int(self.f.write(view))

        @contextmanager
        def open_writer(self: Any, key: str) -> Iterator[Any]:
            with orig(self, key) as w:
                yield Cut(w) if key.endswith(".tar.zst") else w

        local.LocalStorage.open_writer = open_writer  # type: ignore[method-assign]

    match fault.site:
        case "archive_bytes":
            archive_bytes()
        case "open_writer":
            around_writer()
        case "batch_put":
            around(local._LocalBatch, "put", keyed=True)
        case "batch_flush":
            around(local._LocalBatch, "flush")
        case "replace":
            orig_replace = os.replace

            class _Os:  # only the storage module's renames: `local.os` is replaced by a proxy
                def __getattr__(self, name: str) -> Any:
                    return getattr(os, name)

                def replace(self, a: Any, b: Any) -> None:
                    n = hit(b)
                    if n == fault.at and fault.when == "before":
                        die()
                    orig_replace(a, b)
                    if n == fault.at and fault.when == "after":
                        die()

            local.os = _Os()  # type: ignore[assignment]
        case "fsync_dir":
            around(local, "fsync_dir")
        case "mark_built":
            around(tasks, "_mark_built")
        case "target_write":  # restore: every write into the target image, whichever method
            orig_w, orig_wv = target.Target.write, target.Target.writev

            def tw(self: Any, *a: Any) -> Any:
                n = hit()
                if n == fault.at and fault.when == "before":
                    die()
                r = orig_w(self, *a)
                if n == fault.at and fault.when == "after":
                    die()
                return r

            def twv(self: Any, *a: Any) -> Any:
                n = hit()
                if n == fault.at and fault.when == "before":
                    die()
                r = orig_wv(self, *a)
                if n == fault.at and fault.when == "after":
                    die()
                return r

            target.Target.write, target.Target.writev = tw, twv  # type: ignore[method-assign]
        case "storage_delete":
            around(local.LocalStorage, "delete", keyed=True)
        case "engine_delete":
            around(facade.Engine, "delete")
        case "none":
            pass
        case other:
            raise ValueError(f"unknown fault site {other}")


def _child(request: dict[str, Any]) -> None:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(request["env"])
    fault = Fault(**request["fault"])
    _install(fault, request["mark"])
    from vmbackup.cli.main import cli

    try:
        cli.main(["worker"], prog_name="vmbackup", standalone_mode=False)
    finally:
        os._exit(0)


def _serve() -> None:
    """The zygote: one JSON request per line on stdin; answers the child's pid, then how it ended."""
    import vmbackup.cli.main  # noqa: F401  everything a worker imports, once
    import vmbackup.db.migrate  # noqa: F401
    import vmbackup.jobs.worker  # noqa: F401
    import vmbackup.services.tasks  # noqa: F401

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0}) + "\n")
        out.flush()


# ------------------------------------------------------------------------------------------------ in the test


class Zygote:
    """Test side: ``run(fault, env, done)`` forks a worker armed with ``fault`` and returns once it was killed (True)
    or ``done()`` reports the work finished without reaching the fault (the worker is then killed: False)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._line(120.0) == "ready"

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("fault zygote did not answer")
        return self.proc.stdout.readline().strip()

    def start(self, fault: Fault, env: dict[str, str]) -> tuple[int, Path]:
        mark = self.log_dir / "fault-fired"
        mark.unlink(missing_ok=True)
        request = {"fault": fault.__dict__, "env": env, "mark": str(mark), "log": str(self.log_dir / "worker.log")}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self._line(30.0))["pid"]), mark

    def run(self, fault: Fault, env: dict[str, str], done: Callable[[], bool], timeout: float = 120.0) -> bool:
        pid, mark = self.start(fault, env)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                ended = json.loads(self.proc.stdout.readline())
                assert ended["signal"] == signal.SIGKILL, f"worker under {fault} ended with {ended}"
                return mark.exists()
            if done() or time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                self._line(30.0)
                return mark.exists()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    _serve()
