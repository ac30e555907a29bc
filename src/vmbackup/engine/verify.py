"""Verify: re-read everything a backup references and report damage, changing nothing."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress

from vmbackup.engine.archive import READ_THREADS, archive_key, meta_key, read_archive
from vmbackup.engine.chunkstore import ChunkCorrupt, ChunkMissing, ChunkStore, ChunkUnreadable
from vmbackup.engine.manifest import Manifest
from vmbackup.engine.types import Progress, VerifyReport
from vmbackup.errors import BackupDamaged
from vmbackup.storage.base import ObjectMissing, Storage

MAX_PROBLEMS = 100  # a backup missing a million chunks should not produce a million-line report


def verify_normal(storage: Storage, backup_id: str, progress: Progress | None) -> VerifyReport:
    report = VerifyReport(backup_id)
    try:
        total = storage.size(archive_key(backup_id))
    except (ObjectMissing, OSError):
        total = 0

    def on_map(realsize: int, extents: list[tuple[int, int]]) -> None:
        pass

    def on_data(offset: int, data: bytes) -> None:
        pass  # read_archive has checked it

    try:
        report.bytes_checked = read_archive(storage, backup_id, on_map, on_data, progress, READ_THREADS)
        with suppress(ObjectMissing, OSError):  # the meta was read (and checked) moments ago
            report.bytes_checked += storage.size(meta_key(backup_id))
    except BackupDamaged as exc:
        report.problems.append(exc.message)
        report.bytes_checked = total
    return report


def verify_incremental(store: ChunkStore, manifest: Manifest, workers: int, progress: Progress | None) -> VerifyReport:
    report = VerifyReport(manifest.backup_id)
    todo: dict[str, tuple[str, int]] = {}  # chunk id -> (disk key, expected length), each chunk once
    for key, entry in manifest.disks.items():
        for i, cid in entry.chunk_ids():
            if cid and cid not in todo:
                todo[cid] = (key, min(entry.chunk_size, entry.size - i * entry.chunk_size))
    skipped = 0

    def problem(text: str) -> None:
        nonlocal skipped
        if len(report.problems) < MAX_PROBLEMS:
            report.problems.append(text)
        else:
            skipped += 1

    def check(cid: str) -> tuple[str, int, str | None, bool]:
        """(id, stored bytes, problem or None, whether the object is present but damaged)"""
        key, length = todo[cid]
        try:
            data, stored = store.load_sized(cid, length)
        except ChunkMissing:
            return cid, 0, f"chunk {cid} of disk {key} is missing", False
        except ChunkUnreadable as exc:  # reported, but not moved aside: it may be a permission problem
            return cid, 0, f"chunk {cid} of disk {key} is corrupt: {exc}", False
        except ChunkCorrupt as exc:
            return cid, 0, f"chunk {cid} of disk {key} is corrupt: {exc}", True
        if len(data) != length:
            return cid, stored, f"chunk {cid} of disk {key} holds {len(data)} bytes, {length} expected", True
        return cid, stored, None, False

    inflight: deque[Future[tuple[str, int, str | None, bool]]] = deque()
    done, total = 0, sum(length for _, length in todo.values())

    def collect() -> None:
        nonlocal done
        cid, stored, trouble, damaged = inflight.popleft().result()
        report.bytes_checked += stored
        if trouble:
            problem(f"backup {manifest.backup_id}: {trouble}")
        if damaged:
            report.damaged_chunks.append(cid)
        done += todo[cid][1]
        if progress:
            progress(done, total)

    with ThreadPoolExecutor(workers, thread_name_prefix="vmbackup-verify") as pool:
        for cid in todo:
            inflight.append(pool.submit(check, cid))
            if len(inflight) >= 4 * workers:
                collect()
        while inflight:
            collect()
    if skipped:
        report.problems.append(f"... and {skipped} more problems")
    return report
