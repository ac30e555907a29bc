"""Auto-backups driven with a controllable clock: firing, no double firing, catch-up, retention, failures."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from tests.images import MiB, write_image
from tests.integration.api.helpers import wait_idle
from vmbackup.db.models import Backup, Schedule, ScheduleLog
from vmbackup.db.queries import schedules as q
from vmbackup.services import actions, autobackups, schedules
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


def test_concurrent_schedulers_fire_each_run_once(app, target, monkeypatch):
    _schedule(app, target)
    app.state.worker.stop()
    # Every scheduler has read the due run before any of them moves it on: only the compare-and-set in
    # `advance` can keep them from all firing it.
    ready = threading.Barrier(4, timeout=20)
    real_advance = q.advance

    def advance_together(*args, **kwargs):
        ready.wait()
        return real_advance(*args, **kwargs)

    monkeypatch.setattr(q, "advance", advance_together)
    results: list[list[int]] = []

    def run() -> None:
        results.append(autobackups.tick(app.state.sessions, now=T0))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not ready.broken  # all four really reached the compare-and-set with the same run
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert len(_backups(app)) == 1


def test_retention_keeps_the_newest_and_never_touches_manual_backups(app, api, target):
    sid = _schedule(app, target, rotation_period=2)
    manual = api.post(f"/settings/disks/{target['disk']['id']}/backups.json").json()["backup"]
    wait_idle(api)
    made = []
    for day in range(4):
        [tx] = autobackups.tick(app.state.sessions, now=T0 + timedelta(days=day))
        made.append(api.get(f"/transactions/{tx}.json").json()["transaction"]["parent_id"])
        wait_idle(api)
    kept = _backups(app, sid)
    assert [b.id for b in kept] == made[2:]  # the two newest runs, the two oldest rotated out and deleted
    assert all(b.built and not b.marked_for_delete for b in kept)
    assert api.get(f"/backups/{manual['id']}.json").json()["backup"]["built"] is True
    txs = wait_idle(api)
    deleted = sorted(t["parent_id"] for t in txs if t["action"] == "destroy_backup")
    assert deleted == made[:2] and all(t["status"] == "complete" for t in txs)


def test_failures_are_counted_and_logged(app, api, target):
    sid = _schedule(app, target)
    target["image"].unlink()
    autobackups.tick(app.state.sessions, now=T0)
    wait_idle(api)
    with app.state.sessions() as db:
        schedule = db.get(Schedule, sid)
        assert schedule.failure_count == 1
        logs = [
            (x.status, x.log_output) for x in db.query(ScheduleLog).filter_by(schedule_id=sid).order_by(ScheduleLog.id)
        ]
    assert logs[-1][0] == "failed" and logs[-1][1].startswith("auto-backup ") and "failed (transaction" in logs[-1][1]
    api.put(f"/settings/disks/{target['disk']['id']}.json", {"disk": {"image_path": None}})
    autobackups.tick(app.state.sessions, now=T0 + timedelta(days=1))
    with app.state.sessions() as db:
        assert db.get(Schedule, sid).failure_count == 2


# -- one schedule that cannot run never stops the others (F4) ----------------------------------------------------

BAD_ROWS = {
    # the audit's row: a start in the past, and every 10,000 years (the next run is past year 9999)
    "years-10000": {"period": "years", "duration": 10000},
    "zero-duration": {"duration": 0},
    "unknown-period": {"period": "hours"},
    # a date no datetime can hold, written by hand: the row cannot even be read
    "anchor-year-12020": {"anchor_at": "12020-01-31 02:00:00.000000"},
}


def _insert_bad(app, target, fields):
    """A schedule row as an older version, or someone with a database shell, could have left it."""
    anchor = fields.pop("anchor_at", None)
    with app.state.sessions() as db:
        row = Schedule(
            target_type="Disk",
            target_id=target["disk"]["id"],
            user_id=target["alice"]["id"],
            period=fields.pop("period", "days"),
            duration=fields.pop("duration", 1),
            anchor_at=T0 - timedelta(days=400),
            start_at=T0 - timedelta(days=400),  # due first: it came before the good ones in every pass
        )
        db.add(row)
        db.commit()
        if anchor is not None:
            db.execute(text("UPDATE schedules SET anchor_at = :a WHERE id = :i"), {"a": anchor, "i": row.id})
            db.commit()
        return row.id


def _columns(app, sid):
    with app.state.sessions() as db:
        status, failures = db.execute(select(Schedule.status, Schedule.failure_count).where(Schedule.id == sid)).one()
        logs = db.scalars(select(ScheduleLog).where(ScheduleLog.schedule_id == sid).order_by(ScheduleLog.id)).all()
        return status, failures, [(x.status, x.log_output) for x in logs]


@pytest.fixture
def bob_disk(api, tmp_path):
    bob = api.user("bob")
    vm = api.vm(bob["id"], api.template()["id"], label="bob-vm")
    image = write_image(tmp_path / "bob.img", 2 * MiB, seed=6)
    return api.disk(vm["id"], api.data_store(label="ds2")["id"], image_path=str(image))


@pytest.mark.parametrize("bad", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_a_schedule_that_cannot_run_is_disabled_and_the_others_still_fire(app, api, target, bob_disk, bad):
    good_alice = _schedule(app, target)
    good_bob = _schedule(app, {"disk": bob_disk})
    bad_id = _insert_bad(app, target, dict(bad))
    app.state.worker.stop()
    queued = autobackups.tick(app.state.sessions, now=T0)
    assert len(queued) == 2
    assert {b.schedule_id for b in _backups(app)} == {good_alice, good_bob}
    status, failures, logs = _columns(app, bad_id)
    assert (status, failures) == ("disabled", 1)
    [(log_status, text_)] = logs
    assert log_status == "failed" and "next run cannot be computed" in text_
    # reported once: the next pass neither fires it nor logs it again, and the good ones keep their series
    assert autobackups.tick(app.state.sessions, now=T0 + timedelta(minutes=1)) == []
    assert _columns(app, bad_id) == (status, failures, logs)
    with app.state.sessions() as db:
        assert db.get(Schedule, good_bob).start_at == T0 + timedelta(days=1)


def test_an_unexpected_error_fails_that_run_only(app, api, target, bob_disk, monkeypatch):
    broken = _schedule(app, target)
    good = _schedule(app, {"disk": bob_disk}, start_at=T0 + timedelta(seconds=1))
    app.state.worker.stop()
    real_take = actions.take_normal

    def take(db, actor, disk_id, *args, **kwargs):
        if disk_id == target["disk"]["id"]:
            raise RuntimeError("a bug in taking this backup")
        return real_take(db, actor, disk_id, *args, **kwargs)

    monkeypatch.setattr(actions, "take_normal", take)
    assert len(autobackups.tick(app.state.sessions, now=T0 + timedelta(seconds=1))) == 1
    assert [b.schedule_id for b in _backups(app)] == [good]
    status, failures, logs = _columns(app, broken)
    assert (status, failures) == ("enabled", 1)  # kept: the next run may well work
    assert logs == [("failed", "could not start the auto-backup: internal error: a bug in taking this backup")]
    with app.state.sessions() as db:
        assert db.get(Schedule, broken).start_at == T0 + timedelta(days=1)  # this run is over, not retried
