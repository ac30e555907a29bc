"""Where VMs run and who runs the work: hypervisors and their zones, the backup servers joined to them, the IP
addresses assigned to VMs, and the workers that heartbeat for hypervisors and backup servers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, UTCDateTime, new_identifier


class HypervisorZone(Timestamps, Base):
    """A group of hypervisors (OnApp's root key: ``hypervisor_group``)."""

    __tablename__ = "hypervisor_zones"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    label: Mapped[str] = mapped_column(String(255))
    location_group_id: Mapped[int | None] = mapped_column(Integer)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    server_type: Mapped[str] = mapped_column(String(32), default="virtual")


class Hypervisor(Timestamps, Base):
    """A host that runs VMs; a disk is reachable only on its VM's hypervisor. ``online`` is not stored: it is
    whether a worker serving this hypervisor heartbeats (services/fleet.py)."""

    __tablename__ = "hypervisors"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    label: Mapped[str] = mapped_column(String(255))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    hypervisor_type: Mapped[str] = mapped_column(String(32), default="kvm")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    hypervisor_group_id: Mapped[int | None] = mapped_column(
        ForeignKey("hypervisor_zones.id", ondelete="SET NULL"), index=True
    )


# target_join_type as OnApp spells it, for each kind of target a backup server is joined to.
JOINED_TO_HYPERVISOR = "Hypervisor"
JOINED_TO_ZONE = "HypervisorGroup"


class BackupServerJoin(Timestamps, Base):
    """A backup server attached to a hypervisor or a hypervisor zone: where that hypervisor's backups may go."""

    __tablename__ = "backup_server_joins"
    __table_args__ = (
        UniqueConstraint("backup_server_id", "target_join_type", "target_join_id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    backup_server_id: Mapped[int] = mapped_column(ForeignKey("backup_servers.id", ondelete="CASCADE"), index=True)
    target_join_type: Mapped[str] = mapped_column(String(32))  # JOINED_TO_HYPERVISOR | JOINED_TO_ZONE
    target_join_id: Mapped[int] = mapped_column(Integer)


class IpAddress(Timestamps, Base):
    """An address an admin assigned to a VM (OnApp's ``ip_address`` inside a VM's ``ip_addresses``)."""

    __tablename__ = "ip_addresses"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[int | None] = mapped_column(Integer)
    gateway: Mapped[str | None] = mapped_column(String(64))
    broadcast: Mapped[str | None] = mapped_column(String(64))
    network_address: Mapped[str | None] = mapped_column(String(64))
    ipv4: Mapped[bool] = mapped_column(Boolean, default=True)
    ip_net_id: Mapped[int | None] = mapped_column(Integer)
    ip_range_id: Mapped[int | None] = mapped_column(Integer)
    network_id: Mapped[int | None] = mapped_column(Integer)
    virtual_machine_id: Mapped[int] = mapped_column(ForeignKey("virtual_machines.id", ondelete="CASCADE"), index=True)


class WorkerHeartbeat(Base):
    """A running worker process and what it serves (no ids: all it may run), kept fresh by its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid, as in transactions.worker
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    hypervisor_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    backup_server_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # 0..100 as the worker's host last reported it (OnApp's backup server ``cpu_idle``); None: not measured.
    cpu_idle: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
