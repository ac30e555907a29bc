"""API benchmark: the backup listing under load, against table size, and the cost of authentication.

    /work/main/.venv/bin/python bench/api_bench.py [--quick] [--only sqlite|postgres] [--keep]

Targets (each a ratio measured side by side in this one run):
1. GET /virtual_machines/:id/backups/images.json for a VM with 50 backups, 64 connections: requests/s at least
   0.5x a bare ASGI app on the same server software (uvicorn, same options, one worker) answering the same bytes
   with the same headers; p99 of both.
2. Single-connection latency of that listing flat (p50 within 1.2x) from 1,000 to 1,000,000 backups in the
   database, on SQLite and PostgreSQL; a VM with 10,000 backups answers within 1 s.
3. Basic auth costs no password hash per request: requests/s with auth vs the same app whose get_context is
   overridden to a fixed user without checking credentials.

The database is built with the service's own code: create_app(settings) migrates and seeds it; two template rows
come from services.backups.new_normal / new_incremental (then rolled back) and the bulk rows are copies of those
inserted with SQLAlchemy Core insert(Backup) executemany. Servers run as `python -m uvicorn --factory` subprocesses
(bench/api/asgi_apps.py) on free loopback ports; wrk loads them. Output: stdout and bench/out/api.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DATA = OUT / "api-data"
APPS_DIR = ROOT / "bench" / "api"
PY = sys.executable

ADMIN_LOGIN = "admin"
ADMIN_PASSWORD = "bench-" + secrets.token_hex(8)
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FILLER_VMS = 10_000
BATCH = 10_000
BIG_VM_BACKUPS = 10_000
TARGET_BACKUPS = 50


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    import fastapi
    import sqlalchemy
    import starlette
    import uvicorn

    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "stack": f"uvicorn {uvicorn.__version__} (http={http}, loop={loop}), fastapi {fastapi.__version__}, "
        f"starlette {starlette.__version__}, sqlalchemy {sqlalchemy.__version__}",
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0] if (wrk.stdout + wrk.stderr) else "wrk",
        "http": http,
    }


# --------------------------------------------------------------------------------------------------- database


@dataclass
class Db:
    name: str  # sqlite | postgres
    url: str
    data_dir: Path
    pg_db: str | None = None
    ids: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    filler_vms: list[int] = field(default_factory=list)
    insert_seconds: dict[int, float] = field(default_factory=dict)

    def env(self, cache: bool = True) -> dict[str, str]:
        """The service's settings for every server of this database (VMBACKUP_* only). ``cache=False`` turns the
        in-memory listing cache off, so every request goes through authentication, the database and rendering."""
        return {
            **({} if cache else {"VMBACKUP_LISTING_CACHE_SECONDS": "0"}),
            "VMBACKUP_DATA_DIR": str(self.data_dir),
            "VMBACKUP_DATABASE_URL": self.url,
            "VMBACKUP_WORKER": "external",  # no worker thread in the server
            "VMBACKUP_ADMIN_LOGIN": ADMIN_LOGIN,
            "VMBACKUP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # The cheapest argon2 the settings allow; with the credential cache it is paid once per process.
            "VMBACKUP_PASSWORD_MEMORY_KIB": "19456",
            "VMBACKUP_PASSWORD_TIME_COST": "2",
            "VMBACKUP_LOG_LEVEL": "warning",
            # Keep the embedded scheduler (SQLite) quiet: one pass at start, and no integrity checks of the
            # million synthetic backups (their data does not exist).
            "VMBACKUP_SCHEDULER_SECONDS": "3600",
            "VMBACKUP_VERIFY_INTERVAL_HOURS": "0",
        }


def settings_for(db: Db) -> Any:
    from vmbackup.config import load_settings

    return load_settings(db.env())


def create_pg_database() -> str:
    import psycopg

    name = f"vmbackup_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_db(db: Db) -> None:
    """Migrate and seed through create_app, then the inventory and the two row templates."""
    from sqlalchemy import insert, select

    from vmbackup.api.app import create_app
    from vmbackup.db.models import Backup, BackupServer, DataStore, Disk, ImageTemplate, User, VirtualMachine
    from vmbackup.services import backups as backup_service

    app = create_app(settings_for(db))
    engine = app.state.engine
    with app.state.sessions() as s:
        admin = s.scalars(select(User).where(User.login == ADMIN_LOGIN)).one()
        server = s.scalars(select(BackupServer)).first()
        assert server is not None
        tpl = ImageTemplate(
            label="Ubuntu 22.04 x64",
            operating_system="linux",
            operating_system_distro="ubuntu",
            min_disk_size=5,
            min_memory_size=512,
            file_name="ubuntu-22.04.tar.gz",
        )
        store = DataStore(label="lvm-1", data_store_type="lvm")
        s.add_all([tpl, store])
        s.flush()
        vms = {}
        for key, label in (("vm50", "fifty-backups"), ("vm10k", "ten-thousand-backups")):
            vm = VirtualMachine(label=label, hostname=label, user_id=admin.id, template_id=tpl.id)
            s.add(vm)
            s.flush()
            s.add(
                Disk(
                    label=f"{label} disk", disk_size=20, primary=True, data_store_id=store.id, virtual_machine_id=vm.id
                )
            )
            vms[key] = vm
        s.commit()
        db.ids = {
            "admin": admin.id,
            "server": server.id,
            "template": tpl.id,
            "store": store.id,
            "vm50": vms["vm50"].id,
            "vm10k": vms["vm10k"].id,
        }
        # Row templates: what the service itself builds for a normal (disk) and an incremental (VM) backup.
        cols = [c.key for c in Backup.__table__.columns]
        for kind in ("normal", "incremental"):
            vm = s.get(VirtualMachine, db.ids["vm50"])
            assert vm is not None
            if kind == "normal":
                b = backup_service.new_normal(s, vm.disks[0], server.id)
            else:
                b = backup_service.new_incremental(s, vm, list(vm.disks), server.id)
            b.built, b.built_at, b.backup_size, b.logical_size = (
                True,
                datetime(2015, 8, 13, 2, 0, 49, tzinfo=UTC),
                930584,
                20 << 30,
            )
            s.flush()
            row = {c: getattr(b, c) for c in cols}
            row.pop("id")
            db.templates[kind] = row
            s.rollback()
        disks = {
            vm_key: s.scalars(select(Disk.id).where(Disk.virtual_machine_id == db.ids[vm_key])).one()
            for vm_key in ("vm50", "vm10k")
        }
        db.ids.update({"disk50": disks["vm50"], "disk10k": disks["vm10k"]})
    # Many VMs to spread the filler backups over (bulk, like the backups).
    now = datetime(2024, 1, 1, tzinfo=UTC)
    vm_rows = [
        {
            "identifier": _ident(),
            "label": f"vm-{i}",
            "hostname": f"vm-{i}",
            "user_id": db.ids["admin"],
            "template_id": db.ids["template"],
            "memory": 1024,
            "cpus": 1,
            "booted": True,
            "built": True,
            "locked": False,
            "suspended": False,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(FILLER_VMS)
    ]
    with engine.begin() as conn:
        conn.execute(insert(VirtualMachine), vm_rows)
    with engine.connect() as conn:
        db.filler_vms = list(conn.scalars(select(VirtualMachine.id).where(VirtualMachine.label.like("vm-%"))))
    engine.dispose()


_ALPHABET = string.ascii_lowercase + string.digits


def _ident() -> str:
    return "".join(random.choices(_ALPHABET, k=14))


_T0 = datetime(2020, 1, 1, tzinfo=UTC)


def _row(db: Db, kind: str, vm_id: int, disk_id: int | None, n: int) -> dict[str, Any]:
    row = dict(db.templates[kind])
    at = _T0 + timedelta(minutes=n)
    row.update(identifier=_ident(), virtual_machine_id=vm_id, created_at=at, updated_at=at, built_at=at)
    if kind == "normal":
        row.update(disk_id=disk_id, target_id=disk_id)
    else:
        row.update(target_id=vm_id)
    return row


def grow(db: Db, target_rows: int, extra: dict[str, int]) -> None:
    """Insert backups until the table holds target_rows; ``extra`` = {vm key: how many of them go to that VM},
    spread evenly between the filler rows (as a VM's backups are spread over time among everyone's)."""
    from sqlalchemy import create_engine, insert, text

    from vmbackup.db.models import Backup
    from vmbackup.db.session import make_engine

    n_new = target_rows - db.rows
    assert n_new >= sum(extra.values())
    plan: dict[int, str] = {}
    for vm_key, count in extra.items():
        step = n_new / count
        offset = random.random() * step
        for k in range(count):
            pos = int(offset + k * step)
            while pos in plan:
                pos = (pos + 1) % n_new
            plan[pos] = vm_key
    rnd = random.Random(target_rows)
    engine = make_engine(db.url)
    t0 = time.perf_counter()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        with engine.begin() as conn:
            conn.execute(insert(Backup), batch)
        batch.clear()

    for i in range(n_new):
        n = db.rows + i
        vm_key = plan.get(i)
        if vm_key is not None:
            batch.append(_row(db, "normal", db.ids[vm_key], db.ids["disk" + vm_key[2:]], n))
        else:
            vm_id = rnd.choice(db.filler_vms)
            kind = "normal" if rnd.random() < 0.7 else "incremental"
            batch.append(_row(db, kind, vm_id, 10_000_000 + vm_id if kind == "normal" else None, n))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    db.rows = target_rows
    if db.name == "postgres":
        # What autovacuum would do after a bulk load (statistics + visibility map), so plans reflect the size.
        ac = create_engine(db.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
        with ac.connect() as conn:
            conn.execute(text("VACUUM ANALYZE backups"))
        ac.dispose()
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    db.insert_seconds[target_rows] = time.perf_counter() - t0
    check = make_engine(db.url)
    with check.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM backups")).scalar_one()
    check.dispose()
    assert count == target_rows, (count, target_rows)


def snapshot(db: Db, size: int) -> Db:
    """A frozen copy of the database at this size (SQLite: the file; PostgreSQL: CREATE DATABASE ... TEMPLATE),
    so every size can be served at the end, side by side."""
    if db.name == "sqlite":
        d = DATA / f"sqlite-{size}"
        d.mkdir(parents=True)
        shutil.copyfile(db.data_dir / "vmbackup.db", d / "vmbackup.db")
        return Db(db.name, f"sqlite:///{d / 'vmbackup.db'}", d, ids=db.ids, rows=size)
    import psycopg

    name = f"{db.pg_db}_{size}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{db.pg_db}"')
    return Db(
        db.name, db.url.rsplit("/", 1)[0] + "/" + name, DATA / f"postgres-{size}", pg_db=name, ids=db.ids, rows=size
    )


# --------------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, kind: str, env: dict[str, str], label: str, http: str, argv: list[str] | None = None) -> None:
        """``argv`` (run with {port} filled in) instead of the plain uvicorn command line: bench/fleet_bench.py
        starts its servers through bench/api/fleet_server.py, the way `vmbackup serve` runs."""
        self.kind, self.label = kind, label
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
        self.log_path = DATA / f"server-{label}.log"
        cmd = [
            PY,
            "-m",
            "uvicorn",
            "--factory",
            "--app-dir",
            str(APPS_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            "--http",
            http,
            f"asgi_apps:{kind}",
        ]
        if argv is not None:
            cmd = [a.replace("{port}", str(self.port)) for a in argv]
        self.cmd = cmd
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                cmd,
                env={**clean, **{k: v.replace("{port}", str(self.port)) for k, v in env.items()}},
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
            )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited: {self.log_path.read_text()[-2000:]}")
            try:
                httpx.get(self.base + "/version.json", timeout=1)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label} did not start") from None
                time.sleep(0.2)

    def pool_timeouts(self) -> int:
        """Requests that failed because no database connection came free in 30 s (sqlalchemy TimeoutError)."""
        return self.log_path.read_text(errors="replace").count("QueuePool limit of size")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


AUTH = "Basic " + base64.b64encode(f"{ADMIN_LOGIN}:{ADMIN_PASSWORD}".encode()).decode()


@dataclass
class Wrk:
    rps: float
    p50: float  # ms
    p90: float
    p99: float
    max: float
    requests: int
    errors: str = ""
    cpu_ms: float = float("nan")  # server process CPU (user + system) per request, when measured


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_cpu(server: Server, path: str, threads: int, conns: int, seconds: float) -> Wrk:
    """wrk, plus the server's CPU time per request over the run."""
    before = cpu_seconds(server.proc.pid)
    r = wrk(server.base + path, threads, conns, seconds)
    if r.requests:
        r.cpu_ms = (cpu_seconds(server.proc.pid) - before) / r.requests * 1000
    return r


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk_cmd(url: str, threads: int, conns: int, seconds: float, script: Path | None = None) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-H",
        f"Authorization: {AUTH}",
        *(["-s", str(script)] if script else []),
        url,
    ]


def wrk(url: str, threads: int, conns: int, seconds: float) -> Wrk:
    out = subprocess.run(wrk_cmd(url, threads, conns, seconds), capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> Wrk:
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    mx = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m.group(1)} non-2xx")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append("socket errors: " + m.group(1).strip())

    def get(key: str) -> float:
        try:
            return _ms(pct[key])
        except (KeyError, ValueError):
            return float("nan")

    mxv = _ms(mx.group(1)) if mx and re.fullmatch(r"[\d.]+(us|ms|s|m)", mx.group(1)) else float("nan")
    if reqs == 0:
        errors.append("no response at all")
    return Wrk(rps, get("50"), get("90"), get("99"), mxv, reqs, "; ".join(errors))


def best(results: list[Wrk], by: str) -> Wrk:
    if by == "rps":
        return max(results, key=lambda r: r.rps)
    return min(results, key=lambda r: r.p50 if r.p50 == r.p50 else float("inf"))


# --------------------------------------------------------------------------------------------------- measurements


@dataclass
class Cfg:
    sizes: list[int]
    load_s: float
    lat_s: float
    warm_s: float
    profile_s: float
    rounds: int
    sweep: tuple[int, ...] = (1, 16, 32, 48, 64, 96)
    sweep_s: float = 4
    profile_conns: int = 32


def list_path(vm_id: int) -> str:
    return f"/virtual_machines/{vm_id}/backups/images.json"


def check_listing(server: Server, vm_id: int, expect: int) -> httpx.Response:
    r = httpx.get(server.base + list_path(vm_id), headers={"Authorization": AUTH}, timeout=60)
    r.raise_for_status()
    n = len(r.json())
    if n != expect:
        raise RuntimeError(f"VM {vm_id} lists {n} backups, expected {expect}")
    return r


def warm(server: Server, url: str, cfg: Cfg, conns: int = 8) -> None:
    wrk(url, 1, conns, cfg.warm_s)


def alternate(servers: list[Server], path: str, cfg: Cfg) -> list[tuple[Wrk, list[Wrk]]]:
    """Load the servers in turn (a, b, c, a, b, c) with 64 connections; keep each one's better run."""
    runs: list[list[Wrk]] = [[] for _ in servers]
    for s in servers:
        warm(s, s.base + path, cfg, conns=64)
    for _ in range(2):
        for s, r in zip(servers, runs, strict=True):
            r.append(wrk_cpu(s, path, 2, 64, cfg.load_s))
    return [(best(r, "rps"), r) for r in runs]


def pair(a: Server, b: Server, path: str, cfg: Cfg) -> tuple[Wrk, Wrk, list[Wrk], list[Wrk]]:
    (ba, ra), (bb, rb) = alternate([a, b], path, cfg)
    return ba, bb, ra, rb


def latency(server: Server, path: str, cfg: Cfg, seconds: float | None = None) -> tuple[Wrk, list[Wrk]]:
    runs = [wrk(server.base + path, 1, 1, seconds or cfg.lat_s) for _ in range(2)]
    return best(runs, "p50"), runs


def argon2_cost() -> float:
    """ms for one verify at the settings used here (what a request would pay without the cache)."""
    from argon2 import PasswordHasher

    ph = PasswordHasher(memory_cost=19456, time_cost=2)
    h = ph.hash("x" * 16)
    ph.verify(h, "x" * 16)
    t0 = time.perf_counter()
    for _ in range(10):
        ph.verify(h, "x" * 16)
    return (time.perf_counter() - t0) / 10 * 1000


# --------------------------------------------------------------------------------------------------- profile


def py_spy_available() -> str | None:
    exe = Path(PY).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


CATEGORIES: list[tuple[str, Any]] = []


def _has(func: str, file_part: str) -> Any:
    return lambda frames: any(f[0] == func and file_part in f[1] for f in frames)


def _file(file_part: str) -> Any:
    return lambda frames: any(file_part in f[1] for f in frames)


IN_WORKER = _has("WorkerThread.run", "anyio")

# Functional, inclusive (a sample counts in every line whose function is on its stack).
CATEGORIES = [
    ("threadpool worker threads (dependencies + handler)", IN_WORKER),
    ("&nbsp;&nbsp;get_db: session open + close (api/deps.py:get_db)", _has("get_db", "deps.py")),
    ("&nbsp;&nbsp;auth (api/deps.py:authenticate)", _has("authenticate", "deps.py")),
    (
        "&nbsp;&nbsp;&nbsp;&nbsp;user lookup (db/queries/users.py:by_login_or_email)",
        _has("by_login_or_email", "users.py"),
    ),
    (
        "&nbsp;&nbsp;&nbsp;&nbsp;credential cache (services/auth.py:Authenticator.check)",
        _has("Authenticator.check", "auth.py"),
    ),
    ("&nbsp;&nbsp;VM visibility (services/machines.py:get_vm)", _has("get_vm", "machines.py")),
    ("&nbsp;&nbsp;backups query + ORM load (db/queries/backups.py:for_vm)", _has("for_vm", "queries/backups.py")),
    (
        "&nbsp;&nbsp;&nbsp;&nbsp;of which ORM object loading (sqlalchemy/orm/loading.py)",
        lambda fr: _has("for_vm", "queries/backups.py")(fr) and _file("orm/loading.py")(fr),
    ),
    ("&nbsp;&nbsp;presenters (api/presenters.py:backup)", _has("backup", "presenters.py")),
    ("&nbsp;&nbsp;JSON (api/formats.py:to_json)", _has("to_json", "formats.py")),
    ("&nbsp;&nbsp;&nbsp;&nbsp;of which the pre-walk (api/formats.py:_jsonable, _ts)", _has("_jsonable", "formats.py")),
    (
        "&nbsp;&nbsp;&nbsp;&nbsp;of which json.dumps",
        lambda fr: _has("to_json", "formats.py")(fr) and any(f[0] == "dumps" for f in fr),
    ),
    (
        "&nbsp;&nbsp;SQL round trips in the driver (DefaultDialect.do_execute)",
        lambda fr: any(f[0].endswith("do_execute") for f in fr),
    ),
    ("&nbsp;&nbsp;connection pool checkout/checkin (sqlalchemy/pool)", _file("sqlalchemy/pool/")),
    ("event-loop thread (uvicorn, starlette, fastapi, anyio, OnAppMiddleware)", lambda fr: not IN_WORKER(fr)),
    (
        "&nbsp;&nbsp;threadpool hand-off (anyio run_sync, CapacityLimiter, wake-ups)",
        lambda fr: (
            not IN_WORKER(fr)
            and (
                _file("anyio/")(fr)
                or _has("run_in_threadpool", "starlette")(fr)
                or _has("contextmanager_in_threadpool", "starlette")(fr)
            )
        ),
    ),
    (
        "&nbsp;&nbsp;fastapi solve_dependencies (incl. its hand-offs)",
        lambda fr: not IN_WORKER(fr) and _has("solve_dependencies", "fastapi")(fr),
    ),
    (
        "&nbsp;&nbsp;response write (uvicorn RequestResponseCycle.send)",
        lambda fr: not IN_WORKER(fr) and _has("RequestResponseCycle.send", "uvicorn")(fr),
    ),
    (
        "&nbsp;&nbsp;OnAppMiddleware (own code, not what it calls)",
        lambda fr: not IN_WORKER(fr) and fr and "middleware.py" in fr[-1][1] and "vmbackup" in fr[-1][1],
    ),
]

PACKAGES = ("vmbackup", "sqlalchemy", "fastapi", "starlette", "anyio", "uvicorn", "psycopg", "pydantic", "httptools")


def package_of(frames: list[tuple[str, str]]) -> str:
    """Self time by package: the innermost frame from a known package (stdlib frames go to their caller)."""
    for _func, file in reversed(frames):
        head = file.split("/", 1)[0]
        if head in PACKAGES:
            return head
    return "stdlib / uvloop / C"


def parse_raw(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = []
        for fr in stack.split(";"):
            m = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", fr)
            frames.append((m.group(1), m.group(2)) if m else (fr, ""))
        stacks.append((frames, int(count)))
    return stacks


def summarize_profile(path: Path) -> dict[str, Any]:
    stacks = parse_raw(path)
    total = sum(c for _, c in stacks) or 1
    cats = [(name, sum(c for fr, c in stacks if pred(fr)) / total * 100) for name, pred in CATEGORIES]
    pk: collections.Counter[str] = collections.Counter()
    for fr, c in stacks:
        pk[("worker: " if IN_WORKER(fr) else "event loop: ") + package_of(fr)] += c
    packages = [(k, v / total * 100) for k, v in pk.most_common()]
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        leaf = frames[-1]
        self_t[f"{leaf[0]} ({leaf[1]})"] += c
        for key in {f"{f[0]} ({f[1]})" for f in frames if f[0] != "thread"}:
            incl[key] += c
    top_self = [(k, v / total * 100) for k, v in self_t.most_common(15)]
    interesting = [
        (k, v)
        for k, v in incl.most_common(400)
        if ("vmbackup" in k or "sqlalchemy" in k or "fastapi" in k or "starlette" in k or "anyio" in k or "json" in k)
    ]
    top_incl = [(k, v / total * 100) for k, v in interesting[:25]]
    return {"samples": total, "categories": cats, "packages": packages, "self": top_self, "inclusive": top_incl}


def thread_states(path: Path) -> dict[str, Any]:
    stacks = parse_raw(path)
    total = sum(c for _, c in stacks) or 1
    states: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        names = [f[0] for f in frames]
        leaf = names[-1]
        waiting = leaf in ("Condition.wait", "Event.wait", "Lock.acquire") or leaf.endswith(".wait")
        if "QueuePool._do_get" in names and waiting:
            states["waiting for a database connection (QueuePool._do_get)"] += c
        elif "WorkerThread.run" in names and "Queue.get" in names[-3:] and waiting:
            states["idle threadpool worker (waiting for work)"] += c
        elif "WorkerThread.run" in names and any(n in ("Connection.wait", "wait") for n in names[-2:]):
            states["threadpool worker waiting on the database server (psycopg)"] += c
        elif "WorkerThread.run" in names:
            states["threadpool worker running or waiting for the GIL"] += c
        elif "Scheduler._loop" in names:
            states["scheduler thread (idle)"] += c
        else:
            states["event loop / other"] += c
    return {"samples": total, "states": [(k, v / total * 100) for k, v in states.most_common()]}


def profile(server: Server, path: str, cfg: Cfg, out: Path, conns: int = 64, gil: bool = True) -> dict[str, Any] | None:
    exe = py_spy_available()
    if exe is None:
        return None
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--format",
            "raw",
            "-r",
            "200",
            "-d",
            str(int(cfg.profile_s)),
            "-o",
            str(out),
            "-p",
            str(server.proc.pid),
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    wrk(server.base + path, 2 if conns > 1 else 1, conns, cfg.profile_s - 1.5)
    _, err = spy.communicate(timeout=120)
    if not out.exists():
        log(f"py-spy failed: {err.decode()[-500:]}")
        return None
    return summarize_profile(out) if gil else thread_states(out)


# --------------------------------------------------------------------------------------------------- one database


PG_SNAPSHOTS: list[str] = []


def run_db(db: Db, cfg: Cfg, http: str) -> dict[str, Any]:
    res: dict[str, Any] = {"grow": [], "flat": [], "big": []}
    log(f"{db.name}: migrate + seed via create_app, inventory ({FILLER_VMS} filler VMs)")
    setup_db(db)
    vm50, vm10k = db.ids["vm50"], db.ids["vm10k"]
    big_step = cfg.sizes[2] if len(cfg.sizes) > 2 else cfg.sizes[-1]
    snaps: dict[int, Db] = {}
    # Phase 1: grow the one database step by step, measuring the listing at each size as it is reached.
    for size in cfg.sizes:
        extra: dict[str, int] = {}
        if db.rows == 0:
            extra["vm50"] = TARGET_BACKUPS
        if size == big_step:
            extra["vm10k"] = BIG_VM_BACKUPS
        log(f"{db.name}: growing backups {db.rows:,} -> {size:,}")
        grow(db, size, extra)
        log(f"{db.name}: {size:,} rows ({db.insert_seconds[size]:.1f} s to insert)")
        if size != cfg.sizes[-1]:
            snaps[size] = snapshot(db, size)
            if snaps[size].pg_db:
                PG_SNAPSHOTS.append(snaps[size].pg_db)  # type: ignore[arg-type]
        else:
            snaps[size] = db
        srv = Server("real", db.env(cache=False), f"{db.name}-grow-{size}", http)
        try:
            check_listing(srv, vm50, TARGET_BACKUPS)
            warm(srv, srv.base + list_path(vm50), cfg, conns=1)
            b, runs = latency(srv, list_path(vm50), cfg)
            res["grow"].append((size, b, runs))
            log(f"{db.name}: {size:,} rows: 50-backup listing p50 {b.p50:.2f} ms p99 {b.p99:.2f} ms (while growing)")
        finally:
            srv.stop()
    # Phase 2: one server per size, all up at once, measured in rounds (1k, 10k, ..., 1k, 10k, ...): the same
    # machine noise falls on every size, so the ratios compare like with like.
    log(f"{db.name}: side-by-side latency of every size ({cfg.rounds} rounds)")
    servers = {size: Server("real", snaps[size].env(cache=False), f"{db.name}-size-{size}", http) for size in cfg.sizes}
    try:
        for size, srv in servers.items():
            check_listing(srv, vm50, TARGET_BACKUPS)
            if size >= big_step:
                check_listing(srv, vm10k, BIG_VM_BACKUPS)
            warm(srv, srv.base + list_path(vm50), cfg, conns=1)
        # The noise floor: a bare ASGI app answering the same bytes, measured in the same rounds.
        first = check_listing(servers[cfg.sizes[0]], vm50, TARGET_BACKUPS)
        floor_body = DATA / f"body-{db.name}-floor.bin"
        floor_body.write_bytes(first.content)
        floor_headers = [[k, v] for k, v in first.headers.multi_items() if k not in ("date", "server")]
        floor = Server(
            "bare",
            {"BENCH_BARE_BODY": str(floor_body), "BENCH_BARE_HEADERS": json.dumps(floor_headers)},
            f"{db.name}-floor",
            http,
        )
        warm(floor, floor.base + list_path(vm50), cfg, conns=1)
        flat: dict[int, list[Wrk]] = {size: [] for size in cfg.sizes}
        floor_runs: list[Wrk] = []
        big: dict[int, list[Wrk]] = {size: [] for size in cfg.sizes if size >= big_step}
        for _ in range(cfg.rounds):
            for size, srv in servers.items():
                flat[size].append(wrk(srv.base + list_path(vm50), 1, 1, cfg.lat_s))
            floor_runs.append(wrk(floor.base + list_path(vm50), 1, 1, cfg.lat_s))
        floor.stop()
        res["floor"] = (best(floor_runs, "p50"), floor_runs)
        for _ in range(2):
            for size in big:
                big[size].append(wrk(servers[size].base + list_path(vm10k), 1, 1, max(cfg.lat_s, 5)))
        for size in cfg.sizes:
            b = best(flat[size], "p50")
            res["flat"].append((size, b, flat[size]))
            log(f"{db.name}: {size:,} rows: 50-backup listing p50 {b.p50:.2f} ms p99 {b.p99:.2f} ms (side by side)")
        for size, runs in big.items():
            bb = best(runs, "p50")
            res["big"].append((size, bb, runs))
            log(
                f"{db.name}: {size:,} rows: 10k-backup listing p50 {bb.p50:.0f} ms p99 {bb.p99:.0f} ms "
                f"max {bb.max:.0f} ms"
            )
    finally:
        for srv in servers.values():
            srv.stop()
        res["flat_pool_timeouts"] = sum(srv.pool_timeouts() for srv in servers.values())
    # Phase 3: targets 1 and 3 on the largest database, each pair on freshly started servers (a server that
    # stalled on its connection pool would otherwise poison the next measurement).
    # Targets 1 and 3 and the sweep: the service as `vmbackup serve` runs it (listing cache on) and with the cache
    # off (every request authenticated, read from the database and rendered).
    env, env_nc = db.env(), db.env(cache=False)
    path = list_path(vm50)
    probe = Server("real", env, f"{db.name}-probe", http)
    try:
        body = check_listing(probe, vm50, TARGET_BACKUPS)
        if httpx.get(probe.base + path).status_code != 401:
            raise RuntimeError("the real server answers without credentials")
    finally:
        probe.stop()
    res["body_bytes"] = len(body.content)
    headers = [[k, v] for k, v in body.headers.multi_items() if k not in ("date", "server")]
    res["headers"] = headers
    body_file = DATA / f"body-{db.name}.bin"
    body_file.write_bytes(body.content)
    bare_env = {"BENCH_BARE_BODY": str(body_file), "BENCH_BARE_HEADERS": json.dumps(headers)}

    log(f"{db.name}: target 1, real vs bare, 64 connections")
    srv, bare = Server("real", env, f"{db.name}-t1-real", http), Server("bare", bare_env, f"{db.name}-t1-bare", http)
    nocache = Server("real", env_nc, f"{db.name}-t1-nocache", http)
    try:
        rb = httpx.get(bare.base + path)
        same_h = sorted((k, v) for k, v in rb.headers.multi_items() if k not in ("date", "server")) == sorted(
            (k, v) for k, v in headers
        )
        if rb.content != body.content or not same_h:
            raise RuntimeError("bare app does not answer the same bytes and headers")
        (ba, ra), (bb, rb), (bn, rn) = alternate([srv, bare, nocache], path, cfg)
        res["t1"] = (ba, bb, ra, rb)
        res["t1_nocache"] = (bn, rn)
    finally:
        srv.stop()
        bare.stop()
        nocache.stop()
    res["t1_pool_timeouts"] = srv.pool_timeouts()
    log(
        f"{db.name}:   real {res['t1'][0].rps:.0f} req/s, bare {res['t1'][1].rps:.0f} req/s, "
        f"cache off {res['t1_nocache'][0].rps:.0f} req/s, "
        f"pool timeouts {res['t1_pool_timeouts']}"
    )

    log(f"{db.name}: target 3, Basic auth vs no auth check, 64 connections")
    # Cache off on both: with it, neither would check anything on a hit.
    srv = Server("real", env_nc, f"{db.name}-t3-auth", http)
    noauth = Server("noauth", {**env_nc, "BENCH_FIXED_USER_ID": str(db.ids["admin"])}, f"{db.name}-t3-noauth", http)
    try:
        check_listing(noauth, vm50, TARGET_BACKUPS)
        res["t3"] = pair(srv, noauth, path, cfg)
        sa, sb = [], []
        for _ in range(2):
            sa.append(wrk(srv.base + path, 1, 1, cfg.lat_s))
            sb.append(wrk(noauth.base + path, 1, 1, cfg.lat_s))
        res["t3_single"] = (best(sa, "p50"), best(sb, "p50"))
    finally:
        srv.stop()
        noauth.stop()
    res["t3_pool_timeouts"] = (srv.pool_timeouts(), noauth.pool_timeouts())
    log(
        f"{db.name}:   auth {res['t3'][0].rps:.0f} req/s, no-auth {res['t3'][1].rps:.0f} req/s, "
        f"pool timeouts {res['t3_pool_timeouts']}"
    )

    log(f"{db.name}: concurrency sweep of the real server")
    srv = Server("real", env_nc, f"{db.name}-sweep", http)
    sweep = []
    try:
        warm(srv, srv.base + path, cfg, conns=8)
        for conns in cfg.sweep:
            before = srv.pool_timeouts()
            r = wrk_cpu(srv, path, 1 if conns == 1 else 2, conns, cfg.sweep_s)
            sweep.append((conns, r, srv.pool_timeouts() - before))
            log(f"{db.name}:   c={conns}: {r.rps:.0f} req/s p50 {r.p50:.1f} ms p99 {r.p99:.1f} ms {r.errors}")
    finally:
        srv.stop()
    res["sweep"] = sweep
    res["sweep_pool_timeouts"] = srv.pool_timeouts()

    log(f"{db.name}: py-spy profiles (fresh server)")
    try:
        run_profiles(db, res, env_nc, path, list_path(vm10k), cfg, http)
    except Exception as exc:  # a profile is an explanation, not a result: keep the measurements
        log(f"{db.name}: profiling failed: {exc!r}"[:500])
    res["insert_seconds"] = dict(db.insert_seconds)
    return res


def run_profiles(
    db: Db, res: dict[str, Any], env: dict[str, str], path: str, path10k: str, cfg: Cfg, http: str
) -> None:
    srv = Server("real", env, f"{db.name}-profile", http)
    try:
        warm(srv, srv.base + path, cfg, conns=8)
        res["profile"] = profile(srv, path, cfg, OUT / f"api-profile-{db.name}.raw", cfg.profile_conns)
        res["profile_file"] = f"bench/out/api-profile-{db.name}.raw"
        res["profile_big"] = profile(srv, path10k, cfg, OUT / f"api-profile-{db.name}-10k.raw", 1)
        res["profile_big_file"] = f"bench/out/api-profile-{db.name}-10k.raw"
        res["profile_wall"] = profile(srv, path, cfg, OUT / f"api-profile-{db.name}-wall64.raw", 64, gil=False)
        res["profile_wall_file"] = f"bench/out/api-profile-{db.name}-wall64.raw"
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------------- report


def fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def report(
    m: dict[str, str], cmd: str, cfg: Cfg, results: dict[str, dict[str, Any]], argon2_ms: float, elapsed: float
) -> str:
    L: list[str] = []
    L.append("# vmbackup API benchmark\n")
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {elapsed / 60:.1f} min. Command: `{cmd}`\n")
    L.append(
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, Linux {m['kernel']}, shared and noisy; "
        "wrk runs on the same 2 cores as the server"
    )
    L.append(f"- Python {m['python']}; {m['stack']}; {m['wrk']}")
    L.append(
        "- servers: `python -m uvicorn --factory --workers 1 --no-access-log --http "
        f"{m['http']}` (same for every app), one process each, on a free loopback port"
    )
    L.append(
        "- service settings: SQLite file in bench/out/api-data or a private PostgreSQL database; "
        "VMBACKUP_WORKER=external (no worker thread), argon2 19456 KiB / t=2 (the floor; with the credential "
        "cache a process pays it once per credential, so the cost setting does not change these numbers), "
        "scheduler every 3600 s and integrity checks off (the synthetic backups have no data)"
    )
    L.append(
        f"- data: backups spread over {FILLER_VMS:,} VMs (70% normal, 30% incremental), built with "
        "services.backups.new_normal/new_incremental as templates and inserted with Core insert(Backup); "
        f"the measured VM holds exactly {TARGET_BACKUPS} normal backups (inserted among the first 1,000 rows), "
        f"another VM {BIG_VM_BACKUPS:,} (spread over the rows of the step to "
        f"{cfg.sizes[min(2, len(cfg.sizes) - 1)]:,}); "
        "PostgreSQL gets `VACUUM ANALYZE backups` after each bulk step (what autovacuum does)"
    )
    L.append(
        f"- every figure: two runs, better kept; pairs alternate a, b, a, b after a warm-up of each. "
        f"Load: `wrk -t2 -c64 -d{cfg.load_s:g}s --latency`; single-connection latency: "
        f"`wrk -t1 -c1 -d{cfg.lat_s:g}s --latency`\n"
    )

    # Target 1
    L.append("## Target 1: listing throughput vs a bare ASGI app (64 connections)\n")
    L.append(
        "`GET /virtual_machines/:id/backups/images.json`, VM with 50 backups, "
        f"{cfg.sizes[-1]:,} backups in the database. Target: real >= 0.5x bare. 'real' is the service as "
        "`vmbackup serve` runs it: wrk repeats one request, so after the first it is answered from the in-memory "
        "listing cache (api/listing_cache.py). 'cache off' is the same service with "
        "VMBACKUP_LISTING_CACHE_SECONDS=0: every request authenticated, read from the database and rendered "
        "(what the first request after any change costs).\n"
    )
    L.append(
        "| database | body | real req/s | real p50 / p99 ms | bare req/s | bare p50 / p99 ms | real/bare | "
        "server CPU ms/req real / bare | real: errors, pool timeouts | cache off req/s, p50 / p99 ms | "
        "cache off/bare | target |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "t1" not in r:
            continue
        a, b, _, _ = r["t1"]
        n = r["t1_nocache"][0]
        ratio = a.rps / b.rps
        r["t1_ok"] = ratio >= 0.5
        errs = "; ".join(x.errors for x in r["t1"][2] if x.errors) or "none"
        L.append(
            f"| {name} | {r['body_bytes']:,} B | {a.rps:,.0f} | {fmt_ms(a.p50)} / {fmt_ms(a.p99)} | "
            f"{b.rps:,.0f} | {fmt_ms(b.p50)} / {fmt_ms(b.p99)} | {ratio:.3f}x | "
            f"{a.cpu_ms:.3f} / {b.cpu_ms:.3f} | {errs}, {r['t1_pool_timeouts']} | "
            f"{n.rps:,.0f}, {fmt_ms(n.p50)} / {fmt_ms(n.p99)} | {n.rps / b.rps:.3f}x | {verdict(ratio >= 0.5)} |"
        )
    L.append("")
    L.append(
        "Runs (req/s): "
        + "; ".join(
            f"{n}: real {', '.join(f'{x.rps:,.0f}' for x in r['t1'][2])} / "
            f"bare {', '.join(f'{x.rps:,.0f}' for x in r['t1'][3])} / "
            f"cache off {', '.join(f'{x.rps:,.0f}' for x in r['t1_nocache'][1])}"
            for n, r in results.items()
            if "t1" in r
        )
        + "\n"
    )
    any_r = next((r for r in results.values() if "headers" in r), None)
    if any_r:
        L.append(
            "Bare app headers (plus uvicorn's own `date` and `server`, as on the real one): "
            + ", ".join(f"`{k}: {v}`" for k, v in any_r["headers"])
            + "\n"
        )

    # Target 2
    L.append("## Target 2: listing latency against table size (single connection)\n")
    L.append(
        "Same VM (50 backups) as the table grows; target: p50 at the largest size within 1.2x of p50 at "
        "1,000 rows; and the 10,000-backup VM within 1 s (p99 and max). Primary figures: **side by side** "
        "(a frozen copy of the database at each size, one server per copy, all up at once, measured in "
        f"{cfg.rounds} alternating rounds, best p50 kept). The 'while growing' column is the same listing "
        "measured right after each step on the one growing database (2 runs, best kept): more exposed to "
        "the machine's noise, shown for reference. Every server here runs with the listing cache off "
        "(VMBACKUP_LISTING_CACHE_SECONDS=0): this measures the database path; a cached answer does not depend on "
        "the table at all.\n"
    )
    for name, r in results.items():
        if not r.get("flat"):
            continue
        base = r["flat"][0][1]
        gbase = r["grow"][0][1]
        grow_by = {size: b for size, b, _ in r["grow"]}
        L.append(f"**{name}**\n")
        L.append(
            "| backups in db | insert s | p50 ms | p90 ms | p99 ms | req/s (1 conn) | p50 vs 1k | p99 vs 1k | "
            "runs p50 ms | while growing p50 / p99 ms (vs 1k) |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for size, b, runs in r["flat"]:
            g = grow_by.get(size)
            gtxt = f"{fmt_ms(g.p50)} / {fmt_ms(g.p99)} ({g.p50 / gbase.p50:.2f}x)" if g else ""
            L.append(
                f"| {size:,} | {r['insert_seconds'].get(size, 0):.1f} | {fmt_ms(b.p50)} | {fmt_ms(b.p90)} | "
                f"{fmt_ms(b.p99)} | {b.rps:,.0f} | {b.p50 / base.p50:.2f}x | {b.p99 / base.p99:.2f}x | "
                f"{', '.join(fmt_ms(x.p50) for x in runs)} | {gtxt} |"
            )
        if r.get("floor"):
            fb, fruns = r["floor"]
            L.append(
                f"| bare ASGI, same bytes (noise floor) | | {fmt_ms(fb.p50)} | {fmt_ms(fb.p90)} | "
                f"{fmt_ms(fb.p99)} | {fb.rps:,.0f} | | | {', '.join(fmt_ms(x.p50) for x in fruns)} | |"
            )
        last = r["flat"][-1][1]
        ok_flat = last.p50 / base.p50 <= 1.2
        r["t2_ok"] = ok_flat
        L.append(
            f"\nFlatness ({r['flat'][0][0]:,} -> {r['flat'][-1][0]:,}): p50 {last.p50 / base.p50:.2f}x "
            f"(p99 {last.p99 / base.p99:.2f}x): {verdict(ok_flat)}\n"
        )
        if r.get("big"):
            L.append("| backups in db | 10k-backup VM p50 ms | p99 ms | max ms | requests | within 1 s |")
            L.append("|---|---|---|---|---|---|")
            ok_big = True
            for size, b, _runs in r["big"]:
                ok = b.max < 1000 and b.p99 < 1000
                ok_big &= ok
                L.append(
                    f"| {size:,} | {fmt_ms(b.p50)} | {fmt_ms(b.p99)} | {fmt_ms(b.max)} | {b.requests} | {verdict(ok)} |"
                )
            r["t2b_ok"] = ok_big
            L.append("")

    # Target 3
    L.append("## Target 3: Basic auth vs no credential check (64 connections)\n")
    L.append(
        f"One argon2id verify at 19456 KiB / t=2 costs {argon2_ms:.1f} ms here (in-process, single thread): "
        "hashing on every request would cap the server near "
        f"{1000 / argon2_ms:.0f} req/s per core. The no-auth variant is the same app with "
        "`dependency_overrides[get_context]` building the Context for a fixed, preloaded admin user; both run "
        "with the listing cache off (a cached answer checks no credential at all). "
        "Target: auth >= 0.8x no-auth (the remaining gap is the indexed user lookup + one HMAC), "
        "far above what argon2 per request would allow.\n"
    )
    L.append(
        "| database | auth req/s | auth p99 ms | no-auth req/s | no-auth p99 ms | auth/no-auth | "
        "1-conn p50 auth / no-auth ms | pool timeouts auth / no-auth | target |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "t3" not in r:
            continue
        a, b, _, _ = r["t3"]
        sa, sb = r["t3_single"]
        ratio = a.rps / b.rps
        r["t3_ok"] = ratio >= 0.8
        pa, pb = r["t3_pool_timeouts"]
        L.append(
            f"| {name} | {a.rps:,.0f} | {fmt_ms(a.p99)} | {b.rps:,.0f} | {fmt_ms(b.p99)} | {ratio:.3f}x | "
            f"{fmt_ms(sa.p50)} / {fmt_ms(sb.p50)} ({(sa.p50 - sb.p50) * 1000:+.0f} us) | {pa} / {pb} | "
            f"{verdict(ratio >= 0.8)} |"
        )
    L.append("")
    L.append(
        "Runs (req/s): "
        + "; ".join(
            f"{n}: auth {', '.join(f'{x.rps:,.0f}' for x in r['t3'][2])} / no-auth "
            f"{', '.join(f'{x.rps:,.0f}' for x in r['t3'][3])}"
            for n, r in results.items()
            if "t3" in r
        )
        + "\n"
    )

    # Sweep
    L.append("## Concurrency sweep: the real server alone, listing cache off (fresh process, 50-backup listing)\n")
    L.append(
        f"`wrk -c N -d{cfg.sweep_s:g}s`, one run each, in order. 'pool timeouts': requests that failed in the "
        "server with sqlalchemy `TimeoutError: QueuePool limit ... reached` during or after that step.\n"
    )
    for name, r in results.items():
        if not r.get("sweep"):
            continue
        L.append(f"**{name}**\n")
        L.append(
            "| connections | req/s | p50 ms | p99 ms | server CPU ms/request | requests | wrk errors | pool timeouts |"
        )
        L.append("|---|---|---|---|---|---|---|---|")
        for conns, w, pt in r["sweep"]:
            L.append(
                f"| {conns} | {w.rps:,.0f} | {fmt_ms(w.p50)} | {fmt_ms(w.p99)} | {w.cpu_ms:.2f} | {w.requests:,} | "
                f"{w.errors or '-'} | {pt} |"
            )
        L.append(
            f"\nPool timeouts logged by this server in total (including after wrk stopped): "
            f"{r['sweep_pool_timeouts']}\n"
        )

    # Summary
    L.append("## Summary\n")
    L.append("| target | " + " | ".join(results) + " |")
    L.append("|---|" + "---|" * len(results))
    for key, label in (
        ("t1_ok", "1. listing >= 0.5x bare ASGI"),
        ("t2_ok", "2. latency flat within 1.2x"),
        ("t2b_ok", "2. 10k-backup VM within 1 s"),
        ("t3_ok", "3. auth without per-request hash"),
    ):
        L.append(f"| {label} | " + " | ".join(verdict(r[key]) if key in r else "n/a" for r in results.values()) + " |")
    L.append("")

    # Profiles
    L.append("## Where the time goes: py-spy on the real server under wrk\n")
    L.append(
        "py-spy at 200 Hz on a fresh real server, largest table. CPU profiles use `--gil` (only the thread "
        "holding the GIL is sampled, so the percentages split the Python CPU time of the process; a leaf in "
        "`Runner.run` is uvloop's C code on the event loop). Lines overlap (inclusive).\n"
    )
    for name, r in results.items():
        w = r.get("profile_wall")
        if w:
            L.append(
                f"**{name}: thread states under 64 connections** (py-spy without --gil, "
                f"{w['samples']:,} thread-samples, `{r['profile_wall_file']}`)\n"
            )
            L.append("| state | % of thread-samples |")
            L.append("|---|---|")
            for k, pct in w["states"]:
                L.append(f"| {k} | {pct:.1f} |")
            L.append("")
        for key, title in (
            ("profile", f"50-backup listing, {cfg.profile_conns} connections, CPU (--gil)"),
            ("profile_big", "10,000-backup listing, 1 connection, CPU (--gil)"),
        ):
            p = r.get(key)
            if not p:
                continue
            L.append(f"**{name}: {title}** ({p['samples']:,} samples, raw stacks in `{r[key + '_file']}`)\n")
            L.append("| where (inclusive) | % |")
            L.append("|---|---|")
            for cat, pct in p["categories"]:
                L.append(f"| {cat} | {pct:.1f} |")
            L.append("\n| self time by package (innermost frame of a known package; stdlib goes to its caller) | % |")
            L.append("|---|---|")
            for k, pct in p.get("packages", []):
                L.append(f"| {k} | {pct:.1f} |")
            L.append("\n| top self time (leaf frame) | % |")
            L.append("|---|---|")
            for k, pct in p["self"]:
                L.append(f"| `{k}` | {pct:.1f} |")
            L.append("\n| top inclusive (project, SQLAlchemy, FastAPI/Starlette, anyio, json frames) | % |")
            L.append("|---|---|")
            for k, pct in p["inclusive"]:
                L.append(f"| `{k}` | {pct:.1f} |")
            L.append("")
    notes = OUT / "api-notes.md"
    if notes.exists():
        L.append(notes.read_text())
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------------- main


def save(m: dict[str, str], cmd: str, cfg: Cfg, results: dict[str, Any], argon2_ms: float, elapsed: float) -> None:
    import pickle

    with open(OUT / "api-results.pickle", "wb") as f:
        pickle.dump({"m": m, "cmd": cmd, "cfg": cfg, "results": results, "argon2_ms": argon2_ms, "elapsed": elapsed}, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and short runs (a smoke test)")
    ap.add_argument("--only", choices=["sqlite", "postgres"], help="one database only")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file and the PostgreSQL database")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="re-render bench/out/api.md from the last run's bench/out/api-results.pickle",
    )
    args = ap.parse_args()
    if args.report_only:
        import pickle

        with open(OUT / "api-results.pickle", "rb") as f:
            saved = pickle.load(f)
        for r in saved["results"].values():  # profiles are re-summarized from their raw files
            for key in ("profile", "profile_big"):
                if r.get(key):
                    r[key] = summarize_profile(ROOT / r[key + "_file"])
        text = report(saved["m"], saved["cmd"], saved["cfg"], saved["results"], saved["argon2_ms"], saved["elapsed"])
        (OUT / "api.md").write_text(text)
        print(text)
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    cfg = (
        Cfg([1_000, 10_000, 30_000], 3, 2, 1, 5, 2, sweep_s=2)
        if args.quick
        else Cfg([1_000, 10_000, 100_000, 1_000_000], 10, 4, 2, 12, 3)
    )
    cmd = " ".join([".venv/bin/python", "bench/api_bench.py", *sys.argv[1:]])
    started = time.perf_counter()
    m = machine()
    log(f"{m['nproc']} CPUs ({m['cpu']}), {m['ram']}; {m['stack']}")
    if DATA.exists():
        shutil.rmtree(DATA)
    DATA.mkdir(parents=True)
    argon2_ms = argon2_cost()
    results: dict[str, dict[str, Any]] = {}
    dbs = []
    if args.only in (None, "sqlite"):
        d = DATA / "sqlite"
        dbs.append(Db("sqlite", f"sqlite:///{d / 'vmbackup.db'}", d))
    pg_name = None
    try:
        if args.only in (None, "postgres"):
            pg_name = create_pg_database()
            log(f"created PostgreSQL database {pg_name}")
            dbs.append(
                Db(
                    "postgres",
                    f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}",
                    DATA / "postgres",
                    pg_db=pg_name,
                )
            )
        for db in dbs:
            results[db.name] = run_db(db, cfg, m["http"])
            save(m, cmd, cfg, results, argon2_ms, time.perf_counter() - started)
    finally:
        if pg_name and not args.keep:
            for name in [*PG_SNAPSHOTS, pg_name]:
                try:
                    drop_pg_database(name)
                    log(f"dropped PostgreSQL database {name}")
                except Exception as exc:
                    log(f"could not drop PostgreSQL database {name} ({exc!r}): drop it by hand")
        if not args.keep:
            for d in DATA.glob("sqlite*"):
                shutil.rmtree(d)
    save(m, cmd, cfg, results, argon2_ms, time.perf_counter() - started)
    text = report(m, cmd, cfg, results, argon2_ms, time.perf_counter() - started)
    (OUT / "api.md").write_text(text)
    print("\n" + text)
    log(f"wrote {OUT / 'api.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
