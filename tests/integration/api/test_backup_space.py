"""Per-user backup space (OnApp's backup-space product, reference section 10; services/space.py): admins set the
limit, users see their usage, a take that would go over it is refused with a 422 and nothing is queued."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.integration.api.helpers import make_backup
from vmbackup.db.models import Backup, Schedule, ScheduleLog, Transaction, User
from vmbackup.services import autobackups, schedules

GB = 1024 * 1024  # kB
REFUSED = "Backup cannot be made at this time: the user's backup space limit ({} GB) is used up"


@pytest.fixture
def quiet(app: Any, world: dict[str, Any]) -> dict[str, Any]:
    app.state.worker.stop()  # what is queued stays queued: the tests look at what a take leaves behind
    return world


def _limit(api: Any, user_id: int, gb: int | None) -> None:
    assert api.put(f"/users/{user_id}.json", {"user": {"backup_space_limit": gb}}).status_code == 204


def _counts(app: Any) -> tuple[int, int]:
    with app.state.sessions() as db:
        return (
            db.scalar(select(func.count()).select_from(Backup)),
            db.scalar(select(func.count()).select_from(Transaction)),
        )


def test_the_admin_sets_the_limit_and_the_user_sees_it_with_the_usage(app: Any, api: Any, quiet: Any) -> None:
    carol = api.user("carol", backup_space_limit=3)
    assert (carol["backup_space_limit"], carol["used_backup_space"], carol["backup_space_available"]) == (3, 0.0, 3.0)
    alice = quiet["alice"]["id"]
    got = api.get(f"/users/{alice}.json").json()["user"]
    assert (got["backup_space_limit"], got["used_backup_space"], got["backup_space_available"]) == (None, 0.0, None)
    _limit(api, alice, 10)
    make_backup(app, disk_id=quiet["disk_a"]["id"], size_kb=GB + GB // 4)  # 1.25 GB stored
    for path in (f"/users/{alice}.json", "/profile.json"):
        me = quiet["as_alice"].get(path).json()["user"]
        assert (me["backup_space_limit"], me["used_backup_space"], me["backup_space_available"]) == (10, 1.25, 8.75)
    xml = quiet["as_alice"].get("/profile.xml").text
    assert '<backup_space_limit type="integer">10</backup_space_limit>' in xml
    assert '<used_backup_space type="float">1.25</used_backup_space>' in xml
    listed = {u["user"]["login"]: u["user"]["used_backup_space"] for u in api.get("/users.json").json()}
    assert listed == {"admin": 0.0, "alice": 1.25, "bob": 0.0, "carol": 0.0}
    _limit(api, alice, None)  # lifted
    assert api.get(f"/users/{alice}.json").json()["user"]["backup_space_limit"] is None
    for raw, want in (
        ('<user><backup_space_limit type="integer">7</backup_space_limit></user>', 7),
        ('<user><backup_space_limit nil="true"/></user>', None),
    ):
        headers = {"Content-Type": "application/xml"}
        assert api.put(f"/users/{alice}.xml", content=raw.encode(), headers=headers).status_code == 204
        assert api.get(f"/users/{alice}.json").json()["user"]["backup_space_limit"] == want


def test_a_user_cannot_raise_their_own_limit(api: Any, quiet: Any) -> None:
    alice, as_alice = quiet["alice"]["id"], quiet["as_alice"]
    _limit(api, alice, 2)
    r = as_alice.put(f"/users/{alice}.json", {"user": {"backup_space_limit": 500}})
    assert r.status_code == 403
    r = as_alice.put(f"/users/{alice}.json", {"user": {"backup_space_limit": None}})
    assert r.status_code == 403
    assert api.get(f"/users/{alice}.json").json()["user"]["backup_space_limit"] == 2
    # What a GET shows, PUT back as is (the usage is read-only), passes and changes nothing.
    me = as_alice.get("/profile.json").json()["user"]
    echo = {k: me[k] for k in ("first_name", "backup_space_limit", "used_backup_space", "backup_space_available")}
    assert as_alice.put(f"/users/{alice}.json", {"user": echo}).status_code == 204
    assert api.get(f"/users/{alice}.json").json()["user"]["backup_space_limit"] == 2
    assert (
        api.post(
            "/users.json",
            {"user": {"login": "x", "email": "x@example.com", "password": "x-password", "backup_space_limit": -1}},
        ).status_code
        == 422
    )


@pytest.mark.parametrize("kind", ["normal", "incremental"])
def test_a_take_over_the_limit_is_refused_and_queues_nothing(app: Any, api: Any, quiet: Any, kind: str) -> None:
    alice = quiet["alice"]["id"]
    _limit(api, alice, 1)
    make_backup(app, disk_id=quiet["disk_a"]["id"], size_kb=GB)  # exactly the limit
    before = _counts(app)
    url = (
        f"/settings/disks/{quiet['disk_a']['id']}/backups.json"
        if kind == "normal"
        else f"/virtual_machines/{quiet['vm_a']['id']}/backups.json"
    )
    for caller in (quiet["as_alice"], api):  # the owner's space, whoever asks
        r = caller.post(url)
        assert r.status_code == 422, r.text
        [message] = r.json()["errors"]
        assert message.startswith(REFUSED.format(1)), message
    assert _counts(app) == before
    # Bob has no limit and is not affected.
    assert quiet["as_bob"].post(f"/settings/disks/{quiet['disk_b']['id']}/backups.json").status_code == 201


def test_a_first_backup_is_estimated_at_its_disks_size(app: Any, api: Any, quiet: Any) -> None:
    alice, disk = quiet["alice"]["id"], quiet["disk_a"]["id"]  # a 5 GB disk, never backed up
    _limit(api, alice, 4)
    r = quiet["as_alice"].post(f"/settings/disks/{disk}/backups.json")
    assert r.status_code == 422 and "needs about 5.0 GB" in r.json()["errors"][0]
    _limit(api, alice, 5)
    assert quiet["as_alice"].post(f"/settings/disks/{disk}/backups.json").status_code == 201


def test_later_backups_are_estimated_at_what_the_last_one_added(app: Any, api: Any, quiet: Any) -> None:
    """A deduplicating store: the incremental after a full one adds little, and is not refused for the disk size."""
    alice, vm = quiet["alice"]["id"], quiet["vm_a"]["id"]
    make_backup(app, vm_id=vm, size_kb=2 * GB)  # the first: everything
    make_backup(app, vm_id=vm, size_kb=GB // 10)  # then what changed
    _limit(api, alice, 6)  # 2.1 GB used + 5 GB of disk would be over; + 0.1 GB is not
    r = quiet["as_alice"].post(f"/virtual_machines/{vm}/backups.json")
    assert r.status_code == 201, r.text
    _limit(api, alice, 2)  # 2.1 GB used: over already
    r = quiet["as_alice"].post(f"/virtual_machines/{vm}/backups.json")
    assert r.status_code == 422 and r.json()["errors"][0].startswith(REFUSED.format(2))


def test_a_scheduled_take_over_the_limit_is_logged_and_queues_nothing(app: Any, api: Any, quiet: Any) -> None:
    alice, disk = quiet["alice"]["id"], quiet["disk_a"]["id"]
    _limit(api, alice, 1)
    start = datetime(2030, 1, 31, 2, 0, tzinfo=UTC)
    with app.state.sessions() as db:
        owner = db.get(User, alice)
        data = {
            "target_type": "Disk",
            "target_id": disk,
            "period": "days",
            "duration": 1,
            "rotation_period": 2,
            "start_at": start,
        }
        sid = schedules.create_schedule(db, owner, data, ("days", "weeks", "months", "years")).id
    before = _counts(app)
    autobackups.tick(app.state.sessions, now=start)
    assert _counts(app) == before
    with app.state.sessions() as db:
        [log] = db.scalars(select(ScheduleLog).where(ScheduleLog.schedule_id == sid)).all()
        assert log.status == "failed" and REFUSED.format(1) in log.log_output, log.log_output
        assert db.get(Schedule, sid).failure_count == 1  # type: ignore[union-attr]


def test_a_normal_backup_is_estimated_at_what_the_last_backup_of_its_disk_added(app: Any, api: Any, quiet: Any) -> None:
    """Not at the disk's size once the disk has a built backup; and the refusal says the usage and the estimate."""
    alice, disk = quiet["alice"]["id"], quiet["disk_a"]["id"]  # a 5 GB disk
    make_backup(app, disk_id=disk, size_kb=2 * GB // 3)  # 0.67 GB stored
    _limit(api, alice, 2)  # 0.67 + 0.67 fits; 0.67 + 5 would not
    assert quiet["as_alice"].post(f"/settings/disks/{disk}/backups.json").status_code == 201
    _limit(api, alice, 1)  # 0.67 + 0.67 is over
    r = quiet["as_alice"].post(f"/settings/disks/{disk}/backups.json")
    assert r.status_code == 422 and r.json()["errors"] == [
        REFUSED.format(1) + " (0.67 GB used, this backup needs about 0.67 GB)"
    ]


def test_a_first_incremental_is_estimated_at_all_its_vms_disks(app: Any, api: Any, quiet: Any) -> None:
    alice, vm = quiet["alice"]["id"], quiet["vm_a"]["id"]  # a 5 GB disk, never backed up
    api.disk(vm, quiet["data_store"]["id"], label="data", disk_size=3, primary=False, image_path="/srv/images/a2.img")
    make_backup(app, disk_id=quiet["disk_a"]["id"], size_kb=0)  # a normal backup: no estimate for an incremental
    _limit(api, alice, 7)
    r = quiet["as_alice"].post(f"/virtual_machines/{vm}/backups.json")
    assert r.status_code == 422 and "needs about 8.0 GB" in r.json()["errors"][0], r.text
    _limit(api, alice, 8)
    assert quiet["as_alice"].post(f"/virtual_machines/{vm}/backups.json").status_code == 201


def test_a_limit_used_up_refuses_even_a_backup_that_should_add_nothing(app: Any, api: Any, quiet: Any) -> None:
    alice, disk = quiet["alice"]["id"], quiet["disk_a"]["id"]
    make_backup(app, disk_id=disk, size_kb=GB)
    make_backup(app, disk_id=disk, size_kb=0)  # fully deduplicated: the next one is estimated at 0 kB
    _limit(api, alice, 1)  # used: exactly the limit
    r = quiet["as_alice"].post(f"/settings/disks/{disk}/backups.json")
    assert r.status_code == 422 and r.json()["errors"][0].startswith(REFUSED.format(1)), r.text
    _limit(api, alice, 2)
    assert quiet["as_alice"].post(f"/settings/disks/{disk}/backups.json").status_code == 201
