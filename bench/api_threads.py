"""Uncached listing throughput against the number of handler threads (VMBACKUP_API_THREADS).

    .venv/bin/python bench/api_threads.py [sqlite|postgres] [threads ...]     # default: sqlite 40 8 4 2

One database with a 50-backup VM (1,000 backups), one uvicorn server per thread count with the listing cache off,
loaded in turn with `wrk -t2 -c64` (bench/api_bench.py's servers and wrk helpers), better of two runs kept.
"""

from __future__ import annotations

import shutil
import sys

import api_bench as ab


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    counts = [int(n) for n in sys.argv[2:]] or [40, 8, 4, 2]
    ab.DATA.mkdir(parents=True, exist_ok=True)
    if name == "sqlite":
        d = ab.DATA / "threads-sqlite"
        shutil.rmtree(d, ignore_errors=True)
        db = ab.Db("sqlite", f"sqlite:///{d / 'vmbackup.db'}", d)
    else:
        pg = ab.create_pg_database()
        db = ab.Db("postgres", f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg}", ab.DATA / "threads-pg", pg_db=pg)
    try:
        ab.setup_db(db)
        ab.grow(db, 1000, {"vm50": ab.TARGET_BACKUPS})
        env = db.env(cache=False)
        servers = [
            ab.Server("real", {**env, "VMBACKUP_API_THREADS": str(n)}, f"threads-{n}", "httptools") for n in counts
        ]
        try:
            results = ab.alternate(servers, ab.list_path(db.ids["vm50"]), ab.Cfg([1000], 5, 2, 1, 5, 1))
        finally:
            for s in servers:
                s.stop()
        for n, (b, runs) in zip(counts, results, strict=True):
            print(
                f"{name} threads={n}: {b.rps:.0f} req/s p50 {b.p50:.0f} ms p99 {b.p99:.0f} ms "
                f"server CPU {b.cpu_ms:.2f} ms/req; runs {[round(r.rps) for r in runs]}"
            )
    finally:
        if db.pg_db:
            ab.drop_pg_database(db.pg_db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
