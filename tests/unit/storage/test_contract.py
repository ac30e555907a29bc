"""One contract, every backend: what the engine relies on from a Storage."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from vmbackup.errors import StorageFull
from vmbackup.storage import LocalStorage, MemoryStorage, ObjectMissing, Storage


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    yield LocalStorage(tmp_path / "store") if request.param == "local" else MemoryStorage()


def test_put_get_round_trip_and_range(storage: Storage) -> None:
    storage.put("a/b/c", b"0123456789")
    assert storage.get("a/b/c") == b"0123456789"
    assert storage.get("a/b/c", 2, 3) == b"234"
    assert storage.get("a/b/c", 8) == b"89"
    with storage.open_reader("a/b/c") as f:
        f.seek(5)
        assert f.read(2) == b"56"
    assert storage.size("a/b/c") == 10 and storage.exists("a/b/c")


def test_missing_key_raises_object_missing(storage: Storage) -> None:
    assert not storage.exists("nope")
    for call in (lambda: storage.get("nope"), lambda: storage.size("nope"), lambda: storage.delete("nope")):
        with pytest.raises(ObjectMissing):
            call()


def test_put_replaces_and_delete_returns_size(storage: Storage) -> None:
    storage.put("k", b"old")
    storage.put("k", b"newer")
    assert storage.get("k") == b"newer"
    assert storage.delete("k") == 5
    assert not storage.exists("k")


def test_writer_streams_and_publishes_only_on_success(storage: Storage) -> None:
    with storage.open_writer("big") as w:
        for _ in range(10):
            w.write(b"x" * 1000)
        assert not storage.exists("big")
    assert storage.size("big") == 10_000
    with pytest.raises(RuntimeError), storage.open_writer("failed") as w:
        w.write(b"partial")
        raise RuntimeError("boom")
    assert not storage.exists("failed")
    assert sorted(storage.list()) == ["big"]


def test_list_by_prefix_excludes_nothing_else(storage: Storage) -> None:
    for key in ("chunks/ab/ab1", "chunks/ab/ab2", "chunks/cd/cd1", "manifests/x.json", "chunksfile"):
        storage.put(key, b"1")
    assert sorted(storage.list("chunks/")) == ["chunks/ab/ab1", "chunks/ab/ab2", "chunks/cd/cd1"]
    assert sorted(storage.list("chunks/ab/")) == ["chunks/ab/ab1", "chunks/ab/ab2"]
    assert sorted(storage.list("chunks")) == ["chunks/ab/ab1", "chunks/ab/ab2", "chunks/cd/cd1", "chunksfile"]
    assert list(storage.list("nothing/")) == []


@pytest.mark.parametrize(
    "key", ["", "../x", "a/../../x", "/abs", ".tmp-x", "a//b", "a/.hidden", ".", "a/.", "a/", "a\n"]
)
def test_keys_that_could_escape_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put(key, b"1")


def test_exclusive_lock_excludes_shared_and_exclusive(storage: Storage) -> None:
    with storage.lock(exclusive=False) as a, storage.lock(exclusive=False, blocking=False) as b:
        assert a and b
        with storage.lock(exclusive=True, blocking=False) as c:
            assert c is False
    with storage.lock(exclusive=True) as held:
        assert held
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(_try_shared(storage)))
        t.start()
        t.join()
        assert seen == [False]
    assert _try_shared(storage)


def _try_shared(storage: Storage) -> bool:
    with storage.lock(exclusive=False, blocking=False) as held:
        return held


def test_local_enospc_maps_to_storage_full_and_leaves_no_temp(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch("vmbackup.storage.local.os.fsync", fsync), pytest.raises(StorageFull, match="k"):
        storage.put("k", b"data")
    assert not storage.exists("k")
    assert [p.name for p in tmp_path.rglob("*") if p.name != ".lock"] == []


def test_memory_capacity_raises_storage_full_without_leftovers() -> None:
    storage = MemoryStorage(capacity=10)
    storage.put("a", b"12345")
    with pytest.raises(StorageFull):
        storage.put("b", b"123456")
    assert sorted(storage.list()) == ["a"] and storage.open_writers == 0


def test_local_cleanup_temp_removes_leftovers(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("d/k", b"1")
    (tmp_path / "d" / ".tmp-k-dead").write_bytes(b"partial")
    assert list(storage.list()) == ["d/k"]
    assert storage.cleanup_temp() == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k"]


def test_batch_objects_appear_whole_after_flush_and_exit(storage: Storage) -> None:
    with storage.batch() as b:
        b.put("c/aa/1", b"one")
        b.put("c/bb/2", memoryview(b"two"))
        assert sorted(b.flush()) == ["c/aa/1", "c/bb/2"]
        assert storage.get("c/aa/1") == b"one"
        b.put("c/aa/3", b"three")
        b.keep("c/aa/1")
    assert storage.get("c/aa/3") == b"three" and storage.get("c/bb/2") == b"two"
    assert sorted(storage.list()) == ["c/aa/1", "c/aa/3", "c/bb/2"]


def test_failed_batch_leaves_no_partial_object_or_temporary(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(RuntimeError), storage.batch() as b:
        b.put("c/aa/kept", b"flushed")
        b.flush()
        b.put("c/aa/dropped", b"not flushed")
        raise RuntimeError("take failed")
    assert list(storage.list()) == ["c/aa/kept"]
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []


def test_local_batch_enospc_maps_to_storage_full_and_leaves_no_temp(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch("vmbackup.storage.local.os.fsync", fsync), pytest.raises(StorageFull), storage.batch() as b:
        b.put("c/aa/k", b"data")
        b.flush()
    assert list(storage.list()) == []
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []


@pytest.mark.parametrize(("offset", "length"), [(0, None), (0, 10), (1, 5000), (4095, 4098), (8000, None), (9999, 50)])
def test_get_once_reads_like_get(storage: Storage, offset: int, length: int | None) -> None:
    """get_once (O_DIRECT on LocalStorage) returns exactly what get returns, unaligned ranges included."""
    import os

    data = os.urandom(10_000)
    storage.put("a/b", data)
    assert storage.get_once("a/b", offset, length) == storage.get("a/b", offset, length)
    with pytest.raises(ObjectMissing):
        storage.get_once("a/c")


@pytest.mark.parametrize("size", [0, 10, 4096, 262_143, 262_144, 300_001])
def test_read_once_lends_the_whole_object(storage: Storage, size: int) -> None:
    """read_once hands `use` exactly the object (LocalStorage: a direct read into a reused buffer, one read up
    to 256 KiB, a second for larger objects) and returns what `use` returns."""
    import os

    data = os.urandom(size)
    storage.put("a/b", data)
    assert storage.read_once("a/b", bytes) == data
    assert storage.read_once("a/b", len) == size
    with pytest.raises(ObjectMissing):
        storage.read_once("a/c", bytes)
