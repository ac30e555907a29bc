"""Auto-backups driven with a controllable clock: firing, no double firing, catch-up, retention, failures."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from tests.images import MiB, write_image
from tests.integration.api.helpers import wait_idle
from vmbackup.db.models import Backup, Schedule, ScheduleLog
from vmbackup.services import autobackups, schedules
from vmbackup.services.periods import next_after

T0 = datetime(2030, 1, 31, 2, 0, tzinfo=UTC)


@pytest.fixture
def target(api, tmp_path):
    alice = api.user("alice")
    vm = api.vm(alice["id"], api.template()["id"])
    ds = api.data_store()
    image = write_image(tmp_path / "root.img", 2 * MiB, seed=5)
    disk = api.disk(vm["id"], ds["id"], image_path=str(image))
    return {"vm": vm, "disk": disk, "image": image, "alice": alice}


def _schedule(app, target, **fields):
    with app.state.sessions() as db:
        from vmbackup.db.models import User

        admin = db.get(User, 1)
        data = {
            "target_type": "Disk",
            "target_id": target["disk"]["id"],
            "period": "days",
            "duration": 1,
            "rotation_period": 2,
            "start_at": T0,
            **fields,
        }
        return schedules.create_schedule(db, admin, data, ("days", "weeks", "months", "years")).id


def _backups(app, schedule_id=None):
    with app.state.sessions() as db:
        q = db.query(Backup).order_by(Backup.id)
        if schedule_id is not None:
            q = q.filter(Backup.schedule_id == schedule_id)
        return q.all()


def test_enable_applies_presets_once_and_keeps_existing_schedules(api, target):
    disk = target["disk"]["id"]
    r = api.post(f"/settings/disks/{disk}/autobackup_enable.json")
    assert r.status_code == 200
    made = [(s["schedule"]["period"], s["schedule"]["rotation_period"]) for s in r.json()]
    assert made == [("days", 7), ("weeks", 4)]
    assert api.get(f"/settings/disks/{disk}.json").json()["disk"]["has_autobackups"] is True
    api.post(f"/settings/disks/{disk}/autobackup_disable.json")
    listed = api.get(f"/settings/disks/{disk}/schedules.json").json()
    assert [s["schedule"]["status"] for s in listed] == ["disabled", "disabled"]
    assert api.get(f"/settings/disks/{disk}.json").json()["disk"]["has_autobackups"] is False
    api.post(f"/settings/disks/{disk}/autobackup_enable.json")
    listed = api.get(f"/settings/disks/{disk}/schedules.json").json()
    assert [s["schedule"]["id"] for s in listed] == [s["schedule"]["id"] for s in r.json()]  # kept, not re-made
    assert {s["schedule"]["status"] for s in listed} == {"enabled"}


def test_a_due_schedule_fires_once_and_moves_to_its_next_run(app, api, target):
    sid = _schedule(app, target)
    assert autobackups.tick(app.state.sessions, now=T0 - timedelta(seconds=1)) == []
    assert len(autobackups.tick(app.state.sessions, now=T0)) == 1
    assert autobackups.tick(app.state.sessions, now=T0 + timedelta(minutes=5)) == []  # not due again yet
    wait_idle(api)
    [backup] = _backups(app, sid)
    assert backup.initiated == "days" and backup.built and backup.backup_type == "normal"
    with app.state.sessions() as db:
        assert db.get(Schedule, sid).start_at == T0 + timedelta(days=1)


def test_missed_runs_fire_once_on_start_up(app, api, target):
    sid = _schedule(app, target, period="months")  # anchored Jan 31
    now = T0 + timedelta(days=100)  # the service was down for three runs
    assert len(autobackups.tick(app.state.sessions, now=now)) == 1
    assert autobackups.tick(app.state.sessions, now=now) == []
    with app.state.sessions() as db:
        start = db.get(Schedule, sid).start_at
    assert start == datetime(2030, 5, 31, 2, 0, tzinfo=UTC) == next_after(T0, UTC, "months", 1, now)


def test_no_new_run_while_the_previous_one_is_pending(app, api, target):
    sid = _schedule(app, target)
    app.state.worker.stop()  # the first auto-backup stays pending
    assert len(autobackups.tick(app.state.sessions, now=T0)) == 1
    assert autobackups.tick(app.state.sessions, now=T0 + timedelta(days=1)) == []
    assert len(_backups(app, sid)) == 1
    with app.state.sessions() as db:
        statuses = [x.status for x in db.query(ScheduleLog).filter_by(schedule_id=sid).order_by(ScheduleLog.id)]
    assert statuses == ["queued", "skipped"]


def test_concurrent_schedulers_fire_each_run_once(app, target):
    _schedule(app, target)
    app.state.worker.stop()
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        results.append(autobackups.tick(app.state.sessions, now=T0))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert len(_backups(app)) == 1


def test_retention_keeps_the_newest_and_never_touches_manual_backups(app, api, target):
    sid = _schedule(app, target, rotation_period=2)
    manual = api.post(f"/settings/disks/{target['disk']['id']}/backups.json").json()["backup"]
    wait_idle(api)
    for day in range(4):
        autobackups.tick(app.state.sessions, now=T0 + timedelta(days=day))
        wait_idle(api)
    kept = _backups(app, sid)
    assert len(kept) == 2 and all(b.built and not b.marked_for_delete for b in kept)
    assert [b.built_at for b in kept] == sorted(b.built_at for b in kept)
    assert api.get(f"/backups/{manual['id']}.json").json()["backup"]["built"] is True
    actions = [t["action"] for t in wait_idle(api)]
    assert actions.count("destroy_backup") == 2 and all(t["status"] == "complete" for t in wait_idle(api))


def test_failures_are_counted_and_logged(app, api, target):
    sid = _schedule(app, target)
    target["image"].unlink()
    autobackups.tick(app.state.sessions, now=T0)
    wait_idle(api)
    with app.state.sessions() as db:
        schedule = db.get(Schedule, sid)
        assert schedule.failure_count == 1
        logs = [(x.status, x.log_output) for x in db.query(ScheduleLog).filter_by(schedule_id=sid)]
    assert logs[-1][0] == "failed" and "failed" in logs[-1][1]
    api.put(f"/settings/disks/{target['disk']['id']}.json", {"disk": {"image_path": None}})
    autobackups.tick(app.state.sessions, now=T0 + timedelta(days=1))
    with app.state.sessions() as db:
        assert db.get(Schedule, sid).failure_count == 2
