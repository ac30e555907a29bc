"""Admin-managed settings objects: image templates, data stores, backup servers and zones, auto-backup presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.base import Base
from vmbackup.db.models import (
    AutobackupPreset,
    BackupServer,
    BackupServerZone,
    DataStore,
    ImageTemplate,
    Transaction,
    User,
)
from vmbackup.db.queries import common, inventory
from vmbackup.db.queries import transactions as tq
from vmbackup.errors import Conflict, Forbidden, Invalid, NotFound
from vmbackup.services import locks, periods, quotas, transactions
from vmbackup.services.access import apply, find, require_admin

T = TypeVar("T", bound=Base)

LABELS: dict[type[Base], str] = {
    ImageTemplate: "Template",
    DataStore: "Data store",
    BackupServer: "Backup server",
    BackupServerZone: "Backup server zone",
    AutobackupPreset: "Autobackup preset",
}


def _visible(actor: User, obj: Base) -> bool:
    # Every user may see the system templates VMs are built from; a template converted from a backup belongs to
    # the backup's owner (OnApp's "user templates"), and someone else's answers like a missing one.
    owner = getattr(obj, "user_id", None) if isinstance(obj, ImageTemplate) else None
    return actor.is_admin or owner is None or owner == actor.id


def list_all(db: Session, actor: User, model: type[T]) -> list[T]:
    if model is not ImageTemplate:
        require_admin(actor)
    return [obj for obj in common.all_of(db, model) if _visible(actor, obj)]


def get(db: Session, actor: User, model: type[T], id_: int) -> T:
    if model is not ImageTemplate:
        require_admin(actor)
    obj = find(db, model, id_, LABELS[model])
    if not _visible(actor, obj):
        raise NotFound(f"{LABELS[model]} not found")
    return obj


def create(db: Session, actor: User, model: type[T], data: dict[str, Any]) -> T:
    require_admin(actor)
    if model is BackupServer:
        return cast(T, create_backup_server(db, data))
    if model is AutobackupPreset:
        _check_preset(data.get("period", ""), data.get("duration", 1))
    obj = model(**data)
    db.add(obj)
    db.commit()
    return obj


_DATA_DIR = "vmbackup.data_dir"  # key in Session.info


def bind_data_dir(sessions: sessionmaker[Session], path: Path) -> None:
    """Where backup servers created without a ``storage_path`` keep their bytes: ``<path>/backup_servers/<id>``."""
    sessions.configure(info={**sessions.kw.get("info", {}), _DATA_DIR: str(path)})


def create_backup_server(db: Session, data: dict[str, Any]) -> BackupServer:
    """A backup server from OnApp's fields (label, ip_address, backup_ip_address, capacity, enabled,
    backup_server_group_id): OnApp clients name no storage location, so unless the admin gives a ``storage_path``
    the server gets a directory of its own under the data directory, named by its id (never reused)."""
    zone_id = data.get("backup_server_group_id")
    if zone_id is not None and db.get(BackupServerZone, zone_id) is None:
        raise Invalid(fields={"backup_server_group_id": ["does not name a backup server zone"]})
    path: str | None = data.get("storage_path")
    data_dir: str | None = db.info.get(_DATA_DIR)
    if path is not None:
        _check_storage_path(path)
    elif data_dir is None:  # sessions not bound to settings: nowhere to choose from
        raise Invalid(fields={"storage_path": ["can't be blank"]})
    server = BackupServer(**{**data, "storage_path": path or ""})
    db.add(server)
    if path is None and data_dir is not None:
        db.flush()  # the id names the directory
        server.storage_path = str(Path(data_dir) / "backup_servers" / str(server.id))
        _check_storage_path(server.storage_path)
    db.commit()
    return server


def update(db: Session, actor: User, model: type[T], id_: int, data: dict[str, Any]) -> None:
    obj = get(db, actor, model, id_)
    if model is BackupServer and "storage_path" in data:
        if inventory.backups_on_server(db, id_) or _templates_on_server(db, id_):
            raise Conflict("storage_path cannot change while the backup server holds backups or templates")
        _check_storage_path(data["storage_path"])
    if isinstance(obj, AutobackupPreset) and {"period", "duration"} & data.keys():
        _check_preset(data.get("period", obj.period), data.get("duration", obj.duration))
    apply(obj, data)
    db.commit()


def delete(db: Session, actor: User, model: type[T], id_: int) -> None:
    if model is ImageTemplate:
        delete_template(db, actor, id_)
        return
    obj = get(db, actor, model, id_)
    in_use = {
        DataStore: lambda: inventory.disks_on_data_store(db, id_) and "it has disks",
        BackupServer: lambda: (
            (inventory.backups_on_server(db, id_) and "it holds backups")
            or (_templates_on_server(db, id_) and "it holds templates converted from backups")
        ),
        BackupServerZone: lambda: inventory.servers_in_zone(db, id_) and "backup servers are attached to it",
        AutobackupPreset: lambda: None,
    }[model]()
    if in_use:
        raise Conflict(f"{LABELS[model]} cannot be deleted: {in_use}")
    db.delete(obj)
    db.commit()


DESTROY_TEMPLATE = "destroy_template"  # services/template_tasks.py


def delete_template(db: Session, actor: User, template_id: int) -> Transaction | None:
    """Delete a template: an admin any that no VM uses, a user their own converted one (someone else's is 404 like a
    missing one; a system template, which users may see, 403).

    A template converted from a backup has an archive on its backup server: a ``destroy_template`` transaction
    removes it and then the row (returned, to be handed to the worker). A template with no stored archive goes at
    once (None)."""
    template = get(db, actor, ImageTemplate, template_id)
    if not actor.is_admin and template.user_id != actor.id:
        raise Forbidden()
    if inventory.vms_of_template(db, template_id):
        raise Conflict("Template cannot be deleted: virtual machines use it")
    if template.state == "pending":
        raise Conflict("Template cannot be deleted: it is still being made from its backup")
    if template.backup_server_id is None:  # a system template, or its backup server was deleted: no data to remove
        db.delete(template)
        db.commit()
        return None
    quotas.check_can_queue(db, actor)
    if tq.in_progress(db, DESTROY_TEMPLATE, "ImageTemplate", template_id):
        raise Conflict("Template cannot be deleted: it is already being deleted")
    tx = transactions.create(
        db,
        action=DESTROY_TEMPLATE,
        parent_type="ImageTemplate",
        parent_id=template_id,
        vm_id=None,
        user_id=template.user_id or actor.id,
        lock_keys=[locks.template_key(template_id)],
    )
    db.commit()
    return tx


def _templates_on_server(db: Session, server_id: int) -> int:
    # Converted templates keep their archive on the server: deleting or moving it would lose them.
    return inventory.count_where(db, ImageTemplate.backup_server_id, server_id)


def _check_preset(period: str, duration: int) -> None:
    # Schedules made from a preset must be runnable like any other (services/schedules.py refuses the same).
    problem = periods.duration_problem(period, duration)
    if problem:
        raise Invalid(fields={"duration": [problem]})


def _check_storage_path(path: str) -> None:
    p = Path(path)
    if not p.is_absolute() or ".." in p.parts:
        raise Invalid(fields={"storage_path": ["must be an absolute path without '..'"]})
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Invalid(fields={"storage_path": [f"cannot be created: {exc.strerror}"]}) from None


def zone_servers(db: Session, actor: User, zone_id: int) -> list[BackupServer]:
    get(db, actor, BackupServerZone, zone_id)
    return inventory.servers_of_zone(db, zone_id)


def attach(db: Session, actor: User, zone_id: int, server_id: int, attached: bool) -> BackupServer:
    get(db, actor, BackupServerZone, zone_id)
    server = get(db, actor, BackupServer, server_id)
    if attached:
        server.backup_server_group_id = zone_id
    elif server.backup_server_group_id == zone_id:
        server.backup_server_group_id = None
    db.commit()
    return server
