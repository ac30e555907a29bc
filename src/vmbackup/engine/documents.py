"""Reading the engine's JSON documents (manifests, normal-backup metas) as untrusted input.

Anything in a storage may have been damaged, swapped or written by someone else, so a document is parsed
within bounds (its size, how deeply it nests) and then checked field by field (types and ranges) before
anything is allocated from it.  Every failure is a `DocumentError` (a ValueError), which the callers turn into
`BackupDamaged` for that one backup.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from vmbackup.storage.base import ObjectMissing, Storage

MAX_DEPTH = 16  # our documents nest 3 (metas) or 4 (manifests) deep; json's C parser recurses per level
MAX_INT = 2**62  # sizes and offsets: far beyond any disk, small enough that arithmetic on them stays cheap
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
# Disk keys of incremental backups: what the service (`disk-<id>`) and the CLI's `--disk vda=...` use; they
# end up in messages and logs, so no control characters, separators or surrogates.
DISK_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_STRING = re.compile(rb'"[^"]*"')
_PAIR = re.compile(rb"\[\]|\{\}")


class DocumentError(ValueError):
    """The document is not one the engine wrote: the message says what is wrong."""


def read(storage: Storage, key: str, max_bytes: int) -> bytes:
    """The object's bytes, refusing one larger than `max_bytes` before reading it.  ObjectMissing passes
    through (the backup does not exist); every other failure to read is a DocumentError."""
    try:
        size = storage.size(key)
        if size > max_bytes:
            raise DocumentError(f"it is {size} bytes, more than the {max_bytes} a valid one can take")
        return storage.get(key)
    except (ObjectMissing, DocumentError):
        raise
    except (OSError, ValueError) as exc:  # a directory, no permission, an I/O error, a name that is no key
        raise DocumentError(f"it cannot be read ({exc})") from None


def parse(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """A JSON object, parsed only once its size and nesting are known to be within bounds."""
    if len(raw) > max_bytes:
        raise DocumentError(f"it is {len(raw)} bytes, more than the {max_bytes} a valid one can take")
    _check_depth(raw)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DocumentError(f"it is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DocumentError("it is not a JSON object")
    return doc


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH without parsing: keep only the quotes and brackets outside escapes,
    drop the strings, then strip innermost pairs MAX_DEPTH times; anything left nests deeper (or is not JSON).
    All in C: a 136 MB manifest takes ~0.2 s (json.loads ~2.9 s).  json's own RecursionError stays a backstop."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # a manifest of up to 7 disks: nothing to measure
        return
    if b"\\" in raw:  # escaped backslashes first, then escaped quotes: neither delimits a string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Adjacent quotes close one string and open the next, or delimit one without brackets: drop them in bulk.
    structure = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:
        structure = _STRING.sub(b"", structure)
    for _ in range(MAX_DEPTH):
        structure = _PAIR.sub(b"", structure)
        if not structure:
            return
    raise DocumentError(f"it nests more than {MAX_DEPTH} levels deep, or is not JSON")


def integer(doc: dict[str, Any], name: str, low: int = 0, high: int = MAX_INT) -> int:
    value = field(doc, name)
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass: refused too
        raise DocumentError(f"{name} is {show(value)}, not an integer in [{low}, {high}]")
    return value


def string(doc: dict[str, Any], name: str, max_len: int = 4096) -> str:
    value = field(doc, name)
    if not isinstance(value, str) or len(value) > max_len:
        raise DocumentError(f"{name} is {show(value)}, not a string of at most {max_len} characters")
    return value


def hex64(doc: dict[str, Any], name: str) -> str:
    value = field(doc, name)
    if not isinstance(value, str) or not HEX64.match(value):
        raise DocumentError(f"{name} is {show(value)}, not 64 lowercase hex digits")
    return value


def timestamp(doc: dict[str, Any], name: str) -> str:
    """An ISO 8601 time with its offset (the engine writes UTC), returned as written."""
    value = string(doc, name, 64)
    try:
        aware = datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        aware = False
    if not aware:
        raise DocumentError(f"{name} is {show(value)}, not an ISO 8601 time with an offset")
    return value


def field(doc: dict[str, Any], name: str) -> Any:
    if name not in doc:
        raise DocumentError(f"{name} is missing")
    return doc[name]


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def name(key: str) -> str:
    """A storage key as written in messages: as it is when printable, else its repr (a file name that is not
    UTF-8, or holds control characters, must not break a log line or an encoder)."""
    return key if key.isprintable() and key.isascii() else show(key)
