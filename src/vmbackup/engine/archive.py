"""Normal backups: one disk image as a sparse `.tar.zst` archive that stock `zstd -dc | tar -xSf -` restores.

One pass over the source: the sparse map the tar format needs in front of the data is what SEEK_DATA/SEEK_HOLE
report (no reads), so compression starts at once; zeros the guest wrote inside data extents are stored as data
(an all-zero frame is a few bytes) and our restore writes them back as holes.  The data is cut into
`FRAME_BYTES` pieces compressed as independent zstd frames on at most `_THREADS_MAX` threads (memory bounded
by the thread cap, not the core count); concatenated frames are one valid zstd stream for every zstd tool.
The image is read and the archive written with O_DIRECT, so neither fills the page cache.  The measurements
behind these choices are in BENCHMARKS.md (rounds 1-3, "Design measurements").

Integrity: zstd's content checksum covers each frame, and the sidecar `normal/<id>.meta.json` holds the
BLAKE3 and length of the whole uncompressed tar stream, checked by restore and verify, and (version 3) its own
BLAKE3 and the backup id, so a meta or archive of another backup is damage, not data.  The meta also holds
the frame index, [compressed size, tar size] per frame, so restore and verify decompress frames on
`READ_THREADS` threads (`_read_indexed`); version-1 metas (no index) are read as one stream.  The meta object
is written after the archive, so a backup exists exactly when its meta exists.
"""

from __future__ import annotations

import json
import mmap
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, BinaryIO

import blake3
import zstandard

from vmbackup.engine import documents
from vmbackup.engine import tarformat as tf
from vmbackup.engine.source import READ_SIZE, Source, data_extents, open_source
from vmbackup.engine.types import Progress, Stats, check_backup_id
from vmbackup.errors import BackupDamaged, BackupMissing, InvalidBackupId
from vmbackup.storage.base import ObjectMissing, Storage

FORMAT = "vmbackup-normal"
# 3: the meta holds its own BLAKE3 and is checked against the backup id; 2: the frame index ("frames");
# 1 (no index) is still read, sequentially.  Versions 1 and 2 are read too (docs/formats.md says how).
VERSION = 3
FRAME_BYTES = 4 * 1024 * 1024  # data per independent zstd frame: 2 MiB frames made the archive 4% larger
# Compression parameters of the archive's frames: zstd level 2 with level 3's hash table (hash_log 17) and a
# window as large as a frame (window_log 22): level 3's archive size for ~25% less CPU (BENCHMARKS.md, round
# 3).  Any zstd reads these frames; a 4 MiB window needs 4 MiB to decompress (the default limit is 128 MiB).
_PARAMS = zstandard.ZstdCompressionParameters.from_level(
    2, source_size=FRAME_BYTES, window_log=22, hash_log=17, write_checksum=1, write_content_size=1
)
_THREADS_MAX = 3  # compression threads, whatever the core count: bounds memory (see above)
# Decompression threads of restore and verify (indexed archives), whatever the core count: each holds up to
# ~16 MiB while it works, and 4 threads peaked at 152 MiB RSS (BENCHMARKS.md, round 2).
READ_THREADS = 3
_DIRECT_READS = True  # read the image with O_DIRECT (see the module docstring)
_AHEAD_PER_THREAD = 2  # decompressed frames (or pieces) per thread that may wait to be taken back in order
MAX_META_BYTES = 64 * 1024 * 1024  # a meta indexes ~20 bytes per 4 MiB frame: this is tens of TiB of data
MAX_EXTENTS = 1 << 24  # data segments in a sparse map (16 bytes or more each in the archive)
_MAX_PAX = 64 * 1024  # our PAX records take ~150 bytes
_META_CONTEXT = b"vmbackup-normal 3\0"


def archive_key(backup_id: str) -> str:
    return f"normal/{backup_id}.tar.zst"


def meta_key(backup_id: str) -> str:
    return f"normal/{backup_id}.meta.json"


class _Frames:
    """Compresses pieces of the source as independent frames on worker threads, one compressor each."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self._local = threading.local()
        self._zero_frames: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(compression_params=_PARAMS)
        return c

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._cctx().compress(data)

    def zero_frame(self, length: int) -> bytes:
        frame = self._zero_frames.get(length)
        if frame is None:
            frame = self.compress(bytes(length))
            with self._lock:
                self._zero_frames[length] = frame
        return frame

    def piece(self, buf: mmap.mmap, offset: int, length: int) -> tuple[memoryview, bytes, bool]:
        """(raw bytes in buf, frame, all zero) of [offset, offset+length).  zstd is deterministic, so the data
        is all zeros exactly when its frame is the all-zero frame (compressing 4 MiB of zeros takes 0.8 ms)."""
        raw = memoryview(buf)[:length]
        self.src.read_into(raw, offset)
        frame = self.compress(raw)
        return raw, frame, len(frame) < 4096 and frame == self.zero_frame(length)


def _pieces(extents: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    for off, length in extents:
        for pos in range(off, off + length, FRAME_BYTES):
            yield pos, min(FRAME_BYTES, off + length - pos)


def take_normal(
    storage: Storage, backup_id: str, image_path: str, progress: Progress | None, workers: int = 2
) -> Stats:
    started = time.monotonic()
    stats = Stats()
    src = open_source(image_path, direct=_DIRECT_READS)
    report = progress or (lambda done, total: None)
    threads = max(1, min(workers, _THREADS_MAX))
    try:
        size = stats.logical_bytes = src.size
        extents = list(data_extents(src))
        data_bytes = sum(n for _, n in extents)
        stats.zero_bytes = size - data_bytes
        name = f"{backup_id}.img"
        head = tf.member_start(name, size, extents, int(time.time()))
        hasher = blake3.blake3()
        frames = _Frames(src)
        tar_bytes = archive_bytes = done = 0
        index: list[list[int]] = []  # [compressed size, tar bytes] per frame, in archive order
        inflight: deque[tuple[mmap.mmap, Future[tuple[memoryview, bytes, bool]]]] = deque()
        # Reused, page-aligned buffers (direct reads need them; a fresh buffer per frame would be paid in page
        # faults every time).
        free = [mmap.mmap(-1, FRAME_BYTES) for _ in range(threads + 2)]
        with (
            storage.open_writer(archive_key(backup_id)) as w,
            ThreadPoolExecutor(threads, thread_name_prefix="vmbackup-archive") as pool,
        ):

            def emit(raw: bytes | memoryview, frame: bytes) -> None:
                nonlocal tar_bytes, archive_bytes
                hasher.update(raw)
                tar_bytes += len(raw)
                w.write(frame)
                archive_bytes += len(frame)
                index.append([len(frame), len(raw)])

            def collect() -> None:
                nonlocal done
                buf, fut = inflight.popleft()
                raw, frame, zero = fut.result()
                emit(raw, frame)
                done += len(raw)
                stats.bytes_read += len(raw)
                if zero:
                    stats.zero_bytes += len(raw)
                free.append(buf)
                report(done, size)

            try:
                emit(head, frames.compress(head))
                for off, length in _pieces(extents):
                    if not free:
                        collect()
                    buf = free.pop()
                    inflight.append((buf, pool.submit(frames.piece, buf, off, length)))
                while inflight:
                    collect()
            finally:
                for _, fut in inflight:  # cancel what has not started, let the rest finish with its buffer
                    fut.cancel()
                for _, fut in inflight:
                    if not fut.cancelled():
                        fut.exception()
            tail = tf.member_end(data_bytes)
            emit(tail, frames.compress(tail))
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
            "archive_bytes": archive_bytes,
            "source": image_path,
            "frames": index,
        }
        meta["stored_bytes"] = 0
        for _ in range(3):  # the meta counts its own size; settles once the digit count stops changing
            meta["blake3"] = meta_checksum(meta)
            raw = _dump_meta(meta)
            meta["stored_bytes"] = archive_bytes + len(raw)
        meta["blake3"] = meta_checksum(meta)
        raw = _dump_meta(meta)
        storage.put(meta_key(backup_id), raw)
        stats.new_bytes_stored = archive_bytes + len(raw)
    finally:
        src.close()
    report(size, size)
    stats.duration_seconds = time.monotonic() - started
    return stats


def _dump_meta(meta: dict[str, Any]) -> bytes:
    """Indented JSON with the frame index on one line (a number per line would triple the meta's size)."""
    text = json.dumps({k: v for k, v in meta.items() if k != "frames"}, indent=1)
    if "frames" in meta:
        text = text[:-2] + ',\n "frames": ' + json.dumps(meta["frames"], separators=(",", ":")) + "\n}"
    return text.encode()


def meta_checksum(meta: dict[str, Any]) -> str:
    """BLAKE3 of every field but "blake3", as compact JSON with sorted keys (what any JSON reader rebuilds from
    the parsed values), after a context string; it includes the backup id, so a meta under another backup's
    name is damage."""
    body = json.dumps({k: v for k, v in meta.items() if k != "blake3"}, sort_keys=True, separators=(",", ":"))
    return blake3.blake3(_META_CONTEXT + body.encode()).hexdigest()


def load_meta(storage: Storage, backup_id: str) -> dict[str, Any]:
    """The meta of `backup_id`, read as untrusted input: bounded, every field the readers use checked, bound to
    this backup (its id, its member name and, from version 3, its checksum).  BackupDamaged otherwise."""
    try:
        meta = documents.parse(documents.read(storage, meta_key(backup_id), MAX_META_BYTES), MAX_META_BYTES)
        _check_meta(meta, backup_id)
        return meta
    except ObjectMissing:
        raise BackupMissing(f"backup {backup_id} does not exist") from None
    except documents.DocumentError as exc:
        raise BackupDamaged(f"backup {backup_id}: metadata {meta_key(backup_id)} is damaged: {exc}") from None


def _check_meta(meta: dict[str, Any], backup_id: str) -> None:
    version = meta.get("version")
    if meta.get("format") != FORMAT or type(version) is not int or version not in (1, 2, VERSION):
        raise documents.DocumentError(
            f"unknown format {documents.show(meta.get('format'))} version {documents.show(version)}"
        )
    if meta.get("backup_id") != backup_id:  # every version records it: a swapped meta is caught in all
        raise documents.DocumentError(f"it belongs to backup {documents.show(meta.get('backup_id'))}")
    if version >= 3 and documents.hex64(meta, "blake3") != meta_checksum(meta):
        raise documents.DocumentError("its content fails its BLAKE3 checksum (edited, or not this backup's)")
    documents.timestamp(meta, "created")
    if documents.string(meta, "member_name") != f"{backup_id}.img":
        raise documents.DocumentError(f"its member is {documents.show(meta['member_name'])}, not {backup_id}.img")
    documents.integer(meta, "logical_bytes")
    documents.integer(meta, "tar_bytes", 3 * tf.BLOCK)
    documents.hex64(meta, "tar_blake3")
    for name in ("data_bytes", "stored_bytes"):
        if name in meta or version >= 3:
            documents.integer(meta, name)
    if "source" in meta or version >= 3:
        documents.string(meta, "source")
    if version >= 2:
        documents.integer(meta, "archive_bytes")
        frames = meta.get("frames")
        if not isinstance(frames, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(type(x) is int and 0 < x <= documents.MAX_INT for x in f)
            for f in frames
        ):
            raise documents.DocumentError("malformed frame index")
        if sum(c for c, _ in frames) != meta["archive_bytes"] or sum(u for _, u in frames) != meta["tar_bytes"]:
            raise documents.DocumentError("the frame index does not add up to the archive's sizes")


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
            try:
                data = self._z.read(min(want, READ_SIZE))
            except OSError as exc:  # the storage's, not zstd's: an unreadable archive is damage
                raise _unreadable(self._where, exc) from None
            if not data:
                raise BackupDamaged(f"{self._where} is truncated")
            parts.append(data)
            want -= len(data)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.hasher.update(out)
        self.count += n
        return out

    def at_eof(self) -> bool:
        try:
            return not self._z.read(1)
        except OSError as exc:
            raise _unreadable(self._where, exc) from None


@contextmanager
def _damage_as_error(where: str) -> Iterator[None]:
    try:
        yield
    except zstandard.ZstdError as exc:
        raise BackupDamaged(f"{where} is corrupt (zstd: {exc})") from None
    except (tf.TarFormatError, ValueError, UnicodeDecodeError) as exc:
        raise BackupDamaged(f"{where} is corrupt (tar: {exc})") from None


DataSink = Callable[[int, bytes], None]


def _noop_progress(done: int, total: int) -> None:
    pass


def read_archive(
    storage: Storage,
    backup_id: str,
    on_map: Callable[[int, list[tuple[int, int]]], None],
    on_data: DataSink,
    progress: Progress | None = None,
    threads: int = 1,
) -> int:
    """Parse, check and replay an archive: on_map(size, extents) once, on this thread, then on_data(image
    offset, bytes) for every data piece.  With threads > 1, on_data runs on up to that many worker threads at
    once and in any order (it must be thread-safe: positioned writes); progress(image bytes, size) is reported
    in order.  Raises BackupDamaged when anything fails its checks; returns the archive's stored size.

    Indexed archives (meta version 2) are decompressed frame by frame on `threads` threads; older ones are
    one zstd stream, decompressed here while `threads` threads take the pieces."""
    meta = load_meta(storage, backup_id)
    key = archive_key(backup_id)
    where = f"backup {backup_id}: archive {key}"
    report = progress or _noop_progress
    try:
        with _damage_as_error(where):
            if meta["version"] >= 2:
                realsize = _read_indexed(storage, key, meta, where, on_map, on_data, report, threads)
            else:
                with _opened(storage, key, where) as raw:
                    realsize = _read_stream(raw, meta, where, on_map, on_data, report, threads)
        if realsize != meta["logical_bytes"]:
            raise BackupDamaged(f"{where} holds {realsize} bytes, its metadata says {meta['logical_bytes']}")
        return _size(storage, key, where)
    except ObjectMissing:
        raise BackupDamaged(f"{where} is missing") from None


def _unreadable(where: str, exc: OSError) -> BackupDamaged:
    """A read of the storage that failed (an I/O or permission error): damage to report, like any other.  Only
    reads are wrapped: errors of the restore target stay what they are (a full disk is not damage)."""
    return BackupDamaged(f"{where} cannot be read ({exc.strerror or exc})")


def _size(storage: Storage, key: str, where: str) -> int:
    try:
        return storage.size(key)
    except OSError as exc:
        raise _unreadable(where, exc) from None


@contextmanager
def _opened(storage: Storage, key: str, where: str) -> Iterator[BinaryIO]:
    try:
        cm = storage.open_reader(key)
        raw = cm.__enter__()
    except OSError as exc:
        raise _unreadable(where, exc) from None
    try:
        yield raw
    finally:
        cm.__exit__(None, None, None)


def _parse_head(read_exact: Callable[[int], bytes], member: str) -> tuple[int, list[tuple[int, int]]]:
    """(image size, data extents) from the start of the tar stream, checking that it holds `member` (an
    archive of another backup holds another name); leaves the stream at the first data byte.  Every number is
    bounded before it sizes a read."""
    flag, size = tf.check_header(read_exact(tf.BLOCK))
    if flag != b"x" or size > _MAX_PAX:
        raise tf.TarFormatError("expected a PAX header first")
    pax = tf.parse_pax(read_exact(size + tf.pad(size)))
    flag, size = tf.check_header(read_exact(tf.BLOCK))
    if flag != b"0":
        raise tf.TarFormatError("expected a regular file member")
    if pax.get("GNU.sparse.major") != "1" or pax.get("GNU.sparse.minor") != "0":
        raise tf.TarFormatError("not a GNU sparse 1.0 member")
    if pax.get("GNU.sparse.name") != member:
        raise tf.TarFormatError(
            f"its member is {documents.show(pax.get('GNU.sparse.name'))}, not {member!r}: another backup's archive"
        )
    size = int(pax.get("size", size))
    realsize = int(pax.get("GNU.sparse.realsize", "-1"))
    if not (0 <= realsize <= documents.MAX_INT and 0 <= size <= documents.MAX_INT):
        raise tf.TarFormatError("bad member or image size")
    first = read_exact(tf.BLOCK)
    count = int(first.split(b"\n", 1)[0])
    if not 0 <= count <= MAX_EXTENTS:
        raise tf.TarFormatError(f"sparse map of {count} segments")
    parts, newlines = [first], first.count(b"\n")
    while newlines < 2 * count + 1:
        if len(parts) * tf.BLOCK >= size:
            raise tf.TarFormatError("sparse map longer than the member")
        parts.append(read_exact(tf.BLOCK))
        newlines += parts[-1].count(b"\n")
    extents, used = tf.parse_sparse_map(b"".join(parts))
    end = 0
    for off, n in extents:
        if off < end or n < 0:
            raise tf.TarFormatError("sparse map segments overlap or go backwards")
        end = off + n
    if end > realsize:
        raise tf.TarFormatError("sparse map reaches past the image size")
    if used + sum(n for _, n in extents) != size:
        raise tf.TarFormatError("member size does not match its sparse map")
    return realsize, extents


@contextmanager
def _dispatcher(on_data: DataSink, threads: int) -> Iterator[DataSink]:
    """on_data called on `threads` threads, at most `_AHEAD_PER_THREAD` pieces each behind the caller."""
    if threads <= 1:
        yield on_data
        return
    inflight: deque[Future[None]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="vmbackup-archive") as pool:

        def put(offset: int, data: bytes) -> None:
            inflight.append(pool.submit(on_data, offset, data))
            if len(inflight) >= _AHEAD_PER_THREAD * threads:
                inflight.popleft().result()

        try:
            yield put
            while inflight:
                inflight.popleft().result()
        finally:
            _drain(inflight)


def _drain(inflight: deque[Future[Any]]) -> None:
    """After a failure: cancel what has not started, let the rest finish (they hold buffers and the target)."""
    for f in inflight:
        f.cancel()
    for f in inflight:
        if not f.cancelled():
            f.exception()


def _read_stream(
    raw: BinaryIO,
    meta: dict[str, Any],
    where: str,
    on_map: Callable[[int, list[tuple[int, int]]], None],
    on_data: DataSink,
    report: Progress,
    threads: int,
) -> int:
    """A version-1 archive: one stream, decompressed and hashed in order on this thread (zstd cannot find the
    frame boundaries without decompressing).  Returns the image size."""
    r = _HashingReader(raw, where)
    realsize, extents = _parse_head(r.read_exact, meta["member_name"])
    on_map(realsize, extents)
    with _dispatcher(on_data, min(threads, 2)) as put:
        for off, length in extents:
            pos = off
            while pos < off + length:
                data = r.read_exact(min(READ_SIZE, off + length - pos))
                put(pos, data)
                pos += len(data)
                report(pos, realsize)
    r.read_exact(tf.pad(sum(n for _, n in extents)) + 2 * tf.BLOCK)
    if not r.at_eof() and r.count >= meta["tar_bytes"]:
        raise tf.TarFormatError("unexpected data after the end of the archive")
    if r.count != meta["tar_bytes"] or r.hasher.hexdigest() != meta["tar_blake3"]:
        raise BackupDamaged(f"{where} fails its BLAKE3 check (data damaged)")
    return realsize


def _read_indexed(
    storage: Storage,
    key: str,
    meta: dict[str, Any],
    where: str,
    on_map: Callable[[int, list[tuple[int, int]]], None],
    on_data: DataSink,
    report: Progress,
    threads: int,
) -> int:
    """A version-2 archive: frames located by the index, decompressed (zstd checks each frame's checksum) and
    handed to on_data on `threads` threads; this thread takes them back in order to update the BLAKE3 of the
    whole tar stream (one pass at ~7 GB/s: a sixth of the decompression work, overlapped with it) and bounds
    how far ahead the workers run.  Returns the image size."""
    frames: list[list[int]] = meta["frames"]
    c_start = [0] * len(frames)
    u_start = [0] * len(frames)
    for i in range(1, len(frames)):
        c_start[i] = c_start[i - 1] + frames[i - 1][0]
        u_start[i] = u_start[i - 1] + frames[i - 1][1]
    have = _size(storage, key, where)
    if have < meta["archive_bytes"]:
        raise BackupDamaged(f"{where} is truncated ({have} bytes, its index says {meta['archive_bytes']})")
    if have > meta["archive_bytes"]:
        raise tf.TarFormatError("unexpected data after the end of the archive")
    local = threading.local()

    def load(i: int) -> bytes:
        (csize, usize), c0 = frames[i], c_start[i]

        def unpack(packed: memoryview) -> bytes:  # decompressed from the storage's read buffer: no copy
            if len(packed) != csize:
                raise BackupDamaged(f"{where} is truncated")
            d = getattr(local, "d", None)
            if d is None:
                d = local.d = zstandard.ZstdDecompressor()
            try:
                # The size the frame declares is allocated before anything is checked: it must be the index's.
                declared = zstandard.get_frame_parameters(packed).content_size
                if declared != usize:
                    raise BackupDamaged(
                        f"{where} is corrupt: frame {i} declares {declared} bytes, its index says {usize}"
                    )
                data: bytes = d.decompress(packed, max_output_size=usize)
            except zstandard.ZstdError as exc:
                raise BackupDamaged(
                    f"{where} is corrupt: frame {i} (archive bytes {c0}-{c0 + csize}) (zstd: {exc})"
                ) from None
            if len(data) != usize:
                raise BackupDamaged(f"{where} is corrupt: frame {i} holds {len(data)} bytes, its index says {usize}")
            return data

        try:
            return storage.read_once(key, unpack, c0, csize)
        except OSError as exc:
            raise _unreadable(where, exc) from None

    hasher = blake3.blake3()
    head = bytearray()
    nxt = pos = 0

    def read_exact(n: int) -> bytes:
        nonlocal nxt, pos
        while len(head) - pos < n:
            if nxt == len(frames):
                raise BackupDamaged(f"{where} is truncated")
            data = load(nxt)
            hasher.update(data)
            head.extend(data)
            nxt += 1
        pos += n
        return bytes(head[pos - n : pos])

    realsize, extents = _parse_head(read_exact, meta["member_name"])
    on_map(realsize, extents)
    d0 = pos  # tar offset of the first data byte
    cum = [0]
    for _, n in extents:
        cum.append(cum[-1] + n)
    data_bytes = cum[-1]
    if meta["tar_bytes"] != d0 + data_bytes + tf.pad(data_bytes) + 2 * tf.BLOCK:
        raise tf.TarFormatError("archive length does not match its sparse map")

    def scatter(u0: int, data: bytes) -> None:
        """Hand the data bytes among tar bytes [u0, u0 + len(data)) to on_data, split at extent ends."""
        lo, hi = max(u0, d0), min(u0 + len(data), d0 + data_bytes)
        while lo < hi:
            k = bisect_right(cum, lo - d0) - 1
            end = min(hi, d0 + cum[k + 1])
            piece = data if (lo, end) == (u0, u0 + len(data)) else data[lo - u0 : end - u0]
            on_data(extents[k][0] + lo - d0 - cum[k], piece)
            lo = end

    def image_pos(u: int) -> int:
        """Image offset reached once tar bytes [0, u) are done."""
        p = u - d0
        if p >= data_bytes:
            return realsize
        if p <= 0:
            return 0
        k = bisect_right(cum, p) - 1
        return extents[k][0] + p - cum[k]

    def work(i: int) -> bytes:
        data = load(i)
        scatter(u_start[i], data)
        return data

    if nxt:  # data that shares the head's last frame (none with our writer: the head is a frame of its own)
        scatter(u_start[nxt - 1], bytes(head[u_start[nxt - 1] :]))
    inflight: deque[tuple[int, Future[bytes]]] = deque()
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="vmbackup-archive") as pool:

        def collect() -> None:
            i, fut = inflight.popleft()
            hasher.update(fut.result())
            report(image_pos(u_start[i] + frames[i][1]), realsize)

        try:
            for i in range(nxt, len(frames)):
                inflight.append((i, pool.submit(work, i)))
                if len(inflight) > max(1, threads):
                    collect()
            while inflight:
                collect()
        finally:
            _drain(deque(f for _, f in inflight))
    if hasher.hexdigest() != meta["tar_blake3"]:
        raise BackupDamaged(f"{where} fails its BLAKE3 check (data damaged)")
    return realsize


def delete_normal(storage: Storage, backup_id: str) -> int:
    freed = 0
    # Meta first, durably: once it is gone the backup no longer exists, and a power cut can no longer bring it
    # back over an archive whose removal did reach the disk.
    for key, durable in ((meta_key(backup_id), True), (archive_key(backup_id), False)):
        with suppress(ObjectMissing):
            freed += storage.delete(key, durable=durable)
    return freed


def orphan_archives(storage: Storage) -> Iterator[str]:
    """Archive keys without their meta: a take that died between the two writes.  Names that are no backup
    id's were not written by the engine: left alone."""
    for key in storage.list("normal/"):
        if not key.endswith(".tar.zst"):
            continue
        try:
            backup_id = check_backup_id(key[len("normal/") : -len(".tar.zst")])
        except InvalidBackupId:
            continue
        if not storage.exists(meta_key(backup_id)):
            yield key
