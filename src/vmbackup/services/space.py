"""Per-user backup space: the limit OnApp sells as a product (WHMCS ``onappbackupspace``), and the check takes meet.

``User.backup_space_limit`` is in GB (None: no limit), set by admins only (services/users.py). What a user uses is
the sum of their backups' ``backup_size``: the kB each one added to storage after deduplication, which is what the
storage really holds for them.

A take is refused, before anything is queued, when the owner's stored backups already use the limit or more, or
when they plus an estimate of the new backup would exceed it. The estimate is the kB the newest built backup of the
same target added (same disk for a normal backup, same VM for an incremental one): the store deduplicates, so a
backup adds about what the one before it added, and an incremental of a mostly unchanged VM is not refused for the
size of its disks. A target never backed up before is estimated at its disks' ``disk_size``: its first backup may
store up to that much (incompressible data), and a limit is what the seller promised not to exceed.

Whose space: the owner of the VM, who will own the backup, whoever asks (an admin's take for a user counts against
the user's space, as does an auto-backup). Takes queued but not yet built count nothing until they are built.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from vmbackup.db.models import Disk, User, VirtualMachine
from vmbackup.db.queries import backups as bq
from vmbackup.errors import Conflict

KB_PER_GB = 1024 * 1024


def used_kb(db: Session, user_id: int) -> int:
    return used_kb_of(db, [user_id]).get(user_id, 0)


def used_kb_of(db: Session, user_ids: list[int]) -> dict[int, int]:
    """kB used by each of ``user_ids`` (a listing of users: one query); absent users use nothing."""
    return bq.kb_used_per_user(db, user_ids) if user_ids else {}


def check_normal(db: Session, disk: Disk) -> None:
    """Refuse (Conflict, 422) a normal backup of ``disk`` that would go over its owner's backup space."""
    last = bq.last_built_kb(db, disk_id=disk.id)
    _check(db, disk.virtual_machine, disk.disk_size * KB_PER_GB if last is None else last)


def check_incremental(db: Session, vm: VirtualMachine, disks: list[Disk]) -> None:
    """Refuse (Conflict, 422) an incremental backup of ``vm`` that would go over its owner's backup space."""
    last = bq.last_built_kb(db, vm_id=vm.id)
    _check(db, vm, sum(d.disk_size for d in disks) * KB_PER_GB if last is None else last)


def _check(db: Session, vm: VirtualMachine, estimate_kb: int) -> None:
    owner = db.get(User, vm.user_id)
    if owner is None or owner.backup_space_limit is None:
        return
    limit_kb = owner.backup_space_limit * KB_PER_GB
    used = used_kb(db, owner.id)
    if used >= limit_kb or used + estimate_kb > limit_kb:
        raise Conflict(
            f"Backup cannot be made at this time: the user's backup space limit ({owner.backup_space_limit} GB) "
            f"is used up ({gb(used)} GB used, this backup needs about {gb(estimate_kb)} GB)"
        )


def gb(kb: int) -> float:
    """kB as GB with two decimals, as the user JSON shows usage."""
    return round(kb / KB_PER_GB, 2)
