"""Storage in a local (or mounted) directory: one file per key.

Durability: a writer writes `<dir>/.tmp-<name>-<random>`, fsyncs it, renames it over the final name and fsyncs
the directory, so after `open_writer` returns the object survives a power cut and a crash never exposes a
partial object.  The store-wide lock is `flock` on `<root>/.lock`; flock locks belong to an open file
description, so they also exclude threads of one process that open the lock separately.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vmbackup.errors import StorageFull
from vmbackup.storage.base import ObjectMissing, Storage, Writer, check_key

_TMP = ".tmp-"


def _full(exc: OSError, key: str) -> StorageFull:
    return StorageFull(f"storage full while writing {key}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def open_writer(self, key: str) -> Iterator[Writer]:
        final = self.path_of(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{_TMP}{final.name}-{secrets.token_hex(6)}"
        try:
            with open(tmp, "xb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise _full(exc, key) from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @contextmanager
    def open_reader(self, key: str) -> Iterator[BinaryIO]:
        try:
            f = open(self.path_of(key), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        with f:
            yield f

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path_of(key).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def delete(self, key: str) -> int:
        path = self.path_of(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            raise ObjectMissing(key) from None
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

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize
