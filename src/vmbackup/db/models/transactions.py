from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vmbackup.db.base import Base, Timestamps, UTCDateTime, new_identifier


class Transaction(Timestamps, Base):
    """The single record of a background action; the job queue only delivers "run transaction N"."""

    __tablename__ = "transactions"
    __table_args__ = (
        Index("ix_transactions_status", "status", "id"),
        Index("ix_transactions_vm", "associated_object_id", "id"),
        Index("ix_transactions_user", "user_id", "id"),
        Index("ix_transactions_lock", "lock_key", "status"),
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
    # One transaction per lock key runs at a time (e.g. "vm:7": takes and restores of one VM's disks).
    lock_key: Mapped[str] = mapped_column(String(64), default="")
    # host:pid of the worker running it; with heartbeat_at, how a stalled worker is recognised.
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    start_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    log_output: Mapped[str] = mapped_column(Text, default="")
