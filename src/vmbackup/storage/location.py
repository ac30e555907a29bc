"""Opening a backup server's storage from where it says its bytes live, so no caller names a backend class."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from vmbackup.errors import Invalid
from vmbackup.storage.base import Storage
from vmbackup.storage.local import LocalStorage


def open_storage(location: str) -> Storage:
    """``/absolute/path`` or ``file:///absolute/path``: a local (or mounted) directory. Other schemes are refused
    until their backend exists (S3 is issue 13)."""
    parts = urlsplit(location)
    if parts.scheme in ("", "file") and not parts.netloc:
        path = Path(unquote(parts.path))
        if path.is_absolute():
            return LocalStorage(path)
    raise Invalid(f"storage location {location!r} is neither an absolute path nor a file:// URL")
