"""Take, restore, convert and delete through the API, on real image files, run by the in-process worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.images import MiB, overwrite, write_image
from tests.integration.api.helpers import sha256, wait_idle


@pytest.fixture
def vm(api, tmp_path):
    """A VM owned by alice with two real sparse disk images."""
    alice = api.user("alice")
    tpl = api.template()
    ds = api.data_store()
    vm = api.vm(alice["id"], tpl["id"])
    root = write_image(tmp_path / "root.img", 6 * MiB, seed=1)
    data = write_image(tmp_path / "data.img", 3 * MiB, seed=2)
    d1 = api.disk(vm["id"], ds["id"], label="root", image_path=str(root))
    d2 = api.disk(vm["id"], ds["id"], label="data", primary=False, image_path=str(data))
    return {"vm": vm, "root": (d1, root), "data": (d2, data), "as_alice": api.as_("alice", "alice-password")}


def _tx_of(api, backup_id, action):
    return next(t for t in wait_idle(api) if t["parent_id"] == backup_id and t["action"] == action)


def test_normal_backup_round_trip(api, vm):
    disk, image = vm["root"]
    original = sha256(image)
    r = api.post(f"/settings/disks/{disk['id']}/backups.json")  # no body at all, like OnApp_Disk::takeBackup
    assert r.status_code == 201, r.text
    backup = r.json()["backup"]
    assert backup["built"] is False and backup["locked"] is True and backup["built_at"] is None
    assert api.get(f"/backups/{backup['id']}.json").status_code == 200  # the wrapper reloads at once
    tx = _tx_of(api, backup["id"], "take_backup")
    assert tx["status"] == "complete"
    got = api.get(f"/backups/{backup['id']}.json").json()["backup"]
    assert got["built"] is True and got["locked"] is False and got["built_at"] is not None
    assert 0 < got["backup_size"] < 6 * 1024  # kB actually stored, far below the 6 MiB image
    overwrite(image, 0, os.urandom(8192))
    assert sha256(image) != original
    r = api.post(
        f"/backups/{backup['id']}/restore.json",
        content=b'{"backup":{"label":"","id":12}}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert _tx_of(api, backup["id"], "restore_backup")["status"] == "complete"
    assert sha256(image) == original
    assert api.get(f"/virtual_machines/{vm['vm']['id']}.json").json()["virtual_machine"]["locked"] is False


def test_incremental_backups_restore_each_on_their_own(api, vm):
    (_, root), (_, data) = vm["root"], vm["data"]
    first_sums = sha256(root), sha256(data)
    first = api.post(f"/virtual_machines/{vm['vm']['id']}/backups.json", {"backup": {"note": "first"}}).json()["backup"]
    assert first["backup_type"] == "incremental" and first["note"] == "first" and first["disk_id"] is None
    wait_idle(api)
    overwrite(root, 3 * MiB, os.urandom(4096))
    overwrite(data, 100, os.urandom(4096))
    second = api.post(f"/virtual_machines/{vm['vm']['id']}/backups.json", {"backup": []}).json()["backup"]
    wait_idle(api)
    b1 = api.get(f"/backups/{first['id']}.json").json()["backup"]
    b2 = api.get(f"/backups/{second['id']}.json").json()["backup"]
    assert b1["built"] and b2["built"]
    assert b2["backup_size"] < b1["backup_size"]  # only changed chunks were stored
    assert api.post(f"/backups/{first['id']}/restore.json").status_code == 201
    assert _tx_of(api, first["id"], "restore_backup")["status"] == "complete"
    assert (sha256(root), sha256(data)) == first_sums
    files = api.get(f"/virtual_machines/{vm['vm']['id']}/backups/files.json").json()
    assert [f["backup"]["id"] for f in files] == [first["id"], second["id"]]


def test_missing_image_fails_the_transaction_and_builds_nothing(api, vm):
    disk, image = vm["root"]
    image.unlink()
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    tx = _tx_of(api, backup["id"], "take_backup")
    assert tx["status"] == "failed"
    detail = api.get(f"/transactions/{tx['id']}.json").json()["transaction"]
    assert "does not exist" in detail["log_output"] and str(image) in detail["log_output"]
    got = api.get(f"/backups/{backup['id']}.json").json()["backup"]
    assert got["built"] is False and got["locked"] is False


def test_convert_makes_a_template_from_the_backup(api, vm, settings):
    disk, _ = vm["root"]
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json", {"backup": {"note": "n"}}).json()["backup"]
    wait_idle(api)
    r = api.post(f"/backups/{backup['id']}/convert.json", {"backup": {"label": "golden", "id": str(backup["id"])}})
    assert r.status_code == 201, r.text
    template = r.json()["image_template"]
    assert template["label"] == "golden" and template["state"] == "pending"
    assert _tx_of(api, backup["id"], "convert_backup")["status"] == "complete"
    got = api.get(f"/templates/{template['id']}.json").json()["image_template"]
    assert got["state"] == "active" and got["template_size"] > 0
    assert got["operating_system_distro"] == "ubuntu" and got["min_memory_size"] == 384


def test_convert_needs_a_label(api, vm):
    disk, _ = vm["root"]
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    wait_idle(api)
    r = api.post(f"/backups/{backup['id']}/convert.json", {"backup": {"label": ""}})
    assert r.status_code == 422 and "label" in r.json()["errors"]


def test_delete_removes_the_backup_and_its_data(api, vm, settings):
    disk, _ = vm["root"]
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    wait_idle(api)
    stored = list(Path(settings.storage_dir).rglob(f"*{backup['identifier']}*"))
    assert stored
    r = api.delete(
        f"/backups/{backup['id']}.json",
        content=b'{"backup":{"label":"","id":12}}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 204 and r.content == b""
    assert _tx_of(api, backup["id"], "destroy_backup")["status"] == "complete"
    assert api.get(f"/backups/{backup['id']}.json").status_code == 404
    assert not any(p.exists() for p in stored)


def test_state_rules_answer_422(api, vm):
    disk, _ = vm["root"]
    api.client.app.state.worker.stop()  # keep the new backup unbuilt and locked
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    for path in (f"/backups/{backup['id']}/restore.json", f"/backups/{backup['id']}/convert.json"):
        r = api.post(path, {"backup": {"label": "x"}})
        assert r.status_code == 422, (path, r.text)
    assert api.delete(f"/backups/{backup['id']}.json").status_code == 422  # locked


def test_restore_into_a_booted_vm_is_refused(api, vm):
    disk, _ = vm["root"]
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    wait_idle(api)
    api.put(f"/virtual_machines/{vm['vm']['id']}.json", {"virtual_machine": {"booted": True}})
    r = api.post(f"/backups/{backup['id']}/restore.json")
    assert r.status_code == 422 and "stopped" in r.json()["errors"][0]


def test_owner_can_take_and_list_transactions_other_users_cannot(api, vm):
    alice = vm["as_alice"]
    disk, _ = vm["root"]
    assert alice.post(f"/settings/disks/{disk['id']}/backups.json").status_code == 201
    wait_idle(api)
    assert len(alice.get("/transactions.json").json()) == 1
    assert len(alice.get(f"/virtual_machines/{vm['vm']['id']}/transactions.json").json()) == 1
    api.user("mallory")
    mallory = api.as_("mallory", "mallory-password")
    assert mallory.get("/transactions.json").json() == []
    assert mallory.post(f"/settings/disks/{disk['id']}/backups.json").status_code == 404
    tx_id = alice.get("/transactions.json").json()[0]["transaction"]["id"]
    assert mallory.get(f"/transactions/{tx_id}.json").status_code == 404


def test_transactions_paging_forms(api, vm):
    disk, _ = vm["root"]
    for _ in range(3):
        api.post(f"/settings/disks/{disk['id']}/backups.json")
        wait_idle(api)
    assert len(api.get("/transactions.json/per_page/2").json()) == 2
    assert len(api.get("/transactions.json/page/2?per_page=2").json()) == 1
    # the PHP wrapper's form: a JSON body on the GET
    r = api.request(
        "GET", "/transactions.json?", content=b'{"page":2,"per_page":2}', headers={"Content-Type": "application/json"}
    )
    assert len(r.json()) == 1
    assert "log_output" not in api.get("/transactions.json").json()[0]["transaction"]
    assert "log_output" in api.get("/transactions.json?detailed").json()[0]["transaction"]


def test_transaction_in_xml(api, vm):
    disk, _ = vm["root"]
    api.post(f"/settings/disks/{disk['id']}/backups.json")
    wait_idle(api)
    text = api.get("/transactions.xml").text
    assert '<transactions type="array">' in text and "<action>take_backup</action>" in text
    assert "<status>complete</status>" in text and "<parent_type>Backup</parent_type>" in text


@pytest.mark.parametrize("kind", ["normal", "incremental"])
def test_restore_of_a_damaged_backup_fails_and_leaves_the_disk_alone(api, vm, settings, kind):
    disk, image = vm["root"]
    path = (
        f"/settings/disks/{disk['id']}/backups.json"
        if kind == "normal"
        else f"/virtual_machines/{vm['vm']['id']}/backups.json"
    )
    backup = api.post(path).json()["backup"]
    wait_idle(api)
    stored = Path(settings.storage_dir)
    victim = (
        next(stored.glob(f"normal/{backup['identifier']}.tar.zst"))
        if kind == "normal"
        else max((p for p in stored.glob("chunks/**/*") if p.is_file()), key=lambda p: p.stat().st_size)
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    overwrite(image, 0, b"changed since the backup")
    before = sha256(image)
    assert api.post(f"/backups/{backup['id']}/restore.json").status_code == 201
    tx = _tx_of(api, backup["id"], "restore_backup")
    assert tx["status"] == "failed"
    log = api.get(f"/transactions/{tx['id']}.json").json()["transaction"]["log_output"]
    assert f"backup {backup['identifier']} is damaged; the disk was not touched" in log
    assert sha256(image) == before
    assert api.get(f"/virtual_machines/{vm['vm']['id']}.json").json()["virtual_machine"]["locked"] is False
