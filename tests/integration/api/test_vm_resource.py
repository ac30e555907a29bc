"""OnApp's virtual machine resource as clients read it (reference sections 5.3 and 10), its status, and the IP
addresses admins assign to it, in JSON and typed XML."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from defusedxml.ElementTree import fromstring
from sqlalchemy import event, select

from tests.integration.api.fleet_helpers import assert_xml_typed, hypervisor
from tests.integration.api.helpers import make_backup
from vmbackup.config import Settings
from vmbackup.db.models import Backup, IpAddress, Transaction, User, VirtualMachine
from vmbackup.services import machines

VM_FIELDS = {
    "id": int,
    "identifier": str,
    "label": str,
    "hostname": str,
    "user_id": int,
    "template_id": int,
    "template_label": str,
    "operating_system": str,
    "operating_system_distro": str,
    "built": bool,
    "booted": bool,
    "locked": bool,
    "suspended": bool,
    "state": str,
    "recovery_mode": bool,
    "memory": int,
    "cpus": int,
    "cpu_shares": int,
    "total_disk_size": int,
    "min_disk_size": int,
    "hypervisor_id": int,
    "hypervisor_type": str,
    "storage_server_type": str,
    "allowed_swap": bool,
    "allowed_hot_migrate": bool,
    "allow_resize_without_reboot": bool,
    "support_incremental_backups": bool,
    "deleted_at": type(None),
    "ip_addresses": list,
    "created_at": str,
    "updated_at": str,
}

IP_FIELDS = {
    "id": int,
    "address": str,
    "broadcast": str,
    "gateway": str,
    "network_address": str,
    "prefix": int,
    "ipv4": bool,
    "hypervisor_id": int,
    "ip_net_id": type(None),
    "ip_range_id": type(None),
    "network_id": int,
    "user_id": int,
    "created_at": str,
    "updated_at": str,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No worker: queued transactions stay pending, to see where they are routed."""
    return settings.model_copy(update={"worker": "external"})


def _ip(api: Any, vm_id: Any, address: str, **kw: Any) -> Any:
    return api.post(f"/virtual_machines/{vm_id}/ip_addresses.json", {"ip_address": {"address": address, **kw}})


def test_every_field_with_its_type_in_json_and_xml(api, world):
    hv = hypervisor(api, hypervisor_type="xen")
    vm, ds = world["vm_a"], world["data_store"]
    api.disk(vm["id"], ds["id"], label="swap", disk_size=2, is_swap=True, primary=False)
    assert (
        api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": {"hypervisor_id": hv["id"]}}).status_code
        == 204
    )
    ip = _ip(api, vm["id"], "10.0.0.5", prefix=24, gateway="10.0.0.1", network_id=3)
    assert ip.status_code == 201, ip.text
    got = api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]
    assert {k: type(v) for k, v in got.items()} == VM_FIELDS
    assert got["total_disk_size"] == 5 + 2 and got["hypervisor_id"] == hv["id"] and got["hypervisor_type"] == "xen"
    assert (got["state"], got["recovery_mode"], got["cpu_shares"], got["storage_server_type"]) == (
        "delivered",
        False,
        1,
        "other",
    )
    [wrapped] = got["ip_addresses"]
    address = wrapped["ip_address"]
    assert {k: type(v) for k, v in address.items()} == IP_FIELDS
    assert address == {**ip.json()["ip_address"], "updated_at": address["updated_at"]}
    assert (address["hypervisor_id"], address["user_id"]) == (hv["id"], world["alice"]["id"])
    assert (address["network_address"], address["broadcast"], address["ipv4"]) == ("10.0.0.0", "10.0.0.255", True)

    xml = api.get(f"/virtual_machines/{vm['id']}.xml")
    element = assert_xml_typed(xml.content, {k: v for k, v in got.items() if k != "ip_addresses"}, "virtual_machine")
    # Rails's XML of a nested list of records: each item once, under the singular name, its fields typed.
    addresses = element.find("ip_addresses")
    assert addresses.get("type") == "array" and [c.tag for c in addresses] == ["ip_address"]
    item = addresses.find("ip_address")
    assert item.find("address").text == "10.0.0.5" and item.find("prefix").get("type") == "integer"
    assert item.find("ipv4").get("type") == "boolean" and item.find("ip_net_id").get("nil") == "true"


def test_a_vm_with_no_disks_hypervisor_or_addresses(api, world):
    vm = api.vm(world["alice"]["id"], world["template"]["id"], label="bare")
    assert (vm["total_disk_size"], vm["hypervisor_id"], vm["hypervisor_type"], vm["ip_addresses"]) == (
        0,
        None,
        None,
        [],
    )
    xml = api.get(f"/virtual_machines/{vm['id']}.xml").text
    assert '<ip_addresses type="array"/>' in xml and '<hypervisor_type nil="true"/>' in xml
    assert '<total_disk_size type="integer">0</total_disk_size>' in xml


def test_admins_place_and_move_vms_and_pending_takes_follow(app, api, world):
    one, two = hypervisor(api, label="hv-a"), hypervisor(api, label="hv-b")
    for hv in (one, two):  # placement takes only the backup servers joined to the VM's hypervisor
        api.create(
            f"/settings/hypervisors/{hv['id']}/backup_server_joins.json", "backup_server_join", backup_server_id=1
        )
    vm = api.vm(world["alice"]["id"], world["template"]["id"], hypervisor_id=one["id"], cpu_shares=40)
    assert (vm["hypervisor_id"], vm["hypervisor_type"], vm["cpu_shares"]) == (one["id"], "kvm", 40)
    disk = api.disk(vm["id"], world["data_store"]["id"], image_path="/nonexistent/moved.img")
    take = api.post(f"/settings/disks/{disk['id']}/backups.json")
    assert take.status_code == 201, take.text
    with app.state.sessions() as db:
        assert {t.queue for t in db.query(Transaction)} == {f"hypervisor-{one['id']}"}
    move = api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": {"hypervisor_id": two["id"]}})
    assert move.status_code == 204, move.text
    with app.state.sessions() as db:
        assert {t.queue for t in db.query(Transaction) if t.status == "pending"} == {f"hypervisor-{two['id']}"}
    got = api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]
    assert (got["hypervisor_id"], got["cpu_shares"]) == (two["id"], 40)


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_an_unknown_hypervisor_is_a_field_error(api, world, method):
    fields = {"hypervisor_id": 4242}
    if method == "POST":
        r = api.post(
            "/virtual_machines.json",
            {
                "virtual_machine": {
                    "label": "x",
                    "user_id": world["alice"]["id"],
                    "template_id": world["template"]["id"],
                    **fields,
                }
            },
        )
    else:
        r = api.put(f"/virtual_machines/{world['vm_a']['id']}.json", {"virtual_machine": fields})
    assert r.status_code == 422 and r.json()["errors"] == {"hypervisor_id": ["Hypervisor 4242 does not exist"]}


def test_a_client_echoing_the_whole_vm_back_changes_only_what_it_may(api, world):
    vm = api.get(f"/virtual_machines/{world['vm_a']['id']}.json").json()["virtual_machine"]
    echoed = {**vm, "label": "renamed", "state": "building", "total_disk_size": 99}
    assert api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": echoed}).status_code == 204
    after = api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]
    assert (after["label"], after["state"], after["total_disk_size"]) == ("renamed", "delivered", 5)


def test_ip_addresses_are_assigned_listed_and_removed_by_admins(api, world):
    vm = world["vm_a"]
    first = _ip(api, vm["id"], "192.0.2.10", prefix=25, gateway="192.0.2.1")
    assert first.status_code == 201, first.text
    second = _ip(api, vm["id"], "2001:db8::0010", prefix=64)
    assert second.status_code == 201, second.text
    v6 = second.json()["ip_address"]
    assert (v6["address"], v6["ipv4"], v6["network_address"], v6["broadcast"]) == (
        "2001:db8::10",
        False,
        "2001:db8::",
        None,
    )
    listed = api.get(f"/virtual_machines/{vm['id']}/ip_addresses.json").json()
    assert [x["ip_address"]["address"] for x in listed] == ["192.0.2.10", "2001:db8::10"]
    xml = api.get(f"/virtual_machines/{vm['id']}/ip_addresses.xml")
    doc = fromstring(xml.content)
    assert doc.tag == "ip_addresses" and doc.get("type") == "array" and [c.tag for c in doc] == ["ip_address"] * 2
    assert_xml_typed(xml.content, listed[0]["ip_address"], "ip_address")
    # the owner sees them inside their VM; someone else sees neither
    alice, bob = world["as_alice"], world["as_bob"]
    assert alice.get(f"/virtual_machines/{vm['id']}/ip_addresses.json").json() == listed
    assert [
        x["ip_address"]["address"]
        for x in alice.get("/virtual_machines.json").json()[0]["virtual_machine"]["ip_addresses"]
    ] == [
        "192.0.2.10",
        "2001:db8::10",
    ]
    assert bob.get(f"/virtual_machines/{vm['id']}/ip_addresses.json").status_code == 404
    assert bob.get("/virtual_machines.json").json()[0]["virtual_machine"]["ip_addresses"] == []
    assert (
        alice.post(
            f"/virtual_machines/{vm['id']}/ip_addresses.json", {"ip_address": {"address": "192.0.2.11"}}
        ).status_code
        == 403
    )
    ip_id = first.json()["ip_address"]["id"]
    assert alice.delete(f"/virtual_machines/{vm['id']}/ip_addresses/{ip_id}.json").status_code == 403
    assert api.delete(f"/virtual_machines/{world['vm_b']['id']}/ip_addresses/{ip_id}.json").status_code == 404
    assert api.delete(f"/virtual_machines/{vm['id']}/ip_addresses/{ip_id}.json").status_code == 204
    assert len(api.get(f"/virtual_machines/{vm['id']}/ip_addresses.json").json()) == 1
    # freed: it may be assigned again, to another VM
    assert _ip(api, world["vm_b"]["id"], "192.0.2.10").status_code == 201


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"address": "10.0.0.300"}, "address"),
        ({"address": "not an address"}, "address"),
        ({"address": "10.0.0.5", "gateway": "10.0.0"}, "gateway"),
        ({"address": "10.0.0.5", "prefix": 33}, "prefix"),
        ({"address": "10.0.0.5", "prefix": -1}, "prefix"),
        ({"address": "10.0.0.5", "gateway": "2001:db8::1"}, "gateway"),
        ({"prefix": 24}, "address"),
        ({"address": "10.0.0.5", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_address_is_a_field_error(api, world, fields, field):
    r = api.post(f"/virtual_machines/{world['vm_a']['id']}/ip_addresses.json", {"ip_address": fields})
    assert r.status_code == 422 and field in r.json()["errors"], r.text


def test_an_address_is_assigned_once(api, world):
    assert _ip(api, world["vm_a"]["id"], "10.9.0.1").status_code == 201
    for vm, written in ((world["vm_a"], "10.9.0.1"), (world["vm_b"], "10.9.0.1"), (world["vm_b"], "10.09.0.1")):
        r = _ip(api, vm["id"], written)
        assert r.status_code == 422, r.text
    assert "already assigned" in _ip(api, world["vm_b"]["id"], "10.9.0.1").json()["errors"][0]
    assert _ip(api, 4242, "10.9.0.2").status_code == 404


def test_status(api, world):
    vm = world["vm_a"]
    for who in (api, world["as_alice"]):
        got = who.get(f"/virtual_machines/{vm['id']}/status.json").json()
        assert got == {
            "virtual_machine": {
                "id": vm["id"],
                "identifier": vm["identifier"],
                "hostname": vm["hostname"],
                "template_id": vm["template_id"],
                "built": True,
                "locked": False,
                "booted": False,
                "operating_system": "linux",
                "suspended": False,
                "enable_autoscale": False,
                "state": "delivered",
            }
        }
        assert_xml_typed(
            who.get(f"/virtual_machines/{vm['id']}/status.xml").content, got["virtual_machine"], "virtual_machine"
        )
    assert world["as_bob"].get(f"/virtual_machines/{vm['id']}/status.json").status_code == 404


def test_deleting_a_vm_keeps_its_backups_unless_told(app, api, world):
    kept = make_backup(app, disk_id=world["disk_a"]["id"])
    _ip(api, world["vm_a"]["id"], "10.8.0.1")
    r = api.delete(f"/virtual_machines/{world['vm_a']['id']}.json?convert_last_backup=0&destroy_all_backups=0")
    assert r.status_code == 204
    assert api.get(f"/backups/{kept}.json").status_code == 200
    assert _ip(api, world["vm_b"]["id"], "10.8.0.1").status_code == 201  # the address went with the VM
    doomed = [make_backup(app, disk_id=world["disk_b"]["id"]) for _ in range(2)]
    r = api.delete(f"/virtual_machines/{world['vm_b']['id']}.json?convert_last_backup=1&destroy_all_backups=1")
    assert r.status_code == 204
    with app.state.sessions() as db:
        queued = {t.parent_id for t in db.query(Transaction) if t.action == "destroy_backup"}
        assert queued == set(doomed)
        assert all(db.get(Backup, b).locked for b in doomed) and not db.get(Backup, kept).locked


def _count_queries(app: Any) -> Any:
    """Count the statements request handlers run (Starlette runs them in AnyIO's worker threads), not those of the
    in-process worker's and the scheduler's threads, which poll the same engine meanwhile."""
    counter = {"n": 0}

    def count(*_: Any) -> None:
        if threading.current_thread().name.startswith("AnyIO worker"):
            counter["n"] += 1

    event.listen(app.state.engine, "before_cursor_execute", count)
    return counter, count


def test_listing_vms_takes_the_same_number_of_queries_for_3_or_12_vms(app, api, world):
    hv = hypervisor(api)

    def grow(to: int) -> None:
        while len(api.get("/virtual_machines.json").json()) < to:
            n = len(api.get("/virtual_machines.json").json())
            vm = api.vm(world["alice"]["id"], world["template"]["id"], label=f"vm{n}", hypervisor_id=hv["id"])
            api.disk(vm["id"], world["data_store"]["id"])
            _ip(api, vm["id"], f"10.7.0.{n}")

    def queries() -> int:
        api.get("/virtual_machines.json")  # warm: the credential check is then cached, as for a polling panel
        counter, listener = _count_queries(app)
        assert api.get("/virtual_machines.json").status_code == 200
        event.remove(app.state.engine, "before_cursor_execute", listener)
        return counter["n"]

    grow(3)
    few = queries()
    grow(12)
    assert queries() == few <= 8


def test_deleting_a_vm_frees_its_addresses(app, api, world):
    """Through the API (the VM's addresses not loaded: the database's cascade) and in a session that has loaded
    them (the ORM's): either way they go with the VM, and another VM may take them."""
    first, second = world["vm_a"]["id"], world["vm_b"]["id"]
    assert _ip(api, first, "10.9.0.1").status_code == 201
    assert api.delete(f"/virtual_machines/{first}.json").status_code == 204
    assert _ip(api, second, "10.9.0.1").status_code == 201

    third = api.vm(world["alice"]["id"], world["template"]["id"], label="third")["id"]
    assert _ip(api, third, "10.9.0.2").status_code == 201
    with app.state.sessions() as db:
        admin = db.scalar(select(User).where(User.role == "admin"))
        assert [ip.address for ip in db.get(VirtualMachine, third).ip_addresses] == ["10.9.0.2"]  # loaded
        machines.delete_vm(db, admin, third)
    with app.state.sessions() as db:
        assert db.scalar(select(IpAddress).where(IpAddress.address == "10.9.0.2")) is None
