from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, selectinload

from vmbackup.db.models import Backup, BackupServer, Disk, VirtualMachine


def vms(db: Session, owner_id: int | None) -> list[VirtualMachine]:
    """With what a VM is shown with (its disks for total_disk_size, its addresses) in one query each, not one per
    VM: control panels poll this list. Template and hypervisor come joined (the relationships say so)."""
    q = (
        select(VirtualMachine)
        .options(selectinload(VirtualMachine.disks), selectinload(VirtualMachine.ip_addresses))
        .order_by(VirtualMachine.id)
    )
    if owner_id is not None:
        q = q.where(VirtualMachine.user_id == owner_id)
    return list(db.scalars(q))


def disks(db: Session, *, owner_id: int | None = None, vm_id: int | None = None) -> list[Disk]:
    q = select(Disk).order_by(Disk.id)
    if owner_id is not None:
        q = q.join(VirtualMachine).where(VirtualMachine.user_id == owner_id)
    if vm_id is not None:
        q = q.where(Disk.virtual_machine_id == vm_id)
    return list(db.scalars(q))


def count_where(db: Session, column: InstrumentedAttribute[int] | InstrumentedAttribute[int | None], value: int) -> int:
    return db.scalar(select(func.count()).where(column == value)) or 0


def backups_on_server(db: Session, server_id: int) -> int:
    return count_where(db, Backup.backup_server_id, server_id)


def disks_on_data_store(db: Session, data_store_id: int) -> int:
    return count_where(db, Disk.data_store_id, data_store_id)


def vms_of_user(db: Session, user_id: int) -> int:
    return count_where(db, VirtualMachine.user_id, user_id)


def vms_of_template(db: Session, template_id: int) -> int:
    return count_where(db, VirtualMachine.template_id, template_id)


def servers_in_zone(db: Session, zone_id: int) -> int:
    return count_where(db, BackupServer.backup_server_group_id, zone_id)


def servers_of_zone(db: Session, zone_id: int) -> list[BackupServer]:
    q = select(BackupServer).where(BackupServer.backup_server_group_id == zone_id).order_by(BackupServer.id)
    return list(db.scalars(q))


def vm_owner(db: Session, vm_id: int) -> tuple[int, str] | None:
    """(owner id, identifier) of a VM, or None."""
    q = select(VirtualMachine.user_id, VirtualMachine.identifier).where(VirtualMachine.id == vm_id)
    row = db.execute(q).first()
    return (row[0], row[1]) if row else None


def lock_vm(db: Session, vm_id: int) -> bool:
    """Lock a stopped, unlocked VM for a restore: one compare-and-set (see backups.lock)."""
    stmt = (
        update(VirtualMachine)
        .where(VirtualMachine.id == vm_id, VirtualMachine.locked.is_(False), VirtualMachine.booted.is_(False))
        .values(locked=True)
    )
    return db.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
