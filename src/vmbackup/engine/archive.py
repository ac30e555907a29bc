"""Normal backups: one disk image as a sparse `.tar.zst` archive that stock `zstd -dc | tar -xSf -` restores.

Two passes over the source, by design.  The tar format needs the sparse map (and so the member size) in front
of the data, and the compressed stream cannot be patched afterwards.  Pass 1 finds the data: SEEK_DATA/
SEEK_HOLE for holes (free), then a read of the data extents to cut out all-zero blocks; it keeps only the map
(two integers per extent).  Pass 2 reads the non-zero extents again and streams them through zstd into the
store.  The alternative, spooling compressed data to a temporary object and copying it behind the header,
reads once but needs the archive's size twice on the backup disk and writes it twice; a second read of the
data regions is cheaper on the target and keeps memory bounded by the map.

Integrity: zstd's content checksum covers the compressed frame, and the sidecar `normal/<id>.meta.json`
holds the BLAKE3 and length of the whole uncompressed tar stream, checked by restore and verify.  The meta
object is written after the archive, so a backup exists exactly when its meta exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, BinaryIO

import blake3
import zstandard

from vmbackup.engine import tarformat as tf
from vmbackup.engine.source import READ_SIZE, nonzero_extents, open_source
from vmbackup.engine.types import Progress, Stats
from vmbackup.errors import BackupDamaged, BackupMissing
from vmbackup.storage.base import ObjectMissing, Storage

FORMAT = "vmbackup-normal"
VERSION = 1
ZSTD_LEVEL = 3  # ~300-500 MB/s per core with a good ratio on disk images; higher levels cost far more CPU


def archive_key(backup_id: str) -> str:
    return f"normal/{backup_id}.tar.zst"


def meta_key(backup_id: str) -> str:
    return f"normal/{backup_id}.meta.json"


class _Counter:
    """Passes writes through to the storage writer, counting the compressed bytes."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.count = sink, 0

    def write(self, data: Any) -> int:
        self.sink.write(data)
        self.count += len(data)
        return len(data)


def take_normal(storage: Storage, backup_id: str, image_path: str, progress: Progress | None) -> Stats:
    started = time.monotonic()
    stats = Stats()
    src = open_source(image_path)
    report = progress or (lambda done, total: None)
    try:
        size = stats.logical_bytes = src.size

        # Progress: pass 1 counts for the first half of the size, pass 2 for the second half.
        def scanned(n: int) -> None:
            stats.bytes_read += n
            report(min(stats.bytes_read, size) // 2, size)

        extents = list(nonzero_extents(src, scanned))
        data_bytes = sum(n for _, n in extents)
        stats.zero_bytes = size - data_bytes
        name = f"{backup_id}.img"
        head = tf.member_start(name, size, extents, int(time.time()))
        hasher = blake3.blake3()
        tar_bytes = 0
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
        with storage.open_writer(archive_key(backup_id)) as w:
            counter = _Counter(w)
            zw = cctx.stream_writer(counter, closefd=False)

            def emit(data: bytes | memoryview) -> None:
                nonlocal tar_bytes
                zw.write(data)
                hasher.update(data)
                tar_bytes += len(data)

            emit(head)
            buf = memoryview(bytearray(READ_SIZE))
            for off, length in extents:
                pos, end = off, off + length
                while pos < end:
                    n = min(READ_SIZE, end - pos)
                    src.read_into(buf[:n], pos)
                    emit(buf[:n])
                    stats.bytes_read += n
                    pos += n
                    report(size // 2 + pos // 2, size)
            emit(tf.member_end(data_bytes))
            zw.flush(zstandard.FLUSH_FRAME)
            zw.close()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "backup_id": backup_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "member_name": name,
            "logical_bytes": size,
            "data_bytes": data_bytes,
            "tar_bytes": tar_bytes,
            "tar_blake3": hasher.hexdigest(),
            "archive_bytes": counter.count,
            "source": image_path,
        }
        meta["stored_bytes"] = 0
        for _ in range(3):  # the meta counts its own size; settles once the digit count stops changing
            raw = json.dumps(meta, indent=1).encode()
            meta["stored_bytes"] = counter.count + len(raw)
        raw = json.dumps(meta, indent=1).encode()
        storage.put(meta_key(backup_id), raw)
        stats.new_bytes_stored = counter.count + len(raw)
    finally:
        src.close()
    report(size, size)
    stats.duration_seconds = time.monotonic() - started
    return stats


def load_meta(storage: Storage, backup_id: str) -> dict[str, Any]:
    try:
        raw = storage.get(meta_key(backup_id))
    except ObjectMissing:
        raise BackupMissing(f"backup {backup_id} does not exist") from None
    try:
        meta = json.loads(raw)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"unknown format {meta.get('format')!r} version {meta.get('version')!r}")
        for field in ("logical_bytes", "tar_bytes", "tar_blake3"):
            meta[field]  # noqa: B018 - presence check
        return dict(meta)
    except (ValueError, KeyError, AttributeError) as exc:
        raise BackupDamaged(f"backup {backup_id}: metadata {meta_key(backup_id)} is damaged: {exc}") from None


class _HashingReader:
    """Reads the decompressed tar stream exactly, hashing and counting everything it hands out."""

    def __init__(self, raw: BinaryIO, where: str) -> None:
        self._z = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        self.hasher = blake3.blake3()
        self.count = 0
        self._where = where

    def read_exact(self, n: int) -> bytes:
        parts, want = [], n
        while want:
            data = self._z.read(min(want, READ_SIZE))
            if not data:
                raise BackupDamaged(f"{self._where} is truncated")
            parts.append(data)
            want -= len(data)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.hasher.update(out)
        self.count += n
        return out

    def at_eof(self) -> bool:
        return not self._z.read(1)


@contextmanager
def _damage_as_error(where: str) -> Iterator[None]:
    try:
        yield
    except zstandard.ZstdError as exc:
        raise BackupDamaged(f"{where} is corrupt (zstd: {exc})") from None
    except (tf.TarFormatError, ValueError, UnicodeDecodeError) as exc:
        raise BackupDamaged(f"{where} is corrupt (tar: {exc})") from None


def read_archive(
    storage: Storage,
    backup_id: str,
    on_map: Callable[[int, list[tuple[int, int]]], None],
    on_data: Callable[[int, bytes], None],
) -> int:
    """Parse, check and replay an archive: on_map(size, extents) once, then on_data(offset, bytes) in order.
    Raises BackupDamaged when anything fails its checks; returns the archive's stored size."""
    meta = load_meta(storage, backup_id)
    key = archive_key(backup_id)
    where = f"backup {backup_id}: archive {key}"
    try:
        with storage.open_reader(key) as raw, _damage_as_error(where):
            r = _HashingReader(raw, where)
            flag, size = tf.check_header(r.read_exact(tf.BLOCK))
            if flag != b"x":
                raise tf.TarFormatError("expected a PAX header first")
            pax = tf.parse_pax(r.read_exact(size + tf.pad(size)))
            flag, size = tf.check_header(r.read_exact(tf.BLOCK))
            size = int(pax.get("size", size))
            if pax.get("GNU.sparse.major") != "1" or pax.get("GNU.sparse.minor") != "0":
                raise tf.TarFormatError("not a GNU sparse 1.0 member")
            realsize = int(pax["GNU.sparse.realsize"])
            block = r.read_exact(tf.BLOCK)
            while block.count(b"\n") < 2 * int(block.split(b"\n", 1)[0]) + 1:
                block += r.read_exact(tf.BLOCK)
            extents, used = tf.parse_sparse_map(block)
            on_map(realsize, extents)
            for off, length in extents:
                pos = off
                while pos < off + length:
                    data = r.read_exact(min(READ_SIZE, off + length - pos))
                    on_data(pos, data)
                    pos += len(data)
            data_bytes = sum(n for _, n in extents)
            if used + data_bytes != size:
                raise tf.TarFormatError("member size does not match its sparse map")
            r.read_exact(tf.pad(data_bytes) + 2 * tf.BLOCK)
            if not r.at_eof() and r.count >= meta["tar_bytes"]:
                raise tf.TarFormatError("unexpected data after the end of the archive")
            if r.count != meta["tar_bytes"] or r.hasher.hexdigest() != meta["tar_blake3"]:
                raise BackupDamaged(f"{where} fails its BLAKE3 check (data damaged)")
            if realsize != meta["logical_bytes"]:
                raise BackupDamaged(f"{where} holds {realsize} bytes, its metadata says {meta['logical_bytes']}")
        return storage.size(key)
    except ObjectMissing:
        raise BackupDamaged(f"{where} is missing") from None


def delete_normal(storage: Storage, backup_id: str) -> int:
    freed = 0
    # Meta first: once it is gone the backup no longer exists, even if we crash before the archive goes.
    for key in (meta_key(backup_id), archive_key(backup_id)):
        with suppress(ObjectMissing):
            freed += storage.delete(key)
    return freed


def orphan_archives(storage: Storage) -> Iterator[str]:
    """Archive keys without their meta: a take that died between the two writes."""
    for key in storage.list("normal/"):
        if key.endswith(".tar.zst") and not storage.exists(key[: -len(".tar.zst")] + ".meta.json"):
            yield key
