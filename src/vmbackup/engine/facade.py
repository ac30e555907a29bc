"""The engine's public surface: what services and the CLI call.  No database, no HTTP, only a Storage."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from vmbackup.engine import archive, documents, gc
from vmbackup.engine import manifest as manifests
from vmbackup.engine.chunker import CHUNK_SIZE, DiskChunker, default_workers
from vmbackup.engine.chunkstore import ChunkStore
from vmbackup.engine.documents import DISK_KEY
from vmbackup.engine.manifest import DiskEntry, Manifest, decode, manifest_key
from vmbackup.engine.restore import restore_incremental, restore_normal
from vmbackup.engine.source import Source, open_source
from vmbackup.engine.types import BackupInfo, Kind, Progress, Stats, VerifyReport, check_backup_id
from vmbackup.engine.verify import verify_incremental, verify_normal
from vmbackup.errors import BackupDamaged, BackupExists, BackupMissing, InvalidBackupId, TargetInvalid
from vmbackup.storage.base import ObjectMissing, Storage


class Engine:
    def __init__(self, storage: Storage, *, chunk_size: int = CHUNK_SIZE, workers: int | None = None) -> None:
        low, high = manifests.MIN_CHUNK_SIZE, manifests.MAX_CHUNK_SIZE  # what a manifest may record
        if not low <= chunk_size <= high:
            raise ValueError(f"chunk size {chunk_size} outside [{low}, {high}]")
        self.storage = storage
        self.chunks = ChunkStore(storage)
        self.chunk_size = chunk_size
        self.workers = workers or default_workers()

    # -- taking -------------------------------------------------------------------------------------------

    def _check_new(self, backup_id: str) -> None:
        check_backup_id(backup_id)
        if self.storage.exists(archive.meta_key(backup_id)) or self.storage.exists(manifest_key(backup_id)):
            raise BackupExists(f"backup {backup_id} already exists")

    def take_normal(self, backup_id: str, image_path: str, progress: Progress | None = None) -> Stats:
        self._check_new(backup_id)
        with self.storage.lock(exclusive=False):  # keeps recover() off our temporary object
            return archive.take_normal(self.storage, backup_id, image_path, progress, self.workers)

    def take_incremental(self, backup_id: str, disks: dict[str, str], progress: Progress | None = None) -> Stats:
        self._check_new(backup_id)
        if not 1 <= len(disks) <= manifests.MAX_DISKS:
            raise TargetInvalid(f"an incremental backup needs 1 to {manifests.MAX_DISKS} disks, not {len(disks)}")
        for key in disks:
            if not isinstance(key, str) or not DISK_KEY.match(key):
                raise TargetInvalid(f"invalid disk key {key!r}: use 1-64 letters, digits, '.', '_' or '-'")
        started = time.monotonic()
        stats = Stats()
        sources: dict[str, Source] = {}
        try:
            for key, path in disks.items():
                sources[key] = open_source(path)
            total = stats.logical_bytes = sum(s.size for s in sources.values())
            done = 0

            def advance(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total)

            created = datetime.now(UTC).isoformat(timespec="seconds")
            manifest = Manifest(backup_id, created, {k: DiskEntry(s.size, self.chunk_size) for k, s in sources.items()})
            if manifest.min_encoded_bytes() > manifests.MAX_BYTES:  # hopeless even if every chunk were zeros
                raise _too_large(backup_id, total, self.chunk_size)
            # The shared lock is the lease that keeps GC away from chunks this take reuses (see gc.py).
            with self.storage.lock(exclusive=False):
                with (
                    ThreadPoolExecutor(self.workers, thread_name_prefix="vmbackup-chunk") as pool,
                    self.chunks.writer() as writer,
                ):
                    chunker = DiskChunker(writer, pool, self.workers, stats, advance)
                    for key, src in sources.items():
                        manifest.disks[key] = chunker.run(src, self.chunk_size)
                # The writer has made every chunk durable (data and name): only now may the manifest appear.
                manifest.stored_bytes = stats.new_bytes_stored
                with self.storage.open_writer(manifest_key(backup_id)) as w:
                    written = 0
                    for piece in manifest.encode():
                        written += w.write(piece)
                        if written > manifests.MAX_BYTES:  # never write what no reader would accept
                            raise _too_large(backup_id, total, self.chunk_size)
                stats.new_bytes_stored += self.storage.size(manifest_key(backup_id))
        finally:
            for src in sources.values():
                src.close()
        if self.storage.exists(gc.PENDING_KEY):
            gc.collect(self.storage, self.chunks, blocking=False)
        stats.duration_seconds = time.monotonic() - started
        return stats

    # -- reading ------------------------------------------------------------------------------------------

    def kind_of(self, backup_id: str) -> Kind:
        check_backup_id(backup_id)
        if self.storage.exists(archive.meta_key(backup_id)):
            return "normal"
        if self.storage.exists(manifest_key(backup_id)):
            return "incremental"
        raise BackupMissing(f"backup {backup_id} does not exist")

    def _manifest(self, backup_id: str) -> Manifest:
        """The manifest, read as untrusted input: anything wrong with it is BackupDamaged for this backup."""
        try:
            raw = documents.read(self.storage, manifest_key(backup_id), manifests.MAX_BYTES)
        except ObjectMissing:
            raise BackupMissing(f"backup {backup_id} does not exist") from None
        except documents.DocumentError as exc:
            raise manifests.damaged(backup_id, str(exc)) from None
        return decode(raw, backup_id)

    def restore(self, backup_id: str, targets: dict[str, str] | str, progress: Progress | None = None) -> Stats:
        """Normal: `targets` is the path.  Incremental: disk key -> path (disks left out are not restored);
        a plain path is accepted for a one-disk backup."""
        if self.kind_of(backup_id) == "normal":
            if not isinstance(targets, str):
                raise TargetInvalid(f"backup {backup_id} is a normal backup: give one target path")
            return restore_normal(self.storage, backup_id, targets, progress)
        manifest = self._manifest(backup_id)
        if isinstance(targets, str):
            if len(manifest.disks) != 1:
                raise TargetInvalid(f"backup {backup_id} has {len(manifest.disks)} disks: give a path per disk")
            targets = {next(iter(manifest.disks)): targets}
        return restore_incremental(self.chunks, manifest, targets, progress, self.workers)

    def verify(self, backup_id: str, progress: Progress | None = None) -> VerifyReport:
        if self.kind_of(backup_id) == "normal":
            return verify_normal(self.storage, backup_id, progress)
        try:
            manifest = self._manifest(backup_id)
        except BackupDamaged as exc:
            return VerifyReport(backup_id, [exc.message], self._size(manifest_key(backup_id)))
        report = verify_incremental(self.chunks, manifest, self.workers, progress)
        report.bytes_checked += self._size(manifest_key(backup_id))
        return report

    def _size(self, key: str) -> int:
        try:
            return self.storage.size(key)
        except (ObjectMissing, OSError):  # gone or unreadable meanwhile: it was not checked
            return 0

    def list(self) -> list[BackupInfo]:
        """Every backup whose meta or manifest reads back intact (damaged ones are left out: `verify` names
        them), oldest first."""
        out: list[BackupInfo] = []
        for bid in _ids(self.storage, "normal/", ".meta.json"):
            try:
                m = archive.load_meta(self.storage, bid)
            except (BackupMissing, BackupDamaged):
                continue
            size = m["logical_bytes"]
            created = datetime.fromisoformat(m["created"])
            out.append(BackupInfo(bid, "normal", created, size, {"disk": size}, int(m.get("stored_bytes", 0))))
        for bid in _ids(self.storage, "manifests/", ".json"):
            try:
                mf = self._manifest(bid)
            except (BackupMissing, BackupDamaged):
                continue
            sizes = {k: d.size for k, d in mf.disks.items()}
            created = datetime.fromisoformat(mf.created)
            out.append(BackupInfo(bid, "incremental", created, sum(sizes.values()), sizes, mf.stored_bytes))
        return sorted(out, key=lambda b: (b.created, b.backup_id))

    # -- removing -----------------------------------------------------------------------------------------

    def delete(self, backup_id: str) -> int:
        """Bytes freed now.  Chunks still used by a running take are freed by a later collection."""
        if self.kind_of(backup_id) == "normal":
            return archive.delete_normal(self.storage, backup_id)
        return gc.delete_incremental(self.storage, self.chunks, backup_id)

    def quarantine(self, chunk_ids: Sequence[str]) -> int:
        """Move damaged chunks (a `VerifyReport.damaged_chunks`) aside so the next backup stores them again.
        Needs the store to itself: while a take runs it may be reusing one of them, so this returns 0 and the
        next integrity check tries again."""
        with self.storage.lock(exclusive=True, blocking=False) as held:
            if not held:
                return 0
            return sum(self.chunks.quarantine(cid) for cid in chunk_ids)

    def gc(self) -> int:
        """Collect unreferenced chunks now, waiting for running takes to finish."""
        return gc.collect(self.storage, self.chunks, blocking=True)

    def recover(self) -> None:
        """After a crash: remove temporary objects, archives whose take died before its meta was written,
        and chunks no manifest references.  Skipped while another process holds the store (a take is
        running, so its temporaries are live)."""
        with self.storage.lock(exclusive=True, blocking=False) as held:
            if not held:
                return
            self.storage.cleanup_temp()
            for key in list(archive.orphan_archives(self.storage)):
                self.storage.delete(key)
            gc.sweep_locked(self.storage, self.chunks)


def _too_large(backup_id: str, total: int, chunk_size: int) -> TargetInvalid:
    return TargetInvalid(
        f"backup {backup_id}: {total} bytes of disks in chunks of {chunk_size} make a manifest larger than"
        f" {manifests.MAX_BYTES} bytes; use a larger chunk size"
    )


def _ids(storage: Storage, prefix: str, suffix: str) -> Iterator[str]:
    """Backup ids of the objects `<prefix><id><suffix>`; names that are no backup id were not written by us."""
    for key in storage.list(prefix):
        if key.endswith(suffix):
            try:
                yield check_backup_id(key[len(prefix) : -len(suffix)])
            except InvalidBackupId:
                continue
