"""Deleting incremental backups and collecting the chunks nobody references any more.

Protocol (docs/formats.md, "Garbage collection"): every take holds the store lock *shared* from before it
looks up its first chunk until its manifest is durably written; collection holds it *exclusive* while it
reads all manifests and deletes unreferenced chunks.  So a chunk a running take has decided to reuse cannot
be collected under it, and a take never sees a half-finished collection.  A crashed take releases its lock
with its process (flock), so there are no stale leases to expire.

Deleting a manifest never waits for running takes: if the exclusive lock is busy the sweep is deferred by
writing the `gc-pending` marker, and the next take (when it ends), `Engine.recover()` or `Engine.gc()` runs it.
"""

from __future__ import annotations

import logging

from vmbackup.engine import documents
from vmbackup.engine import manifest as manifests
from vmbackup.engine.chunkstore import ChunkStore
from vmbackup.engine.manifest import ID_BYTES, decode, manifest_key
from vmbackup.errors import BackupDamaged
from vmbackup.storage.base import ObjectMissing, Storage

PENDING_KEY = "gc-pending"
_log = logging.getLogger(__name__)


def referenced_chunks(storage: Storage) -> tuple[set[bytes], str | None]:
    """(packed ids every manifest uses, None), or (empty, why) when a manifest cannot be read: then nothing is
    safe to delete, since nobody knows what that manifest references.  Any object under `manifests/` counts,
    whatever its name: skipping one we do not understand could delete the chunks of a backup."""
    out: set[bytes] = set()
    for key in storage.list("manifests/"):
        if not key.endswith(".json"):
            continue
        backup_id = key[len("manifests/") : -len(".json")]
        try:
            raw = documents.read(storage, key, manifests.MAX_BYTES)
            out |= decode(raw, backup_id).referenced()
        except ObjectMissing:
            continue  # deleted meanwhile
        except documents.DocumentError as exc:
            return set(), f"manifest {documents.name(key)} is damaged: {exc}"
        except BackupDamaged as exc:
            return set(), exc.message
    return out, None


def sweep_locked(storage: Storage, store: ChunkStore) -> int:
    """Delete unreferenced chunks; the caller holds the exclusive lock.  Returns bytes freed.  When a manifest
    is unreadable nothing is deleted: the reason is logged and kept in the `gc-pending` marker, and every later
    collection tries again."""
    keep, blocked = referenced_chunks(storage)
    if blocked is not None:
        why = f"chunk collection postponed, nothing deleted: {blocked}"
        _log.warning("%s", why)
        storage.put(PENDING_KEY, why.encode() + b"\n")
        return 0
    freed = 0
    for cid in list(store.ids()):
        try:
            packed = bytes.fromhex(cid)
        except ValueError:
            continue  # not ours
        if len(packed) == ID_BYTES and packed not in keep:
            freed += store.delete(cid)
    if storage.exists(PENDING_KEY):
        storage.delete(PENDING_KEY)
    return freed


def collect(storage: Storage, store: ChunkStore, *, blocking: bool) -> int:
    with storage.lock(exclusive=True, blocking=blocking) as held:
        if not held:
            storage.put(PENDING_KEY, b"collection deferred: a backup was running\n")
            return 0
        return sweep_locked(storage, store)


def delete_incremental(storage: Storage, store: ChunkStore, backup_id: str) -> int:
    # Manifest first, durably: from here on the backup does not exist, and a power cut cannot bring it back
    # after some of its chunks' removals reached the disk.  A crash before the sweep only leaves garbage.
    freed = storage.delete(manifest_key(backup_id), durable=True)
    return freed + collect(storage, store, blocking=False)
