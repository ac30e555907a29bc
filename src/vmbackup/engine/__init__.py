"""Backup formats and algorithms (no database, no HTTP): normal `.tar.zst` archives, the incremental chunk
store, restore, verify and garbage collection, all on top of a `vmbackup.storage.Storage`.

    from vmbackup.engine import Engine
    stats = Engine(LocalStorage("/backups")).take_normal("abcdefghij1234", "/images/disk.img")
"""

from vmbackup.engine.facade import Engine
from vmbackup.engine.types import BackupInfo, Kind, Progress, Stats, VerifyReport

__all__ = ["BackupInfo", "Engine", "Kind", "Progress", "Stats", "VerifyReport"]
