"""Request schemas: one family (create / update) per resource. Field rules live here, not in handlers."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import available_timezones

from pydantic import AwareDatetime, EmailStr, Field, StringConstraints, field_validator

from vmbackup.api.body import InputModel
from vmbackup.api.presenters import BACKUP_FIELDS

Label = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Name = Annotated[str, StringConstraints(max_length=255)]
# Shorter columns (VARCHAR(64), VARCHAR(32)): PostgreSQL refuses a longer value, which was a 500 there.
Name64 = Annotated[str, StringConstraints(max_length=64)]
Name32 = Annotated[str, StringConstraints(max_length=32)]
Email = Annotated[EmailStr, StringConstraints(max_length=255)]
Zone = Annotated[str, StringConstraints(max_length=64)]
Id = Annotated[int, Field(ge=1, le=2**31 - 1)]
Size = Annotated[int, Field(ge=0, le=2**40)]  # for BIGINT columns
# For INTEGER columns: PostgreSQL refuses a larger value ("integer out of range", a 500 found by fuzzing it).
Amount = Annotated[int, Field(ge=0, le=2**31 - 1)]
Path = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=255)]
Login = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.@+-]+$")]


def unchanged() -> Any:
    """Default of an update attribute whose column cannot be null: absent keeps the stored value, while an explicit
    null is refused by the attribute's type (422 naming it) instead of reaching the database's NOT NULL (a 500)."""
    return Field(default=None)


class _TimeZone(InputModel):
    @field_validator("time_zone", check_fields=False)
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None and v not in available_timezones():
            raise ValueError("is not a known time zone")
        return v


class UserCreate(_TimeZone):
    login: Login
    email: Email
    password: Password
    first_name: Name | None = None
    last_name: Name | None = None
    role: Literal["user", "admin"] = "user"
    time_zone: Zone = "UTC"
    backup_space_limit: Amount | None = None  # GB; None: no limit (services/space.py)


class UserUpdate(_TimeZone):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {
        "status",
        "roles",
        "locale",
        "api_key_set",
        "used_backup_space",
        "backup_space_available",
    }
    login: Login = unchanged()
    email: Email = unchanged()
    password: Password = unchanged()
    first_name: Name | None = None
    last_name: Name | None = None
    role: Literal["user", "admin"] = unchanged()
    time_zone: Zone = unchanged()
    backup_space_limit: Amount | None = None  # admins only; null lifts the limit


class TemplateCreate(InputModel):
    label: Label
    operating_system: Literal["linux", "windows", "freebsd"] = "linux"
    operating_system_distro: Name64 | None = None
    operating_system_arch: Literal["x64", "x86"] = "x64"
    min_disk_size: Amount = 1
    min_memory_size: Amount = 128
    allowed_swap: bool = True
    allowed_hot_migrate: bool = False
    allow_resize_without_reboot: bool = False
    file_name: Name | None = None
    version: Name32 | None = None


class DataStoreCreate(InputModel):
    label: Label
    data_store_type: Literal["lvm", "vmware", "solidfire", "is", "nfs", "local"] = "lvm"
    enabled: bool = True


class DataStoreUpdate(InputModel):
    label: Label = unchanged()
    data_store_type: Literal["lvm", "vmware", "solidfire", "is", "nfs", "local"] = unchanged()
    enabled: bool = unchanged()


class BackupServerCreate(InputModel):
    """OnApp's fields; ``storage_path`` is vmbackup's own and optional (absent: a directory under the data dir)."""

    label: Label
    ip_address: Name64 | None = None
    backup_ip_address: Name64 | None = None
    capacity: Size = 0
    enabled: bool = True
    backup_server_group_id: Id | None = None
    # OnApp 6.1's flag for a server on its integrated storage: accepted so its clients' bodies pass, not stored.
    integrated_storage: bool = Field(default=False, exclude=True)
    storage_path: Path | None = None


class BackupServerUpdate(InputModel):
    # What a GET shows but a PUT does not change: the zone (attach/detach does) and what is measured or fixed.
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {
        "backup_server_group_id",
        "distro",
        "cpu_idle",
        "integrated_storage",
    }
    label: Label = unchanged()
    ip_address: Name64 | None = None
    backup_ip_address: Name64 | None = None
    capacity: Size = unchanged()
    enabled: bool = unchanged()
    storage_path: Path = unchanged()


CpuShares = Annotated[int, Field(ge=1, le=100_000)]


class VirtualMachineCreate(InputModel):
    label: Label
    hostname: Name | None = None
    user_id: Id
    template_id: Id
    memory: Annotated[int, Field(ge=1, le=2**24)] = 512
    cpus: Annotated[int, Field(ge=1, le=1024)] = 1
    cpu_shares: CpuShares = 1
    booted: bool = False
    hypervisor_id: Id | None = None


class VirtualMachineUpdate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {
        "template_label",
        "operating_system",
        "operating_system_distro",
        "built",
        "locked",
        "suspended",
        "min_disk_size",
        "allowed_swap",
        "allowed_hot_migrate",
        "allow_resize_without_reboot",
        "support_incremental_backups",
        # derived or OnApp's own state: shown, never set through the API
        "template_id",
        "state",
        "recovery_mode",
        "storage_server_type",
        "total_disk_size",
        "hypervisor_type",
        "deleted_at",
        "ip_addresses",
    }
    label: Label = unchanged()
    hostname: Name | None = None
    user_id: Id = unchanged()
    memory: Annotated[int, Field(ge=1, le=2**24)] = unchanged()
    cpus: Annotated[int, Field(ge=1, le=1024)] = unchanged()
    cpu_shares: CpuShares = unchanged()
    booted: bool = unchanged()
    hypervisor_id: Id | None = None  # moving the VM (null: on no hypervisor, backed up by any worker)


class DiskCreate(InputModel):
    label: Label
    disk_size: Annotated[int, Field(ge=1, le=2**20)]
    primary: bool = False
    is_swap: bool = False
    data_store_id: Id
    image_path: Path | None = None
    mount_point: Name | None = None
    file_system: Name32 | None = None


class DiskUpdate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {
        "virtual_machine_id",
        "built",
        "locked",
        "has_autobackups",
        "iqn",
        "volume_id",
    }
    label: Label = unchanged()
    disk_size: Annotated[int, Field(ge=1, le=2**20)] = unchanged()
    primary: bool = unchanged()
    is_swap: bool = unchanged()
    data_store_id: Id = unchanged()
    image_path: Path | None = None
    mount_point: Name | None = None
    file_system: Name32 | None = None


class BackupNote(InputModel):
    """Editing a backup: only the note is the user's; everything else a client echoes back is ignored."""

    # Every field a backup is shown with, except the note (the PHP wrapper echoes them all back on save()).
    read_only: ClassVar[frozenset[str]] = (frozenset(BACKUP_FIELDS) | {"integrity", "verified_at"}) - {"note"}
    note: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class BackupConvert(InputModel):
    read_only: ClassVar[frozenset[str]] = frozenset({"id"})  # the PHP wrapper sends the backup id along
    label: Label


Period = Literal["days", "weeks", "months", "years", "minutes"]  # "minutes" only where settings allow it
Count = Annotated[int, Field(ge=1, le=10_000)]


class PresetCreate(InputModel):
    period: Literal["days", "weeks", "months", "years"]
    duration: Count = 1
    rotation_period: Count = 1
    enabled: bool = True


class PresetUpdate(InputModel):
    period: Literal["days", "weeks", "months", "years"] = unchanged()
    duration: Count = unchanged()
    rotation_period: Count = unchanged()
    enabled: bool = unchanged()


class ScheduleCreate(InputModel):
    action: Literal["autobackup"] = "autobackup"
    target_id: Id | None = None  # taken from the path on the disk- and VM-scoped paths
    target_type: Literal["Disk", "VirtualMachine"] = "Disk"
    duration: Count = 1
    period: Period = "days"
    rotation_period: Count = 1
    start_at: AwareDatetime | None = None
    status: Literal["enabled", "disabled"] = "enabled"


class ScheduleUpdate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {
        "action",
        "target_id",
        "target_type",
        "failure_count",
        "user_id",
        "schedule_logs",
        "params",
    }
    duration: Count = unchanged()
    period: Period = unchanged()
    rotation_period: Count = unchanged()
    start_at: AwareDatetime | None = None  # null: start now
    status: Literal["enabled", "disabled"] = unchanged()


class ZoneCreate(InputModel):
    label: Label
    location_group_id: Id | None = None
    closed: bool = False
    server_type: Literal["virtual", "baremetal"] = "virtual"


class ZoneUpdate(InputModel):
    label: Label = unchanged()
    location_group_id: Id | None = None
    closed: bool = unchanged()
    server_type: Literal["virtual", "baremetal"] = unchanged()


# OnApp's hypervisor types (its hypervisor create form and API docs).
HypervisorType = Literal["kvm", "xen", "vmware", "hyperv", "vcloud", "baremetal"]


class HypervisorCreate(InputModel):
    label: Label
    ip_address: Name64 | None = None
    hypervisor_type: HypervisorType = "kvm"
    enabled: bool = True
    hypervisor_group_id: Id | None = None


class HypervisorUpdate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {"online"}
    label: Label = unchanged()
    ip_address: Name64 | None = None
    hypervisor_type: HypervisorType = unchanged()
    enabled: bool = unchanged()
    hypervisor_group_id: Id | None = None


class HypervisorZoneCreate(ZoneCreate):
    """The same fields as a backup server zone's (OnApp's groups share them)."""


class HypervisorZoneUpdate(ZoneUpdate):
    pass


class BackupServerJoinCreate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {"target_join_id", "target_join_type"}
    backup_server_id: Id


Address = Annotated[str, StringConstraints(min_length=1, max_length=64)]  # checked by services/machines.py


class IpAddressCreate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {"ipv4", "hypervisor_id", "user_id"}
    address: Address
    prefix: Annotated[int, Field(ge=0, le=128)] | None = None
    gateway: Address | None = None
    broadcast: Address | None = None
    network_address: Address | None = None
    ip_net_id: Id | None = None
    ip_range_id: Id | None = None
    network_id: Id | None = None
