"""Domain errors, one tree for every layer.

    VmbackupError                      status / exit_code carried as class attributes
    ├── NotFound          (404, 3)     unknown id, or an object the caller may not see
    ├── Forbidden         (403, 4)     caller is known but not allowed
    ├── Unauthorized      (401, 5)     no or bad credentials
    ├── TooManyAttempts   (429, 7)     too many failed logins from this client or for this login; retry later
    ├── DatabaseUnavailable (503, 8)   the database is missing, unreadable or not a vmbackup database (CLI)
    ├── Invalid           (422, 2)     bad parameters; may carry per-field messages
    ├── Conflict          (422, 6)     the object's state forbids the action (locked, unbuilt, booted...)
    │   └── TooManyQueued (422, 19)    the user has as many transactions pending or running as allowed
    ├── DatabaseFull      (507, 18)    the database has no space left: nothing was changed
    └── EngineError       (422, 10)    the backup engine refused or failed
        ├── SourceMissing (422, 11)    the disk image to back up does not exist / cannot be read
        ├── BackupMissing (404, 12)    no such backup in the store
        ├── BackupDamaged (422, 13)    stored data fails its hash / is truncated / missing
        ├── StorageFull   (422, 14)    the storage target ran out of space
        └── TargetInvalid (422, 15)    restore target refused (bad path, size mismatch...)

The docstring of each class is its default message.  The HTTP mapping lives in exactly one place
(`vmbackup.api.errors`), the exit-code mapping in the CLI entry point; nothing else looks at these attributes.
"""

from __future__ import annotations


class VmbackupError(Exception):
    """Something went wrong."""

    status: int = 500
    exit_code: int = 1

    def __init__(self, message: str | None = None, *, fields: dict[str, list[str]] | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.fields = fields
        super().__init__(self.message)


class NotFound(VmbackupError):
    """Not found."""

    status = 404
    exit_code = 3


class Forbidden(VmbackupError):
    """You do not have permissions for this action."""

    status = 403
    exit_code = 4


class Unauthorized(VmbackupError):
    """You need to sign in or sign up before continuing."""

    status = 401
    exit_code = 5


class TooManyAttempts(VmbackupError):
    """Too many failed login attempts; try again later."""

    status = 429
    exit_code = 7

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class DatabaseUnavailable(VmbackupError):
    """The database cannot be used."""

    status = 503
    exit_code = 8


class Invalid(VmbackupError):
    """The parameters sent are invalid."""

    status = 422
    exit_code = 2


class Conflict(VmbackupError):
    """The object is not in a state that allows this action."""

    status = 422
    exit_code = 6


class EngineError(VmbackupError):
    """The backup engine failed."""

    status = 422
    exit_code = 10


class SourceMissing(EngineError):
    """The disk image to back up does not exist or cannot be read."""

    exit_code = 11


class BackupMissing(EngineError):
    """No such backup in the store."""

    status = 404
    exit_code = 12


class BackupDamaged(EngineError):
    """Stored backup data is damaged."""

    exit_code = 13


class StorageFull(EngineError):
    """The backup storage is full."""

    exit_code = 14


class TargetInvalid(EngineError):
    """The restore target was refused."""

    exit_code = 15


class BackupExists(EngineError):
    """A backup with this id already exists in the store."""

    exit_code = 16


class InvalidBackupId(EngineError):
    """A backup id is 1 to 64 letters, digits, '_' or '-', starting with a letter or digit."""

    exit_code = 17


class DatabaseFull(VmbackupError):
    """The service's data directory is full (No space left on device): nothing was changed."""

    status = 507  # Insufficient Storage (RFC 4918): the request may succeed once space is freed
    exit_code = 18


class TooManyQueued(Conflict):
    """Too many transactions queued; try again when some have finished."""

    exit_code = 19
