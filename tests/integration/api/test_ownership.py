"""Who a backup belongs to, and what it may be restored onto (issue 10, F1 and F14).

A backup belongs to the VM and disk it was taken of, named by identifiers that are never reused, and stays with
the user who took it. A restore writes only onto that same VM and disk, and only for someone who may act on them
now: a VM an admin gave to someone else is no longer its old owner's to overwrite, and its new owner does not see
the old owner's backups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.images import MiB, write_image
from tests.integration.api.helpers import sha256, wait_idle
from vmbackup.db.models import Backup, Transaction


@pytest.fixture
def alice_vm(api: Any, tmp_path: Path) -> dict[str, Any]:
    """alice's VM with one real disk, a built normal and a built incremental backup of it; bob exists too."""
    alice, bob = api.user("alice"), api.user("bob")
    vm = api.vm(alice["id"], api.template()["id"])
    image = write_image(tmp_path / "root.img", 4 * MiB, seed=3)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    as_alice = api.as_("alice", "alice-password")
    normal = as_alice.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    incremental = as_alice.post(f"/virtual_machines/{vm['id']}/backups.json").json()["backup"]
    assert all(t["status"] == "complete" for t in wait_idle(api))
    return {
        "alice": alice,
        "bob": bob,
        "vm": vm,
        "disk": disk,
        "image": image,
        "backups": [normal, incremental],
        "as_alice": as_alice,
        "as_bob": api.as_("bob", "bob-password"),
    }


def _ids(response: Any, root: str = "backup") -> list[int]:
    assert response.status_code == 200, response.text
    return [item[root]["id"] for item in response.json()]


def test_an_old_owners_backup_never_restores_over_the_new_owners_disk(api, alice_vm):
    w = alice_vm
    r = api.put(f"/virtual_machines/{w['vm']['id']}.json", {"virtual_machine": {"user_id": w["bob"]["id"]}})
    assert r.status_code == 204
    # bob now runs the VM: write his data onto the disk.
    w["image"].write_bytes(b"bob's data" * (MiB // 10))
    bobs = sha256(w["image"])
    for backup in w["backups"]:
        r = w["as_alice"].post(f"/backups/{backup['id']}/restore.json")
        assert r.status_code == 422, r.text
        assert "no longer exists" in r.text
    assert not any(t["action"] == "restore_backup" for t in wait_idle(api))
    assert sha256(w["image"]) == bobs


def test_a_vms_new_owner_sees_none_of_the_previous_owners_backups(api, alice_vm):
    w = alice_vm
    vm_id, disk_id = w["vm"]["id"], w["disk"]["id"]
    mine = sorted(b["id"] for b in w["backups"])
    api.put(f"/virtual_machines/{vm_id}.json", {"virtual_machine": {"user_id": w["bob"]["id"]}})
    for path in (
        f"/virtual_machines/{vm_id}/backups.json",
        f"/virtual_machines/{vm_id}/backups/images.json",
        f"/virtual_machines/{vm_id}/backups/files.json",
        f"/settings/disks/{disk_id}/backups.json",
        f"/virtual_machines/{vm_id}/disks/{disk_id}/backups.json",
    ):
        assert _ids(w["as_bob"].get(path)) == [], path
    for backup_id in mine:
        assert w["as_bob"].get(f"/backups/{backup_id}.json").status_code == 404
    # They stay alice's: she lists, reads and deletes them; the admin still sees them under the VM.
    assert sorted(_ids(w["as_alice"].get(f"/users/{w['alice']['id']}/backups.json"))) == mine
    assert w["as_alice"].get(f"/backups/{mine[0]}.json").status_code == 200
    assert sorted(_ids(api.get(f"/virtual_machines/{vm_id}/backups.json"))) == mine
    # bob's own backups of the VM are his, and alice does not see the VM any more.
    ok = w["as_bob"].post(f"/settings/disks/{disk_id}/backups.json")
    assert ok.status_code == 201, ok.text
    wait_idle(api)
    assert _ids(w["as_bob"].get(f"/settings/disks/{disk_id}/backups.json")) == [ok.json()["backup"]["id"]]
    assert w["as_alice"].get(f"/virtual_machines/{vm_id}/backups.json").status_code == 404
    assert w["as_alice"].delete(f"/backups/{mine[0]}.json").status_code == 204


def test_an_admin_may_still_restore_an_old_owners_backup(api, alice_vm):
    w = alice_vm
    original = write_image(w["image"], 4 * MiB, seed=3)  # what the backups hold
    expected = sha256(original)
    api.put(f"/virtual_machines/{w['vm']['id']}.json", {"virtual_machine": {"user_id": w["bob"]["id"]}})
    w["image"].write_bytes(b"x" * MiB)
    assert api.post(f"/backups/{w['backups'][0]['id']}/restore.json").status_code == 201
    assert all(t["status"] == "complete" for t in wait_idle(api))
    assert sha256(w["image"]) == expected


def test_deleted_vm_and_disk_ids_are_never_given_to_the_next_ones(api, app, alice_vm):
    w = alice_vm
    vm_id, disk_id = w["vm"]["id"], w["disk"]["id"]
    assert api.delete(f"/virtual_machines/{vm_id}.json").status_code == 204
    user = api.user("carol")
    vm = api.vm(user["id"], api.template()["id"])
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(w["image"]))
    assert vm["id"] > vm_id and disk["id"] > disk_id
    # alice's backups of the deleted VM restore onto nothing, and carol sees none of them.
    for backup in w["backups"]:
        r = w["as_alice"].post(f"/backups/{backup['id']}/restore.json")
        assert r.status_code == 422 and "no longer exists" in r.text
    as_carol = api.as_("carol", "carol-password")
    assert _ids(as_carol.get(f"/virtual_machines/{vm['id']}/backups.json")) == []


@pytest.mark.parametrize("table", ["users", "virtual_machines", "disks", "backups", "transactions"])
def test_ids_are_never_reused_after_deleting_the_newest_row(api, app, alice_vm, table):
    """The way SQLite reused them before migration 0005: the highest id, deleted, came back for the next row."""
    from sqlalchemy import text

    w = alice_vm
    with app.state.sessions() as db:
        top = db.execute(text(f"SELECT max(id) FROM {table}")).scalar()
        if table == "virtual_machines":
            db.execute(text("DELETE FROM disks WHERE virtual_machine_id = :id"), {"id": top})
        db.execute(text(f"DELETE FROM {table} WHERE id = :id"), {"id": top})
        db.commit()
    if table == "users":
        new = api.user("dave")["id"]
    elif table == "virtual_machines":
        new = api.vm(w["alice"]["id"], api.template()["id"])["id"]
    elif table == "disks":
        new = api.disk(w["vm"]["id"], api.data_store()["id"], image_path=str(w["image"]))["id"]
    else:
        w["as_alice"].post(f"/settings/disks/{w['disk']['id']}/backups.json")
        with app.state.sessions() as db:
            new = db.execute(text(f"SELECT max(id) FROM {table}")).scalar()
    assert new > top


def test_a_backup_bound_to_an_earlier_vm_with_the_same_id_is_no_restore_target(api, app, alice_vm):
    """What migration 0005 leaves for a backup whose VM id was reused before it: bound to no VM (vm_identifier
    None). It is listed under no VM, and a restore refuses it."""
    w = alice_vm
    backup_id = w["backups"][0]["id"]
    with app.state.sessions() as db:
        db.get(Backup, backup_id).vm_identifier = None
        db.commit()
    assert backup_id not in _ids(w["as_alice"].get(f"/virtual_machines/{w['vm']['id']}/backups.json"))
    r = w["as_alice"].post(f"/backups/{backup_id}/restore.json")
    assert r.status_code == 422 and "no longer exists" in r.text


def test_a_disk_replaced_under_the_same_id_is_no_restore_target(api, app, alice_vm):
    w = alice_vm
    backup_id = w["backups"][0]["id"]
    with app.state.sessions() as db:
        db.get(Backup, backup_id).disk_identifier = "someotherdisk0"
        db.commit()
    r = w["as_alice"].post(f"/backups/{backup_id}/restore.json")
    assert r.status_code == 422 and "disk it was taken of" in r.text


def test_users_transaction_logs_never_show_image_paths(api, app, alice_vm, tmp_path):
    """F13: the image path is admin-only everywhere, including the log of a failed take, whose engine error
    names the file; the admin reading the same log sees it."""
    w = alice_vm
    missing = tmp_path / "gone.img"
    api.put(f"/settings/disks/{w['disk']['id']}.json", {"disk": {"image_path": str(missing)}})
    failed = w["as_alice"].post(f"/settings/disks/{w['disk']['id']}/backups.json").json()["backup"]
    wait_idle(api)
    with app.state.sessions() as db:
        txs = db.query(Transaction).order_by(Transaction.id).all()
        assert any(str(missing) in (t.log_secrets or {}).values() for t in txs)
    for tx in txs:
        users = w["as_alice"].get(f"/transactions/{tx.id}.json").json()["transaction"]["log_output"]
        admins = api.get(f"/transactions/{tx.id}.json").json()["transaction"]["log_output"]
        assert str(w["image"]) not in users and str(missing) not in users
        assert str(tmp_path) not in users  # nor the storage directory
        if tx.parent_id == failed["id"]:
            assert "does not exist" in users and str(missing) in admins
    listing = w["as_alice"].get("/transactions.json?detailed&per_page=100").text
    assert str(tmp_path) not in listing
