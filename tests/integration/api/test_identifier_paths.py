"""Every /virtual_machines/:id path takes the VM's 14-character identifier as well as its number (reference section
10: Squall, Cloud.net and libcloud put the identifier in URLs), with the same answers and the same visibility."""

from __future__ import annotations

import time

import pytest

from tests.integration.api.helpers import make_backup

GETS = [
    "",
    "/status",
    "/backups",
    "/backups/images",
    "/backups/files",
    "/disks",
    "/disks/{disk}/backups",
    "/schedules",
    "/transactions",
    "/ip_addresses",
]


@pytest.fixture
def scene(app, api, world):
    vm, disk = world["vm_a"], world["disk_a"]
    make_backup(app, disk_id=disk["id"])
    make_backup(app, vm_id=vm["id"])
    alice = world["as_alice"]
    assert (
        alice.post(f"/settings/disks/{disk['id']}/schedules.json", {"schedule": {"period": "days"}}).status_code == 201
    )
    assert (
        api.post(f"/virtual_machines/{vm['id']}/ip_addresses.json", {"ip_address": {"address": "10.3.0.1"}}).status_code
        == 201
    )
    return world


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_every_get_answers_the_same_by_identifier(api, scene, fmt):
    vm, disk = scene["vm_a"], scene["disk_a"]
    for who in (api, scene["as_alice"]):
        for tail in GETS:
            tail = tail.format(disk=disk["id"])
            by_id = who.get(f"/virtual_machines/{vm['id']}{tail}.{fmt}")
            by_identifier = who.get(f"/virtual_machines/{vm['identifier']}{tail}.{fmt}")
            assert by_id.status_code == 200, (tail, by_id.text)
            assert (by_identifier.status_code, by_identifier.content) == (200, by_id.content), tail
            assert by_identifier.headers["content-type"] == by_id.headers["content-type"]


def test_transactions_of_a_vm_by_identifier_are_onapp_transactions(api, scene):
    vm = scene["vm_a"]
    assert api.post(f"/virtual_machines/{vm['identifier']}/backups.json").status_code == 201
    txs = api.get(f"/virtual_machines/{vm['identifier']}/transactions.json").json()
    assert txs and all(list(t) == ["transaction"] for t in txs)
    assert {t["transaction"]["associated_object_id"] for t in txs} == {vm["id"]}
    assert isinstance(txs[0]["transaction"]["id"], int) and isinstance(txs[0]["transaction"]["allowed_cancel"], bool)


def test_another_users_or_an_unknown_identifier_is_404(api, scene):
    vm_a, bob = scene["vm_a"], scene["as_bob"]
    for tail in GETS:
        tail = tail.format(disk=scene["disk_a"]["id"])
        assert bob.get(f"/virtual_machines/{vm_a['identifier']}{tail}.json").status_code == 404, tail
        assert api.get(f"/virtual_machines/zzzzzzzzzzzzzz{tail}.json").status_code == 404, tail
    assert bob.post(f"/virtual_machines/{vm_a['identifier']}/backups.json").status_code == 404
    assert bob.post(f"/virtual_machines/{vm_a['identifier']}/autobackup_enable.json").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "0",
        "2147483648",
        "99999999999",
        "-1",
        "abc",
        "ABCDEFGHIJKLMN",
        "abcdefghijklm",
        "abcdefghijklmno",
        "１２",
        "a" * 5000,
        "9" * 5000,
    ],
)
def test_anything_else_names_no_vm(api, scene, name):
    r = api.get(f"/virtual_machines/{name}.json")
    assert r.status_code == 404 and r.json() == {"errors": ["Resource not found"]}  # as for any malformed id
    r = api.get("/virtual_machines/zzzzzzzzzzzzzz.json")
    assert r.status_code == 404 and r.json() == {"errors": ["VirtualMachine not found"]}


def test_an_unauthenticated_caller_learns_nothing_about_identifiers(client_for_anon, scene):
    for name in (scene["vm_a"]["identifier"], "zzzzzzzzzzzzzz"):
        assert client_for_anon.get(f"/virtual_machines/{name}.json").status_code == 401


@pytest.fixture
def client_for_anon(api):
    return api.as_("nobody", "wrong-password-1")


def test_writes_by_identifier(app, api, scene):
    vm, alice = scene["vm_a"], scene["as_alice"]
    ident = vm["identifier"]
    assert (
        api.put(f"/virtual_machines/{ident}.json", {"virtual_machine": {"label": "by-identifier"}}).status_code == 204
    )
    assert api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]["label"] == "by-identifier"
    assert alice.post(f"/virtual_machines/{ident}/autobackup_enable.json").status_code == 200
    assert alice.post(f"/virtual_machines/{ident}/autobackup_disable.json").status_code == 200
    made = alice.post(f"/virtual_machines/{ident}/schedules.json", {"schedule": {"period": "weeks"}})
    assert made.status_code == 201 and made.json()["schedule"]["target_id"] == vm["id"]
    ip = api.post(f"/virtual_machines/{ident}/ip_addresses.json", {"ip_address": {"address": "10.3.0.2"}})
    assert ip.status_code == 201
    assert api.delete(f"/virtual_machines/{ident}/ip_addresses/{ip.json()['ip_address']['id']}.json").status_code == 204
    disk = api.post(
        f"/virtual_machines/{ident}/disks.json",
        {"disk": {"label": "d2", "disk_size": 1, "data_store_id": scene["data_store"]["id"]}},
    )
    assert disk.status_code == 201 and disk.json()["disk"]["virtual_machine_id"] == vm["id"]
    backup = make_backup(app, disk_id=scene["disk_a"]["id"])
    note = alice.put(f"/virtual_machines/{ident}/backups/{backup}.json", {"backup": {"note": "by identifier"}})
    assert note.status_code == 204
    assert alice.put(f"/virtual_machines/{ident}.json", {"virtual_machine": {"label": "mine"}}).status_code == 403
    assert alice.delete(f"/virtual_machines/{ident}.json").status_code == 403
    r = api.delete(f"/virtual_machines/{ident}.json?convert_last_backup=0&destroy_all_backups=0")
    assert r.status_code == 204
    assert api.get(f"/virtual_machines/{ident}.json").status_code == 404
    assert api.get(f"/backups/{backup}.json").status_code == 200  # kept, as OnApp keeps them


def test_the_listing_cache_serves_identifier_paths_and_forgets_them_on_change(app, scene):
    cache = app.state.listing_cache
    assert cache is not None and cache.clock.feed.wait_ready(10)
    alice, vm = scene["as_alice"], scene["vm_a"]
    path = f"/virtual_machines/{vm['identifier']}/backups.json"

    def settle() -> None:
        seen = None
        while seen != cache.version():
            seen = cache.version()
            time.sleep(0.1)

    settle()
    first = alice.get(path)
    hits = cache.hits
    assert alice.get(path).content == first.content and cache.hits == hits + 1
    backup = first.json()[0]["backup"]["id"]
    assert alice.put(f"/backups/{backup}.json", {"backup": {"note": "changed"}}).status_code == 204
    after = alice.get(path).json()
    assert [b["backup"]["note"] for b in after if b["backup"]["id"] == backup] == ["changed"]
    # by number it is another key, for the same listing, ended by the same change
    assert alice.get(f"/virtual_machines/{vm['id']}/backups.json").json() == after
