"""Fleet polling benchmark (issue 11): a control panel driving vmbackup the way Cloud.net drives OnApp.

    .venv/bin/python bench/fleet_bench.py [--only sqlite|postgres] [--seconds 15] [--rounds 2]
        [--processes 1 2] [--threads 4] [--pending 250] [--views-per-s 16.7] [--profile]

The fleet: 1,000 VMs, 20 backups each (20,000 rows inserted directly, copies of rows the service itself builds:
bench/api_bench.py's templates); ``--pending`` of them (one per VM, the VM's newest) not built yet. The panel
polls every pending backup with ``GET /backups/:id.json`` every 15 s, and reads a VM's backup list
(``GET /virtual_machines/:id/backups.json``, the spec listing) on every page view (``--views-per-s`` over the
whole fleet, uniformly over the VMs). So the mix is polls : views = pending / 15 : views-per-s, and the 64
connections are split in that proportion (defaults: 250 pending = 16.7 polls/s against 16.7 views/s, 32 + 32).
Every request carries Basic auth (the panel's one admin API account, as Cloud.net has one per OnApp).

One run loads both endpoints at once, each from its own wrk (one thread, a Lua script picking a random path of
its list per request), so each endpoint gets its own throughput and latency percentiles; then the same against
a bare ASGI app answering every one of those paths with the bytes and headers the service answered it with
(fetched from it first). Both run through bench/api/fleet_server.py: serving.listen_socket + serving.uvicorn_config
(the GuardedProtocol, keep-alive, connection cap) + serving.serve_processes, i.e. the way `vmbackup serve` runs.
Servers alternate (real, bare, real, bare, ...); each one's better run by throughput is kept, all runs are shown.

Targets (reported, not asserted): each endpoint >= 0.5x the bare app's throughput, p99 within 10x of the bare p99.
Output: stdout and bench/out/fleet.md.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import api_bench as ab
import httpx

VMS = 1_000
PER_VM = 20
POLL_SECONDS = 15.0
CONNECTIONS = 64
LAUNCHER = ab.APPS_DIR / "fleet_server.py"
OUT_MD = ab.OUT / "fleet.md"

LUA = """
local paths = {}
for line in io.lines(os.getenv("FLEET_PATHS")) do paths[#paths + 1] = line end
math.randomseed(tonumber(os.getenv("FLEET_SEED")))
request = function()
  return wrk.format(nil, paths[math.random(#paths)])
end
"""


@dataclass
class Fleet:
    vm_ids: list[int]
    pending_ids: list[int]
    polls: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)


def build_fleet(db: ab.Db, pending: int) -> Fleet:
    """1,000 VMs (api_bench's inventory, cut to the fleet) with 20 backups each, the newest one of the first
    ``pending`` VMs not built yet."""
    from sqlalchemy import insert, select

    from vmbackup.db.models import Backup, VirtualMachine
    from vmbackup.db.session import make_engine

    ab.FILLER_VMS = VMS
    ab.setup_db(db)
    vm_ids = sorted(db.filler_vms)[:VMS]
    engine = make_engine(db.url)
    with engine.connect() as conn:
        idents = dict(conn.execute(select(VirtualMachine.id, VirtualMachine.identifier)).all())
    rnd = random.Random(11)
    rows = []
    n = 0
    for k, vm_id in enumerate(vm_ids):
        for j in range(PER_VM):
            kind = "normal" if rnd.random() < 0.7 else "incremental"
            row = ab._row(db, kind, vm_id, 10_000_000 + vm_id if kind == "normal" else None, n)
            row["vm_identifier"] = idents[vm_id]  # a listing shows the backups of this VM's identifier only
            n += 1
            if k < pending and j == PER_VM - 1:
                row.update(built=False, built_at=None, backup_size=0)
            rows.append(row)
    with engine.begin() as conn:
        for i in range(0, len(rows), ab.BATCH):
            conn.execute(insert(Backup), rows[i : i + ab.BATCH])
    with engine.connect() as conn:
        pending_ids = list(conn.scalars(select(Backup.id).where(Backup.built.is_(False)).order_by(Backup.id)).all())
    if db.name == "postgres":
        from sqlalchemy import create_engine, text

        ac = create_engine(db.url, isolation_level="AUTOCOMMIT")
        with ac.connect() as conn:
            conn.execute(text("VACUUM ANALYZE backups"))
        ac.dispose()
    engine.dispose()
    assert len(pending_ids) == pending, (len(pending_ids), pending)
    f = Fleet(vm_ids, pending_ids)
    f.polls = [f"/backups/{b}.json" for b in pending_ids]
    f.lists = [f"/virtual_machines/{v}/backups.json" for v in vm_ids]
    return f


def start(kind: str, env: dict[str, str], label: str, processes: int) -> ab.Server:
    return ab.Server(
        kind,
        {**env, "VMBACKUP_LISTEN": "127.0.0.1:{port}"},
        label,
        "httptools",
        argv=[ab.PY, str(LAUNCHER), kind, str(processes)],
    )


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (several API processes)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += ab.cpu_seconds(p)
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo.extend(int(k) for k in kids)
    return total


def warm_all(server: ab.Server, paths: list[str], clients: int = 8) -> None:
    """Every path requested on ``clients`` connections of their own (each process of a multi-process server keeps
    its own cache, and a connection stays with the process that accepted it), so runs start from a warm cache."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: fetch_all(server, paths), range(clients)))


def fetch_all(server: ab.Server, paths: list[str]) -> dict[str, tuple[list[tuple[str, str]], bytes]]:
    answers = {}
    with httpx.Client(base_url=server.base, headers={"Authorization": ab.AUTH}, timeout=60) as c:
        for p in paths:
            r = c.get(p)
            if r.status_code != 200:
                raise RuntimeError(f"{p}: {r.status_code} {r.text[:200]}")
            answers[p] = ([(k, v) for k, v in r.headers.multi_items() if k not in ("date", "server")], r.content)
    return answers


@dataclass
class Run:
    poll: ab.Wrk
    lst: ab.Wrk
    cpu_ms: float  # server CPU per request, both endpoints


def mixed(server: ab.Server, fleet: Fleet, conns: tuple[int, int], seconds: float, seed: int) -> Run:
    """Both endpoints at once: one wrk per endpoint, ``conns`` = (poll, list) connections."""
    files = {}
    for name, paths in (("poll", fleet.polls), ("list", fleet.lists)):
        f = ab.DATA / f"fleet-{name}.txt"
        f.write_text("\n".join(paths) + "\n")
        files[name] = f
    script = ab.DATA / "fleet.lua"
    script.write_text(LUA)
    before = tree_cpu(server.proc.pid)
    procs = []
    for f, c in zip(files.values(), conns, strict=True):
        env = {**os.environ, "FLEET_PATHS": str(f), "FLEET_SEED": str(seed + len(procs))}
        cmd = ab.wrk_cmd(server.base + "/", 1, c, seconds, script)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 60)
        if p.returncode != 0:
            raise RuntimeError(f"wrk failed: {err}")
        outs.append(ab.parse_wrk(out))
    cpu = tree_cpu(server.proc.pid) - before
    total = sum(w.requests for w in outs)
    return Run(outs[0], outs[1], cpu / total * 1000 if total else float("nan"))


class Writer:
    """While running: ``rate`` commits per second, each an UPDATE of one pending backup's row from a connection of
    its own (as `vmbackup worker` commits a take's progress), so every cached answer ends that often."""

    def __init__(self, db: ab.Db, fleet: Fleet, rate: float) -> None:
        import threading

        self.db, self.fleet, self.rate = db, fleet, rate
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.commits = 0

    def _run(self) -> None:
        from sqlalchemy import update

        from vmbackup.db.models import Backup
        from vmbackup.db.session import make_engine

        engine = make_engine(self.db.url)
        rnd = random.Random(5)
        while not self.stop_event.wait(1 / self.rate):
            with engine.begin() as conn:
                b = rnd.choice(self.fleet.pending_ids)
                conn.execute(update(Backup).where(Backup.id == b).values(backup_size=Backup.backup_size + 1))
            self.commits += 1
        engine.dispose()

    def __enter__(self) -> Writer:
        if self.rate > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        if self.rate > 0:
            self.thread.join()


def measure(
    servers: dict[str, ab.Server],
    fleet: Fleet,
    conns: tuple[int, int],
    seconds: float,
    rounds: int,
    writer: Writer | None = None,
) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {k: [] for k in servers}
    for s in servers.values():  # warm-up: every path answered once by every process, connections opened
        warm_all(s, fleet.polls + fleet.lists)
        mixed(s, fleet, conns, 2, seed=0)
    for r in range(rounds):
        for label, s in servers.items():
            if writer is not None and label == "real":
                with Writer(writer.db, writer.fleet, writer.rate):
                    runs[label].append(mixed(s, fleet, conns, seconds, seed=100 + r))
            else:
                runs[label].append(mixed(s, fleet, conns, seconds, seed=100 + r))
            w = runs[label][-1]
            ab.log(
                f"  {label}: poll {w.poll.rps:,.0f} req/s p50 {w.poll.p50:.2f} p99 {w.poll.p99:.2f} ms | "
                f"list {w.lst.rps:,.0f} req/s p50 {w.lst.p50:.2f} p99 {w.lst.p99:.2f} ms | "
                f"cpu {w.cpu_ms:.3f} ms/req {w.poll.errors} {w.lst.errors}"
            )
    return runs


def best_run(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.poll.rps + r.lst.rps)


def py_spy(server: ab.Server, fleet: Fleet, conns: tuple[int, int], seconds: float, out: Path, gil: bool) -> None:
    exe = ab.py_spy_available()
    if exe is None:
        ab.log("py-spy not installed: no profile")
        return
    args = [exe, "record", "--format", "raw", "-r", "200", "-d", str(int(seconds)), "-o", str(out)]
    args += ["-p", str(server.proc.pid), "--subprocesses", *(["--gil"] if gil else [])]
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    mixed(server, fleet, conns, seconds - 1.5, seed=7)
    spy.communicate(timeout=120)


def run_db(db: ab.Db, args: argparse.Namespace, conns: tuple[int, int]) -> dict[str, Any]:
    ab.log(f"{db.name}: fleet of {VMS:,} VMs x {PER_VM} backups, {args.pending} pending")
    t0 = time.perf_counter()
    fleet = build_fleet(db, args.pending)
    ab.log(f"{db.name}: built in {time.perf_counter() - t0:.1f} s")
    res: dict[str, Any] = {"models": {}}
    env = {**db.env(), "VMBACKUP_API_THREADS": str(args.threads)}
    probe = start("real", env, f"fleet-{db.name}-probe", 1)
    try:
        answers = fetch_all(probe, fleet.polls + fleet.lists)
        if httpx.get(probe.base + fleet.polls[0]).status_code != 401:
            raise RuntimeError("the real server answers without credentials")
    finally:
        probe.stop()
    res["poll_bytes"] = len(answers[fleet.polls[0]][1])
    res["list_bytes"] = sum(len(answers[p][1]) for p in fleet.lists) / len(fleet.lists)
    bare_file = ab.DATA / f"fleet-{db.name}-bare.pickle"
    bare_file.write_bytes(pickle.dumps(answers))
    bare_env = {**env, "BENCH_BARE_MAP": str(bare_file)}
    for procs in args.processes:
        ab.log(f"{db.name}: {procs} process(es), {args.threads} threads, real vs bare, {conns} connections")
        real = start("real", env, f"fleet-{db.name}-real-p{procs}", procs)
        bare = start("bare_map", bare_env, f"fleet-{db.name}-bare-p{procs}", procs)
        try:
            check = fetch_all(bare, fleet.polls[:3] + fleet.lists[:3])
            assert all(check[p] == answers[p] for p in check), "bare app answers other bytes"
            writer = Writer(db, fleet, args.writes_per_s) if args.writes_per_s > 0 else None
            runs = measure({"real": real, "bare": bare}, fleet, conns, args.seconds, args.rounds, writer)
            res["models"][procs] = runs
            if args.profile and procs == args.processes[0]:
                for gil in (True, False):
                    out = ab.OUT / f"fleet-{db.name}-p{procs}-{'gil' if gil else 'wall'}.txt"
                    py_spy(real, fleet, conns, 10, out, gil)
                    res.setdefault("profiles", []).append(str(out.relative_to(ab.ROOT)))
            res.setdefault("pool_timeouts", {})[procs] = real.pool_timeouts()
        finally:
            real.stop()
            bare.stop()
    return res


def fmt(x: float) -> str:
    return ab.fmt_ms(x)


def report(
    m: dict[str, str], cmd: str, args: argparse.Namespace, conns: tuple[int, int], results: dict[str, Any]
) -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    L = ["# Fleet polling benchmark (issue 11)\n"]
    L.append(
        f"Command: `{cmd}`  \n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at the end "
        f"{' '.join(load)}; {m['nproc']} CPUs ({m['cpu']}) shared with other sessions, wrk on the same CPUs; "
        f"{m['stack']}.\n"
    )
    polls = args.pending / POLL_SECONDS
    L.append(
        f"Model: {VMS:,} VMs x {PER_VM} backups; {args.pending} pending, each polled every {POLL_SECONDS:g} s = "
        f"{polls:.1f} polls/s; {args.views_per_s:g} page views/s (each reads one VM's list): "
        f"{conns[0]} + {conns[1]} of {CONNECTIONS} connections. {args.seconds:g} s per run, {args.rounds} rounds "
        f"alternating real and bare, better run kept. Handler threads: {args.threads}. Every server's cache is "
        f"warm when its runs start (every path requested on 8 connections). Writes to pending backups during the "
        f"real runs: {args.writes_per_s:g}/s.\n"
    )
    L.append(
        "| database | processes | endpoint | real req/s | real p50 / p99 ms | bare req/s | bare p50 / p99 ms | "
        "req/s ratio (>= 0.5) | p99 ratio (<= 10) | CPU ms/req real / bare |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for procs, runs in r["models"].items():
            a, b = best_run(runs["real"]), best_run(runs["bare"])
            for ep, wa, wb in (
                ("GET /backups/:id.json", a.poll, b.poll),
                ("GET /virtual_machines/:id/backups.json", a.lst, b.lst),
            ):
                rr, pr = wa.rps / wb.rps, wa.p99 / wb.p99
                L.append(
                    f"| {name} | {procs} | {ep} | {wa.rps:,.0f} | {fmt(wa.p50)} / {fmt(wa.p99)} | {wb.rps:,.0f} | "
                    f"{fmt(wb.p50)} / {fmt(wb.p99)} | {rr:.2f}x {'ok' if rr >= 0.5 else 'MISS'} | "
                    f"{pr:.1f}x {'ok' if pr <= 10 else 'MISS'} | {a.cpu_ms:.3f} / {b.cpu_ms:.3f} |"
                )
    L.append("")
    L.append("All runs (poll req/s, p99 ms / list req/s, p99 ms):\n")
    for name, r in results.items():
        for procs, runs in r["models"].items():
            for label, rs in runs.items():
                L.append(
                    f"- {name}, {procs} process(es), {label}: "
                    + "; ".join(
                        f"{x.poll.rps:,.0f}, {fmt(x.poll.p99)} / {x.lst.rps:,.0f}, {fmt(x.lst.p99)}" for x in rs
                    )
                )
        for procs, runs in r["models"].items():
            pairs = zip(runs["real"], runs["bare"], strict=True)
            L.append(
                f"- {name}, {procs} process(es), real/bare per round (req/s poll, list; p99 poll, list): "
                + "; ".join(
                    f"{a.poll.rps / b.poll.rps:.2f}x, {a.lst.rps / b.lst.rps:.2f}x; "
                    f"{a.poll.p99 / b.poll.p99:.1f}x, {a.lst.p99 / b.lst.p99:.1f}x"
                    for a, b in pairs
                )
            )
        L.append(
            f"- {name}: bodies: poll {r['poll_bytes']:,} B, list {r['list_bytes']:,.0f} B on average; "
            f"pool timeouts {r.get('pool_timeouts')}; profiles {r.get('profiles', [])}"
        )
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", type=int, nargs="+", default=[1], help="API processes to compare")
    ap.add_argument("--threads", type=int, default=4, help="VMBACKUP_API_THREADS")
    ap.add_argument("--pending", type=int, default=250)
    ap.add_argument("--views-per-s", type=float, default=VMS / 60)
    ap.add_argument(
        "--writes-per-s", type=float, default=0, help="commits per second to pending backups during the real runs"
    )
    ap.add_argument("--profile", action="store_true", help="py-spy the first process model's real server")
    args = ap.parse_args()
    polls = args.pending / POLL_SECONDS
    c_poll = max(1, min(CONNECTIONS - 1, round(CONNECTIONS * polls / (polls + args.views_per_s))))
    conns = (c_poll, CONNECTIONS - c_poll)
    cmd = " ".join([".venv/bin/python", "bench/fleet_bench.py", *sys.argv[1:]])
    m = ab.machine()
    ab.DATA.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    pg = None
    try:
        if args.only in (None, "sqlite"):
            d = ab.DATA / "fleet-sqlite"
            shutil.rmtree(d, ignore_errors=True)
            results["sqlite"] = run_db(ab.Db("sqlite", f"sqlite:///{d / 'vmbackup.db'}", d), args, conns)
        if args.only in (None, "postgres"):
            pg = ab.create_pg_database()
            db = ab.Db("postgres", f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg}", ab.DATA / "fleet-pg", pg_db=pg)
            results["postgres"] = run_db(db, args, conns)
    finally:
        if pg:
            ab.drop_pg_database(pg)
    text = report(m, cmd, args, conns, results)
    OUT_MD.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
