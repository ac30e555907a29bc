"""In-memory storage: the fake used by unit tests, with the same contract as LocalStorage.

`capacity` (bytes) makes it fail like a full disk: a write that would exceed it raises StorageFull and
leaves nothing behind, which lets tests exercise disk-full handling without filling a real disk.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from vmbackup.errors import StorageFull
from vmbackup.storage.base import ObjectMissing, Storage, Writer, check_key


class _Buffer:
    def __init__(self, store: MemoryStorage, key: str) -> None:
        self._store, self._key = store, key
        self._parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        n = len(data)
        self._store._reserve(self._key, n)
        self._parts.append(bytes(data))
        self.written += n
        return n


class MemoryStorage(Storage):
    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.objects: dict[str, bytes] = {}
        self._pending = 0  # bytes held by open writers, counted against capacity
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self.open_writers = 0

    def _used(self) -> int:
        return sum(map(len, self.objects.values())) + self._pending

    def _reserve(self, key: str, n: int) -> None:
        with self._mutex:
            if self.capacity is not None and self._used() + n > self.capacity:
                raise StorageFull(f"storage full while writing {key}: no space left on device")
            self._pending += n

    @contextmanager
    def open_writer(self, key: str) -> Iterator[Writer]:
        check_key(key)
        buf = _Buffer(self, key)
        with self._mutex:
            self.open_writers += 1
        try:
            yield buf
            data = b"".join(buf._parts)
            with self._mutex:
                self.objects[key] = data
        finally:
            with self._mutex:
                self._pending -= buf.written
                self.open_writers -= 1

    @contextmanager
    def open_reader(self, key: str) -> Iterator[BinaryIO]:
        try:
            data = self.objects[check_key(key)]
        except KeyError:
            raise ObjectMissing(key) from None
        yield io.BytesIO(data)

    def exists(self, key: str) -> bool:
        return check_key(key) in self.objects

    def size(self, key: str) -> int:
        try:
            return len(self.objects[check_key(key)])
        except KeyError:
            raise ObjectMissing(key) from None

    def delete(self, key: str, *, durable: bool = False) -> int:
        with self._mutex:
            try:
                return len(self.objects.pop(check_key(key)))
            except KeyError:
                raise ObjectMissing(key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._mutex:
            keys = [k for k in self.objects if k.startswith(prefix)]
        yield from keys

    def cleanup_temp(self) -> int:
        return 0  # a writer's data lives only in its buffer: nothing can be left over

    @contextmanager
    def lock(self, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        def free() -> bool:
            return not self._writer and (not exclusive or self._readers == 0)

        with self._cond:
            got = free() or (blocking and self._cond.wait_for(free))
            if got:
                if exclusive:
                    self._writer = True
                else:
                    self._readers += 1
        if not got:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1
                self._cond.notify_all()
