"""The auto-backup API: presets, schedules and their logs, zones, placement and backups search."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.images import MiB, write_image
from tests.integration.api.helpers import make_backup, wait_idle
from vmbackup.services import autobackups


def test_default_presets_and_crud(api):
    presets = [p["autobackup_template"] for p in api.get("/settings/autobackup_presets.json").json()]
    assert [(p["period"], p["rotation_period"], p["enabled"]) for p in presets] == [
        ("days", 7, True),
        ("weeks", 4, True),
        ("months", 12, False),
        ("years", 2, False),
    ]
    r = api.put(f"/settings/autobackup_presets/{presets[2]['id']}.json", {"autobackup_template": {"enabled": True}})
    assert r.status_code == 204
    made = api.create(
        "/settings/autobackup_presets.json", "autobackup_template", period="days", duration=2, rotation_period=3
    )
    assert api.get(f"/settings/autobackup_presets/{made['id']}.xml").text.count('<duration type="integer">2<') == 1
    assert api.delete(f"/settings/autobackup_presets/{made['id']}.json").status_code == 204
    bad = api.post("/settings/autobackup_presets.json", {"autobackup_template": {"period": "hours"}})
    assert bad.status_code == 422 and "period" in bad.json()["errors"]


def test_schedule_crud_on_disk_and_vm_paths(api, world):
    disk, vm = world["disk_a"]["id"], world["vm_a"]["id"]
    # the PHP wrapper's body, and its doubled slash
    body = {
        "schedule": {
            "duration": 1,
            "target_id": disk,
            "period": "days",
            "action": "autobackup",
            "target_type": "Disk",
            "rotation_period": 3,
        }
    }
    r = api.client.post(f"http://testserver//settings/disks/{disk}/schedules.json?", json=body, auth=api.auth)
    assert r.status_code == 201, r.text
    s = r.json()["schedule"]
    assert (s["target_type"], s["target_id"], s["status"], s["failure_count"]) == ("Disk", disk, "enabled", 0)
    assert s["user_id"] == world["alice"]["id"] and s["disk_id"] == disk
    vm_s = api.create(f"/virtual_machines/{vm}/schedules.json", "schedule", period="weeks", rotation_period=2)
    assert vm_s["target_type"] == "VirtualMachine" and vm_s["virtual_machine_id"] == vm
    assert [x["schedule"]["id"] for x in api.get(f"/settings/disks/{disk}/schedules.json").json()] == [s["id"]]
    assert [x["schedule"]["id"] for x in api.get(f"/virtual_machines/{vm}/schedules.json").json()] == [vm_s["id"]]
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    r = api.put(
        f"/settings/schedules/{s['id']}.json", {"schedule": {"start_at": start.isoformat(), "status": "disabled"}}
    )
    assert r.status_code == 204
    got = api.get(f"/settings/schedules/{s['id']}.json").json()["schedule"]
    assert got["start_at"] == start.isoformat() and got["status"] == "disabled" and got["schedule_logs"] == []
    # the VM's schedule still covers the disk; without it the disk has no auto-backups left
    assert api.get(f"/settings/disks/{disk}.json").json()["disk"]["has_autobackups"] is True
    assert api.delete(f"/settings/schedules/{vm_s['id']}.json").status_code == 204
    assert api.get(f"/settings/disks/{disk}.json").json()["disk"]["has_autobackups"] is False
    assert api.delete(f"/settings/schedules/{s['id']}.json").status_code == 204
    assert api.get(f"/settings/schedules/{s['id']}.json").status_code == 404


def test_schedule_validation_and_visibility(api, world):
    disk_b = world["disk_b"]["id"]
    alice = world["as_alice"]
    assert (
        alice.post("/settings/schedules.json", {"schedule": {"target_id": disk_b, "target_type": "Disk"}}).status_code
        == 404
    )
    assert alice.post(f"/settings/disks/{disk_b}/autobackup_enable.json").status_code == 404
    mine = alice.create("/settings/schedules.json", "schedule", target_id=world["disk_a"]["id"], target_type="Disk")
    assert world["as_bob"].get(f"/settings/schedules/{mine['id']}.json").status_code == 404
    assert [x["schedule"]["id"] for x in world["as_bob"].get("/settings/schedules.json").json()] == []
    for bad in ({"period": "fortnights"}, {"duration": 0}, {"rotation_period": "x"}, {"period": "minutes"}):
        r = api.post("/settings/schedules.json", {"schedule": {"target_id": world["disk_a"]["id"], **bad}})
        assert r.status_code == 422, (bad, r.text)
    assert alice.get("/settings/autobackup_presets.json").status_code == 403


UNRUNNABLE = {
    "years-10000-in-the-past": ({"period": "years", "duration": 10000, "start_at": "2020-01-01T00:00:00Z"}, "duration"),
    "years-11": ({"period": "years", "duration": 11}, "duration"),
    "months-121": ({"period": "months", "duration": 121}, "duration"),
    "days-3661": ({"period": "days", "duration": 3661}, "duration"),
    "year-9999": ({"start_at": "9999-12-31T23:59:59+00:00"}, "start_at"),
    "year-9999-west": ({"start_at": "9999-12-31T23:59:59-05:00"}, "start_at"),  # was a 500 (overflow in UTC)
    "year-1": ({"start_at": "0001-01-01T00:00:00+00:00"}, "start_at"),
    "year-1-east": ({"start_at": "0001-01-01T00:00:00+05:00"}, "start_at"),  # was a 500
    "before-1970": ({"start_at": "1969-12-31T23:59:59Z"}, "start_at"),
    "from-2200": ({"start_at": "2200-01-01T00:00:00Z"}, "start_at"),
}


@pytest.mark.parametrize("fields, field", UNRUNNABLE.values(), ids=UNRUNNABLE.keys())
def test_schedules_the_scheduler_could_not_run_are_refused(api, world, fields, field):
    disk = world["disk_a"]["id"]
    r = api.post(f"/settings/disks/{disk}/schedules.json", {"schedule": fields})
    assert r.status_code == 422, r.text
    assert list(r.json()["errors"]) == [field]
    assert api.get(f"/settings/disks/{disk}/schedules.json").json() == []
    made = api.create(f"/settings/disks/{disk}/schedules.json", "schedule", period="days")
    r = api.put(f"/settings/schedules/{made['id']}.json", {"schedule": fields})
    assert r.status_code == 422 and list(r.json()["errors"]) == [field]
    assert api.get(f"/settings/schedules/{made['id']}.json").json()["schedule"]["period"] == "days"


def test_schedule_limits_are_inclusive_and_checked_against_the_current_values(api, world):
    disk = world["disk_a"]["id"]
    for fields in (
        {"period": "years", "duration": 10, "start_at": "1970-01-01T00:00:00Z"},
        {"period": "days", "duration": 3660, "start_at": "2199-12-31T23:59:59Z"},
    ):
        api.create(f"/settings/disks/{disk}/schedules.json", "schedule", **fields)
    weekly = api.create(f"/settings/disks/{disk}/schedules.json", "schedule", period="weeks", duration=500)
    # the stored duration is fine for weeks, not for years: changing only the period is refused
    r = api.put(f"/settings/schedules/{weekly['id']}.json", {"schedule": {"period": "years"}})
    assert r.status_code == 422 and "duration" in r.json()["errors"]
    assert api.put(f"/settings/schedules/{weekly['id']}.json", {"schedule": {"status": "disabled"}}).status_code == 204


def test_presets_the_scheduler_could_not_run_are_refused(api):
    r = api.post("/settings/autobackup_presets.json", {"autobackup_template": {"period": "years", "duration": 10000}})
    assert r.status_code == 422 and list(r.json()["errors"]) == ["duration"]
    [yearly] = [
        p["autobackup_template"]
        for p in api.get("/settings/autobackup_presets.json").json()
        if p["autobackup_template"]["period"] == "years"
    ]
    r = api.put(f"/settings/autobackup_presets/{yearly['id']}.json", {"autobackup_template": {"duration": 11}})
    assert r.status_code == 422 and list(r.json()["errors"]) == ["duration"]
    got = api.get(f"/settings/autobackup_presets/{yearly['id']}.json").json()["autobackup_template"]
    assert got["duration"] == 1


def test_vm_autobackups_make_incremental_schedules(app, api, world):
    vm = world["vm_a"]["id"]
    r = api.post(f"/virtual_machines/{vm}/autobackup_enable.json", content=b"", headers={"Content-Length": "0"})
    assert r.status_code == 200
    assert {s["schedule"]["target_type"] for s in r.json()} == {"VirtualMachine"}
    assert api.get(f"/settings/disks/{world['disk_a']['id']}.json").json()["disk"]["has_autobackups"] is True
    assert api.post(f"/virtual_machines/{vm}/autobackup_disable.json").status_code == 200
    assert api.get(f"/settings/disks/{world['disk_a']['id']}.json").json()["disk"]["has_autobackups"] is False


def test_schedule_logs_record_runs(app, api, tmp_path):
    alice = api.user("alice")
    vm = api.vm(alice["id"], api.template()["id"])
    image = write_image(tmp_path / "d.img", 1 * MiB)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    s = api.create(f"/settings/disks/{disk['id']}/schedules.json", "schedule", period="days")
    autobackups.tick(app.state.sessions, now=datetime.now(UTC) + timedelta(seconds=1))
    wait_idle(api)
    logs = [x["schedule_log"] for x in api.get(f"/settings/schedules/{s['id']}/schedule_logs.json").json()]
    assert [x["status"] for x in logs] == ["complete", "queued"]
    [b] = api.get(f"/settings/disks/{disk['id']}/backups.json").json()
    assert b["backup"]["initiated"] == "days" and b["backup"]["built"] is True


def test_zones_attach_and_detach(api, tmp_path):
    zone = api.create("/settings/backup_server_zones.json", "backup_server_group", label="Zone A")
    bs = api.create("/settings/backup_servers.json", "backup_server", label="bs", storage_path=str(tmp_path / "bs"))
    assert (
        api.post(f"/settings/backup_server_zones/{zone['id']}/backup_servers/{bs['id']}/attach.json").status_code == 200
    )
    listed = api.get(f"/settings/backup_server_zones/{zone['id']}/backup_servers.json").json()
    assert [x["backup_server"]["id"] for x in listed] == [bs["id"]]
    assert (
        api.get(f"/settings/backup_servers/{bs['id']}.json").json()["backup_server"]["backup_server_group_id"]
        == zone["id"]
    )
    assert api.delete(f"/settings/backup_server_zones/{zone['id']}.json").status_code == 422  # still has servers
    api.post(f"/settings/backup_server_zones/{zone['id']}/backup_servers/{bs['id']}/detach.json")
    assert api.get(f"/settings/backup_server_zones/{zone['id']}/backup_servers.json").json() == []
    assert api.delete(f"/settings/backup_server_zones/{zone['id']}.json").status_code == 204


def test_placement_prefers_room_and_refuses_when_full(app, api, world, tmp_path):
    [local] = api.get("/settings/backup_servers.json").json()
    api.put(f"/settings/backup_servers/{local['backup_server']['id']}.json", {"backup_server": {"capacity": 1}})
    make_backup(app, disk_id=world["disk_a"]["id"], size_kb=2 * 1024 * 1024)  # 2 GB on a 1 GB server: full
    app.state.worker.stop()
    r = api.post(f"/settings/disks/{world['disk_a']['id']}/backups.json")
    # OnApp's message for "no eligible server" (services/placement.py), full being one reason
    assert r.status_code == 422 and "check Location Group settings" in r.json()["errors"][0]
    roomy = api.create(
        "/settings/backup_servers.json", "backup_server", label="big", capacity=100, storage_path=str(tmp_path / "big")
    )
    r = api.post(f"/settings/disks/{world['disk_a']['id']}/backups.json")
    assert r.status_code == 201 and r.json()["backup"]["backup_server_id"] == roomy["id"]
    api.put(f"/settings/backup_servers/{roomy['id']}.json", {"backup_server": {"enabled": False}})
    assert api.post(f"/settings/disks/{world['disk_a']['id']}/backups.json").status_code == 422


def test_backups_search(app, api, world):
    small = make_backup(app, disk_id=world["disk_a"]["id"], size_kb=100)
    big = make_backup(app, disk_id=world["disk_a"]["id"], size_kb=5000)
    url = "/settings/backup_servers/1/backups_search.json"

    def ids(query):
        r = api.get(url + query)
        assert r.status_code == 200, r.text
        return [x["backup"]["id"] for x in r.json()]

    assert ids("?size%5Bfrom%5D=1000") == [big]
    assert ids("?size%5Bto%5D=1000") == [small]
    today = datetime.now(UTC).date()
    assert ids(f"?period%5Bstartdate%5D={today}&period%5Benddate%5D={today}") == [small, big]
    assert ids(f"?period%5Benddate%5D={today - timedelta(days=1)}") == []
    assert api.get(url + "?size%5Bfrom%5D=abc").status_code == 422
    assert api.get(url + "?period%5Bstartdate%5D=yesterday").status_code == 422
    assert world["as_alice"].get(url).status_code == 403


@pytest.mark.parametrize("path", ["/settings/backup_server_zones.json", "/settings/schedules.json"])
def test_lists_answer_in_xml(api, world, path):
    r = api.get(path.replace(".json", ".xml"))
    assert r.status_code == 200 and 'type="array"' in r.text
