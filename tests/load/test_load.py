"""Load on loopback: many concurrent clients list and read backups while backups and restores run.

A real `vmbackup serve` process (SQLite embedded default, in-process worker) on a free port. Two users own two VMs
each, every VM with one real sparse image (8-32 MiB) and ~50 real backups. Then N asyncio clients (one
httpx.AsyncClient, one connection, each) loop for T seconds over

    GET /virtual_machines/:id/backups/images.json, /backups/files.json, /backups/:id.json, /transactions.json

as their own user, recording status and latency, while a driver takes normal and incremental backups and restores
them (VM stopped) through the API as the admin, one step every few seconds. Asserted: no non-2xx answer and no
connection error from the clients, every transaction `complete`, every restore brings the image back byte for
byte, every built backup verifies (engine `verify`), no traceback in the server log. Figures are printed.

    .venv/bin/python -m pytest -q -s -m slow tests/load      # 200 clients, 60 s   (docs/reliability.md, "Load")
    .venv/bin/python -m pytest -q -s tests/load -m "not slow"  # 50 clients, 8 s, part of `make test`

LOAD_CLIENTS / LOAD_SECONDS override the slow run's figures.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import MiB, overwrite, write_image
from vmbackup.engine import Engine
from vmbackup.storage.local import LocalStorage

ADMIN = ("admin", "load-admin-password")
USERS = (("alice", "alice-load-password"), ("bob", "bob-load-password"))
TIMEOUT = httpx.Timeout(120.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Served:
    base: str
    data: Path
    log: Path
    tmp: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env |= {
        "VMBACKUP_DATA_DIR": str(tmp_path / "data"),
        "VMBACKUP_LISTEN": f"127.0.0.1:{port}",
        "VMBACKUP_ADMIN_LOGIN": ADMIN[0],
        "VMBACKUP_ADMIN_PASSWORD": ADMIN[1],
        "VMBACKUP_PASSWORD_MEMORY_KIB": "19456",
        "VMBACKUP_PASSWORD_TIME_COST": "2",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmbackup.cli.main", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Served(f"http://127.0.0.1:{port}", tmp_path / "data", log, tmp_path)
        assert proc.poll() is None, "the service died under load:\n" + log.read_text()[-5000:]
    finally:
        proc.terminate()
        proc.wait(60)


# ----------------------------------------------------------------------------------------------------- setup


@dataclass
class Vm:
    id: int
    disk_id: int
    owner: tuple[str, str]
    image: Path
    backup_ids: list[int] = field(default_factory=list)


def _post(client: httpx.Client, path: str, root: str | None = None, **fields: Any) -> dict[str, Any]:
    r = client.post(path, json={root: fields} if root else None)
    assert r.status_code == 201, f"{path}: {r.status_code} {r.text}"
    return dict(r.json()[root] if root else r.json())


def _wait_idle(client: httpx.Client, backup_id: int, timeout: float = 300.0) -> dict[str, Any]:
    """Until the backup is built and unlocked (its take or restore finished), or its transaction failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/backups/{backup_id}.json")
        assert r.status_code == 200, r.text
        b = r.json()["backup"]
        if b["built"] and not b["locked"]:
            return dict(b)
        if not b["locked"] and not b["built"]:
            failed = [t["transaction"] for t in client.get("/transactions.json?per_page=1000&detailed").json()]
            failed = [t for t in failed if t["parent_id"] == backup_id and t["status"] == "failed"]
            assert not failed, failed
        time.sleep(0.2)
    raise TimeoutError(f"backup {backup_id}")


def _setup(served: Served, backups_per_vm: int) -> list[Vm]:
    vms: list[Vm] = []
    with httpx.Client(base_url=served.base, auth=ADMIN, timeout=TIMEOUT) as admin:
        tpl = _post(admin, "/templates.json", "image_template", label="Debian", operating_system_distro="debian")
        ds = _post(admin, "/settings/data_stores.json", "data_store", label="ds")
        for n, (login, password) in enumerate(USERS):
            user = _post(admin, "/users.json", "user", login=login, email=f"{login}@example.com", password=password)
            for k in range(2):
                i = 2 * n + k
                image = write_image(served.tmp / f"disk{i}.img", (8 + 8 * i) * MiB, seed=i)
                vm = _post(
                    admin,
                    "/virtual_machines.json",
                    "virtual_machine",
                    label=f"vm{i}",
                    user_id=user["id"],
                    template_id=tpl["id"],
                )
                disk = _post(
                    admin,
                    f"/virtual_machines/{vm['id']}/disks.json",
                    "disk",
                    label="root",
                    disk_size=1,
                    primary=True,
                    data_store_id=ds["id"],
                    image_path=str(image),
                )
                vms.append(Vm(vm["id"], disk["id"], (login, password), image))
        # Existing backups, real ones: half normal, half incremental, queued all at once (one at a time per VM).
        for vm in vms:
            for j in range(backups_per_vm):
                if j % 2:
                    vm.backup_ids.append(_post(admin, f"/virtual_machines/{vm.id}/backups.json", "backup")["id"])
                else:
                    vm.backup_ids.append(_post(admin, f"/settings/disks/{vm.disk_id}/backups.json", "backup")["id"])
        for vm in vms:
            for backup_id in vm.backup_ids:
                _wait_idle(admin, backup_id)
    return vms


# ------------------------------------------------------------------------------------------------------ load


@dataclass
class Sample:
    kind: str
    seconds: float
    status: int | None  # None: connection error or timeout
    error: str = ""


async def _client(base: str, vm: Vm, until: float, samples: list[Sample], seed: int) -> None:
    rng = random.Random(seed)
    paths = (
        f"/virtual_machines/{vm.id}/backups/images.json",
        f"/virtual_machines/{vm.id}/backups/files.json",
        None,  # one of the VM's backups
        "/transactions.json",
    )
    kinds = ("images", "files", "backup", "transactions")
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base, auth=vm.owner, timeout=TIMEOUT, limits=limits) as client:
        i = rng.randrange(4)
        while time.monotonic() < until:
            k = i % 4
            path = paths[k] or f"/backups/{rng.choice(vm.backup_ids)}.json"
            started = time.perf_counter()
            try:
                r = await client.get(path)
                await r.aread()
                status: int | None = r.status_code
                error = "" if 200 <= r.status_code < 300 else f"{path}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                status, error = None, f"{path}: {type(exc).__name__}: {exc}"
            samples.append(Sample(kinds[k], time.perf_counter() - started, status, error))
            i += 1


@dataclass
class DriverLog:
    steps: int = 0
    taken: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    seconds_per_step: list[float] = field(default_factory=list)


def _driver(base: str, vms: list[Vm], until: float, out: DriverLog, pause: float) -> None:
    """Backups and restores through the API as the admin: every step changes an image, takes a normal and an
    incremental backup, damages the image, restores one of the two and checks the image is back."""
    rng = random.Random(99)
    with httpx.Client(base_url=base, auth=ADMIN, timeout=TIMEOUT) as admin:
        step = 0
        while time.monotonic() < until:
            started = time.monotonic()
            vm = vms[step % len(vms)]
            size = vm.image.stat().st_size
            overwrite(vm.image, rng.randrange(0, size - 65536), rng.randbytes(65536))
            expected = _sha(vm.image)
            normal = _post(admin, f"/settings/disks/{vm.disk_id}/backups.json", "backup")["id"]
            incremental = _post(admin, f"/virtual_machines/{vm.id}/backups.json", "backup")["id"]
            out.taken += [normal, incremental]
            _wait_idle(admin, normal)
            _wait_idle(admin, incremental)
            vm.backup_ids += [normal, incremental]  # the clients read the new ones too
            overwrite(vm.image, rng.randrange(0, size - 4096), rng.randbytes(4096))
            chosen = normal if step % 2 == 0 else incremental
            r = admin.post(f"/backups/{chosen}/restore.json")
            assert r.status_code == 201, r.text
            out.restored.append(chosen)
            _wait_idle(admin, chosen)
            if _sha(vm.image) != expected:
                out.mismatches.append(f"vm {vm.id} after restoring backup {chosen}")
            out.steps += 1
            out.seconds_per_step.append(time.monotonic() - started)
            step += 1
            time.sleep(pause)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _summary(samples: list[Sample], seconds: float) -> dict[str, Any]:
    lat = sorted(s.seconds for s in samples)
    return {
        "requests": len(samples),
        "req_per_s": round(len(samples) / seconds, 1),
        "p50_ms": round(_percentile(lat, 0.50) * 1000, 1),
        "p95_ms": round(_percentile(lat, 0.95) * 1000, 1),
        "p99_ms": round(_percentile(lat, 0.99) * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
    }


def run_load(served: Served, clients: int, seconds: float, backups_per_vm: int, pause: float) -> dict[str, Any]:
    t0 = time.monotonic()
    vms = _setup(served, backups_per_vm)
    setup_seconds = time.monotonic() - t0
    # One request per user first, so the clock does not start on 200 simultaneous argon2 verifications.
    for vm in vms[::2]:
        assert httpx.get(f"{served.base}/transactions.json", auth=vm.owner, timeout=TIMEOUT).status_code == 200

    samples: list[Sample] = []
    driver_log = DriverLog()

    async def main() -> float:
        until = time.monotonic() + seconds
        driver = asyncio.get_running_loop().run_in_executor(None, _driver, served.base, vms, until, driver_log, pause)
        started = time.monotonic()
        await asyncio.gather(*(_client(served.base, vms[c % len(vms)], until, samples, seed=c) for c in range(clients)))
        elapsed = time.monotonic() - started
        await driver
        return elapsed

    loadavg_before = os.getloadavg()
    elapsed = asyncio.run(main())
    loadavg_after = os.getloadavg()

    report: dict[str, Any] = {"clients": clients, "seconds": round(elapsed, 1), **_summary(samples, elapsed)}
    by_kind: dict[str, list[Sample]] = collections.defaultdict(list)
    for s in samples:
        by_kind[s.kind].append(s)
    report["by_endpoint"] = {k: _summary(v, elapsed) for k, v in sorted(by_kind.items())}
    report["statuses"] = dict(collections.Counter(str(s.status) for s in samples))
    report["driver"] = {
        "steps": driver_log.steps,
        "backups_taken": len(driver_log.taken),
        "restores": len(driver_log.restored),
        "max_step_s": round(max(driver_log.seconds_per_step, default=0), 1),
    }
    report["setup"] = {"vms": len(vms), "backups": sum(backups_per_vm for _ in vms), "seconds": round(setup_seconds, 1)}
    report["machine"] = {
        "nproc": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in loadavg_after],
    }
    print("\nload:", report, flush=True)

    errors = [s.error for s in samples if s.status is None or not 200 <= s.status < 300]
    assert not errors, f"{len(errors)} errors, first: {errors[:5]}"
    assert driver_log.steps >= 1
    assert not driver_log.mismatches, driver_log.mismatches

    # Every transaction complete; every built backup verifies.
    with httpx.Client(base_url=served.base, auth=ADMIN, timeout=TIMEOUT) as admin:
        txs = [t["transaction"] for t in admin.get("/transactions.json?per_page=1000").json()]
        backups = []
        for vm in vms:
            r = admin.get(f"/virtual_machines/{vm.id}/backups.json")
            assert r.status_code == 200, r.text
            backups += [b["backup"] for b in r.json()]
    expected_txs = len(vms) * backups_per_vm + len(driver_log.taken) + len(driver_log.restored)
    assert len(txs) >= expected_txs, (len(txs), expected_txs)
    assert {t["status"] for t in txs} == {"complete"}, [t for t in txs if t["status"] != "complete"][:5]
    assert len(backups) == len(vms) * backups_per_vm + len(driver_log.taken)
    assert all(b["built"] and not b["locked"] for b in backups)
    engine = Engine(LocalStorage(served.data / "storage"))
    damaged = [b["identifier"] for b in backups if not engine.verify(b["identifier"]).ok]
    assert not damaged, damaged
    report["verified_backups"] = len(backups)
    report["transactions"] = len(txs)
    print("load: every transaction complete:", len(txs), "- backups verified:", len(backups), flush=True)

    text = served.log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text[-5000:]
    return report


def test_load_quick(served: Served, record_property: Any) -> None:
    """50 clients for 8 s over 4 VMs with 8 backups each: the CI variant (~20 s in all)."""
    report = run_load(served, clients=50, seconds=8, backups_per_vm=8, pause=0.5)
    record_property("load", report)


@pytest.mark.slow
def test_load_200_clients_60_seconds(served: Served, record_property: Any) -> None:
    clients = int(os.environ.get("LOAD_CLIENTS", "200"))
    seconds = float(os.environ.get("LOAD_SECONDS", "60"))
    report = run_load(served, clients=clients, seconds=seconds, backups_per_vm=50, pause=2.0)
    record_property("load", report)
