"""What placement reads (services/placement.py): the enabled backup servers a take may go to, each with the kB its
backups use and the takes queued on it, in one query."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from vmbackup.db.models import Backup, BackupServer, BackupServerJoin, Transaction
from vmbackup.db.models.fleet import JOINED_TO_HYPERVISOR, JOINED_TO_ZONE
from vmbackup.db.queries.fleet import joined_to

TAKE_ACTIONS = ("take_backup", "take_incremental_backup")


@dataclass(frozen=True)
class Candidate:
    server: BackupServer
    used_kb: int
    takes: int  # take transactions pending or running whose backup goes to this server


def candidates(db: Session, *, hypervisor_id: int | None, zone_id: int | None) -> list[Candidate]:
    """Enabled backup servers joined to the hypervisor or to its zone (every enabled one when ``hypervisor_id`` is
    None), by id, with their usage and queued takes: one statement however many servers there are."""
    used = (
        select(Backup.backup_server_id.label("server_id"), func.sum(Backup.backup_size).label("kb"))
        .group_by(Backup.backup_server_id)
        .subquery()
    )
    takes = (
        select(Backup.backup_server_id.label("server_id"), func.count().label("n"))
        .select_from(Transaction)
        .join(Backup, and_(Transaction.parent_type == "Backup", Transaction.parent_id == Backup.id))
        .where(Transaction.action.in_(TAKE_ACTIONS), Transaction.status.in_(("pending", "running")))
        .group_by(Backup.backup_server_id)
        .subquery()
    )
    q = (
        select(BackupServer, func.coalesce(used.c.kb, 0), func.coalesce(takes.c.n, 0))
        .outerjoin(used, used.c.server_id == BackupServer.id)
        .outerjoin(takes, takes.c.server_id == BackupServer.id)
        .where(BackupServer.enabled.is_(True))
        .order_by(BackupServer.id)
    )
    if hypervisor_id is not None:
        targets = [joined_to(JOINED_TO_HYPERVISOR, hypervisor_id)]
        if zone_id is not None:
            targets.append(joined_to(JOINED_TO_ZONE, zone_id))
        q = q.where(BackupServer.id.in_(select(BackupServerJoin.backup_server_id).where(or_(*targets))))
    return [Candidate(server, int(kb), int(n)) for server, kb, n in db.execute(q)]
