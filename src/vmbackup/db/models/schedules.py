"""Auto-backups: presets (defaults applied on first enable), schedules per disk or VM, and their run logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, UTCDateTime


class AutobackupPreset(Timestamps, Base):
    __tablename__ = "autobackup_presets"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    period: Mapped[str] = mapped_column(String(16))  # days | weeks | months | years
    duration: Mapped[int] = mapped_column(Integer, default=1)
    rotation_period: Mapped[int] = mapped_column(Integer, default=1)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Schedule(Timestamps, Base):
    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_target", "target_type", "target_id"),
        Index("ix_schedules_due", "status", "start_at"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(32), default="autobackup")
    target_type: Mapped[str] = mapped_column(String(32))  # Disk | VirtualMachine
    target_id: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(Integer)
    duration: Mapped[int] = mapped_column(Integer, default=1)
    period: Mapped[str] = mapped_column(String(16))
    rotation_period: Mapped[int] = mapped_column(Integer, default=1)
    # Runs are counted from the anchor (see services/periods.py); start_at is the next one.
    anchor_at: Mapped[datetime] = mapped_column(UTCDateTime)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="enabled")  # enabled | disabled
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ScheduleLog(Timestamps, Base):
    __tablename__ = "schedule_logs"
    __table_args__ = (Index("ix_schedule_logs_schedule", "schedule_id", "id"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # queued | complete | failed | skipped
    transaction_id: Mapped[int | None] = mapped_column(Integer)
    log_output: Mapped[str] = mapped_column(Text, default="")
