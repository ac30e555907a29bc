"""Taking an incremental backup: cut each disk into fixed-size chunks and feed the chunk store.

Pipeline per disk: the calling thread walks the data extents (SEEK_DATA/SEEK_HOLE: holes are never read) and
hands runs of up to `_TASK_BYTES` of consecutive chunks to worker threads.  A worker reads its run with one
pread into its own reused buffer, then per chunk: BLAKE3 (an all-zero chunk is recognised by its hash, so
zeros cost no extra pass), look the id up, compress (zstd, one compressor per thread) and put new chunks into
the take's storage batch.  pread, BLAKE3 and zstd all release the GIL.  Per-chunk Python work is a handful
of calls; the calling thread only touches tasks.  Memory: one task buffer per worker plus at most
`4 x workers` queued task descriptions, whatever the image size, plus the packed id list (32 bytes per
chunk: 256 KiB per GiB of disk at 128 KiB chunks).

Fixed-size chunks because disk images change in place (a guest write never shifts the data after it), so
content-defined chunking buys nothing and costs CPU; 128 KiB meets the bytes-stored target with a margin
without doubling the manifests again (BENCHMARKS.md, "Design measurements").  The chunk size is recorded per
disk in the manifest, so `Engine(chunk_size=...)` can change it without breaking old backups.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import blake3

from vmbackup.engine.chunkstore import ID_BYTES, ChunkWriter
from vmbackup.engine.manifest import DiskEntry
from vmbackup.engine.source import Source, data_extents
from vmbackup.engine.types import Stats

CHUNK_SIZE = 128 * 1024
_TASK_BYTES = 4 * 1024 * 1024  # chunks read and processed per worker task


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class _Task:
    first: int  # chunk index
    count: int
    length: int  # bytes (the last chunk of a disk can be short)
    future: Future[list[tuple[bytes | None, int]]]


def _chunk_runs(src: Source, chunk_size: int) -> Iterator[tuple[int, int]]:
    """[first, end) chunk index ranges that may hold data, merged, in order; everything else is holes."""
    cur: tuple[int, int] | None = None
    for off, n in data_extents(src):
        a, b = off // chunk_size, -(-(off + n) // chunk_size)
        if cur is not None and a <= cur[1]:
            cur = (cur[0], max(cur[1], b))
        else:
            if cur is not None:
                yield cur
            cur = (a, b)
    if cur is not None:
        yield cur


class DiskChunker:
    """Chunks one disk into `entry`, updating `stats`; `advance(n)` reports n more logical bytes done."""

    def __init__(
        self, store: ChunkWriter, pool: ThreadPoolExecutor, workers: int, stats: Stats, advance: Callable[[int], None]
    ) -> None:
        self.store, self.pool, self.stats, self.advance = store, pool, stats, advance
        self.workers = workers
        self._local = threading.local()
        self._zero_ids: dict[int, bytes] = {}

    def _zero_id(self, length: int) -> bytes:
        zid = self._zero_ids.get(length)
        if zid is None:
            zid = self._zero_ids[length] = blake3.blake3(bytes(length)).digest()
        return zid

    def run(self, src: Source, chunk_size: int) -> DiskEntry:
        entry = DiskEntry(src.size, chunk_size)
        entry.ids = bytearray(ID_BYTES * entry.count)
        per_task = max(1, _TASK_BYTES // chunk_size)
        self._zero_id(chunk_size)
        if src.size % chunk_size:
            self._zero_id(src.size % chunk_size)
        inflight: deque[_Task] = deque()
        limit = 4 * self.workers
        done = 0  # chunks before this index are dealt with or in flight

        def span(a: int, b: int) -> int:
            return min(b * chunk_size, src.size) - a * chunk_size

        try:
            for a, b in _chunk_runs(src, chunk_size):
                if a > done:
                    self._zero(span(done, a))
                for first in range(a, b, per_task):
                    count = min(per_task, b - first)
                    length = span(first, first + count)
                    fut = self.pool.submit(self._work, src, first * chunk_size, length, chunk_size)
                    inflight.append(_Task(first, count, length, fut))
                    if len(inflight) >= limit:
                        self._finish(inflight.popleft(), entry)
                done = b
            if entry.count > done:
                self._zero(span(done, entry.count))
            while inflight:
                self._finish(inflight.popleft(), entry)
        except BaseException:
            for t in inflight:
                t.future.cancel()
            for t in inflight:  # let running workers finish with the source before unwinding
                if not t.future.cancelled():
                    t.future.exception()
            raise
        return entry

    def _work(self, src: Source, offset: int, length: int, chunk_size: int) -> list[tuple[bytes | None, int]]:
        """In a worker: read [offset, offset+length), then hash and store each chunk.  (id or None, stored)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < length:
            buf = self._local.buf = memoryview(bytearray(max(length, _TASK_BYTES)))
        view = buf[:length]
        src.read_into(view, offset)
        out: list[tuple[bytes | None, int]] = []
        for pos in range(0, length, chunk_size):
            piece = view[pos : pos + chunk_size]
            digest = blake3.blake3(piece).digest()
            if digest == self._zero_ids[len(piece)]:
                out.append((None, 0))
            else:
                out.append((digest, self.store.store(digest, piece)))
        return out

    def _zero(self, length: int) -> None:
        self.stats.zero_bytes += length
        self.advance(length)

    def _finish(self, t: _Task, entry: DiskEntry) -> None:
        results = t.future.result()
        ids, cs, stats = entry.ids, entry.chunk_size, self.stats
        stats.bytes_read += t.length
        end = t.first * cs + t.length
        for j, (digest, stored) in enumerate(results):
            i = t.first + j
            n = min(cs, end - i * cs)
            if digest is None:
                stats.zero_bytes += n
                continue
            ids[i * ID_BYTES : (i + 1) * ID_BYTES] = digest
            if stored:
                stats.new_bytes_stored += stored
            else:
                stats.reused_bytes += n
        self.advance(t.length)
