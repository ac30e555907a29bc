"""Inventory CRUD for admins, in JSON and XML."""

from __future__ import annotations

import pytest


def test_user_crud(api):
    u = api.user("hank", first_name="Hank", last_name="Hill")
    assert u["login"] == "hank" and u["roles"][0]["role"]["label"] == "user"
    assert "password" not in u and "password_hash" not in u
    assert api.put(f"/users/{u['id']}.json", {"user": {"first_name": "Henry"}}).status_code == 204
    assert api.get(f"/users/{u['id']}.json").json()["user"]["first_name"] == "Henry"
    assert [x["user"]["login"] for x in api.get("/users.json").json()] == ["admin", "hank"]
    assert api.delete(f"/users/{u['id']}.json").status_code == 204
    assert api.get(f"/users/{u['id']}.json").status_code == 404


def test_last_admin_keeps_the_role_and_cannot_delete_self(api):
    me = api.get("/profile.json").json()["user"]
    assert api.put(f"/users/{me['id']}.json", {"user": {"role": "user"}}).status_code == 422
    assert api.delete(f"/users/{me['id']}.json").status_code == 422


def test_template_create_and_get(api):
    t = api.template(label="Debian 12", operating_system_distro="debian")
    got = api.get(f"/templates/{t['id']}.xml")
    assert "<label>Debian 12</label>" in got.text and '<min_disk_size type="integer">5</min_disk_size>' in got.text


@pytest.mark.parametrize(
    "path,root,fields,change",
    [
        ("/settings/data_stores", "data_store", {"label": "ds", "data_store_type": "solidfire"}, {"label": "ds2"}),
        (
            "/settings/backup_servers",
            "backup_server",
            {"label": "bs", "ip_address": "10.0.0.5", "capacity": 500, "storage_path": "{tmp}/bs"},
            {"enabled": False},
        ),
    ],
)
def test_settings_crud(api, tmp_path, path, root, fields, change):
    fields = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in fields.items()}
    obj = api.create(f"{path}.json", root, **fields)
    assert api.put(f"{path}/{obj['id']}.json", {root: change}).status_code == 204
    got = api.get(f"{path}/{obj['id']}.json").json()[root]
    assert all(got[k] == v for k, v in change.items())
    assert api.delete(f"{path}/{obj['id']}.json").status_code == 204
    assert api.get(f"{path}/{obj['id']}.json").status_code == 404


def test_first_start_created_a_local_backup_server(api, settings):
    [bs] = api.get("/settings/backup_servers.json").json()
    assert bs["backup_server"]["storage_path"] == str(settings.storage_dir)


def test_vm_and_disk_crud(api, world):
    vm = world["vm_a"]
    assert vm["booted"] is False and vm["template_label"] == "Ubuntu 22.04" and vm["user_id"] == world["alice"]["id"]
    assert api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": {"booted": True}}).status_code == 204
    assert api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]["booted"] is True
    [d] = api.get(f"/virtual_machines/{vm['id']}/disks.json").json()
    assert d["disk"]["id"] == world["disk_a"]["id"] and d["disk"]["has_autobackups"] is False
    assert api.put(f"/settings/disks/{d['disk']['id']}.json", {"disk": {"disk_size": 10}}).status_code == 204
    assert api.get(f"/settings/disks/{d['disk']['id']}.json").json()["disk"]["disk_size"] == 10
    assert [
        v["virtual_machine"]["id"] for v in api.get(f"/users/{world['alice']['id']}/virtual_machines.json").json()
    ] == [vm["id"]]
    assert api.delete(f"/virtual_machines/{vm['id']}.json").status_code == 204
    assert api.get(f"/settings/disks/{d['disk']['id']}.json").status_code == 404


def test_vm_listing_in_xml(api, world):
    text = api.get("/virtual_machines.xml").text
    assert '<virtual_machines type="array">' in text and '<booted type="boolean">false</booted>' in text
