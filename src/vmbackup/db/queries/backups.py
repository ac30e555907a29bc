from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmbackup.db.models import Backup


def for_vm(db: Session, vm_id: int, backup_type: str | None = None) -> list[Backup]:
    q = select(Backup).where(Backup.virtual_machine_id == vm_id)
    if backup_type is not None:
        q = q.where(Backup.backup_type == backup_type)
    return list(db.scalars(q.order_by(Backup.id)))


def for_disk(db: Session, disk_id: int) -> list[Backup]:
    return list(db.scalars(select(Backup).where(Backup.disk_id == disk_id).order_by(Backup.id)))


def for_user(db: Session, user_id: int) -> list[Backup]:
    return list(db.scalars(select(Backup).where(Backup.user_id == user_id).order_by(Backup.id)))
