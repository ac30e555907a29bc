"""Hypervisors, their zones (OnApp's hypervisor groups) and the backup servers joined to either: admin only.

A hypervisor is ``online`` while a live worker serves it (services/fleet.py): it is not stored, so listings carry
it alongside each row instead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vmbackup.db.models import BackupServer, BackupServerJoin, Hypervisor, HypervisorZone, User
from vmbackup.db.models.fleet import JOINED_TO_HYPERVISOR, JOINED_TO_ZONE
from vmbackup.db.queries import common
from vmbackup.db.queries import fleet as q
from vmbackup.errors import Conflict, Invalid, NotFound
from vmbackup.services import fleet
from vmbackup.services.access import apply, find, require_admin

# The kinds of target a backup server is joined to (target_join_type).
HYPERVISOR = JOINED_TO_HYPERVISOR
ZONE = JOINED_TO_ZONE


def list_hypervisors(db: Session, actor: User) -> list[tuple[Hypervisor, bool]]:
    """Every hypervisor with whether it is online (one read of the workers' heartbeats for the whole list)."""
    require_admin(actor)
    served = fleet.served(db)
    return [(h, served.hypervisor(h.id)) for h in common.all_of(db, Hypervisor)]


def get_hypervisor(db: Session, actor: User, hypervisor_id: int) -> tuple[Hypervisor, bool]:
    require_admin(actor)
    hypervisor = find(db, Hypervisor, hypervisor_id, "Hypervisor")
    return hypervisor, fleet.served(db).hypervisor(hypervisor.id)


def _check_zone(db: Session, data: dict[str, Any]) -> None:
    zone_id = data.get("hypervisor_group_id")
    if zone_id is not None and db.get(HypervisorZone, zone_id) is None:
        raise Invalid(fields={"hypervisor_group_id": [f"Hypervisor zone {zone_id} does not exist"]})


def create_hypervisor(db: Session, actor: User, data: dict[str, Any]) -> tuple[Hypervisor, bool]:
    require_admin(actor)
    _check_zone(db, data)
    hypervisor = Hypervisor(**data)
    db.add(hypervisor)
    db.commit()
    return hypervisor, fleet.served(db).hypervisor(hypervisor.id)


def update_hypervisor(db: Session, actor: User, hypervisor_id: int, data: dict[str, Any]) -> None:
    hypervisor, _ = get_hypervisor(db, actor, hypervisor_id)
    _check_zone(db, data)
    apply(hypervisor, data)
    db.commit()


def delete_hypervisor(db: Session, actor: User, hypervisor_id: int) -> None:
    """Refused while VMs run on it: their disks would be reachable nowhere, and their takes routed to no worker."""
    hypervisor, _ = get_hypervisor(db, actor, hypervisor_id)
    if q.vms_on_hypervisor(db, hypervisor_id):
        raise Conflict("Hypervisor cannot be deleted: virtual machines run on it")
    q.drop_joins_of(db, HYPERVISOR, hypervisor_id)
    db.delete(hypervisor)
    db.commit()


def list_zones(db: Session, actor: User) -> list[HypervisorZone]:
    require_admin(actor)
    return common.all_of(db, HypervisorZone)


def get_zone(db: Session, actor: User, zone_id: int) -> HypervisorZone:
    require_admin(actor)
    return find(db, HypervisorZone, zone_id, "Hypervisor zone")


def create_zone(db: Session, actor: User, data: dict[str, Any]) -> HypervisorZone:
    require_admin(actor)
    zone = HypervisorZone(**data)
    db.add(zone)
    db.commit()
    return zone


def update_zone(db: Session, actor: User, zone_id: int, data: dict[str, Any]) -> None:
    apply(get_zone(db, actor, zone_id), data)
    db.commit()


def delete_zone(db: Session, actor: User, zone_id: int) -> None:
    """Refused while hypervisors are in it, as a backup server zone is while servers are attached: taking the zone
    away would silently change where their VMs' backups may go (the zone's backup server joins)."""
    zone = get_zone(db, actor, zone_id)
    if q.hypervisors_in_zone(db, zone_id):
        raise Conflict("Hypervisor zone cannot be deleted: hypervisors are in it")
    q.drop_joins_of(db, ZONE, zone_id)
    db.delete(zone)
    db.commit()


def _target(db: Session, actor: User, target_type: str, target_id: int) -> None:
    if target_type == HYPERVISOR:
        get_hypervisor(db, actor, target_id)
    else:
        get_zone(db, actor, target_id)


def list_joins(db: Session, actor: User, target_type: str, target_id: int) -> list[BackupServerJoin]:
    _target(db, actor, target_type, target_id)
    return q.joins_of(db, target_type, target_id)


def create_join(db: Session, actor: User, target_type: str, target_id: int, server_id: int) -> BackupServerJoin:
    _target(db, actor, target_type, target_id)
    if db.get(BackupServer, server_id) is None:
        raise Invalid(fields={"backup_server_id": [f"Backup server {server_id} does not exist"]})
    duplicate = Conflict("Backup server is already joined to this target")
    if any(j.backup_server_id == server_id for j in q.joins_of(db, target_type, target_id)):
        raise duplicate
    join = BackupServerJoin(backup_server_id=server_id, target_join_type=target_type, target_join_id=target_id)
    db.add(join)
    try:
        db.commit()
    except IntegrityError:  # the same join made by a concurrent request since the check above
        db.rollback()
        raise duplicate from None
    return join


def delete_join(db: Session, actor: User, target_type: str, target_id: int, join_id: int) -> None:
    _target(db, actor, target_type, target_id)
    join = db.get(BackupServerJoin, join_id)
    if join is None or join.target_join_type != target_type or join.target_join_id != target_id:
        raise NotFound("Backup server join not found")
    db.delete(join)
    db.commit()
