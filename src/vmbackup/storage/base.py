"""The storage contract: a flat map of keys to immutable byte objects.

Everything the engine keeps (archives, chunks, manifests) goes through this small interface, so a new backend
(S3 later) only has to implement these methods and pass `tests/unit/storage/test_contract.py`.

Keys are relative, '/'-separated paths of `[A-Za-z0-9._-]` components that never start with a dot: names
starting with a dot are reserved for a backend's temporary objects and its lock.

Errors: a missing key raises `ObjectMissing`; running out of space raises `vmbackup.errors.StorageFull`, and
a failed write never leaves a partial object (nor, after `cleanup_temp`, a temporary one) behind.

Durability, what the engine's crash safety is built on (and all a backend must give; `tests/failure/
powerloss.py` is a backend that gives exactly this and loses everything else at a simulated power cut):

- `open_writer`/`put`: when they return, the object (data and name) survives a power cut.
- `batch`: a `put` survives nothing until `flush`; after `flush` the objects are visible and their data is
  durable, but their names may still be lost; when the batch ends, the names of every object it put or
  `keep`-ed are durable.  An object never appears without its data.
- `delete`: the object is gone for readers at once, but a power cut may bring it back, unless `durable=True`
  (then it stays gone once `delete` returns).  Only durable removals are ordered: a later removal (or any
  other change) may reach the disk before an earlier non-durable one.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO, Protocol, TypeVar

# A key: components of [A-Za-z0-9._-] joined by "/", none empty or starting with a dot (so no "." or "..").
# One match per key: chunk reads check ten thousand keys a second.
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*\Z")
T = TypeVar("T")


class ObjectMissing(LookupError):
    """No object is stored under this key."""


class Writer(Protocol):
    """What `Storage.open_writer` yields: a write-only byte sink."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class Batch(Protocol):
    """What `Storage.batch` yields: many small objects stored with one durability barrier."""

    def put(self, key: str, data: bytes | bytearray | memoryview, /) -> None:
        """Store `data` under `key`; safe to call from several threads.  The object appears (whole) no later
        than the next `flush`."""

    def keep(self, key: str, /) -> None:
        """The caller relies on the existing object `key`: make sure its name is durable when the batch ends
        (its writer, another process maybe, may not have made it durable yet)."""

    def flush(self) -> list[str]:
        """Make every object put so far visible, with its data durable; returns their keys.  Their names are
        durable only once the batch ends."""


class _ImmediateBatch:
    """The default batch: every put is an ordinary, durable `Storage.put`."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._done: list[str] = []

    def put(self, key: str, data: bytes | bytearray | memoryview, /) -> None:
        self._storage.put(key, bytes(data))
        self._done.append(key)

    def keep(self, key: str, /) -> None:
        pass

    def flush(self) -> list[str]:
        done, self._done = self._done, []
        return done


def check_key(key: str) -> str:
    """Refuse keys that could escape the store or collide with temporary names."""
    if not _KEY.match(key):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(ABC):
    """Key -> bytes.  Objects are written once, atomically: readers see the whole object or nothing."""

    @abstractmethod
    def open_writer(self, key: str) -> AbstractContextManager[Writer]:
        """Stream a new object.  It becomes visible (durably) only when the block exits without error;
        on error nothing is left under `key` and the temporary data is removed.  Replaces an existing key."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically."""
        with self.open_writer(key) as w:
            w.write(data)

    def batch(self) -> AbstractContextManager[Batch]:
        """Many small objects (chunks) with one durability barrier instead of one per object.  Each object
        still appears atomically, and only with its data durable; the names are durable after the block's
        normal exit (which flushes).  On error, objects not yet flushed may be dropped (never left partial).
        Backends without a cheaper way just put each object (this default)."""
        return _default_batch(self)

    @abstractmethod
    def open_reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A readable, seekable file object over the object."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes, or the range [offset, offset+length)."""
        with self.open_reader(key) as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def get_once(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """`get` for data read once and not again soon (restores, verifies): a backend may bypass its cache."""
        return self.get(key, offset, length)

    def read_once(self, key: str, use: Callable[[memoryview], T], offset: int = 0, length: int | None = None) -> T:
        """`use(the bytes get_once(key, offset, length) would return)`; returns what `use` returns.  The view is
        valid only during the call (a backend may lend a reused buffer instead of copying into a new bytes
        object), and `use` must not read from the storage itself.  Restores and verifies read chunks and
        archive frames this way."""
        return use(memoryview(self.get_once(key, offset, length)))

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """Stored size in bytes; raises ObjectMissing."""

    @abstractmethod
    def delete(self, key: str, *, durable: bool = False) -> int:
        """Remove the object and return the bytes freed; raises ObjectMissing.  `durable`: the removal
        survives a power cut once this returns (a meta or manifest goes before the data it names)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a plain string prefix), in no particular order, temporaries excluded."""

    @abstractmethod
    def cleanup_temp(self) -> int:
        """Remove temporary objects left by writers that died; returns how many.  Only safe while no writer
        is active (the engine calls it under the exclusive lock)."""

    @abstractmethod
    def lock(self, *, exclusive: bool, blocking: bool = True) -> AbstractContextManager[bool]:
        """A store-wide reader/writer lock shared by every process using the store.  Yields True when held;
        with blocking=False yields False instead of waiting.  Backups hold it shared, garbage collection and
        crash recovery exclusive (see docs/formats.md)."""


@contextmanager
def _default_batch(storage: Storage) -> Iterator[Batch]:
    yield _ImmediateBatch(storage)
