"""Incremental restores of disks that list the same chunk many times."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import flip_byte

from vmbackup.engine import Engine
from vmbackup.engine.chunkstore import chunk_id, chunk_key
from vmbackup.errors import BackupDamaged
from vmbackup.storage import MemoryStorage

T = TypeVar("T")
CS = 64 * 1024


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def read_once(self, key: str, use: Callable[[memoryview], T], offset: int = 0, length: int | None = None) -> T:
        self.reads[key] += 1
        return super().read_once(key, use, offset, length)


def _image(path: Path) -> tuple[bytes, bytes]:
    """A block repeated at six places among distinct blocks and a hole; returns (image, repeated block)."""
    block = os.urandom(CS)
    layout = [block, os.urandom(CS), block, block, bytes(CS), os.urandom(CS), block, os.urandom(CS), block, block]
    data = b"".join(layout) + os.urandom(1000)
    path.write_bytes(data)
    return data, block


def test_a_repeated_chunk_is_loaded_once_and_restored_everywhere(tmp_path: Path) -> None:
    storage = CountingStorage()
    engine = Engine(storage, chunk_size=CS, workers=2)
    data, block = _image(tmp_path / "disk.img")
    engine.take_incremental("b1", {"disk0": str(tmp_path / "disk.img")})
    storage.reads.clear()
    engine.restore("b1", str(tmp_path / "out.img"))
    assert (tmp_path / "out.img").read_bytes() == data
    assert storage.reads[chunk_key(chunk_id(block))] == 1
    assert set(storage.reads.values()) == {1}


def test_a_corrupt_repeated_chunk_fails_the_restore(tmp_path: Path) -> None:
    storage = CountingStorage()
    engine = Engine(storage, chunk_size=CS, workers=2)
    _, block = _image(tmp_path / "disk.img")
    engine.take_incremental("b1", {"disk0": str(tmp_path / "disk.img")})
    key = chunk_key(chunk_id(block))
    storage.put(key, flip_byte(storage.get(key), 20))
    with pytest.raises(BackupDamaged, match=f"chunk {chunk_id(block)} of disk disk0 is corrupt"):
        engine.restore("b1", str(tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()
