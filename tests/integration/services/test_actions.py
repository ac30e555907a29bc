"""services/actions.py called directly, on SQLite and PostgreSQL: the compare-and-set locks (F2), who may restore
what onto which VM (F1) and what each refusal says (the message is what a user reads; issue 10, the survivors
of `make mutation` these kill are listed in docs/mutation.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.api_client import Api
from vmbackup.db.models import Backup, Disk, Transaction, User, VirtualMachine
from vmbackup.db.session import make_engine, make_session_factory
from vmbackup.errors import Conflict
from vmbackup.services import actions, backups


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _backup(db: Session, *, built: bool, locked: bool) -> Backup:
    backup = Backup(backup_type="normal", target_type="Disk", target_id=3, virtual_machine_id=2, user_id=7, built=built)
    backup.locked = locked
    db.add(backup)
    db.commit()
    return backup


@pytest.mark.parametrize("built", [True, False])
def test_queue_destroy_locks_the_backup_and_queues_its_deletion(sessions: sessionmaker[Session], built: bool) -> None:
    with sessions() as db:
        backup = _backup(db, built=built, locked=False)  # unbuilt: a take that failed is rotated out too
        tx = actions.queue_destroy(db, backup)
        assert tx is not None
        db.commit()
    with sessions() as db:
        assert db.get(Backup, backup.id).locked is True  # type: ignore[union-attr]
        queued = db.get(Transaction, tx.id)
        assert queued is not None
        assert (queued.action, queued.parent_type, queued.parent_id, queued.status) == (
            "destroy_backup",
            "Backup",
            backup.id,
            "pending",
        )
        assert (queued.associated_object_id, queued.user_id) == (2, 7)
        assert queued.lock_keys == [f"backup:{backup.id}"]


def test_queue_destroy_leaves_a_backup_another_action_holds(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        backup = _backup(db, built=True, locked=True)  # being restored or converted
        assert actions.queue_destroy(db, backup) is None
        db.commit()
    with sessions() as db:
        assert db.get(Backup, backup.id).locked is True  # type: ignore[union-attr]
        assert list(db.scalars(select(Transaction))) == []


# --- restore and delete, on a VM and disks made through the API (the worker stopped: nothing queued runs) ---


@pytest.fixture
def made(app: Any, api: Api) -> dict[str, Any]:
    app.state.worker.stop()
    alice = api.user("alice")
    vm = api.vm(alice["id"], api.template()["id"])
    ds = api.data_store()
    first = api.disk(vm["id"], ds["id"], image_path="/srv/images/a.img")
    second = api.disk(vm["id"], ds["id"], image_path="/srv/images/b.img", primary=False, label="data")
    return {"alice": alice["id"], "vm": vm["id"], "disks": [first["id"], second["id"]], "sessions": app.state.sessions}


def _built_backup(db: Session, disk_id: int, *, built: bool = True) -> int:
    disk = db.get(Disk, disk_id)
    assert disk is not None
    backup = backups.new_normal(db, disk, None)
    backup.built = built
    db.commit()
    return backup.id


def _user(db: Session, user_id: int | None = None) -> User:
    user = db.get(User, user_id) if user_id else db.scalars(select(User).filter_by(login="admin")).one()
    assert user is not None
    return user


def _refused(message: str) -> Any:
    return pytest.raises(Conflict, match=f"^{re.escape(message)}$")


def test_a_user_restores_her_own_backup_of_her_vms_second_disk(made: dict[str, Any]) -> None:
    # Only the disk the backup was taken of is a target (and locked), not every disk of the VM with an image.
    with made["sessions"]() as db:
        backup_id = _built_backup(db, made["disks"][1])
        tx = actions.restore(db, _user(db, made["alice"]), backup_id)
        assert tx.lock_keys == [f"vm:{made['vm']}", f"disk:{made['disks'][1]}", f"backup:{backup_id}"]
        assert (tx.action, tx.user_id, tx.params) == ("restore_backup", made["alice"], {"requested_by": made["alice"]})


def test_restore_refusals_say_why(made: dict[str, Any]) -> None:
    sessions = made["sessions"]
    with sessions() as db:
        unbuilt = _built_backup(db, made["disks"][0], built=False)
        with _refused("Backup cannot be restored: it is not built"):
            actions.restore(db, _user(db), unbuilt)
    with sessions() as db:
        backup_id = _built_backup(db, made["disks"][0])
        db.get(Backup, backup_id).locked = True  # type: ignore[union-attr]
        db.commit()
        with _refused("Backup cannot be restored: it is locked by another transaction"):
            actions.restore(db, _user(db), backup_id)
        db.get(Backup, backup_id).locked = False  # type: ignore[union-attr]
        db.get(VirtualMachine, made["vm"]).booted = True  # type: ignore[union-attr]
        db.commit()
        with _refused("Virtual machine must be stopped before a backup is restored"):
            actions.restore(db, _user(db), backup_id)
        db.get(VirtualMachine, made["vm"]).booted = False  # type: ignore[union-attr]
        db.get(VirtualMachine, made["vm"]).locked = True  # type: ignore[union-attr]
        db.commit()
        with _refused("Virtual machine is locked by another transaction"):
            actions.restore(db, _user(db), backup_id)
        assert db.get(Backup, backup_id).locked is False  # type: ignore[union-attr]  # the refusal rolled back


def test_a_vm_given_away_is_refused_as_if_it_were_gone(made: dict[str, Any], api: Api) -> None:
    bob = api.user("bob")["id"]
    with made["sessions"]() as db:
        backup_id = _built_backup(db, made["disks"][0])
        db.get(VirtualMachine, made["vm"]).user_id = bob  # type: ignore[union-attr]
        db.commit()
        with _refused("Backup cannot be restored: the virtual machine it was taken of no longer exists"):
            actions.restore(db, _user(db, made["alice"]), backup_id)


def test_a_vm_whose_identifier_changed_is_not_the_one_the_backup_was_taken_of(made: dict[str, Any]) -> None:
    # A VM id given to a new VM (the old one deleted) keeps nothing of the old one but the id: refused on the VM,
    # even when every disk still matched.
    with made["sessions"]() as db:
        backup_id = _built_backup(db, made["disks"][0])
        db.get(VirtualMachine, made["vm"]).identifier = "reusedvmident1"  # type: ignore[union-attr]
        db.commit()
        with _refused("Backup cannot be restored: the virtual machine it was taken of no longer exists"):
            actions.restore(db, _user(db), backup_id)


def test_a_disk_that_lost_its_image_path_is_no_target(made: dict[str, Any]) -> None:
    with made["sessions"]() as db:
        backup_id = _built_backup(db, made["disks"][0])
        db.get(Disk, made["disks"][0]).image_path = None  # type: ignore[union-attr]
        db.commit()
        with _refused("Backup cannot be restored: the disk it was taken of no longer exists or has no image path"):
            actions.restore(db, _user(db), backup_id)


def test_an_unbuilt_backup_can_be_deleted_but_not_one_another_action_holds(made: dict[str, Any]) -> None:
    with made["sessions"]() as db:
        unbuilt = _built_backup(db, made["disks"][0], built=False)  # a take that failed
        tx = actions.delete(db, _user(db), unbuilt)
        assert (tx.action, tx.lock_keys) == ("destroy_backup", [f"backup:{unbuilt}"])
        with _refused("Backup cannot be deleted: it is locked by another transaction"):
            actions.delete(db, _user(db), unbuilt)


def test_a_take_locks_its_vm_disks_and_backup_and_remembers_its_schedule(made: dict[str, Any]) -> None:
    vm, (first, second) = made["vm"], made["disks"]
    with made["sessions"]() as db:
        backup, tx = actions.take_normal(db, _user(db), second, None, initiated="auto", schedule_id=42)
        assert tx.lock_keys == [f"vm:{vm}", f"disk:{second}", f"backup:{backup.id}"]
        assert tx.params == {"requested_by": _user(db).id, "disk_id": second}
        assert (backup.schedule_id, backup.locked) == (42, True)  # retention finds its auto-backups by schedule
        backup, tx = actions.take_incremental(db, _user(db), vm, None)
        assert tx.lock_keys == [f"vm:{vm}", f"disk:{first}", f"disk:{second}", f"backup:{backup.id}"]
        assert tx.params == {"requested_by": _user(db).id, "disk_ids": [first, second]}
        assert backup.schedule_id is None


def test_an_unbuilt_backup_cannot_be_converted(made: dict[str, Any]) -> None:
    # convert has no check of its own before the lock: the compare-and-set on ``built`` is the only guard.
    with made["sessions"]() as db:
        unbuilt = _built_backup(db, made["disks"][0], built=False)
        with _refused("Backup cannot be converted: it is not built"):
            actions.convert(db, _user(db), unbuilt, "from-unbuilt")
        assert db.get(Backup, unbuilt).locked is False  # type: ignore[union-attr]
