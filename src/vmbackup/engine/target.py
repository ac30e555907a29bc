"""Opening a restore target: a new file (written aside, renamed on success) or an existing image in place.

A new file is created as `.<name>.vmbackup-<random>` in the target's directory, truncated to the image size
(so every region we do not write is a hole that reads as zeros), fsynced and renamed over the final name only
when the restore succeeded: a failed restore leaves nothing.

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
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmbackup.errors import StorageFull, TargetInvalid

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1024 * 1024)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@dataclass
class Target:
    path: str
    fd: int
    size: int
    needs_zeroing: bool  # True when regions we skip would keep stale data

    def write(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

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
    try:
        if st is None:
            with _new_file(p, size) as t:
                yield t
        elif stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
            with _in_place(p, size, block=stat.S_ISBLK(st.st_mode) or force_overwrite) as t:
                yield t
        else:
            raise TargetInvalid(f"restore target {path} is neither a regular file nor a block device")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(f"no space left on the restore target {path}") from exc
        raise


@contextlib.contextmanager
def _new_file(p: Path, size: int) -> Iterator[Target]:
    if not p.parent.is_dir():
        raise TargetInvalid(f"restore target directory {p.parent} does not exist")
    tmp = p.parent / f".{p.name}.vmbackup-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        yield Target(str(p), fd, size, needs_zeroing=False)
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
def _in_place(p: Path, size: int, *, block: bool) -> Iterator[Target]:
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TargetInvalid(f"restore target {p} cannot be opened for writing: {exc.strerror}") from None
    try:
        if block:
            have = os.lseek(fd, 0, os.SEEK_END)
            if have < size:
                raise TargetInvalid(f"restore target {p} holds {have} bytes, the image needs {size}")
        else:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
        yield Target(str(p), fd, size, needs_zeroing=block)
        os.fsync(fd)
    finally:
        os.close(fd)
