from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, UTCDateTime, new_identifier


class Backup(Timestamps, Base):
    """A backup record. Its target (disk, VM) may be deleted later; the backup stays, so no foreign keys there."""

    __tablename__ = "backups"
    __table_args__ = (
        # The hot path: one VM's backups of one kind, in id order.
        Index("ix_backups_vm_type_id", "virtual_machine_id", "backup_type", "id"),
        Index("ix_backups_disk_id", "disk_id", "id"),
        Index("ix_backups_user_id", "user_id", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier, unique=True)
    backup_type: Mapped[str] = mapped_column(String(16))  # normal | incremental
    target_type: Mapped[str] = mapped_column(String(32))  # Disk | VirtualMachine
    target_id: Mapped[int] = mapped_column(Integer)
    disk_id: Mapped[int | None] = mapped_column(Integer)
    virtual_machine_id: Mapped[int] = mapped_column(Integer)
    # What the backup was taken of, by identifiers that are never reused (ids are not either since migration 0005,
    # but older databases may have reused some): a restore writes only to this VM and these disks. None: taken
    # before 0005 of a VM or disk that could not be told apart from a later one with the same id.
    vm_identifier: Mapped[str | None] = mapped_column(String(14))
    disk_identifier: Mapped[str | None] = mapped_column(String(14))  # normal backups: the one disk
    disk_identifiers: Mapped[dict[str, str] | None] = mapped_column(JSON)  # disk key (tasks.disk_key) -> identifier
    user_id: Mapped[int] = mapped_column(Integer)
    backup_server_id: Mapped[int | None] = mapped_column(ForeignKey("backup_servers.id"))
    backup_size: Mapped[int] = mapped_column(BigInteger, default=0)  # kB this backup added to storage
    built: Mapped[bool] = mapped_column(Boolean, default=False)
    built_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    marked_for_delete: Mapped[bool] = mapped_column(Boolean, default=False)
    initiated: Mapped[str] = mapped_column(String(16), default="manual")
    image_type: Mapped[str | None] = mapped_column(String(16))
    iqn: Mapped[str | None] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(Text)
    volume_id: Mapped[int | None] = mapped_column(Integer)
    # Copied from the VM, disk and template when the backup is taken.
    data_store_type: Mapped[str | None] = mapped_column(String(32))
    template_id: Mapped[int | None] = mapped_column(Integer)
    operating_system: Mapped[str | None] = mapped_column(String(32))
    operating_system_distro: Mapped[str | None] = mapped_column(String(64))
    min_disk_size: Mapped[int | None] = mapped_column(Integer)
    min_memory_size: Mapped[int | None] = mapped_column(Integer)
    allowed_swap: Mapped[bool] = mapped_column(Boolean, default=True)
    allowed_hot_migrate: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_resize_without_reboot: Mapped[bool] = mapped_column(Boolean, default=False)
    # Engine-side facts, not part of the OnApp shape.
    logical_size: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of the disk(s) backed up
    # The auto-backup schedule that made it (None: manual); retention only ever rotates these.
    schedule_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # Periodic integrity check: when last verified, and what it found (None: never checked).
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    integrity: Mapped[str | None] = mapped_column(String(16))  # ok | damaged
    integrity_log: Mapped[str | None] = mapped_column(Text)
