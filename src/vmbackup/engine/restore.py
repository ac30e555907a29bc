"""Restoring normal and incremental backups to a path (new file, existing file or block device).

Every byte restored is checked: a normal archive by zstd's checksum and the BLAKE3 of its tar stream, a chunk
by re-hashing it before it is written.  An incremental restore first checks that every chunk it needs
exists, so a backup known to be incomplete never starts overwriting an in-place target.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from vmbackup.engine.archive import FRAME_BYTES, READ_THREADS, load_meta, read_archive
from vmbackup.engine.chunkstore import ChunkCorrupt, ChunkMissing, ChunkStore
from vmbackup.engine.manifest import ID_BYTES, ZERO_ID, DiskEntry, Manifest
from vmbackup.engine.source import READ_SIZE
from vmbackup.engine.target import Target, open_target
from vmbackup.engine.types import Progress, Stats
from vmbackup.errors import BackupDamaged, TargetInvalid
from vmbackup.storage.base import Storage

_TASK_BYTES = 1 * 1024 * 1024  # consecutive chunks loaded by one task and written with one (direct) write
# Chunk reads wait on the disk, and O_DIRECT reads have no read-ahead, so more threads than cores; beyond 8 the
# wall time stayed the same while CPU and memory grew (BENCHMARKS.md, rounds 2-3 and "Design measurements").
_RESTORE_THREADS = 8
_REPEAT_CACHE_BYTES = 8 * 1024 * 1024  # decompressed chunks kept for their next use (`_Repeats`)
_ZEROS = bytes(max(READ_SIZE, FRAME_BYTES))


def _zeros(n: int) -> bytes:
    """n zero bytes to compare with (bytes == bytes is a memcmp; a slice would copy)."""
    return _ZEROS if n == len(_ZEROS) else bytes(n)


def _noop(done: int, total: int) -> None:
    pass


def restore_normal(
    storage: Storage,
    backup_id: str,
    path: str,
    progress: Progress | None,
    *,
    force_overwrite: bool = False,
    threads: int = READ_THREADS,
) -> Stats:
    started = time.monotonic()
    report = progress or _noop
    size = int(load_meta(storage, backup_id)["logical_bytes"])
    stats = Stats(logical_bytes=size)
    mutex = threading.Lock()

    # read_archive calls on_data on `threads` threads (each decompresses its own frames of an indexed archive;
    # old single-stream archives are decompressed on this thread): writes are positioned, so order is free.
    with open_target(path, size, force_overwrite=force_overwrite) as t:

        def on_map(realsize: int, extents: list[tuple[int, int]]) -> None:
            if realsize != size or any(o + n > size for o, n in extents):
                raise BackupDamaged(f"backup {backup_id}: archive sparse map does not match its size {size}")
            stats.zero_bytes = size - sum(n for _, n in extents)
            if t.needs_zeroing:
                pos = 0
                for off, n in extents + [(size, 0)]:
                    t.zero(pos, off - pos)
                    pos = off + n

        def on_data(offset: int, data: bytes) -> None:
            # Zeros the archive holds as data (written by the guest) stay holes unless old data must go.
            zero = not t.needs_zeroing and data == _zeros(len(data))
            if not zero:
                t.writev([data], offset)
            with mutex:
                stats.bytes_read += len(data)
                if zero:
                    stats.zero_bytes += len(data)

        read_archive(storage, backup_id, on_map, on_data, report, threads)
    report(size, size)
    stats.duration_seconds = time.monotonic() - started
    return stats


def _damage(backup_id: str, key: str, cid: str, exc: Exception) -> BackupDamaged:
    what = "is missing" if isinstance(exc, ChunkMissing) else f"is corrupt: {exc}"
    return BackupDamaged(f"backup {backup_id}: chunk {cid} of disk {key} {what}")


def check_chunks_exist(store: ChunkStore, manifest: Manifest, keys: list[str]) -> None:
    seen: set[str] = set()
    for key in keys:
        for _, cid in manifest.disks[key].chunk_ids():
            if cid and cid not in seen:
                if not store.exists(cid):
                    raise _damage(manifest.backup_id, key, cid, ChunkMissing(cid))
                seen.add(cid)


def restore_incremental(
    store: ChunkStore,
    manifest: Manifest,
    targets: dict[str, str],
    progress: Progress | None,
    workers: int,
    *,
    force_overwrite: bool = False,
) -> Stats:
    started = time.monotonic()
    unknown = sorted(set(targets) - set(manifest.disks))
    if unknown:
        raise TargetInvalid(
            f"backup {manifest.backup_id} has no disk {', '.join(unknown)} (disks: {', '.join(manifest.disks)})"
        )
    # Only an in-place target can be left half-written; a new file is written aside and dropped on failure,
    # so the stat of every chunk up front is only paid when something would be overwritten.
    if any(os.path.lexists(path) for path in targets.values()):
        check_chunks_exist(store, manifest, list(targets))
    stats = Stats(logical_bytes=sum(manifest.disks[k].size for k in targets))
    report = progress or _noop
    done = 0
    threads = max(workers, _RESTORE_THREADS)
    with ThreadPoolExecutor(threads, thread_name_prefix="vmbackup-restore") as pool:
        for key, path in targets.items():
            entry = manifest.disks[key]
            with open_target(path, entry.size, force_overwrite=force_overwrite) as t:
                for n in _restore_disk(pool, store, manifest.backup_id, key, entry, t, stats, threads):
                    done += n
                    report(done, stats.logical_bytes)
    stats.duration_seconds = time.monotonic() - started
    return stats


def _runs(entry: DiskEntry, per_task: int) -> Iterator[tuple[int, list[str | None]]]:
    """(first index, ids) of up to per_task consecutive chunks, all zero or all data, in disk order."""
    first, zero = 0, False
    run: list[str | None] = []
    for i, cid in entry.chunk_ids():
        if run and ((cid is None) != zero or len(run) >= per_task):
            yield first, run
            run = []
        if not run:
            first, zero = i, cid is None
        run.append(cid)
    if run:
        yield first, run


class _Repeats:
    """Chunks a disk lists more than once are loaded (read, decompressed, checked) once and kept until their
    last use, within `_REPEAT_CACHE_BYTES` (beyond it they are loaded again); a thread that needs a chunk
    another thread is loading waits for it.  Like restic, which reads a blob once for every place it fills
    (5-17% off the bench's 2nd incremental restore: BENCHMARKS.md, round 3)."""

    def __init__(self, entry: DiskEntry) -> None:
        seen: set[bytes] = set()  # packed ids: ~100 bytes each while this runs (6 MiB at 8 GiB of data)
        uses: dict[bytes, int] = {}
        ids = entry.ids
        for i in range(0, len(ids), ID_BYTES):
            raw = bytes(ids[i : i + ID_BYTES])
            if raw == ZERO_ID:
                continue
            if raw in seen:
                uses[raw] = uses.get(raw, 1) + 1
            else:
                seen.add(raw)
        del seen
        self._uses = {raw.hex(): n for raw, n in uses.items()}  # remaining uses of the repeated ids only
        self._kept: dict[str, bytes] = {}
        self._loading: dict[str, threading.Event] = {}
        self._bytes = 0
        self._mutex = threading.Lock()

    def load(self, store: ChunkStore, cid: str, length: int) -> bytes:
        if cid not in self._uses:
            return store.load(cid, length)
        while True:
            with self._mutex:
                data = self._kept.get(cid)
                if data is not None:
                    self._use(cid)
                    return data
                loading = self._loading.get(cid)
                if loading is None:
                    self._loading[cid] = threading.Event()
                    break
            loading.wait()  # another thread is loading it: take it from the cache (or load it if that failed)
        try:
            data = store.load(cid, length)
        except BaseException:
            with self._mutex:
                self._loading.pop(cid).set()
            raise
        with self._mutex:
            self._use(cid)
            if self._uses.get(cid) and self._bytes + len(data) <= _REPEAT_CACHE_BYTES:
                self._kept[cid] = data
                self._bytes += len(data)
            self._loading.pop(cid).set()
        return data

    def _use(self, cid: str) -> None:
        left = self._uses[cid] - 1
        if left:
            self._uses[cid] = left
            return
        del self._uses[cid]
        data = self._kept.pop(cid, None)
        if data is not None:
            self._bytes -= len(data)


def _restore_disk(
    pool: ThreadPoolExecutor,
    store: ChunkStore,
    backup_id: str,
    key: str,
    entry: DiskEntry,
    t: Target,
    stats: Stats,
    workers: int,
) -> Iterator[int]:
    """Yields logical bytes done as runs land.  Workers load, decompress and check a run of consecutive chunks
    and write it with one pwritev (runs land in any order: writes are positional)."""
    cs = entry.chunk_size
    repeats = _Repeats(entry)

    def work(first: int, ids: list[str | None]) -> int:
        parts = []
        for j, cid in enumerate(ids):
            assert cid is not None
            off = (first + j) * cs
            length = min(cs, entry.size - off)
            try:
                data = repeats.load(store, cid, length)
            except (ChunkMissing, ChunkCorrupt) as exc:
                raise _damage(backup_id, key, cid, exc) from None
            if len(data) != length:
                raise BackupDamaged(
                    f"backup {backup_id}: chunk {cid} of disk {key} holds {len(data)} bytes, "
                    f"{length} expected at offset {off}"
                )
            parts.append(data)
        t.writev(parts, first * cs)
        return sum(map(len, parts))

    inflight: deque[Future[int]] = deque()
    try:
        for first, ids in _runs(entry, max(1, _TASK_BYTES // cs)):
            if ids[0] is None:
                off = first * cs
                length = min(len(ids) * cs, entry.size - off)
                if t.needs_zeroing:
                    t.zero(off, length)
                stats.zero_bytes += length
                yield length
                continue
            inflight.append(pool.submit(work, first, ids))
            if len(inflight) >= 2 * workers:
                n = inflight.popleft().result()
                stats.bytes_read += n
                yield n
        while inflight:
            n = inflight.popleft().result()
            stats.bytes_read += n
            yield n
    finally:
        for f in inflight:
            f.cancel()
        for f in inflight:
            if not f.cancelled():
                f.exception()
