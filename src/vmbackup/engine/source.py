"""Reading disk images: open, size, and where the data is (holes and all-zero blocks cost no storage).

Holes are found with SEEK_DATA/SEEK_HOLE (metadata only, no reads); block devices and file systems without
them report one data extent covering everything.  Zeros written by a guest are found later, where the data
is read anyway: by their hash (chunks) or a memcmp (archive frames).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from vmbackup.errors import SourceMissing

READ_SIZE = 1024 * 1024
_NO_SEEK_DATA = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ESPIPE)


DIRECT_ALIGN = 4096  # offsets, lengths and buffer addresses of O_DIRECT reads
_O_DIRECT = getattr(os, "O_DIRECT", 0)


@dataclass
class Source:
    path: str
    fd: int
    size: int
    direct_fd: int | None = None  # the image opened with O_DIRECT too (see open_source)
    _refused_fd: int | None = None  # a direct descriptor that refused a read; closed with the source

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd, self._refused_fd):
            if fd is not None:
                os.close(fd)

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` from `offset`; a short read means the image shrank under us.  Aligned reads into an
        aligned buffer (an mmap) go through the direct descriptor when there is one."""
        done = 0
        dfd = self.direct_fd
        if dfd is not None and offset % DIRECT_ALIGN == 0 and len(buf) % DIRECT_ALIGN == 0:
            try:
                while done < len(buf):
                    n = os.preadv(dfd, [buf[done:]], offset + done)
                    done += n
                    if n == 0 or n % DIRECT_ALIGN:
                        break  # end of file: the buffered loop below reports or finishes it
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Refused (an unaligned buffer, a file system without O_DIRECT): buffered from now on.  Other
                # threads may be reading through dfd, so it is closed with the source, not here.
                self.direct_fd, self._refused_fd = None, dfd
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], offset + done)
            if n == 0:
                raise SourceMissing(f"disk image {self.path} shrank during the backup (short read at {offset + done})")
            done += n


def open_source(path: str, *, direct: bool = False) -> Source:
    """`direct`: also open the image with O_DIRECT, for callers that read it once in large aligned pieces (no
    page cache to fill and reclaim; see engine/archive.py).  Only a regular file or a block device is read:
    the image is opened with O_NONBLOCK, so a FIFO (or a device that waits for a peer) cannot block the open,
    and refused after an fstat of what was actually opened; O_NONBLOCK is then cleared for the reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceMissing(f"disk image {path} does not exist") from None
    except OSError as exc:
        raise SourceMissing(f"disk image {path} cannot be read: {exc.strerror}") from None
    except ValueError:  # a NUL byte
        raise SourceMissing(f"disk image {path!r} is not a valid path") from None
    try:
        st = _regular_or_block(fd, path)
        size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        dfd = _reopen_direct(path, st) if direct and _O_DIRECT else None
    except BaseException:
        os.close(fd)
        raise
    return Source(path, fd, size, dfd)


def _regular_or_block(fd: int, path: str) -> os.stat_result:
    st = os.fstat(fd)
    if not is_image_mode(st.st_mode):
        raise SourceMissing(f"disk image {path} is {file_kind(st.st_mode)}: {NOT_AN_IMAGE}")
    os.set_blocking(fd, True)
    return st


def _reopen_direct(path: str, st: os.stat_result) -> int | None:
    """The same file opened again with O_DIRECT, or None.  Opened by name, so the name may lead elsewhere by
    now: non-blocking again, and dropped unless it is the very file of `st`."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | _O_DIRECT)
    except OSError:  # tmpfs and a few others refuse O_DIRECT
        return None
    again = os.fstat(dfd)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        os.close(dfd)
        return None
    os.set_blocking(dfd, True)
    return dfd


def file_kind(mode: int) -> str:
    """What a file that is no disk image is, for messages."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def is_image_mode(mode: int) -> bool:
    """Disk images are regular files or block devices, nothing else (a FIFO would block a reader forever)."""
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


NOT_AN_IMAGE = "neither a regular file nor a block device"


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
