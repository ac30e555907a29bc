"""Restoring normal and incremental backups to a path (new file, existing file or block device).

Every byte restored is checked: a normal archive by zstd's checksum and the BLAKE3 of its tar stream, a chunk
by re-hashing it before it is written.  An incremental restore first checks that every chunk it needs
exists, so a backup known to be incomplete never starts overwriting an in-place target.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from vmbackup.engine.archive import load_meta, read_archive
from vmbackup.engine.chunkstore import ChunkCorrupt, ChunkMissing, ChunkStore
from vmbackup.engine.manifest import DiskEntry, Manifest
from vmbackup.engine.target import Target, open_target
from vmbackup.engine.types import Progress, Stats
from vmbackup.errors import BackupDamaged, TargetInvalid
from vmbackup.storage.base import Storage


def _noop(done: int, total: int) -> None:
    pass


def restore_normal(
    storage: Storage, backup_id: str, path: str, progress: Progress | None, *, force_overwrite: bool = False
) -> Stats:
    started = time.monotonic()
    report = progress or _noop
    size = int(load_meta(storage, backup_id)["logical_bytes"])
    stats = Stats(logical_bytes=size)

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
            t.write(data, offset)
            stats.bytes_read += len(data)
            report(offset + len(data), size)

        read_archive(storage, backup_id, on_map, on_data)
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
    check_chunks_exist(store, manifest, list(targets))
    stats = Stats(logical_bytes=sum(manifest.disks[k].size for k in targets))
    report = progress or _noop
    done = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="vmbackup-restore") as pool:
        for key, path in targets.items():
            entry = manifest.disks[key]
            with open_target(path, entry.size, force_overwrite=force_overwrite) as t:
                for n in _restore_disk(pool, store, manifest.backup_id, key, entry, t, stats, workers):
                    done += n
                    report(done, stats.logical_bytes)
    stats.duration_seconds = time.monotonic() - started
    return stats


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
    """Yields logical bytes done as chunks land; workers load, check and write chunks (pwrite, any order)."""

    def work(cid: str, off: int, length: int) -> int:
        try:
            data = store.load(cid)
        except (ChunkMissing, ChunkCorrupt) as exc:
            raise _damage(backup_id, key, cid, exc) from None
        if len(data) != length:
            raise BackupDamaged(
                f"backup {backup_id}: chunk {cid} of disk {key} holds {len(data)} bytes, "
                f"{length} expected at offset {off}"
            )
        t.write(data, off)
        return length

    inflight: deque[Future[int]] = deque()
    try:
        for i, cid in entry.chunk_ids():
            off = i * entry.chunk_size
            length = min(entry.chunk_size, entry.size - off)
            if cid is None:
                if t.needs_zeroing:
                    t.zero(off, length)
                stats.zero_bytes += length
                yield length
                continue
            inflight.append(pool.submit(work, cid, off, length))
            if len(inflight) >= 4 * workers:
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
