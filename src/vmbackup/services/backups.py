"""Backups: listing, details and notes (taking, restoring and deleting come through transactions)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from vmbackup.db.models import Backup, BackupServer, Disk, User, VirtualMachine
from vmbackup.db.queries import backups as q
from vmbackup.db.queries import inventory
from vmbackup.errors import Invalid, NotFound
from vmbackup.services.access import find, find_owned, owner_scope, require_admin
from vmbackup.services.machines import get_disk

KINDS = {"all": None, "images": "normal", "files": "incremental"}


def list_for_vm(db: Session, actor: User, vm_id: int, kind: str = "all") -> list[q.BackupRow]:
    """The backups taken of this VM; a user sees only their own among them (a VM given to them by an admin comes
    without the previous owner's backups, F14)."""
    # Only the owner and identifier are needed to check visibility: cheaper than loading the VM (the API's hot path).
    found = inventory.vm_owner(db, vm_id)
    if found is None or (not actor.is_admin and found[0] != actor.id):
        raise NotFound("VirtualMachine not found")
    return q.for_vm(db, vm_id, found[1], KINDS[kind], owner_scope(actor))


def list_for_disk(db: Session, actor: User, disk_id: int, vm_id: int | None = None) -> list[q.BackupRow]:
    disk = get_disk(db, actor, disk_id)
    if vm_id is not None and disk.virtual_machine_id != vm_id:
        raise NotFound("Disk not found")
    return q.for_disk(db, disk_id, disk.identifier, owner_scope(actor))


def list_for_user(db: Session, actor: User, user_id: int) -> list[q.BackupRow]:
    find_owned(db, actor, User, user_id, "User", owner_id=lambda u: u.id)
    return q.for_user(db, user_id)


def get_backup(db: Session, actor: User, backup_id: int, vm_id: int | None = None) -> Backup:
    backup = find_owned(db, actor, Backup, backup_id, "Backup")
    if vm_id is not None and backup.virtual_machine_id != vm_id:
        raise NotFound("Backup not found")
    return backup


def edit(db: Session, actor: User, backup_id: int, changes: dict[str, str | None], vm_id: int | None = None) -> None:
    """Only the note is the user's to edit; an absent note leaves it as it is."""
    backup = get_backup(db, actor, backup_id, vm_id)
    if "note" in changes:
        backup.note = changes["note"]
    db.commit()


def disk_key(disk_id: int) -> str:
    """How a disk is named inside an incremental backup's manifest and in ``Backup.disk_identifiers``."""
    return f"disk-{disk_id}"


def taken_disks(backup: Backup, vm: VirtualMachine) -> list[Disk]:
    """The disks of ``vm`` that ``backup`` was taken of: same id and same identifier (an id reused before migration
    0005 is not the same disk). The caller checks that ``vm`` is the backup's VM by its identifier."""
    bound = backup.disk_identifiers or {}
    return [d for d in vm.disks if bound.get(disk_key(d.id)) == d.identifier]


def _snapshot(vm: VirtualMachine) -> dict[str, object]:
    """What OnApp copies into a backup from the VM and its template when the backup is taken."""
    t = vm.template
    return {
        "virtual_machine_id": vm.id,
        "vm_identifier": vm.identifier,
        "user_id": vm.user_id,
        "template_id": vm.template_id,
        "operating_system": t.operating_system,
        "operating_system_distro": t.operating_system_distro,
        "min_disk_size": t.min_disk_size,
        "min_memory_size": t.min_memory_size,
        "allowed_swap": t.allowed_swap,
        "allowed_hot_migrate": t.allowed_hot_migrate,
        "allow_resize_without_reboot": t.allow_resize_without_reboot,
    }


def new_normal(
    db: Session, disk: Disk, server_id: int | None, *, note: str | None = None, initiated: str = "manual"
) -> Backup:
    """An unbuilt normal backup record of one disk (the data is written by the take transaction)."""
    backup = Backup(
        backup_type="normal",
        target_type="Disk",
        target_id=disk.id,
        disk_id=disk.id,
        disk_identifier=disk.identifier,
        disk_identifiers={disk_key(disk.id): disk.identifier},
        image_type="tar",
        data_store_type=disk.data_store.data_store_type,
        backup_server_id=server_id,
        note=note,
        initiated=initiated,
        **_snapshot(disk.virtual_machine),
    )
    db.add(backup)
    db.flush()
    return backup


def new_incremental(
    db: Session,
    vm: VirtualMachine,
    disks: list[Disk],
    server_id: int | None,
    *,
    note: str | None = None,
    initiated: str = "manual",
) -> Backup:
    """An unbuilt incremental backup record of a whole VM (``disks``: those it will hold)."""
    primary = next((d for d in vm.disks if d.primary), vm.disks[0] if vm.disks else None)
    backup = Backup(
        backup_type="incremental",
        target_type="VirtualMachine",
        target_id=vm.id,
        disk_id=None,
        disk_identifiers={disk_key(d.id): d.identifier for d in disks},
        image_type=None,
        data_store_type=primary.data_store.data_store_type if primary else None,
        backup_server_id=server_id,
        note=note,
        initiated=initiated,
        **_snapshot(vm),
    )
    db.add(backup)
    db.flush()
    return backup


# backup_size is a BIGINT: a larger bound overflows the database driver (SQLite) or the column type (PostgreSQL).
MAX_KB = 2**63 - 1


def _number(name: str, value: str | None) -> int | None:
    if value in (None, ""):
        return None
    if not (value.isascii() and value.isdigit()):  # "³" is a digit to isdigit(), not to int()
        raise Invalid(fields={name: ["must be a whole number of kB"]})
    # Length first: int() itself refuses more than 4,300 digits with a ValueError.
    if len(value.lstrip("0")) > len(str(MAX_KB)) or int(value) > MAX_KB:
        raise Invalid(fields={name: [f"must be at most {MAX_KB} kB"]})
    return int(value)


def _day(name: str, value: str | None, end: bool) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        day = date.fromisoformat(value)  # years 1 to 9999 only: "0000-01-01" and "99999-01-01" are refused here
    except ValueError:
        raise Invalid(fields={name: ["must be a date, YYYY-MM-DD"]}) from None
    if end and day == date.max:
        return None  # everything was created on or before 9999-12-31; the day after it does not exist
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start + timedelta(days=1) if end else start  # the end date is included


def search(
    db: Session,
    actor: User,
    server_id: int,
    *,
    size_from: str | None,
    size_to: str | None,
    start: str | None,
    end: str | None,
) -> list[Backup]:
    """Backups on a backup server by stored size (kB) and creation date (end date included)."""
    require_admin(actor)
    find(db, BackupServer, server_id, "Backup server")
    return q.search(
        db,
        server_id,
        _number("size[from]", size_from),
        _number("size[to]", size_to),
        _day("period[startdate]", start, False),
        _day("period[enddate]", end, True),
    )
