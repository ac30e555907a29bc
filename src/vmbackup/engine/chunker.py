"""Taking an incremental backup: cut each disk into fixed-size chunks and feed the chunk store.

Pipeline per disk: the calling thread reads chunk after chunk into a small pool of reused buffers, skips
holes (SEEK_DATA, no read) and all-zero chunks (memcmp), and hands the rest to worker threads that hash
(BLAKE3), look the id up, compress (zstd) and store new chunks; both C libraries release the GIL.  At most
`inflight` chunks are in flight, so memory is about 2 x inflight x chunk size (<= ~70 MiB) whatever the
image size, plus the packed id list (32 bytes per chunk).

Fixed-size chunks because disk images change in place: a guest write never shifts the data after it, so
content-defined chunking buys nothing here and costs CPU.  The size comes from `bench/chunk_size.py`: a
256 MiB image (half random, half compressible), then 2% of its 4 KiB blocks rewritten either scattered
uniformly or clustered in 64 KiB runs, then a second backup (2 cores, ext4, LocalStorage):

    chunk   1st backup   2nd stores (scattered)   2nd stores (clustered)   manifest JSON per TiB of disk
    64 KiB   119 MB/s         37.1 MiB                  5.1 MiB                   1072 MiB
   256 KiB   300 MB/s         92.4 MiB                 12.3 MiB                    268 MiB
     1 MiB   492 MB/s        129.6 MiB                 40.6 MiB                     67 MiB
     4 MiB  1015 MB/s        130.7 MiB                 92.6 MiB                     17 MiB

Uniformly scattered writes dirty nearly every chunk of 256 KiB and up, so only clustered writes separate
them.  1 MiB: 1.6x the throughput of 256 KiB, a quarter of its manifest (each incremental writes a full
manifest) and 32 MiB of ids in memory per TiB of disk (256 KiB would need 128 MiB, breaking the memory
bound for multi-TiB disks), at the price of ~3x more stored on clustered small writes.  The chunk size is
recorded per disk in the manifest, so `Engine(chunk_size=...)` can change it without breaking old backups.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vmbackup.engine.chunkstore import ChunkStore
from vmbackup.engine.manifest import DiskEntry
from vmbackup.engine.source import HoleMap, Source
from vmbackup.engine.types import Stats

CHUNK_SIZE = 1024 * 1024
_INFLIGHT_BYTES = 32 * 1024 * 1024


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class _Pending:
    index: int
    length: int
    future: Future[tuple[str, int]]
    buf: bytearray


class DiskChunker:
    """Chunks one disk into `entry`, updating `stats`; `advance(n)` reports n more logical bytes done."""

    def __init__(
        self, store: ChunkStore, pool: ThreadPoolExecutor, workers: int, stats: Stats, advance: Callable[[int], None]
    ) -> None:
        self.store, self.pool, self.stats, self.advance = store, pool, stats, advance
        self.workers = workers

    def run(self, src: Source, chunk_size: int) -> DiskEntry:
        entry = DiskEntry(src.size, chunk_size)
        entry.ids = bytearray(32 * entry.count)
        holes = HoleMap(src)
        zero = bytes(chunk_size)
        inflight: deque[_Pending] = deque()
        limit = max(2, min(4 * self.workers, _INFLIGHT_BYTES // chunk_size))
        free: list[bytearray] = []
        try:
            for i in range(entry.count):
                off = i * chunk_size
                length = min(chunk_size, src.size - off)
                if holes.is_hole(off, length):
                    self._zero(length)
                    continue
                buf = free.pop() if free else bytearray(chunk_size)
                view = memoryview(buf)[:length]
                src.read_into(view, off)
                self.stats.bytes_read += length
                if (buf == zero) if length == chunk_size else (bytes(view) == zero[:length]):
                    free.append(buf)
                    self._zero(length)
                    continue
                inflight.append(_Pending(i, length, self.pool.submit(self.store.add, view), buf))
                if len(inflight) >= limit:
                    free.append(self._finish(inflight.popleft(), entry))
            while inflight:
                self._finish(inflight.popleft(), entry)
        except BaseException:
            for p in inflight:
                p.future.cancel()
            for p in inflight:  # let running workers finish with their buffers before unwinding
                if not p.future.cancelled():
                    p.future.exception()
            raise
        return entry

    def _zero(self, length: int) -> None:
        self.stats.zero_bytes += length
        self.advance(length)

    def _finish(self, p: _Pending, entry: DiskEntry) -> bytearray:
        cid, stored = p.future.result()
        entry.set(p.index, cid)
        if stored:
            self.stats.new_bytes_stored += stored
        else:
            self.stats.reused_bytes += p.length
        self.advance(p.length)
        return p.buf
