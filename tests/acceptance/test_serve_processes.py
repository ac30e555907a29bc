"""`vmbackup serve` with VMBACKUP_API_PROCESSES=2: both processes answer on the one port, transactions queued
through either run (on SQLite by the first process's worker alone), and stopping the service stops both."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.acceptance.serve_process import serving
from tests.api_client import Api
from tests.conftest import ADMIN


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_two_api_processes_share_the_port_and_one_worker_runs_what_either_queued(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.img").write_bytes(os.urandom(64 * 1024))
    extra = {"VMBACKUP_API_PROCESSES": "2", "VMBACKUP_IMAGE_ROOTS": str(images)}
    with serving(tmp_path, extra) as served:
        deadline = time.monotonic() + 30
        while served.output().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.05)
        children = _children(served.proc.pid)
        assert len(children) == 2
        with httpx.Client(base_url=served.base) as client:
            api = Api(client, ADMIN)  # type: ignore[arg-type]
            vm = api.vm(api.user("alice")["id"], api.template()["id"])
            fields = {"label": "d", "disk_size": 1, "data_store_id": api.data_store()["id"]}
            r = api.post(
                f"/virtual_machines/{vm['id']}/disks.json", {"disk": fields | {"image_path": str(images / "a.img")}}
            )
            assert r.status_code == 201, r.text
            disk = r.json()["disk"]["id"]
        # Each take on a connection of its own, so the kernel hands them to either process.
        taken = []
        for _ in range(6):
            with httpx.Client(base_url=served.base, auth=ADMIN) as one:
                r = one.post(f"/settings/disks/{disk}/backups.json")
                assert r.status_code == 201, r.text
                taken.append(r.json()["backup"]["id"])
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=served.base, auth=ADMIN) as client:
            while True:
                built = [client.get(f"/backups/{b}.json").json()["backup"]["built"] for b in taken]
                if all(built):
                    break
                assert time.monotonic() < deadline, (built, served.output()[-3000:])
                time.sleep(0.2)
        served.proc.terminate()
        served.proc.wait(30)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
