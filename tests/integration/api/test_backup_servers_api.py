"""Backup servers created the way OnApp clients create them (reference section 10: label, ip_address,
backup_ip_address, capacity, enabled, backup_server_group_id, integrated_storage; no storage location), in JSON and
XML, on SQLite and PostgreSQL, and shown with OnApp's fields (section 5.5)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vmbackup.config import Settings
from vmbackup.db.models import WorkerHeartbeat

ONAPP_FIELDS = {
    "id",
    "label",
    "ip_address",
    "backup_ip_address",
    "capacity",
    "enabled",
    "distro",
    "cpu_idle",
    "backup_server_group_id",
    "integrated_storage",
    "created_at",
    "updated_at",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No worker in this process: ``cpu_idle`` is then only what the heartbeat rows a test writes say."""
    return settings.model_copy(update={"worker": "external"})


def _zone(api: Any) -> int:
    return api.create("/settings/backup_server_zones.json", "backup_server_group", label="Zone A")["id"]


def test_create_with_onapps_fields_only_json(api: Any, settings: Any) -> None:
    zone = _zone(api)
    body = {
        "label": "bs-east",
        "ip_address": "10.0.0.20",
        "backup_ip_address": "10.1.0.20",
        "capacity": 2000,
        "enabled": True,
        "backup_server_group_id": zone,
        "integrated_storage": False,
    }
    r = api.post("/settings/backup_servers.json", {"backup_server": body})
    assert r.status_code == 201, r.text
    got = r.json()["backup_server"]
    assert got.keys() >= ONAPP_FIELDS
    assert {k: got[k] for k in body} == body
    assert (got["distro"], got["cpu_idle"], got["integrated_storage"]) == (None, None, False)
    # vmbackup chose where the bytes live: a directory of its own under the data directory, made already
    path = Path(got["storage_path"])
    assert path == settings.data_dir.resolve() / "backup_servers" / str(got["id"]) and path.is_dir()
    assert api.get(f"/settings/backup_servers/{got['id']}.json").json()["backup_server"] == got
    # the zone's listing has it
    listed = api.get(f"/settings/backup_server_zones/{zone}/backup_servers.json").json()
    assert [x["backup_server"]["id"] for x in listed] == [got["id"]]


def test_create_with_onapps_fields_only_xml(api: Any, settings: Any) -> None:
    zone = _zone(api)
    raw = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<backup_server><label>bs-xml</label>'
        "<ip_address>10.0.0.21</ip_address><backup_ip_address>10.1.0.21</backup_ip_address>"
        '<capacity type="integer">500</capacity><enabled type="boolean">true</enabled>'
        f'<backup_server_group_id type="integer">{zone}</backup_server_group_id>'
        '<integrated_storage type="boolean">false</integrated_storage></backup_server>'
    )
    r = api.request(
        "POST", "/settings/backup_servers.xml", content=raw.encode(), headers={"Content-Type": "application/xml"}
    )
    assert r.status_code == 201, r.text
    for line in (
        "<label>bs-xml</label>",
        '<capacity type="integer">500</capacity>',
        f'<backup_server_group_id type="integer">{zone}</backup_server_group_id>',
        '<distro nil="true"/>',
        '<cpu_idle nil="true"/>',
        '<integrated_storage type="boolean">false</integrated_storage>',
        f"<storage_path>{settings.data_dir.resolve() / 'backup_servers'}/",
    ):
        assert line in r.text, (line, r.text)


def test_two_servers_get_two_directories(api: Any) -> None:
    a = api.create("/settings/backup_servers.json", "backup_server", label="a")
    b = api.create("/settings/backup_servers.json", "backup_server", label="b")
    assert a["storage_path"] != b["storage_path"]
    assert Path(a["storage_path"]).name == str(a["id"]) and Path(b["storage_path"]).name == str(b["id"])


def test_an_admin_may_still_say_where(api: Any, tmp_path: Path) -> None:
    where = tmp_path / "nfs" / "bs"
    got = api.create("/settings/backup_servers.json", "backup_server", label="nfs", storage_path=str(where))
    assert got["storage_path"] == str(where) and where.is_dir()
    r = api.post("/settings/backup_servers.json", {"backup_server": {"label": "rel", "storage_path": "rel/dir"}})
    assert r.status_code == 422 and "storage_path" in r.json()["errors"]


def test_an_unknown_zone_is_a_field_error(api: Any) -> None:
    r = api.post("/settings/backup_servers.json", {"backup_server": {"label": "x", "backup_server_group_id": 999}})
    assert r.status_code == 422
    assert list(r.json()["errors"]) == ["backup_server_group_id"]
    assert len(api.get("/settings/backup_servers.json").json()) == 1  # only "Local storage": nothing was made


def test_what_a_get_shows_can_be_put_back(api: Any) -> None:
    got = api.create("/settings/backup_servers.json", "backup_server", label="rt", capacity=10)
    echoed = {k: v for k, v in got.items() if k != "storage_path"}
    assert api.put(f"/settings/backup_servers/{got['id']}.json", {"backup_server": echoed}).status_code == 204


def test_cpu_idle_comes_from_the_servers_live_worker(app: Any, api: Any) -> None:
    got = api.create("/settings/backup_servers.json", "backup_server", label="measured")
    now = datetime.now(UTC)
    with app.state.sessions() as db:
        db.add(
            WorkerHeartbeat(
                name="bs-host:7",
                host="bs-host",
                pid=7,
                hypervisor_ids=[],
                backup_server_ids=[got["id"]],
                cpu_idle=87,
                started_at=now,
                heartbeat_at=now,
            )
        )
        db.commit()
    assert api.get(f"/settings/backup_servers/{got['id']}.json").json()["backup_server"]["cpu_idle"] == 87
    listed = {
        x["backup_server"]["id"]: x["backup_server"]["cpu_idle"]
        for x in api.get("/settings/backup_servers.json").json()
    }
    assert listed[got["id"]] == 87
