"""Storage in a local (or mounted) directory: one file per key.

Durability (the contract in storage/base.py): a writer writes `<dir>/.tmp-<name>-<random>`, fsyncs it,
renames it over the final name and fsyncs the directory (and the parent of any directory it had to create),
so after `open_writer` returns the object survives a power cut and a crash never exposes a partial object.
A durable `delete` fsyncs the directory after the unlink; others leave that to the next fsync of it.  (Write-behind
with sync_file_range was tried and slowed the writer: BENCHMARKS.md, round 1.)

A `batch` (the chunk store's) keeps the same order per object, temporary -> fsync -> rename, but pays the
fsyncs once per flush instead of twice per object: every put keeps its file open; `flush` fsyncs them (the
first fsync commits the journal for all of them), renames them, and the directories are fsynced once when
the batch ends: less than half the per-file cost of two fsyncs per file (BENCHMARKS.md, round 1).

The store-wide lock is `flock` on `<root>/.lock`; flock locks belong to an open file description, so they
also exclude threads of one process that open the lock separately.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from vmbackup.errors import StorageFull
from vmbackup.storage.base import Batch, ObjectMissing, Storage, T, Writer, check_key

_TMP = ".tmp-"
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_ALIGN = 4096  # offsets and lengths of O_DIRECT reads: the logical block size of any common device
_WRITE_BUF = 4 * 1024 * 1024  # bytes per direct write of a streamed object; two such buffers per writer
# A whole-object direct read starts with one read of this much, no fstat: a compressed 128 KiB chunk fits, so a
# chunk costs open, one read, close.  Larger objects take an fstat and a second read.
_FIRST_READ = 256 * 1024
_local = threading.local()


def _scratch(n: int) -> memoryview:
    """A page-aligned buffer of at least n bytes, reused per thread.  A smaller one it replaces is freed with
    its last view (`read_once` lends views of it)."""
    buf: mmap.mmap | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < n:
        buf = _local.buf = mmap.mmap(-1, max(n, _FIRST_READ))
    return memoryview(buf)


def _read_direct(fd: int, start: int, want: int) -> tuple[memoryview, int]:
    """(this thread's scratch buffer, bytes read) after reading up to `want` bytes at `start` (both aligned)
    from an O_DIRECT descriptor; fewer at the end of the file."""
    buf = _scratch(want)
    got = 0
    while got < want:
        n = os.preadv(fd, [buf[got:want]], start + got)
        got += n
        if n <= 0 or n % _ALIGN:  # end of file
            break
    return buf, got


def _full(exc: OSError, key: str) -> StorageFull:
    return StorageFull(f"storage full while writing {key}: {exc.strerror or exc}")


def _make_dirs(d: str) -> list[str]:
    """Create `d` and any missing parents; returns the directories created, deepest first (their entries in
    their parents are not durable until those parents are fsynced)."""
    created = []
    p = d
    while not os.path.isdir(p):
        created.append(p)
        p = os.path.dirname(p)
    if created:
        os.makedirs(d, exist_ok=True)
    return created


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalBatch:
    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage
        self._mutex = threading.Lock()
        self._pending: list[tuple[int, str, str, str]] = []  # fd, temporary path, final path, key
        self._known_dirs: set[str] = set()
        self._dirty_dirs: set[str] = set()  # directories whose entries must be fsynced before the end

    def _ensure_dir(self, d: str) -> None:
        if d in self._known_dirs:
            return
        created = _make_dirs(d)
        with self._mutex:
            self._dirty_dirs.update(os.path.dirname(c) for c in created)
            self._known_dirs.add(d)

    def put(self, key: str, data: bytes | bytearray | memoryview, /) -> None:
        final = self._storage.spath(key)
        d, name = os.path.split(final)
        tmp = f"{d}/{_TMP}{name}-{secrets.token_hex(6)}"
        try:
            self._ensure_dir(d)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise (_full(exc, key) if exc.errno == errno.ENOSPC else exc) from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException as exc:
            os.close(fd)
            os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise _full(exc, key) from exc
            raise
        with self._mutex:
            self._pending.append((fd, tmp, final, key))

    def keep(self, key: str) -> None:
        """The caller relies on the existing object `key`: its name is made durable when the batch ends
        (another writer may have renamed it moments ago and not yet fsynced its directory)."""
        d = os.path.dirname(self._storage.spath(key))
        if d not in self._dirty_dirs:
            with self._mutex:
                self._dirty_dirs.add(d)

    def flush(self) -> list[str]:
        with self._mutex:
            items, self._pending = self._pending, []
        done = 0
        try:
            for fd, _, _, _ in items:
                os.fsync(fd)
            for _, tmp, final, _ in items:
                os.replace(tmp, final)
                done += 1
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _full(exc, items[done][3]) from exc
            raise
        finally:
            for fd, _, _, _ in items:
                os.close(fd)
            for _, tmp, _, _ in items[done:]:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
        with self._mutex:
            self._dirty_dirs.update(os.path.dirname(final) for _, _, final, _ in items)
        return [key for _, _, _, key in items]

    def finish(self) -> None:
        self.flush()
        with self._mutex:
            dirs, self._dirty_dirs = sorted(self._dirty_dirs, key=len, reverse=True), set()
        for d in dirs:  # deepest first: a new directory's own entries before its entry in its parent
            try:
                fsync_dir(Path(d))
            except OSError as exc:
                raise (_full(exc, d) if exc.errno == errno.ENOSPC else exc) from exc

    def discard(self) -> None:
        with self._mutex:
            items, self._pending = self._pending, []
        for fd, tmp, _, _ in items:
            os.close(fd)
            with suppress(FileNotFoundError):
                os.unlink(tmp)


class _StreamWriter:
    """What `LocalStorage.open_writer` yields.  Data collects in a page-aligned buffer of `_WRITE_BUF` bytes;
    each full buffer is written by a helper thread with O_DIRECT while the caller fills the other one, so a
    large object (an archive) reaches the device while it is being produced, not all in the final fsync, and
    without page cache copies (BENCHMARKS.md, round 2).  The tail (and everything of a small object) is one
    ordinary write before the fsync."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._path = path
        self._dfd: int | None = None
        self._direct = bool(_O_DIRECT)
        self._free: list[mmap.mmap] = []
        self._cur: mmap.mmap | None = None
        self._fill = 0
        self._pos = 0  # file offset of the current buffer's first byte
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[mmap.mmap, Future[None]] | None = None

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            if self._cur is None:
                self._cur = self._free.pop() if self._free else mmap.mmap(-1, _WRITE_BUF)
            k = min(len(view), _WRITE_BUF - self._fill)
            self._cur[self._fill : self._fill + k] = view[:k]
            self._fill += k
            view = view[k:]
            if self._fill == _WRITE_BUF:
                self._ship()
        return n

    def _ship(self) -> None:
        assert self._cur is not None
        self._wait()  # one write in flight at most: double buffering, bounded memory
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="vmbackup-write")
        buf, self._cur = self._cur, None
        self._pending = (buf, self._pool.submit(self._write_out, buf, self._pos))
        self._pos += _WRITE_BUF
        self._fill = 0

    def _wait(self) -> None:
        if self._pending is not None:
            buf, fut = self._pending
            self._pending = None
            self._free.append(buf)
            fut.result()

    def _write_out(self, buf: mmap.mmap, offset: int) -> None:
        """In the helper thread (one at a time): a full, aligned buffer at an aligned offset."""
        view = memoryview(buf)
        if self._direct:
            try:
                if self._dfd is None:
                    self._dfd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC | _O_DIRECT)
                while view:
                    n = os.pwrite(self._dfd, view, offset)
                    view, offset = view[n:], offset + n
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False  # tmpfs and a few others refuse O_DIRECT: buffered from now on
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def flush(self) -> None:
        """Hand everything written so far to the kernel (tests that cut an archive short use it).  What follows
        is not aligned any more, so it is written through the page cache."""
        self._wait()
        self._direct = False
        if self._cur is not None and self._fill:
            view = memoryview(self._cur)[: self._fill]
            while view:
                n = os.pwrite(self._fd, view, self._pos)
                view, self._pos = view[n:], self._pos + n
            self._fill = 0

    def finish(self) -> None:
        self.flush()
        os.fsync(self._fd)

    def close(self) -> None:
        if self._pending is not None:
            with suppress(BaseException):
                self._wait()
        if self._pool is not None:
            self._pool.shutdown()
        for fd in (self._fd, self._dfd):
            if fd is not None:
                os.close(fd)
        self._free.clear()
        self._cur = None


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._root = f"{self.root}/"
        self._no_direct = False
        self._noatime = getattr(os, "O_NOATIME", 0)  # see read_once; dropped after the first EPERM
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    def spath(self, key: str) -> str:
        """`path_of` as a string, without building a Path (chunk reads and lookups do it by the ten thousand;
        profiling a 2 GiB incremental restore, Path joins and the per-component key check were a visible part
        of its Python time)."""
        return self._root + check_key(key)

    @contextmanager
    def open_writer(self, key: str) -> Iterator[Writer]:
        final = self.path_of(key)
        tmp = final.parent / f"{_TMP}{final.name}-{secrets.token_hex(6)}"
        try:
            created = _make_dirs(str(final.parent))
            w = _StreamWriter(str(tmp))
            try:
                yield w
                w.finish()
            finally:
                w.close()
            os.replace(tmp, final)
            fsync_dir(final.parent)
            for d in created:  # deepest first: a new directory's entry in its parent, up to one that existed
                fsync_dir(Path(os.path.dirname(d)))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise _full(exc, key) from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        b = _LocalBatch(self)
        try:
            yield b
            b.finish()
        except BaseException:
            b.discard()
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        # Plain syscalls: chunks are read by the ten thousand, a Python file object per read costs ~10 us.
        try:
            fd = os.open(self.spath(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        try:
            if length is None:
                length = max(0, os.fstat(fd).st_size - offset)
            parts = []
            while length > 0:
                data = os.pread(fd, length, offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                length -= len(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def get_once(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read with O_DIRECT into a reused aligned buffer: no page cache pages to allocate, fill and reclaim
        (half the wall and a third of the system time on cold chunk reads: BENCHMARKS.md, round 2).  Falls
        back to `get` where O_DIRECT is refused (tmpfs)."""
        return self.read_once(key, bytes, offset, length)

    def read_once(self, key: str, use: Callable[[memoryview], T], offset: int = 0, length: int | None = None) -> T:
        """Direct read into this thread's scratch buffer, lent to `use` without a copy.  A whole object is read
        with one read of `_FIRST_READ` bytes and no fstat when it fits (a chunk: open, read, close): chunk loads
        took half the CPU of `get_once` (BENCHMARKS.md, round 3).  O_NOATIME: with relatime, the first read of
        a file written since its last read would dirty its inode, one per chunk of the first restore after a
        take."""
        if not _O_DIRECT or self._no_direct:
            return use(memoryview(self.get(key, offset, length)))
        path = self.spath(key)
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT | self._noatime)
            except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
                if not self._noatime:
                    raise
                self._noatime = 0
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._no_direct = True
            return use(memoryview(self.get(key, offset, length)))
        try:
            start = offset - offset % _ALIGN
            if length is None:
                buf, got = _read_direct(fd, start, _FIRST_READ)
                if got == _FIRST_READ:  # it filled the buffer: a larger object, read it whole
                    buf, got = _read_direct(fd, start, -(-(os.fstat(fd).st_size - start) // _ALIGN) * _ALIGN)
                end = start + got
            else:
                buf, got = _read_direct(fd, start, -(-(offset + length - start) // _ALIGN) * _ALIGN)
                end = min(start + got, offset + length)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._no_direct = True
            return use(memoryview(self.get(key, offset, length)))
        finally:
            os.close(fd)
        with buf[offset - start : max(offset, end) - start] as view:
            return use(view)

    @contextmanager
    def open_reader(self, key: str) -> Iterator[BinaryIO]:
        try:
            f = open(self.path_of(key), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        with f:
            yield f

    def exists(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(self.spath(key)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def size(self, key: str) -> int:
        try:
            return self.path_of(key).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def delete(self, key: str, *, durable: bool = False) -> int:
        path = self.path_of(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        if durable:
            fsync_dir(path.parent)
        return size

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the directory the prefix points into, so listing `chunks/ab/` stays cheap.
        head, _, _ = prefix.rpartition("/")
        base = self.root / head if head else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == Path(".") else f"{rel.as_posix()}/{name}"
                if key.startswith(prefix):
                    yield key

    def cleanup_temp(self) -> int:
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(_TMP):
                    Path(dirpath, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    @contextmanager
    def lock(self, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, op)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
