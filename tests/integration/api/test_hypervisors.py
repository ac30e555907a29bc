"""Hypervisors, hypervisor zones and their backup server joins (issue 11), in JSON and XML, admin only."""

from __future__ import annotations

import pytest

from tests.integration.api.fleet_helpers import assert_xml_typed, heartbeat, hypervisor, zone
from vmbackup.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No worker in this process: ``online`` is then only what the heartbeat rows a test writes say."""
    return settings.model_copy(update={"worker": "external"})


HYPERVISOR_FIELDS = {
    "id": int,
    "label": str,
    "identifier": str,
    "ip_address": str,
    "hypervisor_type": str,
    "enabled": bool,
    "online": bool,
    "hypervisor_group_id": int,
    "created_at": str,
    "updated_at": str,
}


def test_hypervisor_crud_in_json_and_typed_xml(api):
    z = zone(api)
    hv = hypervisor(api, label="kvm-01", ip_address="10.1.0.11", hypervisor_type="kvm", hypervisor_group_id=z["id"])
    assert {k: type(v) for k, v in hv.items()} == HYPERVISOR_FIELDS
    assert hv["enabled"] is True and hv["online"] is False and hv["hypervisor_group_id"] == z["id"]
    assert len(hv["identifier"]) == 14
    got = api.get(f"/settings/hypervisors/{hv['id']}.json").json()["hypervisor"]
    assert got == hv
    assert_xml_typed(api.get(f"/settings/hypervisors/{hv['id']}.xml").content, got, "hypervisor")
    listed = api.get("/settings/hypervisors.xml")
    assert listed.text.count("<hypervisor>") == 1 and '<hypervisors type="array">' in listed.text
    assert api.get("/settings/hypervisors.json").json() == [{"hypervisor": got}]
    change = {"label": "kvm-02", "enabled": False, "hypervisor_type": "xen", "hypervisor_group_id": None}
    assert api.put(f"/settings/hypervisors/{hv['id']}.json", {"hypervisor": change}).status_code == 204
    after = api.get(f"/settings/hypervisors/{hv['id']}.json").json()["hypervisor"]
    assert {k: after[k] for k in change} == change
    assert api.delete(f"/settings/hypervisors/{hv['id']}.json").status_code == 204
    assert api.get(f"/settings/hypervisors/{hv['id']}.json").status_code == 404


def test_a_hypervisor_can_be_created_and_changed_in_xml(api):
    body = '<?xml version="1.0"?><hypervisor><label>x1</label><hypervisor_type>xen</hypervisor_type></hypervisor>'
    r = api.post("/settings/hypervisors.xml", content=body, headers={"content-type": "application/xml"})
    assert r.status_code == 201, r.text
    element = assert_xml_typed(r.content, {"label": "x1", "hypervisor_type": "xen", "online": False}, "hypervisor")
    hv_id = element.find("id").text
    echo = r.text.replace("<label>x1</label>", "<label>x2</label>")  # a client saves what it loaded, online too
    put = api.put(f"/settings/hypervisors/{hv_id}.xml", content=echo, headers={"content-type": "application/xml"})
    assert put.status_code == 204, put.text
    assert api.get(f"/settings/hypervisors/{hv_id}.json").json()["hypervisor"]["label"] == "x2"


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"hypervisor_type": "lxc"}, "hypervisor_type"),
        ({"hypervisor_group_id": 999}, "hypervisor_group_id"),
        ({"label": ""}, "label"),
        ({"enabled": "maybe"}, "enabled"),
    ],
)
def test_bad_hypervisor_fields_are_field_errors(api, fields, field):
    r = api.post("/settings/hypervisors.json", {"hypervisor": {"label": "hv", **fields}})
    assert r.status_code == 422 and field in r.json()["errors"], r.text


def test_online_follows_the_live_workers_heartbeats(app, api):
    one, two, three = (hypervisor(api, label=f"hv{i}") for i in (1, 2, 3))

    def online() -> dict[int, bool]:
        return {h["hypervisor"]["id"]: h["hypervisor"]["online"] for h in api.get("/settings/hypervisors.json").json()}

    assert online() == {one["id"]: False, two["id"]: False, three["id"]: False}
    heartbeat(app, "test:1", [one["id"]])
    heartbeat(app, "test:2", [two["id"]], age_seconds=600)  # stopped long ago: not live
    assert online() == {one["id"]: True, two["id"]: False, three["id"]: False}
    assert api.get(f"/settings/hypervisors/{one['id']}.json").json()["hypervisor"]["online"] is True
    assert api.get(f"/settings/hypervisors/{two['id']}.json").json()["hypervisor"]["online"] is False
    heartbeat(app, "test:3", [])  # a worker started with no ids runs everything, so every hypervisor is served
    assert set(online().values()) == {True}


def test_a_hypervisor_vms_run_on_cannot_be_deleted(api, world):
    hv = hypervisor(api)
    vm = world["vm_a"]
    assert (
        api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": {"hypervisor_id": hv["id"]}}).status_code
        == 204
    )
    r = api.delete(f"/settings/hypervisors/{hv['id']}.json")
    assert r.status_code == 422 and "virtual machines run on it" in r.json()["errors"][0]
    assert (
        api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": {"hypervisor_id": None}}).status_code == 204
    )
    assert api.delete(f"/settings/hypervisors/{hv['id']}.json").status_code == 204


def test_zone_crud_and_a_zone_with_hypervisors_is_kept(api):
    z = zone(api, label="Frankfurt")
    assert {k: type(v) for k, v in z.items()} == {
        "id": int,
        "label": str,
        "identifier": str,
        "location_group_id": type(None),
        "closed": bool,
        "server_type": str,
        "created_at": str,
        "updated_at": str,
    }
    assert_xml_typed(api.get(f"/settings/hypervisor_zones/{z['id']}.xml").content, z, "hypervisor_group")
    assert api.get("/settings/hypervisor_zones.json").json() == [{"hypervisor_group": z}]
    put = api.put(f"/settings/hypervisor_zones/{z['id']}.json", {"hypervisor_group": {"label": "FRA", "closed": True}})
    assert put.status_code == 204
    assert api.get(f"/settings/hypervisor_zones/{z['id']}.json").json()["hypervisor_group"]["closed"] is True
    hv = hypervisor(api, hypervisor_group_id=z["id"])
    r = api.delete(f"/settings/hypervisor_zones/{z['id']}.json")
    assert r.status_code == 422 and "hypervisors are in it" in r.json()["errors"][0]
    api.put(f"/settings/hypervisors/{hv['id']}.json", {"hypervisor": {"hypervisor_group_id": None}})
    assert api.delete(f"/settings/hypervisor_zones/{z['id']}.json").status_code == 204
    assert api.get(f"/settings/hypervisor_zones/{z['id']}.json").status_code == 404


@pytest.mark.parametrize("kind", ["hypervisors", "hypervisor_zones"])
def test_backup_server_joins(api, kind):
    target = hypervisor(api) if kind == "hypervisors" else zone(api)
    base = f"/settings/{kind}/{target['id']}/backup_server_joins"
    assert api.get(f"{base}.json").json() == []
    assert api.get(f"{base}.xml").text.endswith('<backup_server_joins type="array"/>\n')
    join = api.create(f"{base}.json", "backup_server_join", backup_server_id=1)
    expected_type = "Hypervisor" if kind == "hypervisors" else "HypervisorGroup"
    assert {k: join[k] for k in ("backup_server_id", "target_join_id", "target_join_type")} == {
        "backup_server_id": 1,
        "target_join_id": target["id"],
        "target_join_type": expected_type,
    }
    assert isinstance(join["id"], int)
    assert api.get(f"{base}.json").json() == [{"backup_server_join": join}]
    xml = api.get(f"{base}.xml")
    assert_xml_typed(xml.content, join, "backup_server_join")
    again = api.post(f"{base}.json", {"backup_server_join": {"backup_server_id": 1}})
    assert again.status_code == 422 and "already joined" in again.json()["errors"][0]
    unknown = api.post(f"{base}.json", {"backup_server_join": {"backup_server_id": 77}})
    assert unknown.status_code == 422 and "backup_server_id" in unknown.json()["errors"], unknown.text
    other = hypervisor(api, label="other") if kind == "hypervisors" else zone(api, label="other")
    assert api.delete(f"/settings/{kind}/{other['id']}/backup_server_joins/{join['id']}.json").status_code == 404
    assert api.delete(f"{base}/{join['id']}.json").status_code == 204
    assert api.get(f"{base}.json").json() == []
    assert api.get(f"/settings/{kind}/999/backup_server_joins.json").status_code == 404


def test_deleting_a_hypervisor_or_zone_removes_its_joins(app, api):
    from vmbackup.db.models import BackupServerJoin

    hv, z = hypervisor(api), zone(api)
    api.create(f"/settings/hypervisors/{hv['id']}/backup_server_joins.json", "backup_server_join", backup_server_id=1)
    api.create(
        f"/settings/hypervisor_zones/{z['id']}/backup_server_joins.json", "backup_server_join", backup_server_id=1
    )
    assert api.delete(f"/settings/hypervisors/{hv['id']}.json").status_code == 204
    assert api.delete(f"/settings/hypervisor_zones/{z['id']}.json").status_code == 204
    with app.state.sessions() as db:
        assert db.query(BackupServerJoin).count() == 0
    # A hypervisor made later with the same id (ids are never reused, but make sure) starts with no joins.
    assert api.get(f"/settings/hypervisors/{hypervisor(api)['id']}/backup_server_joins.json").json() == []


def test_users_get_403_on_the_fleet(api, world):
    alice = world["as_alice"]
    hv, z = hypervisor(api), zone(api)
    for method, path, body in [
        ("GET", "/settings/hypervisors.json", None),
        ("GET", f"/settings/hypervisors/{hv['id']}.json", None),
        ("POST", "/settings/hypervisors.json", {"hypervisor": {"label": "mine"}}),
        ("GET", "/settings/hypervisor_zones.json", None),
        ("DELETE", f"/settings/hypervisor_zones/{z['id']}.json", None),
        (
            "POST",
            f"/settings/hypervisors/{hv['id']}/backup_server_joins.json",
            {"backup_server_join": {"backup_server_id": 1}},
        ),
        ("GET", f"/settings/hypervisor_zones/{z['id']}/backup_server_joins.json", None),
    ]:
        r = alice.request(method, path, body)
        assert r.status_code == 403, (method, path, r.text)
