"""All models, imported here so ``Base.metadata`` knows every table (Alembic reads it)."""

from vmbackup.db.models.backups import Backup
from vmbackup.db.models.inventory import (
    BackupServer,
    BackupServerZone,
    DataStore,
    Disk,
    ImageTemplate,
    VirtualMachine,
)
from vmbackup.db.models.schedules import AutobackupPreset, Schedule, ScheduleLog
from vmbackup.db.models.transactions import Transaction
from vmbackup.db.models.users import SignInName, User

__all__ = [
    "AutobackupPreset",
    "Backup",
    "BackupServer",
    "BackupServerZone",
    "DataStore",
    "Disk",
    "ImageTemplate",
    "Schedule",
    "ScheduleLog",
    "SignInName",
    "Transaction",
    "User",
    "VirtualMachine",
]
