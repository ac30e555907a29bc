"""Which workers may run a transaction: its queue.

A disk is reachable only on its VM's hypervisor, so takes and restores go to that hypervisor's queue; work that
touches nothing but stored data (delete, convert, a template's removal) goes to its backup server's queue. A
worker started with ``--hypervisor``/``--backup-server`` serves only those queues; one started with neither serves
every queue, "default" included (the embedded default: one in-process worker runs everything). On PostgreSQL the
queue is also the procrastinate queue the transaction's job is deferred to.

The queue is decided when the transaction is queued and again whenever the VM moves (``reroute_vm``), so a VM
moved to another hypervisor is backed up by that hypervisor's worker from then on, pending work included.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vmbackup.db.models import Backup, ImageTemplate, Transaction, VirtualMachine

DEFAULT = "default"
# Where the work is: the VM's disks (its hypervisor's queue) for these; the stored data for every other action.
ON_HYPERVISOR = frozenset({"take_backup", "take_incremental_backup", "restore_backup"})


def hypervisor_queue(hypervisor_id: int) -> str:
    return f"hypervisor-{hypervisor_id}"


def backup_server_queue(server_id: int) -> str:
    return f"backup_server-{server_id}"


def queues_of(hypervisor_ids: list[int], backup_server_ids: list[int]) -> list[str] | None:
    """The queues a worker started with these ids serves; None: every queue."""
    if not hypervisor_ids and not backup_server_ids:
        return None
    return [*map(hypervisor_queue, hypervisor_ids), *map(backup_server_queue, backup_server_ids)]


def storage_of(queues: list[str] | None, backup_server_ids: list[int]) -> list[int] | None:
    """The backup servers whose storage a worker serving ``queues`` cleans at start (None: every one, for a worker
    serving everything; a dedicated one only its own: another's storage may not even be mounted on its host)."""
    return None if queues is None else backup_server_ids


def describe(queue: str) -> str:
    """For logs: 'hypervisor 3', 'backup server 2', or 'any worker'."""
    kind, _, number = queue.rpartition("-")
    if kind == "hypervisor":
        return f"hypervisor {number}"
    if kind == "backup_server":
        return f"backup server {number}"
    return "any worker"


def _vm_queue(db: Session, vm_id: int | None) -> str:
    hypervisor_id = db.scalar(select(VirtualMachine.hypervisor_id).where(VirtualMachine.id == vm_id)) if vm_id else None
    return hypervisor_queue(hypervisor_id) if hypervisor_id else DEFAULT


def _server_queue(db: Session, parent_type: str, parent_id: int) -> str:
    model = Backup if parent_type == "Backup" else ImageTemplate if parent_type == "ImageTemplate" else None
    server_id = db.scalar(select(model.backup_server_id).where(model.id == parent_id)) if model else None
    return backup_server_queue(server_id) if server_id else DEFAULT


def queue_for(db: Session, action: str, parent_type: str, parent_id: int, vm_id: int | None) -> str:
    if action in ON_HYPERVISOR:
        return _vm_queue(db, vm_id)
    return _server_queue(db, parent_type, parent_id)


def reroute_vm(db: Session, vm_id: int) -> int:
    """After a VM moved: its pending takes and restores go to its new hypervisor's queue. Returns how many."""
    stmt = (
        update(Transaction)
        .where(
            Transaction.associated_object_id == vm_id,
            Transaction.status == "pending",
            Transaction.action.in_(ON_HYPERVISOR),
        )
        .values(queue=_vm_queue(db, vm_id))
    )
    return db.execute(stmt).rowcount  # type: ignore[attr-defined,no-any-return]
