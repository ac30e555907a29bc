"""Which chunk size for incremental backups?  Makes an image, backs it up, rewrites ~2% of its 4 KiB blocks
at random offsets, backs it up again, and prints what the second backup stored per chunk size.

    python bench/chunk_size.py [--size-mib 256] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

from vmbackup.engine import Engine
from vmbackup.storage import LocalStorage

SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20]


def make_image(path: str, size: int, rng: random.Random) -> None:
    # Half random (incompressible) data, half text-like compressible data, in 1 MiB stripes.
    with open(path, "wb") as f:
        for i in range(size >> 20):
            if i % 2:
                f.write(rng.randbytes(1 << 20))
            else:
                f.write((b"vmbackup %08d " % i) * (1 << 20 // 18) + bytes((1 << 20) - 18 * (1 << 20 // 18)))


def scatter_writes(path: str, size: int, fraction: float, rng: random.Random, run: int = 1) -> int:
    """Rewrite `fraction` of the 4 KiB blocks, in runs of `run` consecutive blocks at random places."""
    runs = size // 4096 // run
    n = int(runs * fraction)
    with open(path, "r+b") as f:
        for b in rng.sample(range(runs), n):
            f.seek(b * run * 4096)
            f.write(rng.randbytes(4096 * run))
    return n * run * 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    size = args.size_mib << 20
    work = tempfile.mkdtemp(dir=args.dir, prefix="vmbackup-bench-")
    try:
        image = os.path.join(work, "disk.img")
        make_image(image, size, random.Random(1))
        base = os.path.join(work, "base.img")
        shutil.copyfile(image, base)
        clustered = os.path.join(work, "clustered.img")
        shutil.copyfile(image, clustered)
        changed = scatter_writes(image, size, 0.02, random.Random(2))
        scatter_writes(clustered, size, 0.02, random.Random(3), run=16)
        print(
            f"image {args.size_mib} MiB, {changed >> 10} KiB rewritten: scattered 4 KiB blocks, or clustered"
            " in 64 KiB runs"
        )
        print(f"{'chunk':>8} {'1st MB/s':>9} {'2nd stores':>11} {'2nd MB/s':>9} {'clustered':>10} {'manifest/TiB':>13}")
        for cs in SIZES:
            store = os.path.join(work, f"store-{cs}")
            eng = Engine(LocalStorage(store), chunk_size=cs)
            t = time.perf_counter()
            eng.take_incremental("first", {"d": base})
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            st = eng.take_incremental("second", {"d": image})
            t2 = time.perf_counter() - t
            chunks = st.new_bytes_stored - LocalStorage(store).size("manifests/second.json")
            st3 = eng.take_incremental("third", {"d": clustered})
            chunks3 = st3.new_bytes_stored - LocalStorage(store).size("manifests/third.json")
            per_tib = (1 << 40) // cs * 67  # ~67 bytes of JSON per chunk id
            print(
                f"{cs >> 10:>6}Ki {size / t1 / 1e6:>9.0f} {chunks / 2**20:>9.1f}Mi {size / t2 / 1e6:>9.0f}"
                f" {chunks3 / 2**20:>8.1f}Mi {per_tib / 2**20:>11.0f}Mi"
            )
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
