"""Opening a restore target: a new file (written aside, renamed on success) or an existing image in place.

A new file is created as `.<name>.vmbackup-<random>` in the target's directory, truncated to the image size
(so every region we do not write is a hole that reads as zeros), fsynced and renamed over the final name only
when the restore succeeded: a failed restore leaves nothing.

Large aligned writes go through a second descriptor opened with O_DIRECT: a restore writes gigabytes that
nobody reads back soon, and through the page cache every byte costs a kernel copy into freshly allocated
cache pages plus writeback later (BENCHMARKS.md, round 1).  Direct writes go from a reused, page-aligned
buffer to the device.  Unaligned pieces (the
tail of an image whose size is not a multiple of 4 KiB) and file systems that refuse O_DIRECT (tmpfs) use
ordinary writes.

In place cannot be atomic: the existing file or device is overwritten as we go, and a failed restore leaves
it partly written.  An existing regular file is truncated to 0 and then to the image size first, which zeroes
it in one step (and keeps it sparse), so only data has to be written.  A block device keeps its old
contents, so the restore must zero every region the backup holds as zeros (`needs_zeroing`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmbackup.engine.source import NOT_AN_IMAGE, file_kind, is_image_mode
from vmbackup.errors import StorageFull, TargetInvalid

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1024 * 1024)
DIRECT_ALIGN = 4096  # offsets and lengths of O_DIRECT writes: the logical block size of any common device
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_local = threading.local()


def _aligned_buffer(n: int) -> memoryview:
    """A page-aligned buffer of at least n bytes, reused per thread."""
    buf: mmap.mmap | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < n:
        if buf is not None:
            buf.close()
        buf = _local.buf = mmap.mmap(-1, max(n, 1024 * 1024))
    return memoryview(buf)[:n]


def _open_direct(path: str | Path, fd: int) -> int | None:
    """The file of `fd` opened again with O_DIRECT, or None.  By name, so the name may lead elsewhere by now:
    non-blocking (a FIFO put there cannot hang us), and dropped unless it is the very file of `fd`."""
    if not _O_DIRECT:
        return None
    try:
        dfd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK | _O_DIRECT)
    except OSError:  # tmpfs and a few others refuse O_DIRECT
        return None
    st, again = os.fstat(fd), os.fstat(dfd)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        os.close(dfd)
        return None
    os.set_blocking(dfd, True)
    return dfd


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@dataclass
class Target:
    path: str
    fd: int
    size: int
    needs_zeroing: bool  # True when regions we skip would keep stale data
    direct_fd: int | None = None  # the same file opened with O_DIRECT, when the file system allows it
    _refused_fd: int | None = None  # a direct descriptor that refused an aligned write, closed at the end

    def write(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def writev(self, parts: list[bytes], offset: int) -> None:
        """Write the parts back to back from `offset`: one direct write when aligned, else one pwritev."""
        total = sum(map(len, parts))
        dfd = self.direct_fd
        if dfd is not None and offset % DIRECT_ALIGN == 0 and total % DIRECT_ALIGN == 0:
            buf = _aligned_buffer(total)
            pos = 0
            for p in parts:
                buf[pos : pos + len(p)] = p
                pos += len(p)
            try:
                while pos := pos - os.pwrite(dfd, buf[total - pos :], offset + total - pos):
                    pass
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Alignment refused after all: buffered from now on.  Other threads may still be writing
                # through dfd, so it is closed with the target, not here.
                self.direct_fd = None
                self._refused_fd = dfd
        n = os.pwritev(self.fd, parts, offset)
        if n < total:  # rare: finish the rest in one piece
            self.write(b"".join(parts)[n:], offset + n)

    def close_direct(self) -> None:
        for fd in (self.direct_fd, self._refused_fd):
            if fd is not None:
                os.close(fd)
        self.direct_fd = self._refused_fd = None

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros: punch a hole if the kernel can, else write zeros."""
        if length <= 0:
            return
        ret = _libc.fallocate(
            self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_int64(offset), ctypes.c_int64(length)
        )
        if ret == 0:
            return
        end = offset + length
        while offset < end:
            n = min(len(_ZEROS), end - offset)
            self.write(_ZEROS[:n], offset)
            offset += n


@contextlib.contextmanager
def open_target(path: str, size: int, *, force_overwrite: bool = False) -> Iterator[Target]:
    """`force_overwrite` treats an existing regular file like a block device (tests use it to exercise the
    zeroing path without a real device)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetInvalid(f"restore target {path} cannot be used: {exc.strerror}") from None
    except ValueError:  # a NUL byte
        raise TargetInvalid(f"restore target {path!r} is not a valid path") from None
    try:
        if st is None:
            with _new_file(p, size) as t:
                yield t
        elif is_image_mode(st.st_mode):
            with _in_place(p, size, force_overwrite=force_overwrite) as t:
                yield t
        else:
            raise TargetInvalid(f"restore target {path} is {file_kind(st.st_mode)}: {NOT_AN_IMAGE}")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"no space left on the restore target {path}") from exc
        raise


def _resize(fd: int, p: Path, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.EFBIG, errno.EINVAL):  # beyond what this file system holds in one file
            raise TargetInvalid(f"restore target {p} cannot hold {size} bytes: {exc.strerror}") from None
        raise


@contextlib.contextmanager
def _new_file(p: Path, size: int) -> Iterator[Target]:
    if not p.parent.is_dir():
        raise TargetInvalid(f"restore target directory {p.parent} does not exist")
    tmp = p.parent / f".{p.name}.vmbackup-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _resize(fd, p, size)
        t = Target(str(p), fd, size, needs_zeroing=False, direct_fd=_open_direct(tmp, fd))
        try:
            yield t
        finally:
            t.close_direct()
        os.fsync(fd)
        os.replace(tmp, p)
        dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _in_place(p: Path, size: int, *, force_overwrite: bool) -> Iterator[Target]:
    """The existing image, opened non-blocking (the name may have been replaced by a FIFO since it was looked
    at: its open would wait for a reader forever) and checked again on what was opened."""
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise TargetInvalid(f"restore target {p} cannot be opened for writing: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not is_image_mode(mode):
            raise TargetInvalid(f"restore target {p} is {file_kind(mode)}: {NOT_AN_IMAGE}")
        os.set_blocking(fd, True)
        block = stat.S_ISBLK(mode) or force_overwrite
        if block:
            have = os.lseek(fd, 0, os.SEEK_END)
            if have < size:
                raise TargetInvalid(f"restore target {p} holds {have} bytes, the image needs {size}")
        else:
            os.ftruncate(fd, 0)
            _resize(fd, p, size)
        t = Target(str(p), fd, size, needs_zeroing=block, direct_fd=_open_direct(p, fd))
        try:
            yield t
        finally:
            t.close_direct()
        os.fsync(fd)
    finally:
        os.close(fd)
