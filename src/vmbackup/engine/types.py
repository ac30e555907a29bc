"""Value types the engine hands back to its callers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from vmbackup.errors import InvalidBackupId

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes), called from the engine's calling thread."""

Kind = Literal["normal", "incremental"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


def check_backup_id(backup_id: str) -> str:
    """Backup ids become storage key components, so nothing that could name another path is allowed."""
    if not isinstance(backup_id, str) or not _ID.match(backup_id):
        raise InvalidBackupId(f"invalid backup id {backup_id!r}: use 1-64 letters, digits, '_' or '-'")
    return backup_id


@dataclass
class Stats:
    logical_bytes: int = 0  # size of the image(s)
    bytes_read: int = 0  # bytes actually read from the source (or from storage, for a restore)
    zero_bytes: int = 0  # holes and all-zero blocks: neither stored nor (for holes) read
    reused_bytes: int = 0  # logical bytes of chunks already present in the store
    new_bytes_stored: int = 0  # bytes this operation added to storage (compressed, incl. metadata)
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    backup_id: str
    problems: list[str] = field(default_factory=list)
    bytes_checked: int = 0  # stored bytes re-read and checked
    damaged_chunks: list[str] = field(default_factory=list)  # present but failing their check (not missing)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "ok": self.ok,
            "problems": list(self.problems),
            "bytes_checked": self.bytes_checked,
            "damaged_chunks": list(self.damaged_chunks),
        }


@dataclass
class BackupInfo:
    backup_id: str
    kind: Kind
    created: datetime
    logical_bytes: int
    disks: dict[str, int]  # disk key -> size; a normal backup has one disk named "disk"
    stored_bytes: int  # what the backup added to storage when it was taken
