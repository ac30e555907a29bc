"""How much work one user may have queued: a cap on their pending and running transactions (F10).

Without it one user could queue hundreds of full backups in seconds and every other user's work would wait behind
them. The cap is ``settings.max_queued_per_user`` (``VMBACKUP_MAX_QUEUED_PER_USER``), carried by the sessions like
the image roots (`bind_limit`).

Who is counted and who is refused: every pending or running transaction of the user's objects counts, whoever
queued it; only the user's own requests are refused at the cap. An admin's requests are never refused (an operator
must be able to act on a flooded account), nor are the scheduler's auto-backups and retention deletes (a user's
manual flood must not cost them, or anyone, their scheduled backups).

Exact under concurrency: the count and the insert of the new transaction happen under a per-user lock held until
the request's commit (`db.queries.transactions.lock_user_queue`), so a burst of simultaneous requests queues
exactly up to the cap, never past it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import User
from vmbackup.db.queries import transactions as tq
from vmbackup.errors import TooManyQueued

DEFAULT_MAX_QUEUED = 20  # the default of settings.max_queued_per_user, for sessions not bound to settings
_LIMIT = "vmbackup.max_queued_per_user"  # key in Session.info


def bind_limit(sessions: sessionmaker[Session], limit: int) -> None:
    """Make every session of ``sessions`` apply ``limit`` (settings.max_queued_per_user; 0: no limit)."""
    sessions.configure(info={**sessions.kw.get("info", {}), _LIMIT: limit})


def limit_of(db: Session) -> int:
    return int(db.info.get(_LIMIT, DEFAULT_MAX_QUEUED))


def check_can_queue(db: Session, user: User, *, scheduled: bool = False) -> None:
    """Refuse (TooManyQueued, 422) when ``user`` already has as many transactions pending or running as allowed.

    Call it before queueing, in the database transaction that inserts the new one: from here to that commit,
    other requests of the same user wait, so the count stays true."""
    limit = limit_of(db)
    if scheduled or user.is_admin or limit == 0:
        return
    tq.lock_user_queue(db, user.id)
    queued = tq.queued_count(db, user.id)
    if queued >= limit:
        raise TooManyQueued(
            f"Too many transactions queued: {queued} of this user's transactions are pending or running "
            f"(at most {limit}); try again when some have finished"
        )
