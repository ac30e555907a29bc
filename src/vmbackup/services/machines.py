"""Virtual machines and their disks."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import (
    Backup,
    DataStore,
    Disk,
    Hypervisor,
    ImageTemplate,
    IpAddress,
    Transaction,
    User,
    VirtualMachine,
)
from vmbackup.db.queries import backups as backup_queries
from vmbackup.db.queries import fleet, inventory
from vmbackup.engine.source import NOT_AN_IMAGE, file_kind, is_image_mode
from vmbackup.errors import Conflict, Invalid, NotFound
from vmbackup.services import locks, routing
from vmbackup.services.access import apply, find, find_owned, owner_scope, require_admin


def list_vms(db: Session, actor: User, owner_id: int | None = None) -> list[VirtualMachine]:
    if owner_id is not None:
        find_owned(db, actor, User, owner_id, "User", owner_id=lambda u: u.id)
        return inventory.vms(db, owner_id)
    return inventory.vms(db, owner_scope(actor))


def get_vm(db: Session, actor: User, vm_id: int) -> VirtualMachine:
    return find_owned(db, actor, VirtualMachine, vm_id, "VirtualMachine")


_IDENTIFIER = re.compile(r"[a-z0-9]{14}")


def is_identifier(text: str) -> bool:
    """Whether ``text`` has the form of an identifier (db/base.py ``new_identifier``)."""
    return _IDENTIFIER.fullmatch(text) is not None


def resolve_vm_id(db: Session, identifier: str) -> int | None:
    """The id of the VM whose 14-character ``identifier`` this is (OnApp clients put it in URLs), or None. Who may
    see that VM is for the caller of ``get_vm`` to decide, as for a numeric id."""
    if not is_identifier(identifier):
        return None
    return fleet.vm_id_of(db, identifier)


def _check_refs(db: Session, data: dict[str, Any]) -> None:
    for field, model, label in (
        ("user_id", User, "User"),
        ("template_id", ImageTemplate, "Template"),
        ("data_store_id", DataStore, "Data store"),
        ("hypervisor_id", Hypervisor, "Hypervisor"),
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
    moved = "hypervisor_id" in data and data["hypervisor_id"] != vm.hypervisor_id
    apply(vm, data)
    if moved:
        # In the same commit: a pending take or restore must not be claimed by the old hypervisor's worker, which
        # can no longer reach the disks.
        db.flush()
        routing.reroute_vm(db, vm.id)
    locks.commit_unless_busy(db, _keys(vm, []), "VirtualMachine")


def delete_vm(db: Session, actor: User, vm_id: int, destroy_all_backups: bool = False) -> list[Transaction]:
    """Delete the VM, its disks and addresses. Its backups stay, restorable by their owner to a new path (as in
    OnApp), unless ``destroy_all_backups``: then the deletion of each is queued in the same commit (returned, to
    hand to the workers); one busy with another action (a restore, a convert) is kept."""
    require_admin(actor)
    vm = get_vm(db, actor, vm_id)
    if vm.locked:
        raise Conflict("VirtualMachine is locked by a running transaction")
    keys = _keys(vm, vm.disks)
    queued: list[Transaction] = []
    if destroy_all_backups:
        # Imported here: services/actions.py builds on this module (get_vm, get_disk).
        from vmbackup.services.actions import queue_destroy

        for row in backup_queries.for_vm(db, vm.id, vm.identifier):
            backup = db.get(Backup, row["id"])
            tx = queue_destroy(db, backup) if backup is not None else None
            if tx is not None:
                queued.append(tx)
    for disk in vm.disks:
        db.delete(disk)
    db.delete(vm)
    locks.commit_unless_busy(db, keys, "VirtualMachine")
    return queued


def list_ips(db: Session, actor: User, vm_id: int) -> tuple[VirtualMachine, list[IpAddress]]:
    vm = get_vm(db, actor, vm_id)
    return vm, list(vm.ip_addresses)


def _ip(field: str, text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise Invalid(fields={field: ["is not a valid IP address"]}) from None


def _address_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The stored form of an address: written the canonical way (so "10.0.0.05" and "10.0.0.5" are one address),
    with the network and broadcast derived from the prefix unless given."""
    address = _ip("address", data["address"])
    out = {**data, "address": str(address), "ipv4": address.version == 4}
    prefix = data.get("prefix")
    if prefix is not None:
        if prefix > address.max_prefixlen:
            raise Invalid(fields={"prefix": [f"must be at most {address.max_prefixlen} for {address}"]})
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        if out.get("network_address") is None:
            out["network_address"] = str(network.network_address)
        if out.get("broadcast") is None and address.version == 4:
            out["broadcast"] = str(network.broadcast_address)
    for field in ("gateway", "network_address", "broadcast"):
        if out.get(field) is not None:
            other = _ip(field, out[field])
            if other.version != address.version:
                raise Invalid(fields={field: [f"must be an IPv{address.version} address like the address"]})
            out[field] = str(other)
    return out


def add_ip(db: Session, actor: User, vm_id: int, data: dict[str, Any]) -> tuple[VirtualMachine, IpAddress]:
    require_admin(actor)
    vm = get_vm(db, actor, vm_id)
    fields = _address_fields(data)
    taken = Conflict(f"IP address {fields['address']} is already assigned")
    if fleet.ip_by_address(db, fields["address"]) is not None:
        raise taken
    ip = IpAddress(virtual_machine_id=vm.id, **fields)
    db.add(ip)
    try:
        db.commit()
    except IntegrityError:  # assigned by a concurrent request since the check above (the column is unique)
        db.rollback()
        raise taken from None
    return vm, ip


def delete_ip(db: Session, actor: User, vm_id: int, ip_id: int) -> None:
    require_admin(actor)
    vm = get_vm(db, actor, vm_id)
    ip = db.get(IpAddress, ip_id)
    if ip is None or ip.virtual_machine_id != vm.id:
        raise NotFound("IP address not found")
    db.delete(ip)
    db.commit()


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
