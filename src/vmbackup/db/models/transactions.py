from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, UTCDateTime, new_identifier


class Transaction(Timestamps, Base):
    """The single record of a background action; the job queue only delivers "run transaction N"."""

    __tablename__ = "transactions"
    __table_args__ = (
        Index("ix_transactions_status", "status", "id"),
        Index("ix_transactions_status_queue", "status", "queue", "id"),
        Index("ix_transactions_vm", "associated_object_id", "id"),
        Index("ix_transactions_user", "user_id", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    action: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending running complete failed cancelled
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_type: Mapped[str] = mapped_column(String(32))
    parent_id: Mapped[int] = mapped_column(Integer)
    # The VM the action is about: OnApp lists a VM's transactions through this pair.
    associated_object_type: Mapped[str] = mapped_column(String(32), default="VirtualMachine")
    associated_object_id: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=10)
    allowed_cancel: Mapped[bool] = mapped_column(Boolean, default=False)
    scheduled: Mapped[bool] = mapped_column(Boolean, default=False)
    pid: Mapped[int | None] = mapped_column(Integer)
    # Which workers may run it (services/routing.py): "hypervisor-3" (takes and restores: the disks are there),
    # "backup_server-2" (work on stored data only), or "default" (no hypervisor or server to go to). Also the
    # procrastinate queue its job is deferred to.
    queue: Mapped[str] = mapped_column(String(64), default="default")
    # What the transaction touches ("vm:7", "disk:9", "backup:12"): a worker runs it only after taking every one of
    # these keys in the locks table (`Lock`), so two transactions sharing a key never run at once.
    lock_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    # host:pid of the worker running it; with heartbeat_at, how a stalled worker is recognised.
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    start_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    log_output: Mapped[str] = mapped_column(Text, default="")
    # What `log_output` shows in place of admin-only text (placeholder -> the text): image and storage paths are
    # not the VM owner's to see (F13); admins get them back when the log is shown to them.
    log_secrets: Mapped[dict[str, str] | None] = mapped_column(JSON)

    @property
    def lock_key(self) -> str:
        """The key job delivery serialises on (procrastinate's one ``lock``); the worker's claim takes them all."""
        return self.lock_keys[0] if self.lock_keys else ""


class Lock(Base):
    """A held lock key: one row per key, so taking a key is an INSERT that the primary key makes atomic on SQLite
    and PostgreSQL alike. Held by a running transaction (``transaction_id``) for its whole run, or by an API
    request for the length of its database transaction (``transaction_id`` None, never committed)."""

    __tablename__ = "locks"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    transaction_id: Mapped[int | None] = mapped_column(Integer, index=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
