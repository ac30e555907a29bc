"""Doing the work of a transaction: what a worker runs once it has claimed one.

Database sessions are short (read what is needed, close, run the engine, open another to record the result), so
a long backup never holds a database lock. ``fail`` undoes the request's locks after an error or a crash.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.base import utcnow
from vmbackup.db.models import Backup, BackupServer, Disk, ImageTemplate, Transaction, User, VirtualMachine
from vmbackup.engine import Engine, Stats, gc
from vmbackup.errors import BackupDamaged, BackupMissing, Conflict, SourceMissing, TargetInvalid
from vmbackup.services import actions, autobackups, machines, template_tasks
from vmbackup.services.backups import disk_key, taken_disks
from vmbackup.storage.location import open_storage

Sessions = sessionmaker[Session]


class Log(Protocol):
    """A transaction's log, which its owner reads (`GET /transactions/:id`)."""

    def __call__(self, message: str) -> None: ...

    def hide(self, secret: str, shown: str) -> None:
        """From now on write ``shown`` wherever ``secret`` appears: image paths and storage paths are admin-only
        (F13), and they also turn up inside error messages the task does not write itself."""


def template_archive_id(template: ImageTemplate) -> str:
    return f"template-{template.identifier}"


def engine_for(server: BackupServer) -> Engine:
    return Engine(open_storage(server.storage_path))


def _kib(n: int) -> int:
    return math.ceil(n / 1024)


def _describe(stats: Stats) -> str:
    mib = 1024 * 1024
    return (
        f"logical {stats.logical_bytes / mib:.1f} MiB, read {stats.bytes_read / mib:.1f} MiB, "
        f"zero/holes {stats.zero_bytes / mib:.1f} MiB, reused {stats.reused_bytes / mib:.1f} MiB, "
        f"stored {stats.new_bytes_stored / mib:.1f} MiB, {stats.duration_seconds:.2f} s"
    )


def _progress(log: Log) -> Callable[[int, int], None]:
    marks = iter((25, 50, 75, 101))
    nxt = next(marks)

    def report(done: int, total: int) -> None:
        nonlocal nxt
        while total and done * 100 >= nxt * total:
            log(f"{nxt}% done")
            nxt = next(marks, 1000)

    return report


def _load(sessions: Sessions, tx: Transaction, log: Log | None = None) -> tuple[Backup, BackupServer]:
    """The transaction's backup and its server; with ``log``, the server's storage path is hidden from it (F13)."""
    with sessions() as db:
        backup = db.get(Backup, tx.parent_id)
        if backup is None:
            raise Conflict(f"backup {tx.parent_id} no longer exists")
        server = db.get(BackupServer, backup.backup_server_id) if backup.backup_server_id else None
        if server is None:
            raise Conflict(f"backup {backup.id} has no backup server")
    if log is not None:
        log.hide(server.storage_path, f"<storage of backup server {server.id}>")
    return backup, server


def _mark_built(sessions: Sessions, backup_id: int, stats: Stats, tx_id: int) -> None:
    with sessions() as db:
        backup = db.get(Backup, backup_id)
        assert backup is not None
        tx = db.get(Transaction, tx_id)
        if tx is None or tx.status != "running":
            # Recovered as failed while this worker was stalled (`execution.recover`): its locks are released and
            # its data may be removed by now, so it must not become built.
            raise Conflict(f"transaction {tx_id} was ended by recovery while it ran; the backup is not built")
        backup.built, backup.built_at, backup.locked = True, utcnow(), False
        backup.backup_size = _kib(stats.new_bytes_stored)
        backup.logical_size = stats.logical_bytes
        db.commit()


def _image_of(disk: Disk | None, disk_id: int, log: Log | None = None) -> str:
    if disk is None or not disk.image_path:
        raise SourceMissing(f"disk {disk_id} no longer exists or has no image path")
    if log is not None:
        log.hide(disk.image_path, f"<image of disk {disk_id}>")
        log.hide(os.path.realpath(disk.image_path), f"<image of disk {disk_id}>")
    # Checked again now, not only when registered: a symlink on the path may have been re-pointed since.
    db = Session.object_session(disk)
    problem = machines.image_path_problem(disk.image_path, machines.image_roots(db) if db else ())
    if problem:
        raise TargetInvalid(f"disk {disk_id} image path {disk.image_path} refused: it {problem}")
    return disk.image_path


def _taken_disk(db: Session, backup: Backup, disk_id: int, log: Log) -> str:
    """The image of a disk this take was queued for, if it is still that disk of that VM (not deleted, moved or
    replaced since the request: the backup is recorded as taken of it)."""
    vm = db.get(VirtualMachine, backup.virtual_machine_id)
    same_vm = vm is not None and vm.identifier == backup.vm_identifier
    disk = next((d for d in taken_disks(backup, vm) if d.id == disk_id), None) if vm and same_vm else None
    if disk is None:
        raise SourceMissing(f"disk {disk_id} is no longer the disk this backup was requested of")
    return _image_of(disk, disk_id, log)


def take_backup(sessions: Sessions, tx: Transaction, log: Log) -> None:
    backup, server = _load(sessions, tx, log)
    with sessions() as db:
        path = _taken_disk(db, backup, tx.params["disk_id"], log)
    log(f"Taking normal backup {backup.identifier} of disk {backup.disk_id} on backup server {server.label!r}")
    stats = engine_for(server).take_normal(backup.identifier, path, _progress(log))
    _mark_built(sessions, backup.id, stats, tx.id)
    log(f"Backup built: {_describe(stats)}")
    _rotate(sessions, backup.id, tx, log)


def take_incremental_backup(sessions: Sessions, tx: Transaction, log: Log) -> None:
    backup, server = _load(sessions, tx, log)
    with sessions() as db:
        disks = {disk_key(i): _taken_disk(db, backup, i, log) for i in tx.params["disk_ids"]}
    log(
        f"Taking incremental backup {backup.identifier} of virtual machine {backup.virtual_machine_id}: "
        + ", ".join(disks)
    )
    stats = engine_for(server).take_incremental(backup.identifier, disks, _progress(log))
    _mark_built(sessions, backup.id, stats, tx.id)
    log(f"Backup built: {_describe(stats)}")
    _rotate(sessions, backup.id, tx, log)


def _rotate(sessions: Sessions, backup_id: int, tx: Transaction, log: Log) -> None:
    rotated = autobackups.after_backup(sessions, backup_id, True, tx.id)
    if rotated:
        log(f"Retention: queued deletion of {len(rotated)} older auto-backup(s) (transactions {rotated})")


def _restore_targets(db: Session, backup: Backup, tx: Transaction, log: Log) -> dict[str, str] | str:
    """Checked again now, not only when queued: the VM and disks must still be the ones the backup was taken of,
    and the requester must still be allowed to write them (the VM may have been given to someone else)."""
    vm, disks = actions.restore_targets(db, backup)
    requester = db.get(User, tx.params.get("requested_by", backup.user_id))
    if requester is None or not actions.may_act_on(requester, vm, backup):
        raise Conflict("the virtual machine no longer belongs to the user who asked for this restore; nothing written")
    if backup.backup_type == "normal":
        return _image_of(disks[0], disks[0].id, log)
    return {disk_key(d.id): _image_of(d, d.id, log) for d in disks}


def restore_backup(sessions: Sessions, tx: Transaction, log: Log) -> None:
    backup, server = _load(sessions, tx, log)
    with sessions() as db:
        targets = _restore_targets(db, backup, tx, log)
    shown = f"disk {backup.disk_id}" if isinstance(targets, str) else ", ".join(targets)
    engine = engine_for(server)
    # Restores overwrite the disk in place, and a damaged chunk or archive is only found when read: check the
    # whole backup first, so damage is reported before the disk is touched, not half way through overwriting it.
    report = engine.verify(backup.identifier)
    if not report.ok:
        raise BackupDamaged(
            f"backup {backup.identifier} is damaged; the disk was not touched: " + "; ".join(report.problems[:5])
        )
    log(f"Verified backup {backup.identifier} ({report.bytes_checked / 1024 / 1024:.1f} MiB checked)")
    log(f"Restoring {backup.backup_type} backup {backup.identifier} to {shown}")
    stats = engine.restore(backup.identifier, targets, _progress(log))
    _unlock(sessions, backup.id, backup.virtual_machine_id)
    log(f"Restore complete: {_describe(stats)}")


_SCRATCH_DIR = "vmbackup.scratch_dir"  # key in Session.info


def bind_scratch_dir(sessions: Sessions, path: Path) -> None:
    """Where tasks put scratch files (a converted backup's disk image): beside the database in the data
    directory, never inside a backup server's storage, which need not be a local directory."""
    path.mkdir(parents=True, exist_ok=True)
    sessions.configure(info={**sessions.kw.get("info", {}), _SCRATCH_DIR: str(path)})


def scratch_dir(db: Session) -> str:
    return str(db.info.get(_SCRATCH_DIR) or tempfile.gettempdir())


def clean_scratch(sessions: Sessions) -> None:
    """Remove what a killed convert left (worker start-up, when nothing runs)."""
    with sessions() as db:
        root = Path(scratch_dir(db))
    for leftover in root.glob(".tmp-convert-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def convert_backup(sessions: Sessions, tx: Transaction, log: Log) -> None:
    backup, server = _load(sessions, tx, log)
    with sessions() as db:
        template = db.get(ImageTemplate, tx.params["template_id"])
        if template is None:
            raise Conflict("the template being made was deleted")
        archive_id = template_archive_id(template)
        vm = db.get(VirtualMachine, backup.virtual_machine_id)
        primary = next((d for d in (taken_disks(backup, vm) if vm else []) if d.primary), None)
        root = scratch_dir(db)
    engine = engine_for(server)
    # The template file is a normal archive of one disk image: restore the backup's disk to a scratch file, then
    # archive it. Simple and format-agnostic; costs one extra pass.
    fd, scratch = tempfile.mkstemp(prefix=".tmp-convert-", suffix=".img", dir=root)
    os.close(fd)
    os.unlink(scratch)
    log.hide(root, "<scratch directory>")
    try:
        # An incremental holds every disk of the VM: the template is made from the primary one (a lone disk
        # needs no name; several without a primary is refused by the engine with a clear error).
        targets: dict[str, str] | str = scratch
        if backup.disk_id is None and primary is not None:
            targets = {disk_key(primary.id): scratch}
        engine.restore(backup.identifier, targets)
        log(f"Converting backup {backup.identifier} into template {template.label!r}")
        stats = engine.take_normal(archive_id, scratch, _progress(log))
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(scratch).unlink()
    with sessions() as db:
        template = db.get(ImageTemplate, tx.params["template_id"])
        assert template is not None
        template.state, template.template_size = "active", _kib(stats.new_bytes_stored)
        db.commit()
    _unlock(sessions, backup.id)
    log(f"Template {template.id} ready: {_describe(stats)}")


def destroy_backup(sessions: Sessions, tx: Transaction, log: Log) -> None:
    backup, server = _load(sessions, tx, log)
    try:
        freed = engine_for(server).delete(backup.identifier)
        log(f"Deleted backup {backup.identifier}: {freed / 1024 / 1024:.1f} MiB freed")
    except BackupMissing:
        log(f"Backup {backup.identifier} had no stored data (it was never built)")
    with sessions() as db:
        row = db.get(Backup, backup.id)
        if row is not None:
            db.delete(row)
            db.commit()


def _settle_stored(sessions: Sessions, tx: Transaction) -> None:
    """Make the stored data agree with the database after a take or delete that did not finish (killed worker).

    A take killed after its manifest or meta was written but before the backup was marked built left a complete
    backup no row calls built: it is removed, or it would hold its space forever; so are the chunks a failed
    incremental take had already stored (a full storage must not stay full of them). A delete killed after the backup's
    manifest or meta was removed left a built row over no data: the row goes too (the delete had taken effect)."""
    try:
        backup, server = _load(sessions, tx)
    except Conflict:
        return
    engine = engine_for(server)
    try:
        if tx.action == "destroy_backup":
            try:
                engine.kind_of(backup.identifier)
            except BackupMissing:
                with sessions() as db:
                    row = db.get(Backup, backup.id)
                    if row is not None:
                        db.delete(row)
                        db.commit()
        elif not backup.built:
            with contextlib.suppress(BackupMissing):
                engine.delete(backup.identifier)
            if tx.action == "take_incremental_backup":
                # Chunks it had flushed before failing (storage full, say) are referenced by no manifest: free them
                # now, or deferred to the next take if one holds the store (the engine's `gc-pending` protocol).
                gc.collect(engine.storage, engine.chunks, blocking=False)
    except Exception:  # storage unreachable: the locks are released already; a later delete can finish the job
        logging.getLogger(__name__).warning("could not settle the stored data of transaction %s", tx.id, exc_info=True)


def _unlock(sessions: Sessions, backup_id: int, vm_id: int | None = None) -> None:
    with sessions() as db:
        backup = db.get(Backup, backup_id)
        if backup is not None:
            backup.locked = False
        vm = db.get(VirtualMachine, vm_id) if vm_id is not None else None
        if vm is not None:
            vm.locked = False
        db.commit()


def fail(sessions: Sessions, tx: Transaction) -> None:
    """Undo a failed or interrupted transaction's locks; a take leaves its backup unbuilt, a convert its template
    removed. Stored data needs no undo: the engine writes atomically and ``Engine.recover`` clears leftovers."""
    if tx.parent_type != "Backup":  # destroy_template: locks nothing, undoes itself; parent_id is no backup's
        return
    vm_id = tx.associated_object_id if tx.action == "restore_backup" else None
    _unlock(sessions, tx.parent_id, vm_id)
    if tx.action in ("take_backup", "take_incremental_backup", "destroy_backup"):
        _settle_stored(sessions, tx)
    if tx.action in ("take_backup", "take_incremental_backup"):
        autobackups.after_backup(sessions, tx.parent_id, False, tx.id)
    if tx.action == "convert_backup":
        with sessions() as db:
            template = db.get(ImageTemplate, tx.params.get("template_id"))
            if template is not None and template.state == "pending":
                db.delete(template)
                db.commit()


ACTIONS: dict[str, Callable[[Sessions, Transaction, Log], None]] = {
    "take_backup": take_backup,
    "take_incremental_backup": take_incremental_backup,
    "restore_backup": restore_backup,
    "convert_backup": convert_backup,
    "destroy_backup": destroy_backup,
    "destroy_template": template_tasks.destroy_template,
}
