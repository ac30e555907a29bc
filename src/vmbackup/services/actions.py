"""Asking for work: take, restore, convert, delete. Each checks state, locks what it will touch and queues a
transaction; a worker does the work (``services.tasks``). Nothing here reads or writes backup data."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmbackup.db.models import Backup, BackupServer, Disk, ImageTemplate, Transaction, User, VirtualMachine
from vmbackup.db.queries import backups as backup_queries
from vmbackup.errors import Conflict, Invalid
from vmbackup.services import backups, quotas, transactions
from vmbackup.services.backups import get_backup
from vmbackup.services.machines import get_disk, get_vm


def _backup_server(db: Session) -> BackupServer:
    """Placement: the enabled backup server with the most room left (capacity 0 means no limit set)."""
    servers = db.scalars(select(BackupServer).where(BackupServer.enabled.is_(True)).order_by(BackupServer.id)).all()
    if not servers:
        raise Conflict("Backup cannot be made at this time: no enabled backup server")
    used = backup_queries.kb_used_per_server(db)
    room = {s.id: (s.capacity * 1024 * 1024 - used.get(s.id, 0)) if s.capacity else float("inf") for s in servers}
    best = max(servers, key=lambda s: room[s.id])
    if room[best.id] <= 0:
        raise Conflict("Backup cannot be made at this time: every enabled backup server is full")
    return best


def _vm_lock(vm_id: int) -> str:
    # Takes and restores of one VM's disks run one at a time: a restore must never overlap a backup of the
    # same disk, and two backups of a disk gain nothing from running together.
    return f"vm:{vm_id}"


def take_normal(
    db: Session,
    actor: User,
    disk_id: int,
    note: str | None,
    *,
    initiated: str = "manual",
    schedule_id: int | None = None,
) -> tuple[Backup, Transaction]:
    quotas.check_can_queue(db, actor, scheduled=schedule_id is not None)
    disk = get_disk(db, actor, disk_id)
    if not disk.image_path:
        raise Conflict("Backup cannot be made at this time: the disk has no image path")
    backup = backups.new_normal(db, disk, _backup_server(db).id, note=note, initiated=initiated)
    return backup, _queue_take(db, backup, "take_backup", schedule_id, {"disk_id": disk.id})


def take_incremental(
    db: Session, actor: User, vm_id: int, note: str | None, *, initiated: str = "manual", schedule_id: int | None = None
) -> tuple[Backup, Transaction]:
    quotas.check_can_queue(db, actor, scheduled=schedule_id is not None)
    vm = get_vm(db, actor, vm_id)
    disks = [d for d in vm.disks if d.image_path]
    if not disks:
        raise Conflict("Backup cannot be made at this time: the virtual machine has no disk with an image path")
    backup = backups.new_incremental(db, vm, _backup_server(db).id, note=note, initiated=initiated)
    return backup, _queue_take(db, backup, "take_incremental_backup", schedule_id, {"disk_ids": [d.id for d in disks]})


def _queue_take(
    db: Session, backup: Backup, action: str, schedule_id: int | None, params: dict[str, object]
) -> Transaction:
    """Lock the new backup and queue the transaction that writes its data."""
    backup.schedule_id = schedule_id
    backup.locked = True
    tx = transactions.create(
        db,
        action=action,
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=backup.virtual_machine_id,
        user_id=backup.user_id,
        lock_key=_vm_lock(backup.virtual_machine_id),
        params=params,
    )
    db.commit()
    return tx


def _usable(backup: Backup, what: str) -> None:
    if not backup.built:
        raise Conflict(f"Backup cannot be {what}: it is not built")
    if backup.locked:
        raise Conflict(f"Backup cannot be {what}: it is locked by another transaction")


def restore(db: Session, actor: User, backup_id: int) -> Transaction:
    quotas.check_can_queue(db, actor)
    backup = get_backup(db, actor, backup_id)
    _usable(backup, "restored")
    vm = db.get(VirtualMachine, backup.virtual_machine_id)
    if vm is None:
        raise Conflict("Backup cannot be restored: its virtual machine no longer exists")
    if vm.booted:
        raise Conflict("Virtual machine must be stopped before a backup is restored")
    if vm.locked:
        raise Conflict("Virtual machine is locked by another transaction")
    if backup.disk_id is not None:
        disk = db.get(Disk, backup.disk_id)
        if disk is None or not disk.image_path:
            raise Conflict("Backup cannot be restored: its disk no longer exists or has no image path")
    backup.locked = True
    vm.locked = True
    tx = transactions.create(
        db,
        action="restore_backup",
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=vm.id,
        user_id=backup.user_id,
        lock_key=_vm_lock(vm.id),
    )
    db.commit()
    return tx


def convert(db: Session, actor: User, backup_id: int, label: str) -> tuple[ImageTemplate, Transaction]:
    quotas.check_can_queue(db, actor)
    backup = get_backup(db, actor, backup_id)
    _usable(backup, "converted")
    if not label:
        raise Invalid(fields={"label": ["can't be blank"]})
    template = ImageTemplate(
        label=label,
        state="pending",
        operating_system=backup.operating_system or "linux",
        operating_system_distro=backup.operating_system_distro,
        min_disk_size=backup.min_disk_size or 1,
        min_memory_size=backup.min_memory_size or 128,
        allowed_swap=backup.allowed_swap,
        allowed_hot_migrate=backup.allowed_hot_migrate,
        allow_resize_without_reboot=backup.allow_resize_without_reboot,
        user_id=backup.user_id,
        backup_server_id=backup.backup_server_id,
        parent_backup_id=backup.id,
    )
    db.add(template)
    db.flush()
    template.file_name = f"{template.identifier}.tar.zst"
    backup.locked = True
    tx = transactions.create(
        db,
        action="convert_backup",
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=backup.virtual_machine_id,
        user_id=backup.user_id,
        lock_key=f"backup:{backup.id}",
        params={"template_id": template.id},
    )
    db.commit()
    return template, tx


def delete(db: Session, actor: User, backup_id: int) -> Transaction:
    quotas.check_can_queue(db, actor)
    backup = get_backup(db, actor, backup_id)
    if backup.locked:
        raise Conflict("Backup cannot be deleted: it is locked by another transaction")
    tx = queue_destroy(db, backup)
    db.commit()
    return tx


def queue_destroy(db: Session, backup: Backup) -> Transaction:
    """Lock the backup and queue its deletion (users' deletes and retention both come here)."""
    backup.locked = True
    return transactions.create(
        db,
        action="destroy_backup",
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=backup.virtual_machine_id,
        user_id=backup.user_id,
        lock_key=f"backup:{backup.id}",
    )
