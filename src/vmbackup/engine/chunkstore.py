"""The content-addressed chunk store shared by every incremental backup in a storage.

A chunk is stored once under `chunks/<id[:2]>/<id>`, where id = BLAKE3 (hex) of its uncompressed bytes.  The
object is one zstd frame with content size and content checksum.  BLAKE3 rather than sha256: over twice as fast
per core (BENCHMARKS.md, "Design measurements"), and both release the GIL.

Objects are immutable and written atomically, so "exists" means "complete".  Every read re-hashes what the
object decompresses to: zstd's checksum only says the frame is intact, and a valid frame of another chunk (a
swapped or misnamed file) is caught by nothing else.

A take adds its chunks through a `ChunkWriter`, over a storage batch: chunks become visible (data durable)
every `FLUSH_EVERY` new chunks, and the writer's exit makes every name durable, before the manifest is
written.  One fsync barrier per flush instead of two fsyncs per chunk is what lets small chunks go fast.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import blake3
import zstandard

from vmbackup.storage.base import Batch, ObjectMissing, Storage

ZSTD_LEVEL = 3
PREFIX = "chunks/"
QUARANTINE = "quarantine/"
ID_BYTES = 32
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # manifest.MAX_CHUNK_SIZE: no chunk is larger
FLUSH_EVERY = 256  # new chunks per durability barrier; LocalStorage keeps that many files open until then


class ChunkMissing(Exception):
    pass


class ChunkCorrupt(Exception):
    """The object is there but does not hold the chunk: the message says how."""


class ChunkUnreadable(ChunkCorrupt):
    """The object cannot be read at all (an I/O or permission error): damage to report, not to move aside."""


def chunk_key(chunk_id: str) -> str:
    return f"{PREFIX}{chunk_id[:2]}/{chunk_id}"


def chunk_id(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


class ChunkStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._local = threading.local()  # zstd contexts are not thread-safe: one per worker thread
        self._inflight: set[str] = set()
        self._mutex = threading.Lock()

    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        return c

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    @contextmanager
    def writer(self) -> Iterator[ChunkWriter]:
        """Add chunks for one take; on normal exit every chunk added is durable (data and name)."""
        with self.storage.batch() as batch:
            yield ChunkWriter(self, batch)

    def add(self, data: bytes | bytearray | memoryview) -> tuple[str, int]:
        """Hash and store a chunk unless present.  Returns (id, stored bytes); 0 bytes means reused.
        Safe to call from many threads; a chunk being stored by another thread counts as reused (the caller
        waits for every add of a backup before writing its manifest)."""
        cid = chunk_id(data)
        key = chunk_key(cid)
        with self._mutex:
            if cid in self._inflight:
                return cid, 0
            self._inflight.add(cid)
        try:
            if self.storage.exists(key):
                return cid, 0
            packed = self._cctx().compress(data)
            self.storage.put(key, packed)
            return cid, len(packed)
        finally:
            with self._mutex:
                self._inflight.discard(cid)

    def load(self, cid: str, length: int | None = None) -> bytes:
        """The chunk's bytes, checked against its id (and `length`, when known); raises ChunkMissing or
        ChunkCorrupt."""
        return self.load_sized(cid, length)[0]

    def load_sized(self, cid: str, length: int | None = None) -> tuple[bytes, int]:
        """(bytes, stored size) of a checked chunk.  The stored object is read into the storage's buffer and
        decompressed from there (`Storage.read_once`: no copy of the compressed bytes)."""

        def check(packed: memoryview) -> tuple[bytes, int]:
            data = self._decompress(packed, length)
            if chunk_id(data) != cid:
                raise ChunkCorrupt("fails its BLAKE3 check")
            return data, len(packed)

        try:
            return self.storage.read_once(chunk_key(cid), check)
        except ObjectMissing:
            raise ChunkMissing(cid) from None
        except OSError as exc:
            raise ChunkUnreadable(f"cannot be read ({exc.strerror or exc})") from None

    def _decompress(self, packed: bytes | memoryview, length: int | None) -> bytes:
        """zstd allocates the size a frame declares before checking anything, so that size is checked first:
        `length` when the caller knows it, else at most the largest chunk a manifest may list."""
        try:
            declared = zstandard.get_frame_parameters(packed).content_size
            if length is not None and declared != length:
                raise ChunkCorrupt(f"holds {declared} bytes, {length} expected")
            if declared > MAX_CHUNK_BYTES:  # also zstandard.CONTENTSIZE_UNKNOWN: every chunk records its size
                raise ChunkCorrupt(f"declares {declared} bytes, more than any chunk holds")
            data: bytes = self._dctx().decompress(packed)
            return data
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(f"does not decompress ({exc})") from None

    def exists(self, cid: str) -> bool:
        return self.storage.exists(chunk_key(cid))

    def ids(self) -> Iterator[str]:
        for key in self.storage.list(PREFIX):
            yield key.rpartition("/")[2]

    def delete(self, cid: str) -> int:
        try:
            return self.storage.delete(chunk_key(cid))
        except ObjectMissing:
            return 0

    def quarantine(self, cid: str) -> bool:
        """Move a damaged chunk out of the store (kept under `quarantine/` for inspection), so the next take
        that meets its data stores it afresh; every backup listing the id is whole again from then on."""
        try:
            packed = self.storage.get(chunk_key(cid))
        except ObjectMissing:
            return False
        if self.check_packed(cid, packed):
            return False  # intact after all (repaired meanwhile): leave it
        self.storage.put(f"{QUARANTINE}{cid}", packed)
        self.delete(cid)
        return True

    def check_packed(self, cid: str, packed: bytes) -> bool:
        try:
            return chunk_id(self._decompress(packed, None)) == cid
        except ChunkCorrupt:
            return False


class ChunkWriter:
    """Stores the chunks of one take (thread-safe).  A chunk another thread of this take is storing, or that
    waits for its flush, counts as reused: it is visible before the take ends."""

    def __init__(self, store: ChunkStore, batch: Batch) -> None:
        self._store, self._batch = store, batch
        self._mutex = threading.Lock()
        self._claimed: set[bytes] = set()  # ids stored by this take and not yet flushed: bounded by FLUSH_EVERY
        self._unflushed = 0

    def store(self, digest: bytes, data: bytes | bytearray | memoryview) -> int:
        """Store the chunk whose BLAKE3 is `digest` unless present; returns the bytes stored (0 = reused)."""
        with self._mutex:
            if digest in self._claimed:
                return 0
            self._claimed.add(digest)
        key = chunk_key(digest.hex())
        if self._store.storage.exists(key):
            with self._mutex:
                self._claimed.discard(digest)
            self._batch.keep(key)
            return 0
        packed = self._store._cctx().compress(data)
        self._batch.put(key, packed)
        with self._mutex:
            self._unflushed += 1
            flush = self._unflushed >= FLUSH_EVERY
            if flush:
                self._unflushed = 0
        if flush:
            self.flush()
        return len(packed)

    def flush(self) -> None:
        keys = self._batch.flush()
        with self._mutex:
            for key in keys:
                self._claimed.discard(bytes.fromhex(key.rpartition("/")[2]))
