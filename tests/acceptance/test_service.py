"""The real service process, driven over HTTP as a user would: `vmbackup serve` on the embedded default."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import MiB, overwrite, write_image
from tests.integration.api.helpers import sha256

WRAPPER = Path(os.environ.get("ONAPP_PHP_WRAPPER", "/tmp/onapp-php"))
PHP_CLIENT = Path(__file__).parent / "php" / "onapp_client.php"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    """An HTTP answer, not only an accepted connection: `serve` listens before it has built the service (so a
    busy port fails before anything runs), and the kernel queues connections until uvicorn takes them."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/version.json", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


@pytest.fixture
def service(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env |= {
        "VMBACKUP_DATA_DIR": str(tmp_path / "data"),
        "VMBACKUP_LISTEN": f"127.0.0.1:{port}",
        "VMBACKUP_PASSWORD_MEMORY_KIB": "19456",
        "VMBACKUP_PASSWORD_TIME_COST": "2",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmbackup.cli.main", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # Ready means answering HTTP: neither a log line nor an open port says the service is built.
        deadline = time.monotonic() + 30
        while not _answers(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        password = re.search(r"created admin account 'admin' with password (\S+)", log.read_text())
        assert password, "the generated admin password is printed once on first start"
        yield {"base": base, "auth": ("admin", password.group(1)), "tmp": tmp_path, "log": log}
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_built(client: httpx.Client, backup_id: int) -> dict[str, Any]:
    for _ in range(600):
        b = client.get(f"/backups/{backup_id}.json").json()["backup"]
        if b["built"] and not b["locked"]:
            return b
        time.sleep(0.05)
    raise TimeoutError(backup_id)


def _inventory(client: httpx.Client, image: Path) -> tuple[int, int]:
    def post(path: str, root: str, **fields: Any) -> dict[str, Any]:
        r = client.post(path, json={root: fields})
        assert r.status_code == 201, r.text
        return r.json()[root]

    user = post("/users.json", "user", login="alice", email="alice@example.com", password="alice-password")
    tpl = post("/templates.json", "image_template", label="Debian", operating_system_distro="debian")
    ds = post("/settings/data_stores.json", "data_store", label="ds")
    vm = post("/virtual_machines.json", "virtual_machine", label="vm", user_id=user["id"], template_id=tpl["id"])
    disk = post(
        f"/virtual_machines/{vm['id']}/disks.json",
        "disk",
        label="root",
        disk_size=1,
        primary=True,
        data_store_id=ds["id"],
        image_path=str(image),
    )
    return vm["id"], disk["id"]


def test_serve_backs_up_and_restores_a_real_image(service: dict[str, Any]) -> None:
    image = write_image(service["tmp"] / "disk.img", 32 * MiB, seed=7)
    original = sha256(image)
    with httpx.Client(base_url=service["base"], auth=service["auth"]) as client:
        assert client.get("/version.json").json() == {"version": "6.5.0"}
        vm_id, disk_id = _inventory(client, image)
        normal = client.post(f"/settings/disks/{disk_id}/backups.json").json()["backup"]
        first = client.post(f"/virtual_machines/{vm_id}/backups.json").json()["backup"]
        _wait_built(client, normal["id"])
        _wait_built(client, first["id"])
        overwrite(image, 5 * MiB, os.urandom(64 * 1024))
        second = client.post(f"/virtual_machines/{vm_id}/backups.json").json()["backup"]
        assert _wait_built(client, second["id"])["backup_size"] < _wait_built(client, first["id"])["backup_size"]
        assert client.post(f"/backups/{first['id']}/restore.json").status_code == 201
        _wait_built(client, first["id"])
        assert sha256(image) == original
        overwrite(image, 0, os.urandom(4096))
        assert client.post(f"/backups/{normal['id']}/restore.json").status_code == 201
        _wait_built(client, normal["id"])
        assert sha256(image) == original
        xml = client.get(f"/virtual_machines/{vm_id}/backups/images.xml")
        assert xml.headers["content-type"] == "application/xml; charset=utf-8"
        assert "<backup_type>normal</backup_type>" in xml.text


@pytest.fixture
def php_wrapper() -> Path:
    """The wrapper's directory; skipped locally without php or the wrapper, a failure in CI (.ci/run installs both)."""
    missing = [
        what
        for what, absent in (
            ("php (php-cli php-curl php-mbstring)", shutil.which("php") is None),
            (f"the OnApp PHP wrapper in $ONAPP_PHP_WRAPPER ({WRAPPER})", not (WRAPPER / "OnAppInit.php").exists()),
        )
        if absent
    ]
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return WRAPPER


def test_the_public_php_wrapper_works_against_the_service(php_wrapper: Path, service: dict[str, Any]) -> None:
    image = write_image(service["tmp"] / "disk.img", 8 * MiB, seed=8)
    with httpx.Client(base_url=service["base"], auth=service["auth"]) as client:
        vm_id, disk_id = _inventory(client, image)
    for login, password in (service["auth"], ("alice", "alice-password")):
        run = subprocess.run(
            ["php", str(PHP_CLIENT), str(php_wrapper), service["base"], login, password, str(vm_id), str(disk_id)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.strip().endswith("all ok")
