"""Queries about where VMs run: hypervisors, their zones, the backup servers joined to them, VM addresses."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, delete, select
from sqlalchemy.orm import Session

from vmbackup.db.models import BackupServerJoin, Hypervisor, IpAddress, VirtualMachine
from vmbackup.db.queries.inventory import count_where


def vms_on_hypervisor(db: Session, hypervisor_id: int) -> int:
    return count_where(db, VirtualMachine.hypervisor_id, hypervisor_id)


def hypervisors_in_zone(db: Session, zone_id: int) -> int:
    return count_where(db, Hypervisor.hypervisor_group_id, zone_id)


def joined_to(target_type: str, target_id: int) -> ColumnElement[bool]:
    """The joins of one hypervisor or zone (placement reads them too)."""
    return and_(BackupServerJoin.target_join_type == target_type, BackupServerJoin.target_join_id == target_id)


def joins_of(db: Session, target_type: str, target_id: int) -> list[BackupServerJoin]:
    q = select(BackupServerJoin).where(joined_to(target_type, target_id)).order_by(BackupServerJoin.id)
    return list(db.scalars(q))


def drop_joins_of(db: Session, target_type: str, target_id: int) -> None:
    # target_join_id names a hypervisor or a zone by type, so no foreign key removes these with their target.
    db.execute(delete(BackupServerJoin).where(joined_to(target_type, target_id)))


def vm_id_of(db: Session, identifier: str) -> int | None:
    q = select(VirtualMachine.id).where(VirtualMachine.identifier == identifier).order_by(VirtualMachine.id).limit(1)
    return db.scalar(q)


def ip_by_address(db: Session, address: str) -> IpAddress | None:
    return db.scalar(select(IpAddress).where(IpAddress.address == address))

