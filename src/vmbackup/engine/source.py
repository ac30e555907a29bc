"""Reading disk images: open, size, and where the data is (holes and all-zero blocks cost no storage).

Holes are found with SEEK_DATA/SEEK_HOLE (metadata only, no reads); block devices and file systems without
them report one data extent covering everything.  Inside data extents all-zero blocks are found by comparing
with a zero buffer (a memcmp, ~40 GB/s here), so zeros written by a guest are treated like holes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmbackup.errors import SourceMissing

SCAN_BLOCK = 64 * 1024  # zero-detection granularity of normal archives; larger reads are split into these
READ_SIZE = 1024 * 1024
_NO_SEEK_DATA = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ESPIPE)


@dataclass
class Source:
    path: str
    fd: int
    size: int

    def close(self) -> None:
        os.close(self.fd)

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` from `offset`; a short read means the image shrank under us."""
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], offset + done)
            if n == 0:
                raise SourceMissing(f"disk image {self.path} shrank during the backup (short read at {offset + done})")
            done += n


def open_source(path: str) -> Source:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceMissing(f"disk image {path} does not exist") from None
    except OSError as exc:
        raise SourceMissing(f"disk image {path} cannot be read: {exc.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        size = st.st_size
    elif stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
    else:
        os.close(fd)
        raise SourceMissing(f"disk image {path} is neither a regular file nor a block device")
    return Source(path, fd, size)


def data_extents(src: Source) -> Iterator[tuple[int, int]]:
    """(offset, length) of the regions that may hold data, in order; holes are left out."""
    pos = 0
    while pos < src.size:
        try:
            start = os.lseek(src.fd, pos, os.SEEK_DATA)
            end = min(os.lseek(src.fd, start, os.SEEK_HOLE), src.size)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            if exc.errno in _NO_SEEK_DATA:
                yield pos, src.size - pos
                return
            raise
        if start >= src.size:
            return
        yield start, end - start
        pos = end


class HoleMap:
    """Answers "is [offset, offset+length) entirely a hole?" for increasing offsets, one lseek per extent."""

    def __init__(self, src: Source) -> None:
        self._extents = data_extents(src)
        self._current: tuple[int, int] | None = next(self._extents, None)

    def is_hole(self, offset: int, length: int) -> bool:
        while self._current is not None and sum(self._current) <= offset:
            self._current = next(self._extents, None)
        return self._current is None or self._current[0] >= offset + length


_ZERO_BLOCK = bytes(SCAN_BLOCK)


def is_zero(data: bytes | bytearray) -> bool:
    """True when every byte is zero; a bytes comparison is a memcmp, far cheaper than hashing."""
    return data == (_ZERO_BLOCK if len(data) == SCAN_BLOCK else bytes(len(data)))


def nonzero_extents(src: Source, on_read: Callable[[int], None]) -> Iterator[tuple[int, int]]:
    """Data extents with all-zero SCAN_BLOCKs cut out, adjacent pieces merged.  Reads every data byte once;
    `on_read(n)` is told how many bytes were read (for stats and progress)."""
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    run_start, run_end = -1, -1
    for ext_off, ext_len in data_extents(src):
        pos, end = ext_off, ext_off + ext_len
        while pos < end:
            n = min(READ_SIZE, end - pos)
            src.read_into(view[:n], pos)
            on_read(n)
            for b in range(0, n, SCAN_BLOCK):
                m = min(SCAN_BLOCK, n - b)
                if is_zero(buf[b : b + m]):
                    continue
                off = pos + b
                if off == run_end:
                    run_end += m
                else:
                    if run_start >= 0:
                        yield run_start, run_end - run_start
                    run_start, run_end = off, off + m
            pos += n
    if run_start >= 0:
        yield run_start, run_end - run_start
