"""A user sees only their own objects; someone else's answers 404 like a missing one; admin-only is 403."""

from __future__ import annotations

import pytest

from tests.integration.api.helpers import make_backup


def test_lists_show_only_own_objects(app, world):
    make_backup(app, disk_id=world["disk_a"]["id"])
    make_backup(app, disk_id=world["disk_b"]["id"])
    alice = world["as_alice"]
    assert [v["virtual_machine"]["label"] for v in alice.get("/virtual_machines.json").json()] == ["alice-vm"]
    assert [d["disk"]["id"] for d in alice.get("/settings/disks.json").json()] == [world["disk_a"]["id"]]
    backups = alice.get(f"/users/{world['alice']['id']}/backups.json").json()
    assert {b["backup"]["user_id"] for b in backups} == {world["alice"]["id"]}


@pytest.mark.parametrize(
    "path",
    [
        "/virtual_machines/{vm_b}.json",
        "/virtual_machines/{vm_b}/backups.json",
        "/virtual_machines/{vm_b}/backups/images.json",
        "/virtual_machines/{vm_b}/backups/files.json",
        "/virtual_machines/{vm_b}/disks.json",
        "/settings/disks/{disk_b}.json",
        "/settings/disks/{disk_b}/backups.json",
        "/users/{bob}.json",
        "/users/{bob}/backups.json",
        "/users/{bob}/virtual_machines.json",
        "/backups/{backup_b}.json",
    ],
)
def test_other_users_objects_answer_404(app, world, path):
    backup_b = make_backup(app, disk_id=world["disk_b"]["id"])
    url = path.format(vm_b=world["vm_b"]["id"], disk_b=world["disk_b"]["id"], bob=world["bob"]["id"], backup_b=backup_b)
    r = world["as_alice"].get(url)
    assert r.status_code == 404, r.text
    assert "errors" in r.json()


def test_other_users_backup_note_cannot_be_edited(app, world):
    b = make_backup(app, disk_id=world["disk_b"]["id"])
    assert world["as_alice"].put(f"/backups/{b}.json", {"backup": {"note": "mine"}}).status_code == 404
    assert world["as_bob"].get(f"/backups/{b}.json").json()["backup"]["note"] is None


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/users.json"),
        ("POST", "/users.json"),
        ("GET", "/settings/data_stores.json"),
        ("POST", "/settings/data_stores.json"),
        ("GET", "/settings/backup_servers.json"),
        ("GET", "/settings/backup_servers/1.json"),
        ("POST", "/templates.json"),
        ("POST", "/virtual_machines.json"),
        ("PUT", "/virtual_machines/{vm_a}.json"),
        ("DELETE", "/virtual_machines/{vm_a}.json"),
        ("POST", "/virtual_machines/{vm_a}/disks.json"),
        ("PUT", "/settings/disks/{disk_a}.json"),
        ("DELETE", "/settings/disks/{disk_a}.json"),
        ("DELETE", "/users/{alice}.json"),
    ],
)
def test_admin_only_endpoints_answer_403_to_users(world, method, path):
    url = path.format(vm_a=world["vm_a"]["id"], disk_a=world["disk_a"]["id"], alice=world["alice"]["id"])
    r = world["as_alice"].request(method, url, {"x": {}} if method in ("POST", "PUT") else None)
    assert r.status_code == 403, r.text
    assert r.json() == {"errors": ["You do not have permissions for this action."]}


def test_image_path_is_shown_to_admins_only(api, world):
    disk = world["disk_a"]["id"]
    assert api.get(f"/settings/disks/{disk}.json").json()["disk"]["image_path"] == "/srv/images/alice.img"
    assert "image_path" not in world["as_alice"].get(f"/settings/disks/{disk}.json").json()["disk"]


def test_users_see_templates_and_their_profile(world):
    alice = world["as_alice"]
    assert len(alice.get("/templates.json").json()) == 1
    assert alice.get("/profile.json").json()["user"]["login"] == "alice"
    assert alice.get(f"/users/{world['alice']['id']}.json").status_code == 200


def test_user_cannot_make_themselves_admin(world):
    r = world["as_alice"].put(f"/users/{world['alice']['id']}.json", {"user": {"role": "admin"}})
    assert r.status_code == 403
