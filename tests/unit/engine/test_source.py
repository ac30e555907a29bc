"""Disk image sources: only regular files and block devices are read, and opening one never blocks."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vmbackup.engine import Engine
from vmbackup.engine.source import open_source
from vmbackup.errors import SourceMissing
from vmbackup.storage import MemoryStorage


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: an open that blocks (a FIFO without a writer) is interrupted by SIGALRM."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "disk.fifo"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_blocking(fifo: Path) -> None:
    with deadline(5), pytest.raises(SourceMissing, match=f"disk image {fifo} is a FIFO: neither a regular file"):
        open_source(str(fifo))


def test_a_take_of_a_fifo_fails_at_once_and_stores_nothing(fifo: Path, tmp_path: Path) -> None:
    storage = MemoryStorage()
    eng = Engine(storage)
    (tmp_path / "ok.img").write_bytes(b"x" * 5000)
    with deadline(5):
        with pytest.raises(SourceMissing, match="is a FIFO"):
            eng.take_normal("n1", str(fifo))
        with pytest.raises(SourceMissing, match="is a FIFO"):
            eng.take_incremental("i1", {"vda": str(tmp_path / "ok.img"), "vdb": str(fifo)})
    assert list(storage.list()) == []


def test_a_symlink_to_a_fifo_is_refused(fifo: Path, tmp_path: Path) -> None:
    os.symlink(fifo, tmp_path / "link.img")
    with deadline(5), pytest.raises(SourceMissing, match="is a FIFO"):
        open_source(str(tmp_path / "link.img"), direct=True)


@pytest.mark.parametrize("kind", ["directory", "character device", "socket"])
def test_other_non_images_are_refused(tmp_path: Path, kind: str) -> None:
    if kind == "directory":
        path = str(tmp_path)
    elif kind == "character device":
        path = "/dev/null"
    else:
        path = str(tmp_path / "s.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
    with deadline(5), pytest.raises(SourceMissing, match=f"is a {kind}|cannot be read: No such device"):
        open_source(path)


def test_a_nul_byte_in_the_path_is_a_missing_source() -> None:
    with pytest.raises(SourceMissing, match="not a valid path"):
        open_source("/images/a\0b.img")


def test_regular_files_are_read_blocking(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(b"abc" * 1000)
    src = open_source(str(tmp_path / "a.img"), direct=True)
    try:
        assert os.get_blocking(src.fd) and src.size == 3000
        assert src.direct_fd is None or os.get_blocking(src.direct_fd)
    finally:
        src.close()
