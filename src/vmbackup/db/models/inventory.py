"""What the provider runs: templates, data stores, backup servers, VMs and their disks."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, new_identifier
from vmbackup.db.models.fleet import Hypervisor, IpAddress


class ImageTemplate(Timestamps, Base):
    __tablename__ = "image_templates"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    label: Mapped[str] = mapped_column(String(255))
    file_name: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32), default="active")
    version: Mapped[str | None] = mapped_column(String(32))
    operating_system: Mapped[str] = mapped_column(String(32), default="linux")
    operating_system_distro: Mapped[str | None] = mapped_column(String(64))
    operating_system_arch: Mapped[str] = mapped_column(String(16), default="x64")
    min_disk_size: Mapped[int] = mapped_column(Integer, default=1)
    min_memory_size: Mapped[int] = mapped_column(Integer, default=128)
    allowed_swap: Mapped[bool] = mapped_column(Boolean, default=True)
    allowed_hot_migrate: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_resize_without_reboot: Mapped[bool] = mapped_column(Boolean, default=False)
    template_size: Mapped[int | None] = mapped_column(BigInteger)  # kB
    checksum: Mapped[str | None] = mapped_column(String(128))
    # Set for templates made by converting a backup: who owns it and where its file lives.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    backup_server_id: Mapped[int | None] = mapped_column(ForeignKey("backup_servers.id", ondelete="SET NULL"))
    parent_backup_id: Mapped[int | None] = mapped_column(Integer)


class DataStore(Timestamps, Base):
    __tablename__ = "data_stores"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    label: Mapped[str] = mapped_column(String(255))
    data_store_type: Mapped[str] = mapped_column(String(32), default="lvm")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class BackupServerZone(Timestamps, Base):
    """A group of backup servers (OnApp's root key: ``backup_server_group``)."""

    __tablename__ = "backup_server_zones"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    label: Mapped[str] = mapped_column(String(255))
    location_group_id: Mapped[int | None] = mapped_column(Integer)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    server_type: Mapped[str] = mapped_column(String(32), default="virtual")


class BackupServer(Timestamps, Base):
    __tablename__ = "backup_servers"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(255))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    backup_ip_address: Mapped[str | None] = mapped_column(String(64))
    capacity: Mapped[int] = mapped_column(BigInteger, default=0)  # GB; 0 means no limit set
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Where this server's bytes live: a local (or mounted) directory for now.
    storage_path: Mapped[str] = mapped_column(String(1024))
    backup_server_group_id: Mapped[int | None] = mapped_column(
        ForeignKey("backup_server_zones.id", ondelete="SET NULL"), index=True
    )


class VirtualMachine(Timestamps, Base):
    __tablename__ = "virtual_machines"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    # Indexed: clients address VMs by identifier as often as by id (api/deps.py VmId).
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier, index=True)
    label: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("image_templates.id"))
    memory: Mapped[int] = mapped_column(Integer, default=512)  # MB
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    booted: Mapped[bool] = mapped_column(Boolean, default=False)
    built: Mapped[bool] = mapped_column(Boolean, default=True)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    cpu_shares: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(32), default="delivered")
    recovery_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    storage_server_type: Mapped[str] = mapped_column(String(32), default="other")
    # Where it runs: its disks are reachable only there, so that hypervisor's worker takes and restores them.
    hypervisor_id: Mapped[int | None] = mapped_column(ForeignKey("hypervisors.id"), index=True)

    template: Mapped[ImageTemplate] = relationship(lazy="joined")
    hypervisor: Mapped[Hypervisor | None] = relationship(lazy="joined")
    # They go with the VM: the ORM deletes those it has loaded, the database's ON DELETE CASCADE the others.
    ip_addresses: Mapped[list[IpAddress]] = relationship(
        order_by="IpAddress.id", cascade="all, delete-orphan", passive_deletes=True
    )
    disks: Mapped[list[Disk]] = relationship(back_populates="virtual_machine", order_by="Disk.id")


class Disk(Timestamps, Base):
    __tablename__ = "disks"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    label: Mapped[str] = mapped_column(String(255))
    disk_size: Mapped[int] = mapped_column(Integer, default=1)  # GB
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    is_swap: Mapped[bool] = mapped_column(Boolean, default=False)
    data_store_id: Mapped[int] = mapped_column(ForeignKey("data_stores.id"))
    virtual_machine_id: Mapped[int] = mapped_column(ForeignKey("virtual_machines.id"), index=True)
    # Absolute path of the raw image file or block device; only admins see or set it.
    image_path: Mapped[str | None] = mapped_column(String(1024))
    built: Mapped[bool] = mapped_column(Boolean, default=True)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    has_autobackups: Mapped[bool] = mapped_column(Boolean, default=False)
    mount_point: Mapped[str | None] = mapped_column(String(255))
    file_system: Mapped[str | None] = mapped_column(String(32))

    virtual_machine: Mapped[VirtualMachine] = relationship(back_populates="disks")
    data_store: Mapped[DataStore] = relationship(lazy="joined")
