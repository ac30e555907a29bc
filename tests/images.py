"""Generated disk images for tests: holes, written zeros, random and compressible data."""

from __future__ import annotations

import os
import random
from pathlib import Path

MiB = 1 << 20


def write_image(path: Path, size: int = 6 * MiB, seed: int = 0) -> Path:
    """Holes, written zeros, random and compressible data, and a tail ending in a hole."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(rng.randbytes(100_000))  # random, not block aligned
        f.seek(MiB)
        f.write(bytes(MiB))  # written zeros: data on disk, but must be stored as a hole
        f.seek(2 * MiB + 4096)
        f.write(b"compressible block of text " * 40_000)
        f.seek(4 * MiB + 123)
        f.write(rng.randbytes(70_000))
    return path


def flip_byte(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x40]) + data[pos + 1 :]


def overwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
