"""The manifest of an incremental backup: `manifests/<backup_id>.json`.

    {"format": "vmbackup-manifest", "version": 1, "backup_id": "...", "created": "2024-01-01T00:00:00+00:00",
     "chunk_hash": "blake3", "chunk_encoding": "zstd",
     "stored_bytes": 1234,                       # what this backup added to storage
     "disks": {"<disk key>": {"size": 8388608, "chunk_size": 1048576,
                              "chunks": ["<64 hex>", null, ...]}}}    # null = all-zero chunk

In memory a disk's chunk list is packed, 32 bytes per chunk (all zero for a zero chunk), so a 1 TiB disk
with 1 MiB chunks costs 32 MiB rather than ~110 MiB of Python strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmbackup.errors import BackupDamaged

FORMAT = "vmbackup-manifest"
VERSION = 1
ID_BYTES = 32
ZERO_ID = bytes(ID_BYTES)
_HEX = re.compile(r"[0-9a-f]{64}\Z")


def manifest_key(backup_id: str) -> str:
    return f"manifests/{backup_id}.json"


@dataclass
class DiskEntry:
    size: int
    chunk_size: int
    ids: bytearray = field(default_factory=bytearray)  # packed, ID_BYTES per chunk

    @property
    def count(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_ids(self) -> Iterator[tuple[int, str | None]]:
        """(index, hex id or None for a zero chunk) in order."""
        for i in range(self.count):
            raw = bytes(self.ids[i * ID_BYTES : (i + 1) * ID_BYTES])
            yield i, (None if raw == ZERO_ID else raw.hex())

    def set(self, index: int, chunk_id: str | None) -> None:
        self.ids[index * ID_BYTES : (index + 1) * ID_BYTES] = bytes.fromhex(chunk_id) if chunk_id else ZERO_ID


@dataclass
class Manifest:
    backup_id: str
    created: str
    disks: dict[str, DiskEntry]
    stored_bytes: int = 0

    def encode(self) -> Iterator[bytes]:
        """The JSON text in pieces, so a huge chunk list is never one string in memory."""
        head = {
            "format": FORMAT,
            "version": VERSION,
            "backup_id": self.backup_id,
            "created": self.created,
            "chunk_hash": "blake3",
            "chunk_encoding": "zstd",
            "stored_bytes": self.stored_bytes,
        }
        yield json.dumps(head)[:-1].encode() + b', "disks": {'
        for n, (key, disk) in enumerate(self.disks.items()):
            yield (", " if n else "").encode() + json.dumps(key).encode()
            yield b': {"size": %d, "chunk_size": %d, "chunks": [' % (disk.size, disk.chunk_size)
            for i, cid in disk.chunk_ids():
                yield (b",\n" if i else b"\n") + (b'"%s"' % cid.encode() if cid else b"null")
            yield b"]}"
        yield b"}}\n"

    def referenced(self) -> set[bytes]:
        out: set[bytes] = set()
        for disk in self.disks.values():
            for i in range(disk.count):
                out.add(bytes(disk.ids[i * ID_BYTES : (i + 1) * ID_BYTES]))
        out.discard(ZERO_ID)
        return out


def decode(raw: bytes, backup_id: str) -> Manifest:
    """Parse and validate; any inconsistency is reported as BackupDamaged naming the backup."""
    try:
        doc: Any = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"unknown format {doc.get('format')!r} version {doc.get('version')!r}")
        if doc.get("backup_id") != backup_id:
            raise ValueError(f"it belongs to backup {doc.get('backup_id')!r}")
        disks: dict[str, DiskEntry] = {}
        for key, d in doc["disks"].items():
            size, chunk_size, chunks = d["size"], d["chunk_size"], d["chunks"]
            if not (isinstance(size, int) and isinstance(chunk_size, int) and size >= 0 and chunk_size > 0):
                raise ValueError(f"disk {key}: bad size or chunk size")
            entry = DiskEntry(size, chunk_size, bytearray(ID_BYTES * -(-size // chunk_size)))
            if len(chunks) != entry.count:
                raise ValueError(f"disk {key}: {len(chunks)} chunks listed, {entry.count} expected")
            for i, cid in enumerate(chunks):
                if cid is not None and not (isinstance(cid, str) and _HEX.match(cid)):
                    raise ValueError(f"disk {key}: chunk {i} has a bad id")
                entry.set(i, cid)
            disks[str(key)] = entry
        return Manifest(backup_id, str(doc["created"]), disks, int(doc.get("stored_bytes", 0)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupDamaged(f"backup {backup_id}: manifest {manifest_key(backup_id)} is damaged: {exc}") from None
