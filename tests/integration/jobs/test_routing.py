"""Routing on either database: a dedicated worker runs only its queues' transactions, refuses another queue's,
heartbeats what it serves, and a transaction whose queue has no live worker says so once in its log."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.migrate import upgrade
from vmbackup.db.models import Backup, BackupServer, Hypervisor, Transaction, User, VirtualMachine, WorkerHeartbeat
from vmbackup.db.session import make_engine, make_session_factory
from vmbackup.errors import NotFound
from vmbackup.jobs.scheduler import Scheduler
from vmbackup.jobs.worker import Worker
from vmbackup.services import execution, fleet, integrity, routing, tasks, transactions

H1, H2, BS1 = routing.hypervisor_queue(1), routing.hypervisor_queue(2), routing.backup_server_queue(1)


@pytest.fixture
def sessions(database_url: str) -> Any:
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with factory() as db:
        db.add_all([Hypervisor(label="hv-1"), Hypervisor(label="hv-2")])
        db.add(BackupServer(label="bs-1", ip_address="127.0.0.1", storage_path="/nonexistent"))
        db.add(User(login="alice", email="alice@example.com", password_hash="x"))
        db.commit()
    yield factory
    engine.dispose()


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A stand-in action that records which transactions ran."""
    runs: list[int] = []
    monkeypatch.setitem(tasks.ACTIONS, "quick", lambda sessions, tx, log: runs.append(tx.id))
    return runs


def _tx(sessions: sessionmaker[Session], queue: str, key: str = "vm:1", **fields: Any) -> int:
    with sessions() as db:
        tx = Transaction(action="quick", parent_type="Backup", parent_id=0, lock_keys=[key], queue=queue, **fields)
        db.add(tx)
        db.commit()
        return tx.id


def _get(sessions: sessionmaker[Session], tx_id: int) -> Transaction:
    with sessions() as db:
        tx = db.get(Transaction, tx_id)
        assert tx is not None
        return tx


def _workers(sessions: sessionmaker[Session]) -> list[WorkerHeartbeat]:
    with sessions() as db:
        return list(db.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.name)))


def test_a_dedicated_polling_worker_runs_only_its_queues(sessions, ran):
    mine, other, stored, anywhere = (_tx(sessions, q, f"vm:{i}") for i, q in enumerate((H1, H2, BS1, "default")))
    Worker(sessions, hypervisor_ids=[1], name="hv1-host:101").run_until_idle(10)
    assert ran == [mine]
    assert [_get(sessions, t).status for t in (other, stored, anywhere)] == ["pending"] * 3
    done = _get(sessions, mine)
    assert done.worker == "hv1-host:101"
    assert "by worker hv1-host:101 serving hypervisor 1 (attempt 1)" in done.log_output
    Worker(sessions, backup_server_ids=[1], name="bs1-host:102").run_until_idle(10)
    assert ran == [mine, stored]
    Worker(sessions, name="any-host:103").run_until_idle(10)  # no ids: everything, "default" included
    assert sorted(ran) == sorted([mine, other, stored, anywhere])
    assert "serving every queue" in _get(sessions, anywhere).log_output


def test_pending_filters_by_queue(sessions):
    ids = [_tx(sessions, q, f"vm:{i}") for i, q in enumerate((H1, H2, BS1))]
    with sessions() as db:
        assert [t.id for t in execution.pending(db)] == ids
        assert [t.id for t in execution.pending(db, queues=[H2, BS1])] == ids[1:]
        assert execution.pending(db, queues=[]) == []


def test_execute_refuses_a_transaction_of_another_queue(sessions, ran):
    tx_id = _tx(sessions, H2)  # e.g. its VM moved to hypervisor 2 after hypervisor 1's worker was given the job
    assert execution.execute(sessions, tx_id, "hv1:1", queues=[H1]) is None
    assert _get(sessions, tx_id).status == "pending" and ran == []
    assert execution.execute(sessions, tx_id, "hv2:2", queues=[H2]) == "complete"
    assert ran == [tx_id]


def test_a_vm_moved_to_another_hypervisor_is_run_by_that_hypervisors_worker(sessions, ran):
    with sessions() as db:
        user_id = db.scalar(select(User.id))
        vm = VirtualMachine(label="web", user_id=user_id, template_id=_template(db), hypervisor_id=1)
        db.add(vm)
        db.flush()
        tx = transactions.create(
            db, action="quick", parent_type="Backup", parent_id=0, vm_id=vm.id, user_id=user_id, lock_keys=["vm:9"]
        )
        db.commit()
        vm_id, tx_id = vm.id, tx.id
    assert _get(sessions, tx_id).queue == "default"  # "quick" is not a take: routed by its backup server (none)
    with sessions() as db:  # as a take would be: by the VM's hypervisor
        db.execute(update(Transaction).where(Transaction.id == tx_id).values(action="take_backup", queue=H1))
        db.execute(update(VirtualMachine).where(VirtualMachine.id == vm_id).values(hypervisor_id=2))
        assert routing.reroute_vm(db, vm_id) == 1
        db.execute(update(Transaction).where(Transaction.id == tx_id).values(action="quick"))
        db.commit()
    Worker(sessions, hypervisor_ids=[1], name="hv1:1").run_until_idle(10)
    assert ran == []
    Worker(sessions, hypervisor_ids=[2], name="hv2:2").run_until_idle(10)
    assert ran == [tx_id] and _get(sessions, tx_id).worker == "hv2:2"


def _template(db: Session) -> int:
    from vmbackup.db.models import ImageTemplate

    template = ImageTemplate(label="t")
    db.add(template)
    db.flush()
    return template.id


def test_a_heartbeat_is_one_row_per_worker_refreshed_in_place(sessions):
    then = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with sessions() as db:
        fleet.beat(db, "host-a:10", hypervisor_ids=[2, 1], started_at=then, now=then)
        db.commit()
    with sessions() as db:
        fleet.beat(db, "host-a:10", hypervisor_ids=[1], backup_server_ids=[1], started_at=then)
        db.commit()
    [row] = _workers(sessions)
    assert (row.host, row.pid, row.hypervisor_ids, row.backup_server_ids) == ("host-a", 10, [1], [1])
    assert row.started_at == then and row.heartbeat_at > then
    assert row.cpu_idle is None or 0 <= row.cpu_idle <= 100
    with sessions() as db:
        fleet.forget(db, "host-a:10")
        db.commit()
    assert _workers(sessions) == []


def test_online_is_derived_from_live_heartbeats(sessions):
    now = datetime.now(UTC).replace(microsecond=0)
    with sessions() as db:
        fleet.beat(db, "hv1:1", hypervisor_ids=[1], now=now)
        fleet.beat(db, "dead:2", hypervisor_ids=[2], backup_server_ids=[1], now=now - timedelta(seconds=31))
        db.commit()
        live = fleet.served(db, now)
        assert live.hypervisor(1) and not live.hypervisor(2) and not live.backup_server(1)
        assert live.queue(H1) and not live.queue(H2) and not live.queue("default")
        fleet.beat(db, "generic:3", now=now)  # no ids: serves everything
        assert fleet.served(db, now).queue("default") and fleet.served(db, now).hypervisor(2)


def test_maintenance_prunes_workers_silent_for_a_day(sessions):
    now = datetime.now(UTC).replace(microsecond=0)
    with sessions() as db:
        fleet.beat(db, "gone:1", now=now - timedelta(days=1, minutes=1))
        fleet.beat(db, "quiet:2", now=now - timedelta(hours=23))
        db.commit()
        assert fleet.prune(db, now) == 1
        db.commit()
    assert [w.name for w in _workers(sessions)] == ["quiet:2"]


def test_a_worker_is_in_the_table_while_it_runs_and_gone_after_a_clean_stop(sessions):
    worker = Worker(sessions, hypervisor_ids=[2], backup_server_ids=[1], name="box:77", poll_seconds=0.05)
    worker.start()
    try:
        [row] = _workers(sessions)
        assert (row.name, row.hypervisor_ids, row.backup_server_ids) == ("box:77", [2], [1])
    finally:
        worker.stop()
    assert _workers(sessions) == []


def test_unknown_ids_are_refused(sessions):
    with sessions() as db:
        fleet.check_ids(db, [1, 2], [1])
        with pytest.raises(NotFound, match="no hypervisor with id 7"):
            fleet.check_ids(db, [1, 7], [])
        with pytest.raises(NotFound, match="no backup server with id 5"):
            fleet.check_ids(db, [], [5])


def test_a_transaction_queued_for_a_hypervisor_with_no_worker_says_so_once_and_runs_when_one_starts(sessions, ran):
    with sessions() as db:
        fleet.beat(db, "hv1:1", hypervisor_ids=[1])
        db.commit()
        served_at_once = fleet.waiting_log(db, H1)
        waits = fleet.waiting_log(db, H2)
    assert served_at_once == ""
    assert "Pending: waiting for a worker on hypervisor 2; it runs once one starts" in waits
    tx_id = _tx(sessions, H2, log_output=waits)
    with sessions() as db:
        assert fleet.note_waiting(db) == 0  # already said: not repeated every pass
        db.commit()
    Worker(sessions, hypervisor_ids=[2], name="hv2:2").run_until_idle(10)
    log = _get(sessions, tx_id).log_output
    assert ran == [tx_id] and log.count("waiting for a worker on hypervisor 2") == 1
    assert log.index("waiting for a worker") < log.index("Started on host")


def test_a_worker_that_dies_leaves_its_pending_transactions_saying_they_wait(sessions):
    now = datetime.now(UTC).replace(microsecond=0)
    with sessions() as db:
        fleet.beat(db, "hv1:1", hypervisor_ids=[1], now=now - timedelta(seconds=40))  # killed 40 s ago
        fleet.beat(db, "bs1:2", backup_server_ids=[1], now=now)
        db.commit()
    waiting, served, anywhere = _tx(sessions, H1), _tx(sessions, BS1, "b:1"), _tx(sessions, "default", "b:2")
    with sessions() as db:
        assert fleet.note_waiting(db, now) == 2
        db.commit()
        assert fleet.note_waiting(db, now) == 0
    assert "waiting for a worker on hypervisor 1" in _get(sessions, waiting).log_output
    assert _get(sessions, served).log_output == ""
    assert "waiting for a worker that serves every queue" in _get(sessions, anywhere).log_output
    with sessions() as db:  # its VM moves to hypervisor 2, which has no worker either: said again, for 2
        db.execute(update(Transaction).where(Transaction.id == waiting).values(queue=H2))
        assert fleet.note_waiting(db, now) == 1
        db.commit()
    assert "waiting for a worker on hypervisor 2" in _get(sessions, waiting).log_output


def test_transactions_create_writes_the_waiting_line(sessions):
    with sessions() as db:
        user_id = db.scalar(select(User.id))
        vm = VirtualMachine(label="web", user_id=user_id, template_id=_template(db), hypervisor_id=2)
        db.add(vm)
        db.flush()
        tx = transactions.create(
            db, action="take_backup", parent_type="Backup", parent_id=0, vm_id=vm.id, user_id=user_id, lock_keys=[]
        )
        assert tx.queue == H2 and "waiting for a worker on hypervisor 2" in tx.log_output
        fleet.beat(db, "hv2:9", hypervisor_ids=[2])
        tx = transactions.create(
            db, action="take_backup", parent_type="Backup", parent_id=0, vm_id=vm.id, user_id=user_id, lock_keys=[]
        )
        assert tx.log_output == ""


def test_integrity_checks_only_the_backups_of_the_servers_the_worker_serves(sessions, monkeypatch):
    with sessions() as db:
        db.add(BackupServer(label="bs-2", ip_address="127.0.0.2", storage_path="/nonexistent"))
        db.flush()
        for server_id in (1, 2):
            db.add(Backup(backup_server_id=server_id, built=True, **_backup_fields(db)))
        db.commit()
        by_server = {b.backup_server_id: b.id for b in db.scalars(select(Backup))}
    checked: list[int] = []
    monkeypatch.setattr(integrity, "check", lambda sessions, backup_id, rate: checked.append(backup_id) or True)
    Scheduler(
        sessions, every_seconds=1, verify_interval_hours=1, verify_mib_per_second=1, backup_server_ids=[2]
    ).check_one()
    assert checked == [by_server[2]]
    assert integrity.run_due(sessions, interval_hours=1, mib_per_second=1, backup_server_ids=[]) == {}
    assert integrity.run_due(sessions, interval_hours=1, mib_per_second=1).keys() == {by_server[1], by_server[2]}


def _backup_fields(db: Session) -> dict[str, Any]:
    return {
        "user_id": db.scalar(select(User.id)),
        "backup_type": "normal",
        "target_type": "Disk",
        "target_id": 1,
        "virtual_machine_id": 1,
    }


def test_a_heartbeat_thread_beats_again(sessions):
    beat = fleet.Heartbeat(sessions, "beater:5", hypervisor_ids=[1], every=0.05)
    beat.start()
    try:
        first = _workers(sessions)[0].heartbeat_at
        deadline = time.monotonic() + 5
        while _workers(sessions)[0].heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _workers(sessions)[0].heartbeat_at > first
    finally:
        beat.stop()
    assert _workers(sessions) == []


def test_queue_names_are_the_stored_ones_and_read_back_for_logs():
    """Queue names are stored in every transaction (and are procrastinate's queues): they must not drift."""
    assert (routing.hypervisor_queue(3), routing.backup_server_queue(12)) == ("hypervisor-3", "backup_server-12")
    assert routing.queues_of([1, 3], [2]) == ["hypervisor-1", "hypervisor-3", "backup_server-2"]
    assert routing.queues_of([], [2]) == ["backup_server-2"] and routing.queues_of([], []) is None
    described = [routing.describe(q) for q in ("hypervisor-3", "backup_server-12", "default")]
    assert described == ["hypervisor 3", "backup server 12", "any worker"]


def test_work_on_disks_goes_to_the_vms_hypervisor_and_work_on_stored_data_to_its_backup_server(sessions):
    from vmbackup.db.models import ImageTemplate

    with sessions() as db:
        user_id = db.scalar(select(User.id))
        on_hv = VirtualMachine(label="on", user_id=user_id, template_id=_template(db), hypervisor_id=2)
        nowhere = VirtualMachine(label="off", user_id=user_id, template_id=_template(db))
        db.add_all([on_hv, nowhere])
        db.flush()
        stored = Backup(backup_server_id=1, built=True, **_backup_fields(db))
        unplaced = Backup(built=True, **_backup_fields(db))
        template = ImageTemplate(label="converted", backup_server_id=1)
        db.add_all([stored, unplaced, template])
        db.flush()
        for action in ("take_backup", "take_incremental_backup", "restore_backup"):
            assert routing.queue_for(db, action, "Backup", stored.id, on_hv.id) == H2, action
            assert routing.queue_for(db, action, "Backup", stored.id, nowhere.id) == "default", action
            assert routing.queue_for(db, action, "Backup", stored.id, None) == "default", action
        for action in ("destroy_backup", "convert_backup"):
            assert routing.queue_for(db, action, "Backup", stored.id, on_hv.id) == BS1, action
            assert routing.queue_for(db, action, "Backup", unplaced.id, on_hv.id) == "default", action
        assert routing.queue_for(db, "destroy_template", "ImageTemplate", template.id, None) == BS1
        assert routing.queue_for(db, "destroy_template", "ImageTemplate", 4242, None) == "default"
        # Only backups and templates are stored data; another parent (none today) is no template.
        assert routing.queue_for(db, "destroy_backup", "Other", template.id, None) == "default"


def test_a_moved_vm_takes_along_only_its_pending_work_on_disks(sessions):
    with sessions() as db:
        user_id = db.scalar(select(User.id))
        vm, other = (
            VirtualMachine(label=n, user_id=user_id, template_id=_template(db), hypervisor_id=1) for n in ("a", "b")
        )
        db.add_all([vm, other])
        db.flush()

        def tx(action: str, vm_id: int, status: str = "pending", queue: str = H1) -> Transaction:
            t = Transaction(
                action=action, parent_type="Backup", parent_id=0, associated_object_id=vm_id, status=status, queue=queue
            )
            db.add(t)
            return t

        moved = [tx(a, vm.id) for a in ("take_backup", "take_incremental_backup", "restore_backup")]
        stays = [
            tx("take_backup", vm.id, status="running"),
            tx("destroy_backup", vm.id, queue=BS1),
            tx("take_backup", other.id),
        ]
        vm.hypervisor_id = 2
        db.flush()
        assert routing.reroute_vm(db, vm.id) == 3
        db.commit()
        assert [_get(sessions, t.id).queue for t in moved] == [H2] * 3
        assert [_get(sessions, t.id).queue for t in stays] == [H1, BS1, H1]
        vm.hypervisor_id = None
        db.flush()
        assert routing.reroute_vm(db, vm.id) == 3
        db.commit()
        assert [_get(sessions, t.id).queue for t in moved] == ["default"] * 3


def test_a_catch_all_worker_serves_every_backup_server_and_leaves_nothing_waiting(sessions):
    now = datetime.now(UTC).replace(microsecond=0)
    with sessions() as db:
        fleet.beat(db, "bs1:1", backup_server_ids=[1], now=now)
        db.commit()
        live = fleet.served(db, now)
        assert live.backup_server(1) and not live.backup_server(2) and not live.hypervisor(1)
        assert live.queue(BS1) and not live.queue(routing.backup_server_queue(2))
    tx_id = _tx(sessions, H2)
    with sessions() as db:
        fleet.beat(db, "generic:2", now=now)
        db.commit()
        live = fleet.served(db, now)
        assert live.everything and live.backup_server(2) and live.queue(H2)
        assert fleet.note_waiting(db, now) == 0
        assert fleet.waiting_log(db, H2, now) == ""
        db.commit()
    assert _get(sessions, tx_id).log_output == ""


def test_liveness_is_judged_at_the_time_given(sessions):
    """`now` is the moment the fleet is looked at (tests, and a pass that reads the clock once): a worker that beat
    an hour before it is live then, whatever the clock says."""
    then = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    with sessions() as db:
        fleet.beat(db, "hv1:1", hypervisor_ids=[1], now=then)
        db.commit()
    tx_id = _tx(sessions, H1)
    with sessions() as db:
        assert fleet.served(db, then).hypervisor(1) and not fleet.served(db).hypervisor(1)
        assert fleet.waiting_log(db, H1, then) == "" and fleet.waiting_log(db, H1) != ""
        assert fleet.note_waiting(db, then) == 0
        db.commit()
    assert _get(sessions, tx_id).log_output == ""


def test_only_pending_transactions_are_told_they_wait(sessions):
    now = datetime.now(UTC).replace(microsecond=0)
    pending = _tx(sessions, H1)
    ended = [_tx(sessions, H1, f"vm:{s}", status=s) for s in ("running", "complete", "failed")]
    with sessions() as db:
        assert fleet.note_waiting(db, now) == 1
        db.commit()
    assert "waiting for a worker on hypervisor 1" in _get(sessions, pending).log_output
    assert [_get(sessions, t).log_output for t in ended] == [""] * 3
