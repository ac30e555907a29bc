"""Periodic integrity checks: results kept per backup, damage flagged, and healed by the next backup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.images import MiB, write_image
from tests.integration.api.helpers import wait_idle
from vmbackup.services import integrity


def _vm_with_disk(api, tmp_path):
    alice = api.user("alice")
    vm = api.vm(alice["id"], api.template()["id"])
    image = write_image(tmp_path / "root.img", 4 * MiB, seed=11)
    api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    return vm


def _largest_chunk(settings) -> Path:
    return max(
        (p for p in Path(settings.storage_dir, "chunks").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_checks_record_results_and_respect_the_interval(app, api, tmp_path):
    vm = _vm_with_disk(api, tmp_path)
    b = api.post(f"/virtual_machines/{vm['id']}/backups.json").json()["backup"]
    wait_idle(api)
    assert integrity.run_due(app.state.sessions, interval_hours=24, mib_per_second=1000) == {b["id"]: True}
    got = api.get(f"/backups/{b['id']}.json").json()["backup"]
    assert got["integrity"] == "ok" and got["verified_at"] is not None
    # checked recently: not due again until the interval has passed
    assert integrity.run_due(app.state.sessions, interval_hours=24, mib_per_second=1000) == {}
    later = datetime.now(UTC) + timedelta(hours=25)
    assert integrity.run_due(app.state.sessions, interval_hours=24, mib_per_second=1000, now=later) == {b["id"]: True}


def test_a_damaged_chunk_is_flagged_and_the_next_backup_heals_it(app, api, tmp_path, settings):
    vm = _vm_with_disk(api, tmp_path)
    first = api.post(f"/virtual_machines/{vm['id']}/backups.json").json()["backup"]
    wait_idle(api)
    _flip(_largest_chunk(settings))
    assert integrity.run_due(app.state.sessions, interval_hours=24, mib_per_second=1000) == {first["id"]: False}
    got = api.get(f"/backups/{first['id']}.json").json()["backup"]
    assert got["integrity"] == "damaged"
    # the next backup of the same VM stores the damaged data afresh...
    second = api.post(f"/virtual_machines/{vm['id']}/backups.json").json()["backup"]
    wait_idle(api)
    assert api.get(f"/backups/{second['id']}.json").json()["backup"]["backup_size"] > 0
    # ...which, chunks being content-addressed, also makes the first backup whole again
    later = datetime.now(UTC) + timedelta(days=30)
    results = integrity.run_due(app.state.sessions, interval_hours=24, mib_per_second=1000, now=later)
    assert results == {first["id"]: True, second["id"]: True}


def test_the_cli_shows_and_runs_checks(app, api, tmp_path, settings):
    vm = _vm_with_disk(api, tmp_path)
    b = api.post(f"/virtual_machines/{vm['id']}/backups.json").json()["backup"]
    wait_idle(api)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env |= {"VMBACKUP_DATA_DIR": str(settings.data_dir), "VMBACKUP_DATABASE_URL": settings.database_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmbackup.cli.main", "backups", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("verify", str(b["id"])).returncode == 0
    _flip(_largest_chunk(settings))
    run = cli("verify", str(b["id"]))
    assert run.returncode == 13 and "damaged" in run.stdout
    [row] = json.loads(cli("list", "--damaged", "--json").stdout)
    assert row["id"] == b["id"] and row["integrity"] == "damaged" and "corrupt" in row["problems"]
