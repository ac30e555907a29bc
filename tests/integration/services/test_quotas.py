"""The cap on a user's queued work (F10): refused at the cap with a 422, exact under a burst of requests, and never
in the way of admins or the scheduler."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.images import MiB, write_image
from tests.integration.api.helpers import make_backup
from vmbackup.config import Settings
from vmbackup.db.models import ImageTemplate, Transaction, User
from vmbackup.db.queries import transactions as tq
from vmbackup.errors import TooManyQueued
from vmbackup.services import actions, autobackups, quotas, schedules

LIMIT = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_queued_per_user": LIMIT})


@pytest.fixture
def alice(app, api, tmp_path):
    """Alice with a disk on a real image, and the worker stopped so that what she queues stays pending."""
    user = api.user("alice")
    vm = api.vm(user["id"], api.template()["id"])
    image = write_image(tmp_path / "alice.img", 1 * MiB, seed=3)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    app.state.worker.stop()
    return {"user": user, "vm": vm, "disk": disk, "api": api.as_("alice", "alice-password")}


def _queued(app, user_id):
    with app.state.sessions() as db:
        return tq.queued_count(db, user_id)


def test_a_user_is_refused_at_the_limit_for_every_kind_of_work(app, alice):
    disk, as_alice = alice["disk"]["id"], alice["api"]
    built = make_backup(app, disk_id=disk)
    with app.state.sessions() as db:  # as a finished conversion leaves it
        converted = ImageTemplate(label="hers", user_id=alice["user"]["id"], backup_server_id=1, parent_backup_id=built)
        db.add(converted)
        db.commit()
    for _ in range(LIMIT):
        assert as_alice.post(f"/settings/disks/{disk}/backups.json").status_code == 201
    refused = [
        as_alice.post(f"/settings/disks/{disk}/backups.json"),
        as_alice.post(f"/virtual_machines/{alice['vm']['id']}/backups.json"),
        as_alice.post(f"/backups/{built}/restore.json"),
        as_alice.post(f"/backups/{built}/convert.json", {"backup": {"label": "mine"}}),
        as_alice.delete(f"/backups/{built}.json"),
        as_alice.delete(f"/templates/{converted.id}.json"),
    ]
    for r in refused:
        assert r.status_code == 422, r.text
        [message] = r.json()["errors"]
        assert message.startswith("Too many transactions queued: 3 of this user's transactions are pending")
    assert _queued(app, alice["user"]["id"]) == LIMIT  # nothing refused was queued, or left behind
    xml = as_alice.post(f"/settings/disks/{disk}/backups.xml")
    assert xml.status_code == 422 and "<error>Too many transactions queued" in xml.text
    # when one ends, there is room for one more
    with app.state.sessions() as db:
        oldest = db.query(Transaction).filter_by(user_id=alice["user"]["id"]).order_by(Transaction.id).first()
        oldest.status = "complete"
        db.commit()
    assert as_alice.delete(f"/backups/{built}.json").status_code == 204
    assert as_alice.post(f"/settings/disks/{disk}/backups.json").status_code == 422


def test_admins_the_scheduler_and_other_users_are_not_blocked(app, api, alice, tmp_path):
    disk = alice["disk"]["id"]
    for _ in range(LIMIT):
        assert alice["api"].post(f"/settings/disks/{disk}/backups.json").status_code == 201
    assert api.post(f"/settings/disks/{disk}/backups.json").status_code == 201  # the admin, on Alice's disk
    own_vm = api.vm(1, api.template(label="admin's")["id"], label="admin-vm")
    image = write_image(tmp_path / "admin.img", 1 * MiB, seed=5)
    own_disk = api.disk(own_vm["id"], api.data_store(label="ds-admin")["id"], image_path=str(image))
    for _ in range(LIMIT + 1):  # and past the limit on the admin's own
        assert api.post(f"/settings/disks/{own_disk['id']}/backups.json").status_code == 201
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with app.state.sessions() as db:
        admin = db.get(User, 1)
        schedules.create_schedule(db, admin, {"target_type": "Disk", "target_id": disk, "start_at": start}, ("days",))
    assert len(autobackups.tick(app.state.sessions, now=start + timedelta(seconds=1))) == 1
    assert _queued(app, alice["user"]["id"]) == LIMIT + 2
    bob = api.user("bob")
    vm = api.vm(bob["id"], api.template(label="other")["id"], label="bob-vm")
    image = write_image(tmp_path / "bob.img", 1 * MiB, seed=4)
    bob_disk = api.disk(vm["id"], api.data_store(label="ds2")["id"], image_path=str(image))
    as_bob = api.as_("bob", "bob-password")
    assert as_bob.post(f"/settings/disks/{bob_disk['id']}/backups.json").status_code == 201


def test_a_burst_of_concurrent_requests_queues_exactly_up_to_the_limit(app, alice, monkeypatch):
    # Every request counts before any has inserted its transaction, unless the count and the insert are under one
    # lock: the count is slowed down so that, without that lock, all of them would see 0 queued.
    burst = 8
    start = threading.Barrier(burst, timeout=20)
    inside, most_inside, guard = 0, 0, threading.Lock()
    real_count = tq.queued_count

    def slow_count(db, user_id):
        nonlocal inside, most_inside
        with guard:
            inside += 1
            most_inside = max(most_inside, inside)
        try:
            n = real_count(db, user_id)
            time.sleep(0.2)
            return n
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(tq, "queued_count", slow_count)
    outcomes: list[str] = []

    def request() -> None:
        with app.state.sessions() as db:
            user = db.get(User, alice["user"]["id"])
            start.wait()
            try:
                actions.take_normal(db, user, alice["disk"]["id"], None)
                outcomes.append("queued")
            except TooManyQueued:
                outcomes.append("refused")

    threads = [threading.Thread(target=request) for _ in range(burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["queued"] * LIMIT + ["refused"] * (burst - LIMIT)
    assert _queued(app, alice["user"]["id"]) == LIMIT
    assert not start.broken and most_inside == 1  # all started together, and were counted one at a time


def test_no_limit_when_set_to_zero(app, alice):
    quotas.bind_limit(app.state.sessions, 0)
    for _ in range(LIMIT + 2):
        assert alice["api"].post(f"/settings/disks/{alice['disk']['id']}/backups.json").status_code == 201


def test_the_default_limit_is_the_setting_default():
    assert Settings.model_fields["max_queued_per_user"].default == quotas.DEFAULT_MAX_QUEUED
