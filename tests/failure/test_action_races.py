"""Actions racing each other on one backup, VM or disk (issue 10, F2 and F18), on SQLite and PostgreSQL.

- A state check that guards an action is one compare-and-set: a delete that lands between a restore's read of
  the backup and its lock wins, and the restore is refused (and the other way round).
- The worker runs a transaction only holding all of its lock keys, taken in one database transaction: two
  transactions sharing any key never run at once, whatever else they lock.
- A running take or restore holds its VM and disks: deleting them, re-pointing a disk or giving the VM away is
  refused until it ends.
- A take whose transaction was ended by recovery while its worker stalled never marks its backup built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.failure.conftest import Gate, MiB, Service, make_settings, running_service, wait_for
from tests.images import write_image
from vmbackup.db.models import Backup, Transaction, User
from vmbackup.db.queries import transactions as q
from vmbackup.errors import Conflict
from vmbackup.services import actions


@pytest.fixture
def svc(tmp_path: Path, database_url: str) -> Iterator[Service]:
    with running_service(make_settings(tmp_path, database_url=database_url)) as s:
        yield s


def _vm_with_backup(s: Service, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    api = s.api
    vm = api.vm(api.user("alice")["id"], api.template()["id"])
    image = write_image(tmp_path / "disk.img", 2 * MiB, seed=5)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    backup = s.take_normal(disk["id"])
    assert s.done(backup["id"])["status"] == "complete"
    return vm, disk, backup


def _admin(db: Any) -> User:
    return db.query(User).filter_by(login="admin").one()


@pytest.mark.parametrize(
    ("first", "second"),
    [(actions.restore, actions.delete), (actions.delete, actions.restore), (actions.restore, actions.restore)],
    ids=["delete-lands-inside-restore", "restore-lands-inside-delete", "restore-lands-inside-restore"],
)
def test_an_action_landing_between_anothers_check_and_lock_wins(
    svc: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: Callable[..., Any], second: Callable[..., Any]
) -> None:
    s = svc
    _, _, backup = _vm_with_backup(s, tmp_path)
    s.app.state.worker.stop()  # keep what is queued pending: only the requests race here
    read = actions.get_backup
    landed: list[Any] = []
    calls = 0

    def read_then_let_the_other_in(db: Any, actor: Any, backup_id: int, *a: Any) -> Backup:
        nonlocal calls
        calls += 1
        found = read(db, actor, backup_id, *a)
        if calls == 1:  # the other request runs to its commit right after this one read the backup
            with s.app.state.sessions() as other:
                landed.append(second(other, _admin(other), backup_id))
        return found

    monkeypatch.setattr(actions, "get_backup", read_then_let_the_other_in)
    with s.app.state.sessions() as db, pytest.raises(Conflict, match="locked by another transaction"):
        first(db, _admin(db), backup["id"])
    with s.app.state.sessions() as db:
        queued = db.query(Transaction).filter(Transaction.parent_id == backup["id"], Transaction.status == "pending")
        assert [t.id for t in queued] == [landed[0].id]


def _pending(s: Service, keys: list[str]) -> int:
    with s.app.state.sessions() as db:
        tx = Transaction(action="take_backup", parent_type="Backup", parent_id=0, lock_keys=keys, status="pending")
        db.add(tx)
        db.commit()
        return tx.id


def test_two_transactions_sharing_one_key_of_several_are_never_both_claimed(svc: Service) -> None:
    s = svc
    s.app.state.worker.stop()
    for round_ in range(15):
        a = _pending(s, [f"vm:{round_}", f"disk:{round_}", f"backup:{round_}"])
        b = _pending(s, [f"backup:{round_}"])  # e.g. a delete of the backup a restore is about
        barrier, won = threading.Barrier(2), {}

        def claim(tx_id: int, keys: list[str], barrier: threading.Barrier = barrier, won: dict = won) -> None:
            with s.app.state.sessions() as db:
                barrier.wait()
                won[tx_id] = q.claim(db, tx_id, keys, "test", 0, datetime.now(UTC))

        threads = [
            threading.Thread(target=claim, args=(a, [f"vm:{round_}", f"disk:{round_}", f"backup:{round_}"])),
            threading.Thread(target=claim, args=(b, [f"backup:{round_}"])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(won.values()) == [False, True], won
        with s.app.state.sessions() as db:
            loser = b if won[a] else a
            assert db.get(Transaction, loser).status == "pending"  # a refused claim changes nothing
            assert not q.claim(db, loser, [f"backup:{round_}"], "test", 0, datetime.now(UTC))


def _refused_while_running(s: Service, vm: dict[str, Any], disk: dict[str, Any], tmp_path: Path) -> None:
    api = s.api
    other = api.user("bob")
    elsewhere = write_image(tmp_path / "other.img", MiB, seed=9)
    for response in (
        api.put(f"/settings/disks/{disk['id']}.json", {"disk": {"image_path": str(elsewhere)}}),
        api.put(f"/virtual_machines/{vm['id']}.json", {"virtual_machine": {"user_id": other["id"]}}),
        api.delete(f"/settings/disks/{disk['id']}.json"),
        api.delete(f"/virtual_machines/{vm['id']}.json"),
    ):
        assert response.status_code == 422, response.text
        assert "in use by a running transaction" in response.text or "locked" in response.text
    assert api.get(f"/settings/disks/{disk['id']}.json").json()["disk"]["image_path"] != str(elsewhere)
    assert api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]["user_id"] != other["id"]


def test_a_running_take_holds_its_vm_and_disk(svc: Service, gate: Gate, tmp_path: Path) -> None:
    s = svc
    gate.released.set()
    vm, disk, _ = _vm_with_backup(s, tmp_path)
    gate.hold_next()
    running = s.take_normal(disk["id"])
    assert gate.entered.wait(120)
    _refused_while_running(s, vm, disk, tmp_path)
    gate.released.set()
    assert s.done(running["id"])["status"] == "complete"
    assert s.backup(running["id"])["built"] is True
    # Once it ended, the same changes go through.
    assert s.api.delete(f"/virtual_machines/{vm['id']}.json").status_code == 204


def test_a_running_restore_keeps_its_vm_from_changing_hands(svc: Service, gate: Gate, tmp_path: Path) -> None:
    s = svc
    gate.released.set()
    vm, disk, backup = _vm_with_backup(s, tmp_path)
    gate.hold_next()
    s.restore(backup["id"])
    assert gate.entered.wait(120)
    _refused_while_running(s, vm, disk, tmp_path)
    gate.released.set()
    assert s.done(backup["id"], "restore_backup")["status"] == "complete"


def test_a_take_ended_by_recovery_while_its_worker_stalled_is_never_built(
    svc: Service, gate: Gate, tmp_path: Path
) -> None:
    s = svc
    gate.released.set()
    _, disk, _ = _vm_with_backup(s, tmp_path)
    gate.hold_next()
    stalled = s.take_normal(disk["id"])
    assert gate.entered.wait(120)
    tx_id = s.tx_of(stalled["id"])["id"]
    with s.app.state.sessions() as db:  # what `execution.recover` does to a transaction whose heartbeat went stale
        tx = db.get(Transaction, tx_id)
        tx.status = "failed"
        q.release_locks(db, tx_id)
        db.commit()
    gate.released.set()

    def log() -> str:
        return str(s.api.get(f"/transactions/{tx_id}.json").json()["transaction"]["log_output"])

    # Also stop waiting once it is built, so a broken guard fails here at once instead of timing out.
    wait_for(
        lambda: "ended by recovery" in log() or s.backup(stalled["id"])["built"], what="the stalled take to return"
    )
    assert s.backup(stalled["id"])["built"] is False
    assert "ended by recovery" in log()
