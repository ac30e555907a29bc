"""DELETE /templates/:id (F10): admins delete any template no VM uses, users their own converted ones; a converted
template's archive goes with it, through a destroy_template transaction."""

from __future__ import annotations

import pytest

from tests.images import MiB, write_image
from tests.integration.api.helpers import make_backup, wait_idle
from vmbackup.db.models import Backup, BackupServer, ImageTemplate
from vmbackup.errors import BackupMissing
from vmbackup.services import execution, tasks, template_tasks


@pytest.fixture
def alice(api, tmp_path):
    """Alice's VM on a real image, with one built backup converted into her template."""
    user = api.user("alice")
    system = api.template()
    vm = api.vm(user["id"], system["id"])
    image = write_image(tmp_path / "root.img", 2 * MiB, seed=7)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    as_alice = api.as_("alice", "alice-password")
    backup = as_alice.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    wait_idle(api)
    r = as_alice.post(f"/backups/{backup['id']}/convert.json", {"backup": {"label": "mine"}})
    assert r.status_code == 201, r.text
    wait_idle(api)
    template = as_alice.get(f"/templates/{r.json()['image_template']['id']}.json").json()["image_template"]
    assert template["state"] == "active"
    return {"user": user, "api": as_alice, "template": template, "system": system, "vm": vm, "disk": disk}


def _archive_kind(app, template_id):
    """What the template's backup server holds under its archive id ("normal"), or None."""
    with app.state.sessions() as db:
        template = db.get(ImageTemplate, template_id)
        server = db.get(BackupServer, template.backup_server_id)
        archive_id = tasks.template_archive_id(template)
    try:
        return tasks.engine_for(server).kind_of(archive_id)
    except BackupMissing:
        return None


def _destroy_txs(api):
    return [
        t["transaction"]
        for t in api.get("/transactions.json").json()
        if t["transaction"]["action"] == "destroy_template"
    ]


def test_a_user_deletes_their_converted_template_and_its_archive(app, api, alice, settings):
    tid = alice["template"]["id"]
    with app.state.sessions() as db:
        archive_id = tasks.template_archive_id(db.get(ImageTemplate, tid))
    stored = [p for p in settings.storage_dir.rglob("*") if archive_id in p.name]
    assert stored and _archive_kind(app, tid) == "normal"
    r = alice["api"].delete(f"/templates/{tid}.json")
    assert r.status_code == 204 and r.content == b""
    wait_idle(api)
    assert alice["api"].get(f"/templates/{tid}.json").status_code == 404
    assert not any(p.exists() for p in stored)
    [tx] = _destroy_txs(alice["api"])  # her own transaction, in her list
    assert tx["status"] == "complete" and tx["parent_type"] == "ImageTemplate" and tx["parent_id"] == tid


def test_who_may_delete_which_template(app, api, alice):
    bob = api.user("bob")
    as_bob = api.as_("bob", "bob-password")
    tid, system = alice["template"]["id"], alice["system"]["id"]
    assert as_bob.delete(f"/templates/{tid}.json").status_code == 404  # someone else's: like a missing one
    r = alice["api"].delete(f"/templates/{system}.json")
    assert r.status_code == 403  # system templates are the admin's
    r = api.delete(f"/templates/{system}.json")
    assert r.status_code == 422 and r.json() == {"errors": ["Template cannot be deleted: virtual machines use it"]}
    unused = api.template(label="Debian 12")
    assert api.delete(f"/templates/{unused['id']}.json").status_code == 204
    assert api.get(f"/templates/{unused['id']}.json").status_code == 404
    assert _destroy_txs(api) == []  # no archive, no transaction
    # a converted template a VM uses stays, for its owner and for the admin
    api.vm(bob["id"], tid, label="from alice's template")
    for caller in (alice["api"], api):
        r = caller.delete(f"/templates/{tid}.json")
        assert r.status_code == 422 and "virtual machines use it" in r.json()["errors"][0]
    assert _archive_kind(app, tid) == "normal"


def test_a_template_still_being_made_or_being_deleted_is_refused(app, api, alice):
    app.state.worker.stop()
    backup = make_backup(app, disk_id=alice["disk"]["id"])
    pending = alice["api"].post(f"/backups/{backup}/convert.json", {"backup": {"label": "later"}})
    r = alice["api"].delete(f"/templates/{pending.json()['image_template']['id']}.json")
    assert r.status_code == 422 and "still being made" in r.json()["errors"][0]
    tid = alice["template"]["id"]
    assert alice["api"].delete(f"/templates/{tid}.json").status_code == 204
    r = alice["api"].delete(f"/templates/{tid}.json")
    assert r.status_code == 422 and "already being deleted" in r.json()["errors"][0]
    assert len(_destroy_txs(api)) == 1


def _run_destroy(app, api):
    [tx] = [t for t in _destroy_txs(api) if t["status"] == "pending"]
    return execution.execute(app.state.sessions, tx["id"])


def test_a_vm_made_from_the_template_after_the_delete_was_asked_keeps_it(app, api, alice):
    app.state.worker.stop()
    tid = alice["template"]["id"]
    assert alice["api"].delete(f"/templates/{tid}.json").status_code == 204
    api.vm(alice["user"]["id"], tid, label="just in time")
    # a locked backup whose id is the template's: a failed destroy_template must not unlock it
    while make_backup(app, disk_id=alice["disk"]["id"]) < tid:
        pass
    with app.state.sessions() as db:
        db.get(Backup, tid).locked = True
        db.commit()
    assert _run_destroy(app, api) == "failed"
    [tx] = _destroy_txs(api)
    assert "virtual machines use it" in api.get(f"/transactions/{tx['id']}.json").json()["transaction"]["log_output"]
    assert alice["api"].get(f"/templates/{tid}.json").status_code == 200 and _archive_kind(app, tid) == "normal"
    with app.state.sessions() as db:
        assert db.get(Backup, tid).locked is True


def test_the_database_refusing_the_delete_leaves_the_archive(app, api, alice, monkeypatch):
    # A VM that starts to use the template between the task's check and its delete: the foreign key refuses.
    app.state.worker.stop()
    tid = alice["template"]["id"]
    assert alice["api"].delete(f"/templates/{tid}.json").status_code == 204
    api.vm(alice["user"]["id"], tid, label="raced")
    monkeypatch.setattr(template_tasks.inventory, "vms_of_template", lambda db, template_id: 0)
    assert _run_destroy(app, api) == "failed"
    assert alice["api"].get(f"/templates/{tid}.json").status_code == 200 and _archive_kind(app, tid) == "normal"


def test_a_backup_server_holding_a_template_is_kept(app, api, alice, tmp_path):
    server = alice["template"]["backup_server_id"]
    for item in api.get(f"/settings/disks/{alice['disk']['id']}/backups.json").json():
        assert api.delete(f"/backups/{item['backup']['id']}.json").status_code == 204
    wait_idle(api)
    r = api.delete(f"/settings/backup_servers/{server}.json")
    assert r.status_code == 422 and "it holds templates" in r.json()["errors"][0]
    moved = {"backup_server": {"storage_path": str(tmp_path / "elsewhere")}}
    assert api.put(f"/settings/backup_servers/{server}.json", moved).status_code == 422
    assert api.delete(f"/templates/{alice['template']['id']}.json").status_code == 204
    wait_idle(api)
    assert api.delete(f"/settings/backup_servers/{server}.json").status_code == 204
