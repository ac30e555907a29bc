"""Asking for work: take, restore, convert, delete. Each checks state, locks what it will touch and queues a
transaction; a worker does the work (``services.tasks``). Nothing here reads or writes backup data."""

from __future__ import annotations

from sqlalchemy.orm import Session

from vmbackup.db.models import Backup, Disk, ImageTemplate, Transaction, User, VirtualMachine
from vmbackup.db.queries import backups as backup_queries
from vmbackup.db.queries import inventory
from vmbackup.errors import Conflict, Invalid
from vmbackup.services import backups, locks, placement, quotas, space, transactions
from vmbackup.services.backups import get_backup
from vmbackup.services.machines import get_disk, get_vm


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
    space.check_normal(db, disk)
    server = placement.backup_server(db, disk.virtual_machine)
    backup = backups.new_normal(db, disk, server.id, note=note, initiated=initiated)
    return backup, _queue_take(db, actor, backup, "take_backup", schedule_id, [disk])


def take_incremental(
    db: Session, actor: User, vm_id: int, note: str | None, *, initiated: str = "manual", schedule_id: int | None = None
) -> tuple[Backup, Transaction]:
    quotas.check_can_queue(db, actor, scheduled=schedule_id is not None)
    vm = get_vm(db, actor, vm_id)
    disks = [d for d in vm.disks if d.image_path]
    if not disks:
        raise Conflict("Backup cannot be made at this time: the virtual machine has no disk with an image path")
    space.check_incremental(db, vm, disks)
    server = placement.backup_server(db, vm)
    backup = backups.new_incremental(db, vm, disks, server.id, note=note, initiated=initiated)
    return backup, _queue_take(db, actor, backup, "take_incremental_backup", schedule_id, disks)


def _queue_take(
    db: Session, actor: User, backup: Backup, action: str, schedule_id: int | None, disks: list[Disk]
) -> Transaction:
    """Lock the new backup and queue the transaction that writes its data."""
    backup.schedule_id = schedule_id
    backup.locked = True
    params: dict[str, object] = {"requested_by": actor.id}
    if action == "take_backup":
        params["disk_id"] = disks[0].id
    else:
        params["disk_ids"] = [d.id for d in disks]
    tx = transactions.create(
        db,
        action=action,
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=backup.virtual_machine_id,
        user_id=backup.user_id,
        lock_keys=[
            locks.vm_key(backup.virtual_machine_id),
            *(locks.disk_key(d.id) for d in disks),
            locks.backup_key(backup.id),
        ],
        params=params,
    )
    db.commit()
    return tx


def _lock_backup(db: Session, backup: Backup, what: str, *, built: bool = True) -> None:
    """Lock ``backup`` for one action, or say why not. The check and the lock are one statement (F2)."""
    if backup_queries.lock(db, backup.id, built=built):
        return
    db.rollback()
    db.refresh(backup)
    if built and not backup.built:
        raise Conflict(f"Backup cannot be {what}: it is not built")
    raise Conflict(f"Backup cannot be {what}: it is locked by another transaction")


def restore_targets(db: Session, backup: Backup) -> tuple[VirtualMachine, list[Disk]]:
    """The VM and disks ``backup`` may be restored onto: the very ones it was taken of (same identifiers), never
    a VM or disk that has since got its id. Raises Conflict otherwise."""
    vm = db.get(VirtualMachine, backup.virtual_machine_id)
    if vm is None or backup.vm_identifier is None or vm.identifier != backup.vm_identifier:
        raise Conflict("Backup cannot be restored: the virtual machine it was taken of no longer exists")
    disks = [d for d in backups.taken_disks(backup, vm) if d.image_path]
    if not disks or (backup.backup_type == "normal" and disks[0].identifier != backup.disk_identifier):
        raise Conflict("Backup cannot be restored: the disk it was taken of no longer exists or has no image path")
    return vm, disks


def may_act_on(actor: User, vm: VirtualMachine, backup: Backup) -> bool:
    """Restoring writes the VM's disks: only for someone who may act on that VM now and owns the backup (or an
    admin). A VM given to another user since is not the backup owner's to overwrite (F1)."""
    return actor.is_admin or (vm.user_id == actor.id and backup.user_id == actor.id)


def restore(db: Session, actor: User, backup_id: int) -> Transaction:
    quotas.check_can_queue(db, actor)
    backup = get_backup(db, actor, backup_id)
    if not backup.built:
        raise Conflict("Backup cannot be restored: it is not built")
    vm, disks = restore_targets(db, backup)
    if not may_act_on(actor, vm, backup):
        # Said as if the VM were gone: whether someone else owns it now is not the caller's to learn.
        raise Conflict("Backup cannot be restored: the virtual machine it was taken of no longer exists")
    _lock_backup(db, backup, "restored")
    if not inventory.lock_vm(db, vm.id):
        db.rollback()
        db.refresh(vm)
        if vm.booted:
            raise Conflict("Virtual machine must be stopped before a backup is restored")
        raise Conflict("Virtual machine is locked by another transaction")
    tx = transactions.create(
        db,
        action="restore_backup",
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=vm.id,
        user_id=backup.user_id,
        lock_keys=[locks.vm_key(vm.id), *(locks.disk_key(d.id) for d in disks), locks.backup_key(backup.id)],
        params={"requested_by": actor.id},
    )
    db.commit()
    return tx


def convert(db: Session, actor: User, backup_id: int, label: str) -> tuple[ImageTemplate, Transaction]:
    quotas.check_can_queue(db, actor)
    backup = get_backup(db, actor, backup_id)
    if not label:
        raise Invalid(fields={"label": ["can't be blank"]})
    _lock_backup(db, backup, "converted")
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
    tx = transactions.create(
        db,
        action="convert_backup",
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=backup.virtual_machine_id,
        user_id=backup.user_id,
        lock_keys=[locks.backup_key(backup.id)],
        params={"template_id": template.id},
    )
    db.commit()
    return template, tx


def delete(db: Session, actor: User, backup_id: int) -> Transaction:
    quotas.check_can_queue(db, actor)
    backup = get_backup(db, actor, backup_id)
    _lock_backup(db, backup, "deleted", built=False)
    tx = _destroy(db, backup)
    db.commit()
    return tx


def queue_destroy(db: Session, backup: Backup) -> Transaction | None:
    """Lock the backup and queue its deletion (retention); None if it is busy with another action."""
    if not backup_queries.lock(db, backup.id, built=False):
        return None
    return _destroy(db, backup)


def _destroy(db: Session, backup: Backup) -> Transaction:
    return transactions.create(
        db,
        action="destroy_backup",
        parent_type="Backup",
        parent_id=backup.id,
        vm_id=backup.virtual_machine_id,
        user_id=backup.user_id,
        lock_keys=[locks.backup_key(backup.id)],
    )
