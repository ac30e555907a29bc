"""The manifest of an incremental backup: `manifests/<backup_id>.json` (format in docs/formats.md).

    {"format": "vmbackup-manifest", "version": 2, "backup_id": "...", "created": "2024-01-01T00:00:00+00:00",
     "chunk_hash": "blake3", "chunk_encoding": "zstd",
     "stored_bytes": 1234,                       # what this backup added to storage
     "disks": {"<disk key>": {"size": 8388608, "chunk_size": 1048576,
                              "chunks": ["<64 hex>", null, ...]}},   # null = all-zero chunk
     "blake3": "<64 hex>"}                       # of everything above, bound to the backup id (version 2)

In memory a disk's chunk list is packed, 32 bytes per chunk (all zero for a zero chunk), so a 1 TiB disk
with 1 MiB chunks costs 32 MiB rather than ~110 MiB of Python strings.

A manifest is untrusted input when read (`decode`): bounded parse, every field checked, the checksum
recomputed; anything wrong is `BackupDamaged` for that backup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from vmbackup.engine import documents as doc
from vmbackup.errors import BackupDamaged

FORMAT = "vmbackup-manifest"
VERSION = 2  # 2: the "blake3" checksum binds the content to the backup id; 1 (without it) is still read
ID_BYTES = 32
ZERO_ID = bytes(ID_BYTES)
MAX_DISKS = 256
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# The largest manifest read, and so written (a take that would exceed it fails before its manifest appears).
# A data chunk's entry takes 68 bytes (',\n"<64 hex>"'), a zero chunk's 6, so this is ~3.7 TiB of non-zero
# 128 KiB chunks per backup; parsing that much JSON takes about 4x its size in memory.
MAX_BYTES = 2 * 1024**3
ZERO_ENTRY_BYTES = 5  # the least an entry can take ('\nnull' or ',\nnull')
_CHECKSUM_CONTEXT = b"vmbackup-manifest 2\0"


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
    version: int = VERSION  # what it was read as; version 1 manifests carry no checksum

    def checksum(self) -> str:
        """BLAKE3 of the content in a fixed binary form: the backup id, the time, the stored bytes, then per
        disk in order its key, size, chunk size and packed chunk ids.  The ids are the BLAKE3 of the chunks'
        bytes, so this covers the whole content of every disk, and binds it to this backup id and disk key."""
        h = blake3.blake3(_CHECKSUM_CONTEXT)
        head = (self.backup_id.encode(), self.created.encode(), self.stored_bytes, len(self.disks))
        h.update(b"%s\0%s\0%d\0%d\0" % head)
        for key, disk in self.disks.items():
            h.update(b"%s\0%d\0%d\0" % (key.encode(), disk.size, disk.chunk_size))
            h.update(disk.ids)
        return h.hexdigest()

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
        yield b'},\n "blake3": "%s"}\n' % self.checksum().encode()

    def min_encoded_bytes(self) -> int:
        """A lower bound of the encoded size, known before any chunk is read (every chunk a zero chunk)."""
        return sum(ZERO_ENTRY_BYTES * d.count for d in self.disks.values())

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
        return _decode(doc.parse(raw, MAX_BYTES), backup_id)
    except doc.DocumentError as exc:
        raise damaged(backup_id, str(exc)) from None


def damaged(backup_id: str, why: str) -> BackupDamaged:
    return BackupDamaged(f"backup {backup_id}: manifest {manifest_key(backup_id)} is damaged: {why}")


def _decode(d: dict[str, Any], backup_id: str) -> Manifest:
    if d.get("format") != FORMAT or d.get("version") not in (1, VERSION) or type(d.get("version")) is not int:
        raise doc.DocumentError(f"unknown format {doc.show(d.get('format'))} version {doc.show(d.get('version'))}")
    version: int = d["version"]
    if d.get("backup_id") != backup_id:
        raise doc.DocumentError(f"it belongs to backup {doc.show(d.get('backup_id'))}")
    if d.get("chunk_hash", "blake3") != "blake3" or d.get("chunk_encoding", "zstd") != "zstd":
        raise doc.DocumentError("unknown chunk hash or encoding")
    created = doc.timestamp(d, "created")
    stored = doc.integer(d, "stored_bytes") if version >= 2 or "stored_bytes" in d else 0
    disks_doc = doc.field(d, "disks")
    if not isinstance(disks_doc, dict) or not 1 <= len(disks_doc) <= MAX_DISKS:
        raise doc.DocumentError(f"disks is not an object of 1 to {MAX_DISKS} disks")
    disks: dict[str, DiskEntry] = {}
    for key, entry_doc in disks_doc.items():
        if not doc.DISK_KEY.match(key):
            raise doc.DocumentError(f"disk key {doc.show(key)} is not 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(entry_doc, dict):
            raise doc.DocumentError(f"disk {key} is not an object")
        disks[key] = _disk(key, entry_doc)
    manifest = Manifest(backup_id, created, disks, stored, version)
    if version >= 2 and doc.hex64(d, "blake3") != manifest.checksum():
        raise doc.DocumentError("its content fails its BLAKE3 checksum (edited, or not this backup's)")
    return manifest


def _disk(key: str, d: dict[str, Any]) -> DiskEntry:
    try:
        size = doc.integer(d, "size")
        chunk_size = doc.integer(d, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    except doc.DocumentError as exc:
        raise doc.DocumentError(f"disk {key}: {exc}") from None
    chunks = d.get("chunks")
    if not isinstance(chunks, list):
        raise doc.DocumentError(f"disk {key}: chunks is not a list")
    entry = DiskEntry(size, chunk_size)
    if len(chunks) != entry.count:  # before allocating: the list's length is bounded by the document's size
        raise doc.DocumentError(f"disk {key}: {len(chunks)} chunks listed, {entry.count} expected")
    entry.ids = bytearray(ID_BYTES * entry.count)
    for i, cid in enumerate(chunks):
        if cid is None:
            continue
        if not (isinstance(cid, str) and doc.HEX64.match(cid)) or cid == "0" * 64:
            raise doc.DocumentError(f"disk {key}: chunk {i} has a bad id {doc.show(cid)}")
        entry.ids[i * ID_BYTES : (i + 1) * ID_BYTES] = bytes.fromhex(cid)
    return entry
