"""All models, imported here so ``Base.metadata`` knows every table (Alembic reads it). ``Base`` is here too: it is
the type of "any model", which the drivers may name like the models themselves (docs/architecture.md)."""

from vmbackup.db.base import Base
from vmbackup.db.models.backups import Backup
from vmbackup.db.models.fleet import BackupServerJoin, Hypervisor, HypervisorZone, IpAddress, WorkerHeartbeat
from vmbackup.db.models.inventory import (
    BackupServer,
    BackupServerZone,
    DataStore,
    Disk,
    ImageTemplate,
    VirtualMachine,
)
from vmbackup.db.models.schedules import AutobackupPreset, Schedule, ScheduleLog
from vmbackup.db.models.transactions import Lock, Transaction
from vmbackup.db.models.users import SignInName, User

__all__ = [
    "WorkerHeartbeat",
    "IpAddress",
    "HypervisorZone",
    "Hypervisor",
    "BackupServerJoin",
    "AutobackupPreset",
    "Base",
    "Backup",
    "BackupServer",
    "BackupServerZone",
    "DataStore",
    "Disk",
    "ImageTemplate",
    "Lock",
    "Schedule",
    "ScheduleLog",
    "SignInName",
    "Transaction",
    "User",
    "VirtualMachine",
]
