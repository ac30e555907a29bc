"""Which chunk size for incremental backups?  On bench/compare.py's image and change (same generator, same
seeds): first backup, the 2% change, second backup, per chunk size, through the engine library.

    .venv/bin/python bench/chunk_size.py [--size 2G] [--work DIR] [--sizes 64,128,256,1024]

Cold cache (drop_caches) before each timed backup when run as root.  Wall times include the engine's own
fsyncs; one run per size, not alternated, so compare sizes within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from compare import change_image, make_image, parse_size

from vmbackup.engine import Engine
from vmbackup.engine.manifest import manifest_key
from vmbackup.storage import LocalStorage


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=parse_size, default=parse_size("2G"))
    ap.add_argument("--work", default=tempfile.gettempdir())
    ap.add_argument("--sizes", default="64,128,256,1024", help="chunk sizes in KiB")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work, prefix="vmbackup-chunks-"))
    try:
        base, changed = work / "base.img", work / "changed.img"
        make_image(base, work / "data", args.size, args.seed)
        subprocess.run(["cp", str(base), str(changed)], check=True)  # holes stay holes, written zeros stay data
        change_image(changed, args.size, 0.02, args.seed + 100)
        print(f"{'chunk':>8} {'1st s':>7} {'2nd s':>7} {'2nd stores':>11} {'manifest':>9}")
        for kib in (int(x) for x in args.sizes.split(",")):
            store = work / f"store-{kib}"
            storage = LocalStorage(store)
            eng = Engine(storage, chunk_size=kib << 10)
            drop_caches()
            t = time.perf_counter()
            eng.take_incremental("first", {"d": str(base)})
            t1 = time.perf_counter() - t
            drop_caches()
            t = time.perf_counter()
            st = eng.take_incremental("second", {"d": str(changed)})
            t2 = time.perf_counter() - t
            manifest = storage.size(manifest_key("second"))
            print(
                f"{kib:>6}Ki {t1:>7.2f} {t2:>7.2f} {(st.new_bytes_stored - manifest) / 2**20:>9.1f}Mi"
                f" {manifest / 2**20:>7.2f}Mi",
                flush=True,
            )
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
