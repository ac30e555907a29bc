"""Virtual machines and their disks."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import DataStore, Disk, ImageTemplate, User, VirtualMachine
from vmbackup.db.queries import inventory
from vmbackup.engine.source import NOT_AN_IMAGE, file_kind, is_image_mode
from vmbackup.errors import Conflict, Invalid
from vmbackup.services import locks
from vmbackup.services.access import apply, find, find_owned, owner_scope, require_admin


def list_vms(db: Session, actor: User, owner_id: int | None = None) -> list[VirtualMachine]:
    if owner_id is not None:
        find_owned(db, actor, User, owner_id, "User", owner_id=lambda u: u.id)
        return inventory.vms(db, owner_id)
    return inventory.vms(db, owner_scope(actor))


def get_vm(db: Session, actor: User, vm_id: int) -> VirtualMachine:
    return find_owned(db, actor, VirtualMachine, vm_id, "VirtualMachine")


def _check_refs(db: Session, data: dict[str, Any]) -> None:
    for field, model, label in (
        ("user_id", User, "User"),
        ("template_id", ImageTemplate, "Template"),
        ("data_store_id", DataStore, "Data store"),
    ):
        if data.get(field) is not None and db.get(model, data[field]) is None:
            raise Invalid(fields={field: [f"{label} {data[field]} does not exist"]})


def create_vm(db: Session, actor: User, data: dict[str, Any]) -> VirtualMachine:
    require_admin(actor)
    _check_refs(db, data)
    vm = VirtualMachine(**data)
    db.add(vm)
    db.commit()
    return vm


def _keys(vm: VirtualMachine, disks: Sequence[Disk]) -> list[str]:
    return [locks.vm_key(vm.id), *(locks.disk_key(d.id) for d in disks)]


def update_vm(db: Session, actor: User, vm_id: int, data: dict[str, Any]) -> None:
    """Change a VM. Giving it to another user (``user_id``) leaves its backups with the user who took them: they
    keep seeing them, cannot restore them onto the VM any more, and the new owner does not see them (F1, F14)."""
    require_admin(actor)
    vm = get_vm(db, actor, vm_id)
    _check_refs(db, data)
    if "user_id" in data and data["user_id"] != vm.user_id and vm.locked:
        raise Conflict("VirtualMachine is locked by a transaction: its owner cannot change now")
    apply(vm, data)
    locks.commit_unless_busy(db, _keys(vm, []), "VirtualMachine")


def delete_vm(db: Session, actor: User, vm_id: int) -> None:
    """Delete the VM and its disks; its backups stay, restorable by their owner to a new path (as in OnApp)."""
    require_admin(actor)
    vm = get_vm(db, actor, vm_id)
    if vm.locked:
        raise Conflict("VirtualMachine is locked by a running transaction")
    keys = _keys(vm, vm.disks)
    for disk in vm.disks:
        db.delete(disk)
    db.delete(vm)
    locks.commit_unless_busy(db, keys, "VirtualMachine")


def list_disks(db: Session, actor: User, vm_id: int | None = None) -> list[Disk]:
    if vm_id is not None:
        get_vm(db, actor, vm_id)
        return inventory.disks(db, vm_id=vm_id)
    return inventory.disks(db, owner_id=owner_scope(actor))


def get_disk(db: Session, actor: User, disk_id: int) -> Disk:
    return find_owned(db, actor, Disk, disk_id, "Disk", owner_id=lambda d: d.virtual_machine.user_id)


_IMAGE_ROOTS = "vmbackup.image_roots"  # key in Session.info


def bind_image_roots(sessions: sessionmaker[Session], roots: Sequence[Path]) -> None:
    """Make every session of ``sessions`` check disk image paths against ``roots`` (settings.image_roots).

    Carried by the sessions rather than passed to each call, so the worker's tasks re-check paths with the same
    policy as the API without a global setting."""
    sessions.configure(info={**sessions.kw.get("info", {}), _IMAGE_ROOTS: tuple(roots)})


def image_roots(db: Session) -> tuple[Path, ...]:
    return tuple(db.info.get(_IMAGE_ROOTS, ()))


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def image_path_problem(path: str, roots: Sequence[Path]) -> str | None:
    """Why ``path`` may not be a disk image, or None. With ``roots``, the path as written and the path with every
    symlink resolved must both lie in a root (so a link planted in an image directory cannot point a restore at
    /etc/shadow or /dev/sda). No roots: any absolute path, as before VMBACKUP_IMAGE_ROOTS existed. Either way an
    existing path must be a regular file or a block device (a FIFO would hang the worker that opens it); one
    that does not exist yet is fine (a restore creates it)."""
    if "\0" in path:  # no file system takes it, and os calls raise ValueError on it
        return "must not contain a NUL byte"
    p = Path(path)
    if not p.is_absolute() or ".." in p.parts:
        return "must be an absolute path without '..'"
    if roots:
        shown = ", ".join(str(r) for r in roots)
        if not _under(Path(os.path.normpath(p)), roots):
            return f"must be inside an allowed image root ({shown})"
        real = Path(os.path.realpath(p))
        if not _under(real, [Path(os.path.realpath(r)) for r in roots]):
            try:
                block = stat.S_ISBLK(os.stat(real).st_mode)
            except OSError:
                block = False
            kind = "a block device" if block else "a symlink"
            return f"is {kind} resolving to {real}, outside the allowed image roots ({shown})"
    return _kind_problem(p)


def _kind_problem(p: Path) -> str | None:
    try:
        mode = os.stat(p).st_mode  # through symlinks: what a take or restore would open
    except OSError:
        return None  # missing (a restore may create it) or not ours to look at: the task reports it
    if is_image_mode(mode):
        return None
    return f"is {file_kind(mode)}: {NOT_AN_IMAGE}"


def _check_image_path(db: Session, path: str | None) -> None:
    if path is None:
        return
    problem = image_path_problem(path, image_roots(db))
    if problem:
        raise Invalid(fields={"image_path": [problem]})


def create_disk(db: Session, actor: User, vm_id: int, data: dict[str, Any]) -> Disk:
    require_admin(actor)
    find(db, VirtualMachine, vm_id, "VirtualMachine")
    _check_refs(db, data)
    _check_image_path(db, data.get("image_path"))
    disk = Disk(virtual_machine_id=vm_id, **data)
    db.add(disk)
    db.commit()
    return disk


def update_disk(db: Session, actor: User, disk_id: int, data: dict[str, Any]) -> None:
    require_admin(actor)
    disk = get_disk(db, actor, disk_id)
    _check_refs(db, data)
    _check_image_path(db, data.get("image_path"))
    apply(disk, data)
    locks.commit_unless_busy(db, [locks.disk_key(disk.id)], "Disk")


def delete_disk(db: Session, actor: User, disk_id: int) -> None:
    require_admin(actor)
    disk = get_disk(db, actor, disk_id)
    if disk.locked:
        raise Conflict("Disk is locked by a running transaction")
    key = locks.disk_key(disk.id)
    db.delete(disk)
    locks.commit_unless_busy(db, [key], "Disk")
