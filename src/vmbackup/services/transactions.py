"""Transactions: the record of every background action (take, restore, convert, delete)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from vmbackup.db.models import Transaction, User
from vmbackup.db.queries import transactions as q
from vmbackup.services import fleet, routing
from vmbackup.services.access import find_owned, owner_scope
from vmbackup.services.machines import get_vm

DEFAULT_PER_PAGE = 10  # OnApp: "return the last 10 transactions"
MAX_PER_PAGE = 1000


def create(
    db: Session,
    *,
    action: str,
    parent_type: str,
    parent_id: int,
    vm_id: int | None,
    user_id: int,
    lock_keys: list[str],
    params: dict[str, Any] | None = None,
) -> Transaction:
    queue = routing.queue_for(db, action, parent_type, parent_id, vm_id)
    tx = Transaction(
        action=action,
        parent_type=parent_type,
        parent_id=parent_id,
        associated_object_type="VirtualMachine",
        associated_object_id=vm_id,
        user_id=user_id,
        lock_keys=lock_keys,
        params=params or {},
        status="pending",
        queue=queue,
        # No live worker for its queue: said at once, not left for the owner to wonder (fleet.note_waiting says
        # it later for a worker that dies after this).
        log_output=fleet.waiting_log(db, queue),
    )
    db.add(tx)
    db.flush()
    return tx


def list_page(
    db: Session, actor: User, *, page: int = 1, per_page: int = DEFAULT_PER_PAGE, vm_id: int | None = None
) -> list[Transaction]:
    if vm_id is not None:
        get_vm(db, actor, vm_id)
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    offset = (max(page, 1) - 1) * per_page
    return q.page(db, user_id=owner_scope(actor), vm_id=vm_id, offset=offset, limit=per_page)


def get(db: Session, actor: User, tx_id: int) -> Transaction:
    return find_owned(db, actor, Transaction, tx_id, "Transaction")
