"""The backups read side: the spec page's shapes in JSON and XML, every listing, and note editing."""

from __future__ import annotations

import re

from tests.integration.api.helpers import make_backup

SPEC_FIELDS = {
    "allow_resize_without_reboot": bool,
    "allowed_hot_migrate": bool,
    "allowed_swap": bool,
    "backup_server_id": int,
    "backup_size": int,
    "built": bool,
    "built_at": str,
    "created_at": str,
    "data_store_type": str,
    "id": int,
    "identifier": str,
    "initiated": str,
    "iqn": type(None),
    "locked": bool,
    "marked_for_delete": bool,
    "min_disk_size": int,
    "min_memory_size": int,
    "note": type(None),
    "operating_system": str,
    "operating_system_distro": str,
    "target_id": int,
    "target_type": str,
    "template_id": int,
    "updated_at": str,
    "user_id": int,
    "volume_id": type(None),
    "backup_type": str,
}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def test_images_listing_has_the_spec_pages_shape(app, api, world):
    disk, vm = world["disk_a"], world["vm_a"]
    make_backup(app, disk_id=disk["id"])
    make_backup(app, vm_id=vm["id"])  # incremental: not an image
    r = api.get(f"/virtual_machines/{vm['id']}/backups/images.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    [item] = r.json()
    backup = item["backup"]
    for field, kind in SPEC_FIELDS.items():
        assert isinstance(backup[field], kind), (field, backup[field])
    assert backup["disk_id"] == disk["id"] and backup["image_type"] == "tar"
    assert backup["backup_type"] == "normal" and backup["target_type"] == "Disk" and backup["target_id"] == disk["id"]
    assert backup["user_id"] == world["alice"]["id"] and backup["template_id"] == world["template"]["id"]
    assert backup["operating_system_distro"] == "ubuntu" and backup["min_memory_size"] == 384
    assert backup["initiated"] == "manual" and backup["built_at"] == "2015-08-13T02:00:49+00:00"
    assert re.fullmatch(r"[a-z0-9]{14}", backup["identifier"])
    assert TIMESTAMP.match(backup["created_at"])


def test_images_listing_in_xml_matches_the_spec_page(app, api, world):
    make_backup(app, disk_id=world["disk_a"]["id"])
    r = api.get(f"/virtual_machines/{world['vm_a']['id']}/backups/images.xml")
    assert r.headers["content-type"] == "application/xml; charset=utf-8"
    text = r.text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<backups type="array">\n  <backup>\n')
    for line in (
        '<allowed_hot_migrate type="boolean">true</allowed_hot_migrate>',
        '<backup_size type="integer">930584</backup_size>',
        '<built_at type="datetime">2015-08-13T02:00:49+00:00</built_at>',
        "<data_store_type>lvm</data_store_type>",
        '<iqn nil="true"/>',
        '<note nil="true"/>',
        "<image_type>tar</image_type>",
        "<target_type>Disk</target_type>",
        f'<disk_id type="integer">{world["disk_a"]["id"]}</disk_id>',
        "<backup_type>normal</backup_type>",
    ):
        assert f"    {line}\n" in text, line
    assert text.endswith("  </backup>\n</backups>\n")


def test_empty_lists(api, world):
    assert api.get(f"/virtual_machines/{world['vm_a']['id']}/backups/images.json").json() == []
    r = api.get(f"/virtual_machines/{world['vm_a']['id']}/backups/files.xml")
    assert r.text == '<?xml version="1.0" encoding="UTF-8"?>\n<backups type="array"/>\n'


def test_files_listing_is_incremental_backups(app, api, world):
    make_backup(app, disk_id=world["disk_a"]["id"])
    make_backup(app, vm_id=world["vm_a"]["id"], built=False)
    [item] = api.get(f"/virtual_machines/{world['vm_a']['id']}/backups/files.json").json()
    b = item["backup"]
    assert (b["backup_type"], b["target_type"], b["target_id"], b["disk_id"], b["image_type"]) == (
        "incremental",
        "VirtualMachine",
        world["vm_a"]["id"],
        None,
        None,
    )
    assert b["built"] is False and b["built_at"] is None and b["backup_size"] == 0


def test_all_disk_user_and_single_listings(app, api, world):
    n = make_backup(app, disk_id=world["disk_a"]["id"])
    i = make_backup(app, vm_id=world["vm_a"]["id"])
    make_backup(app, disk_id=world["disk_b"]["id"])
    vm, disk, alice = world["vm_a"]["id"], world["disk_a"]["id"], world["alice"]["id"]

    def ids(path):
        r = api.get(path)
        assert r.status_code == 200, (path, r.text)
        return [x["backup"]["id"] for x in r.json()]

    assert ids(f"/virtual_machines/{vm}/backups.json") == [n, i]
    assert ids(f"/settings/disks/{disk}/backups.json") == [n]
    assert ids(f"/virtual_machines/{vm}/disks/{disk}/backups.json") == [n]
    assert ids(f"/users/{alice}/backups.json") == [n, i]
    assert api.get(f"/backups/{i}.json").json()["backup"]["id"] == i
    assert api.get(f"/virtual_machines/{world['vm_b']['id']}/disks/{disk}/backups.json").status_code == 404


def test_owner_edits_the_note_by_either_path(app, world):
    b = make_backup(app, disk_id=world["disk_a"]["id"])
    alice = world["as_alice"]
    assert alice.put(f"/backups/{b}.json", {"backup": {"note": "before upgrade"}}).status_code == 204
    assert alice.get(f"/backups/{b}.json").json()["backup"]["note"] == "before upgrade"
    # the PHP wrapper's form: the VM path, with every loaded field echoed back
    loaded = alice.get(f"/backups/{b}.json").json()["backup"]
    loaded["note"] = "x"
    r = alice.put(f"/virtual_machines/{world['vm_a']['id']}/backups/{b}.json", {"backup": loaded})
    assert r.status_code == 204, r.text
    got = alice.get(f"/backups/{b}.json").json()["backup"]
    assert got["note"] == "x" and got["built"] is True  # read-only fields were ignored, not applied


def test_note_edit_does_not_touch_read_only_fields(app, api, world):
    b = make_backup(app, disk_id=world["disk_a"]["id"])
    assert api.put(f"/backups/{b}.json", {"backup": {"built": False, "backup_size": 1}}).status_code == 204
    got = api.get(f"/backups/{b}.json").json()["backup"]
    assert got["built"] is True and got["backup_size"] == 930584


def test_datetimes_are_in_the_users_time_zone(app, api, world):
    b = make_backup(app, disk_id=world["disk_a"]["id"])
    api.put(f"/users/{world['alice']['id']}.json", {"user": {"time_zone": "Europe/Moscow"}})
    got = world["as_alice"].get(f"/backups/{b}.json").json()["backup"]
    assert got["built_at"] == "2015-08-13T05:00:49+03:00"


def test_unknown_backup_is_404(api):
    r = api.get("/backups/12345.json")
    assert r.status_code == 404 and r.json() == {"errors": ["Backup not found"]}
