"""Restore targets: only regular files and block devices (or a new path) are written, and opening one never
blocks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_source import deadline

from vmbackup.engine import Engine, target
from vmbackup.engine.target import open_target
from vmbackup.errors import TargetInvalid
from vmbackup.storage import MemoryStorage


@pytest.fixture
def backups(tmp_path: Path) -> Engine:
    eng = Engine(MemoryStorage(), chunk_size=4096)
    (tmp_path / "a.img").write_bytes(os.urandom(10_000))
    eng.take_normal("n1", str(tmp_path / "a.img"))
    eng.take_incremental("i1", {"vda": str(tmp_path / "a.img")})
    return eng


@pytest.mark.parametrize("backup", ["n1", "i1"])
def test_restore_to_a_fifo_is_refused_without_blocking(backups: Engine, tmp_path: Path, backup: str) -> None:
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)
    with deadline(5), pytest.raises(TargetInvalid, match=f"restore target {fifo} is a FIFO: neither"):
        backups.restore(backup, str(fifo))


@pytest.mark.parametrize("reader", [False, True])
def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: bool
) -> None:
    """The name is looked at, then opened: a FIFO put there in between must not hang the open.  Without a
    reader a non-blocking open for writing fails at once; with one it succeeds, and the fstat of what was
    opened refuses it."""
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 8192)
    real_in_place = target._in_place
    opened, done = threading.Event(), threading.Event()

    def hold_the_other_end() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        opened.set()
        done.wait(10)
        os.close(fd)

    def swap_then_open(p: Path, size: int, *, force_overwrite: bool):  # type: ignore[no-untyped-def]
        p.unlink()
        os.mkfifo(p)
        if reader:
            threading.Thread(target=hold_the_other_end, daemon=True).start()
            opened.wait(5)
        return real_in_place(p, size, force_overwrite=force_overwrite)

    monkeypatch.setattr(target, "_in_place", swap_then_open)
    expected = "is a FIFO: neither" if reader else "cannot be opened for writing: No such device"
    try:
        with deadline(5), pytest.raises(TargetInvalid, match=expected), open_target(str(path), 8192):
            pass
    finally:
        done.set()


def test_a_nul_byte_in_the_target_is_refused(backups: Engine) -> None:
    with pytest.raises(TargetInvalid, match="not a valid path"):
        backups.restore("n1", "/tmp/a\0b.img")
