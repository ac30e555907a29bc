"""services/placement.py on SQLite and PostgreSQL: which backup server a take goes to (OnApp 6.4's rules, reference
section 10). Hypervisors, zones and joins are made through the models, as the first start of a fleet would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from vmbackup.db.models import (
    Backup,
    BackupServer,
    BackupServerJoin,
    Hypervisor,
    HypervisorZone,
    Transaction,
    User,
    VirtualMachine,
    WorkerHeartbeat,
)
from vmbackup.errors import Conflict
from vmbackup.services import actions, placement

ONAPP_NONE = "Backup cannot be made at this time: This disk cannot be backed up, check Location Group settings."


@pytest.fixture
def fleet(app: Any, world: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    """A zone with two hypervisors, alice's VM on the first; three backup servers joined to nothing yet
    (besides "Local storage", id 1, from the first start). No worker runs, so queued takes stay pending."""
    app.state.worker.stop()
    with app.state.sessions() as db:
        db.execute(delete(WorkerHeartbeat))
        zone = HypervisorZone(label="zone A")
        db.add(zone)
        db.flush()
        hv1 = Hypervisor(label="hv1", hypervisor_group_id=zone.id)
        hv2 = Hypervisor(label="hv2", hypervisor_group_id=zone.id)
        servers = [BackupServer(label=f"bs{i}", storage_path=str(tmp_path / f"bs{i}")) for i in (1, 2, 3)]
        db.add_all([hv1, hv2, *servers])
        db.flush()
        db.get(VirtualMachine, world["vm_a"]["id"]).hypervisor_id = hv1.id  # type: ignore[union-attr]
        db.commit()
        return {
            "sessions": app.state.sessions,
            "zone": zone.id,
            "hv1": hv1.id,
            "hv2": hv2.id,
            "servers": [s.id for s in servers],
            "vm": world["vm_a"]["id"],
            "disk": world["disk_a"]["id"],
        }


def _join(fleet: dict[str, Any], server: int, target_type: str, target: int) -> None:
    with fleet["sessions"]() as db:
        db.add(BackupServerJoin(backup_server_id=server, target_join_type=target_type, target_join_id=target))
        db.commit()


def _set(fleet: dict[str, Any], server: int, **fields: Any) -> None:
    with fleet["sessions"]() as db:
        s = db.get(BackupServer, server)
        for k, v in fields.items():
            setattr(s, k, v)
        db.commit()


def _place(fleet: dict[str, Any], vm: int | None = None) -> int:
    with fleet["sessions"]() as db:
        return placement.backup_server(db, db.get(VirtualMachine, vm or fleet["vm"])).id  # type: ignore[arg-type]


def _take(fleet: dict[str, Any]) -> int:
    """Queue a normal backup of alice's disk as the admin; the server it was placed on."""
    with fleet["sessions"]() as db:
        backup, _ = actions.take_normal(db, db.get(User, 1), fleet["disk"], None)  # type: ignore[arg-type]
        assert backup.backup_server_id is not None
        return backup.backup_server_id


def _worker(
    fleet: dict[str, Any], name: str, cpu_idle: int | None, servers: list[int], hypervisors: list[int] | None = None
) -> None:
    now = datetime.now(UTC)
    with fleet["sessions"]() as db:
        db.add(
            WorkerHeartbeat(
                name=name,
                host=name,
                pid=1,
                hypervisor_ids=hypervisors or [],
                backup_server_ids=servers,
                cpu_idle=cpu_idle,
                started_at=now,
                heartbeat_at=now,
            )
        )
        db.commit()


def test_a_server_joined_to_the_vms_hypervisor(fleet: dict[str, Any]) -> None:
    bs1, bs2, _ = fleet["servers"]
    _join(fleet, bs2, "Hypervisor", fleet["hv1"])
    _join(fleet, bs1, "Hypervisor", fleet["hv2"])  # another hypervisor's: not a candidate
    assert _place(fleet) == bs2


def test_a_server_joined_to_the_hypervisors_zone(fleet: dict[str, Any]) -> None:
    _, _, bs3 = fleet["servers"]
    _join(fleet, bs3, "HypervisorGroup", fleet["zone"])
    _join(fleet, fleet["servers"][0], "HypervisorGroup", fleet["zone"] + 1000)  # some other zone
    assert _place(fleet) == bs3


def test_disabled_servers_are_skipped(fleet: dict[str, Any]) -> None:
    bs1, bs2, _ = fleet["servers"]
    _join(fleet, bs1, "Hypervisor", fleet["hv1"])
    _join(fleet, bs2, "HypervisorGroup", fleet["zone"])
    _set(fleet, bs1, enabled=False)
    assert _place(fleet) == bs2


def test_full_servers_are_skipped(app: Any, fleet: dict[str, Any]) -> None:
    bs1, bs2, _ = fleet["servers"]
    _join(fleet, bs1, "Hypervisor", fleet["hv1"])
    _join(fleet, bs2, "Hypervisor", fleet["hv1"])
    _set(fleet, bs1, capacity=1)  # GB
    with fleet["sessions"]() as db:
        db.add(
            Backup(
                backup_type="normal",
                target_type="Disk",
                target_id=fleet["disk"],
                virtual_machine_id=fleet["vm"],
                user_id=2,
                built=True,
                backup_size=1024 * 1024,  # kB: exactly 1 GB, so no room left
                backup_server_id=bs1,
            )
        )
        db.commit()
    assert _place(fleet) == bs2
    _set(fleet, bs1, capacity=2)
    assert _place(fleet) == bs1  # room again, and the lower id of two idle equals


def test_the_server_with_the_fewest_queued_takes_wins(fleet: dict[str, Any]) -> None:
    bs1, bs2, bs3 = fleet["servers"]
    for s in (bs1, bs2, bs3):
        _join(fleet, s, "HypervisorGroup", fleet["zone"])
    # A burst of takes queued before any runs is spread over the servers, one each in turn.
    assert [_take(fleet) for _ in range(4)] == [bs1, bs2, bs3, bs1]
    _statuses(fleet, "running", "complete", "pending", "failed")
    assert _place(fleet) == bs2  # bs1: 1 running, bs2: none, bs3: 1 pending
    _set(fleet, bs2, enabled=False)
    assert _place(fleet) == bs1  # a running take counts as a pending one: a tie, the lowest id
    _statuses(fleet, "running", "complete", "complete", "failed")
    assert _place(fleet) == bs3  # finished takes count nothing


def _statuses(fleet: dict[str, Any], *statuses: str) -> None:
    with fleet["sessions"]() as db:
        for tx, status in zip(db.scalars(select(Transaction).order_by(Transaction.id)), statuses, strict=True):
            tx.status = status
        db.commit()


def test_ties_go_to_the_most_idle_then_the_lowest_id(fleet: dict[str, Any]) -> None:
    bs1, bs2, bs3 = fleet["servers"]
    for s in (bs1, bs2, bs3):
        _join(fleet, s, "Hypervisor", fleet["hv1"])
    assert _place(fleet) == bs1  # nothing measured: lowest id
    _worker(fleet, "h2:1", 40, [bs2])
    assert _place(fleet) == bs2  # measured beats unknown
    _worker(fleet, "h3:1", 75, [bs3])
    assert _place(fleet) == bs3  # the most idle
    _worker(fleet, "h1:1", 75, [bs1])
    assert _place(fleet) == bs1  # equally idle: lowest id
    with fleet["sessions"]() as db:
        idle = placement.cpu_idle(db)
        assert [idle.of(s) for s in (bs1, bs2, bs3, 999)] == [75, 40, 75, None]


def test_a_dead_workers_idleness_does_not_count(fleet: dict[str, Any]) -> None:
    bs1, bs2, _ = fleet["servers"]
    for s in (bs1, bs2):
        _join(fleet, s, "Hypervisor", fleet["hv1"])
    _worker(fleet, "h2:1", 99, [bs2])
    with fleet["sessions"]() as db:
        w = db.get(WorkerHeartbeat, "h2:1")
        w.heartbeat_at = datetime(2020, 1, 1, tzinfo=UTC)  # type: ignore[union-attr]
        db.commit()
    assert _place(fleet) == bs1


def test_a_catch_all_worker_speaks_for_servers_without_their_own(fleet: dict[str, Any]) -> None:
    bs1, bs2, _ = fleet["servers"]
    for s in (bs1, bs2):
        _join(fleet, s, "Hypervisor", fleet["hv1"])
    _worker(fleet, "all:1", 80, [])
    _worker(fleet, "h1:1", 30, [bs1])
    assert _place(fleet) == bs2
    with fleet["sessions"]() as db:
        assert placement.cpu_idle(db).of(bs2) == 80


def _idle(fleet: dict[str, Any], *servers: int) -> list[int | None]:
    with fleet["sessions"]() as db:
        idle = placement.cpu_idle(db)
        return [idle.of(s) for s in servers]


def test_a_worker_without_a_reading_does_not_hide_the_others(fleet: dict[str, Any]) -> None:
    bs1, bs2, _ = fleet["servers"]
    _worker(fleet, "a-own:1", None, [bs1])  # no load average on its host; sorted before the next one
    _worker(fleet, "b-own:1", 60, [bs1])
    _worker(fleet, "c-all:1", None, [])
    _worker(fleet, "d-all:1", 20, [])
    _worker(fleet, "e-own:1", 30, [bs1])  # of several, the most idle: it picks the next job up first
    _worker(fleet, "f-all:1", 10, [])
    assert _idle(fleet, bs1, bs2) == [60, 20]


def test_only_a_catch_all_worker_speaks_for_servers_without_their_own(fleet: dict[str, Any]) -> None:
    """A worker for some hypervisors runs on those hosts, one for a backup server on that server: neither
    figure is another backup server's."""
    bs1, bs2, _ = fleet["servers"]
    _worker(fleet, "hv:1", 90, [], hypervisors=[fleet["hv1"]])
    _worker(fleet, "bs1:1", 80, [bs1])
    assert _idle(fleet, bs1, bs2) == [80, None]


def test_a_fully_loaded_server_is_measured_zero_and_still_beats_unknown(fleet: dict[str, Any]) -> None:
    bs1, bs2, bs3 = fleet["servers"]
    for s in (bs1, bs2):
        _join(fleet, s, "Hypervisor", fleet["hv1"])
    _worker(fleet, "bs2:1", 0, [bs2])
    assert _idle(fleet, bs1, bs2) == [None, 0]
    assert _place(fleet) == bs2  # measured, even at 0, beats unknown
    _worker(fleet, "all:1", 0, [])
    assert _idle(fleet, bs1, bs3) == [0, 0]
    assert _place(fleet) == bs1  # both measured at 0: the lowest id


def test_none_eligible_answers_onapps_message_and_queues_nothing(fleet: dict[str, Any]) -> None:
    bs1, _, _ = fleet["servers"]
    _join(fleet, bs1, "Hypervisor", fleet["hv2"])  # joined, but not to this VM's hypervisor or zone
    with fleet["sessions"]() as db:
        with pytest.raises(Conflict) as err:
            actions.take_normal(db, db.get(User, 1), fleet["disk"], None)  # type: ignore[arg-type]
        assert err.value.message == ONAPP_NONE
        db.rollback()
        with pytest.raises(Conflict) as err:
            actions.take_incremental(db, db.get(User, 1), fleet["vm"], None)  # type: ignore[arg-type]
        assert err.value.message == ONAPP_NONE
    with fleet["sessions"]() as db:
        assert db.scalar(select(func.count()).select_from(Backup)) == 0
        assert db.scalar(select(func.count()).select_from(Transaction)) == 0


def test_a_vm_without_a_hypervisor_goes_to_any_enabled_server_with_room(fleet: dict[str, Any], world: Any) -> None:
    bs1, bs2, bs3 = fleet["servers"]
    vm_b = world["vm_b"]["id"]  # never given a hypervisor, like every VM before the fleet
    _join(fleet, bs3, "Hypervisor", fleet["hv1"])  # joins do not matter to it
    assert _place(fleet, vm_b) == 1  # "Local storage", the lowest id
    _set(fleet, 1, enabled=False)
    _set(fleet, bs1, enabled=False)
    assert _place(fleet, vm_b) == bs2
    for s in (bs2, bs3):
        _set(fleet, s, enabled=False)
    with fleet["sessions"]() as db, pytest.raises(Conflict) as err:
        placement.backup_server(db, db.get(VirtualMachine, vm_b))  # type: ignore[arg-type]
    assert err.value.message == ONAPP_NONE


def test_the_api_answers_onapps_message(api: Any, fleet: dict[str, Any]) -> None:
    r = api.post(f"/settings/disks/{fleet['disk']}/backups.json")
    assert r.status_code == 422 and r.json() == {"errors": [ONAPP_NONE]}
    _join(fleet, fleet["servers"][1], "HypervisorGroup", fleet["zone"])
    r = api.post(f"/settings/disks/{fleet['disk']}/backups.json")
    assert r.status_code == 201 and r.json()["backup"]["backup_server_id"] == fleet["servers"][1]
