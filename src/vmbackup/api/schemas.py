"""Request schemas: one family (create / update) per resource. Field rules live here, not in handlers."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal
from zoneinfo import available_timezones

from pydantic import AwareDatetime, EmailStr, Field, StringConstraints, field_validator

from vmbackup.api.body import InputModel

Label = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Name = Annotated[str, StringConstraints(max_length=255)]
Id = Annotated[int, Field(ge=1, le=2**31 - 1)]
Size = Annotated[int, Field(ge=0, le=2**40)]
Path = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=255)]
Login = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.@+-]+$")]


class _TimeZone(InputModel):
    @field_validator("time_zone", check_fields=False)
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None and v not in available_timezones():
            raise ValueError("is not a known time zone")
        return v


class UserCreate(_TimeZone):
    login: Login
    email: EmailStr
    password: Password
    first_name: Name | None = None
    last_name: Name | None = None
    role: Literal["user", "admin"] = "user"
    time_zone: str = "UTC"


class UserUpdate(_TimeZone):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {"status", "roles", "locale", "api_key_set"}
    login: Login | None = None
    email: EmailStr | None = None
    password: Password | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    role: Literal["user", "admin"] | None = None
    time_zone: str | None = None


class TemplateCreate(InputModel):
    label: Label
    operating_system: Literal["linux", "windows", "freebsd"] = "linux"
    operating_system_distro: Name | None = None
    operating_system_arch: Literal["x64", "x86"] = "x64"
    min_disk_size: Size = 1
    min_memory_size: Size = 128
    allowed_swap: bool = True
    allowed_hot_migrate: bool = False
    allow_resize_without_reboot: bool = False
    file_name: Name | None = None
    version: Name | None = None


class DataStoreCreate(InputModel):
    label: Label
    data_store_type: Literal["lvm", "vmware", "solidfire", "is", "nfs", "local"] = "lvm"
    enabled: bool = True


class DataStoreUpdate(InputModel):
    label: Label | None = None
    data_store_type: Literal["lvm", "vmware", "solidfire", "is", "nfs", "local"] | None = None
    enabled: bool | None = None


class BackupServerCreate(InputModel):
    label: Label
    ip_address: Name | None = None
    backup_ip_address: Name | None = None
    capacity: Size = 0
    enabled: bool = True
    storage_path: Path


class BackupServerUpdate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {"backup_server_group_id"}
    label: Label | None = None
    ip_address: Name | None = None
    backup_ip_address: Name | None = None
    capacity: Size | None = None
    enabled: bool | None = None
    storage_path: Path | None = None


class VirtualMachineCreate(InputModel):
    label: Label
    hostname: Name | None = None
    user_id: Id
    template_id: Id
    memory: Annotated[int, Field(ge=1, le=2**24)] = 512
    cpus: Annotated[int, Field(ge=1, le=1024)] = 1
    booted: bool = False


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
    }
    label: Label | None = None
    hostname: Name | None = None
    user_id: Id | None = None
    memory: Annotated[int, Field(ge=1, le=2**24)] | None = None
    cpus: Annotated[int, Field(ge=1, le=1024)] | None = None
    booted: bool | None = None


class DiskCreate(InputModel):
    label: Label
    disk_size: Annotated[int, Field(ge=1, le=2**20)]
    primary: bool = False
    is_swap: bool = False
    data_store_id: Id
    image_path: Path | None = None
    mount_point: Name | None = None
    file_system: Name | None = None


class DiskUpdate(InputModel):
    read_only: ClassVar[frozenset[str]] = InputModel.read_only | {
        "virtual_machine_id",
        "built",
        "locked",
        "has_autobackups",
        "iqn",
        "volume_id",
    }
    label: Label | None = None
    disk_size: Annotated[int, Field(ge=1, le=2**20)] | None = None
    primary: bool | None = None
    is_swap: bool | None = None
    data_store_id: Id | None = None
    image_path: Path | None = None
    mount_point: Name | None = None
    file_system: Name | None = None


class BackupNote(InputModel):
    """Editing a backup: only the note is the user's; everything else a client echoes back is ignored."""

    read_only: ClassVar[frozenset[str]] = frozenset(
        {
            "id",
            "identifier",
            "created_at",
            "updated_at",
            "allow_resize_without_reboot",
            "allowed_hot_migrate",
            "allowed_swap",
            "backup_server_id",
            "backup_size",
            "built",
            "built_at",
            "compatible",
            "data_store_type",
            "image_type",
            "initiated",
            "iqn",
            "locked",
            "marked_for_delete",
            "min_disk_size",
            "min_memory_size",
            "operating_system",
            "operating_system_distro",
            "target_id",
            "target_type",
            "template_id",
            "user_id",
            "volume_id",
            "backup_type",
            "disk_id",
            "integrity",
            "verified_at",
        }
    )
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
    period: Literal["days", "weeks", "months", "years"] | None = None
    duration: Count | None = None
    rotation_period: Count | None = None
    enabled: bool | None = None


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
    duration: Count | None = None
    period: Period | None = None
    rotation_period: Count | None = None
    start_at: AwareDatetime | None = None
    status: Literal["enabled", "disabled"] | None = None


class ZoneCreate(InputModel):
    label: Label
    location_group_id: Id | None = None
    closed: bool = False
    server_type: Literal["virtual", "baremetal"] = "virtual"


class ZoneUpdate(InputModel):
    label: Label | None = None
    location_group_id: Id | None = None
    closed: bool | None = None
    server_type: Literal["virtual", "baremetal"] | None = None
