"""Worker tasks about image templates: deleting a template converted from a backup, with its stored archive."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.models import BackupServer, ImageTemplate, Transaction
from vmbackup.db.queries import inventory
from vmbackup.errors import BackupMissing, Conflict

Log = Callable[[str], None]


def destroy_template(sessions: sessionmaker[Session], tx: Transaction, log: Log) -> None:
    """Remove the template's archive from its backup server, then its row.

    The row is deleted first and committed last, with the archive removed in between: the database refuses the
    delete if a virtual machine started to use the template since it was asked for (its foreign key), and then no
    data is touched; an error while removing the archive rolls the delete back, so a failed transaction leaves the
    template listed and a new delete can finish the job (an archive already gone counts as removed)."""
    # Imported here: services.tasks imports this module for its table of actions.
    from vmbackup.services.tasks import engine_for, template_archive_id

    with sessions() as db:
        template = db.get(ImageTemplate, tx.parent_id)
        if template is None:
            log(f"Template {tx.parent_id} was already deleted")
            return
        if inventory.vms_of_template(db, template.id):
            raise Conflict("Template cannot be deleted: virtual machines use it")
        server = db.get(BackupServer, template.backup_server_id) if template.backup_server_id else None
        archive_id, label = template_archive_id(template), template.label
        db.delete(template)
        try:
            db.flush()
        except IntegrityError:
            raise Conflict("Template cannot be deleted: virtual machines use it") from None
        if server is None:
            log(f"Template {label!r} had no backup server left: only its record is removed")
        else:
            try:
                freed = engine_for(server).delete(archive_id)
                log(f"Deleted the archive {archive_id} of template {label!r}: {freed / 1024 / 1024:.1f} MiB freed")
            except BackupMissing:
                log(f"Template {label!r} had no stored archive {archive_id}")
        db.commit()
    log(f"Template {tx.parent_id} deleted")
