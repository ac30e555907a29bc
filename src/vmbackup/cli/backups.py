"""``vmbackup backups``: the service's backups and their integrity, read from its database (no server needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vmbackup.errors import BackupDamaged, DatabaseUnavailable, NotFound

# The settings and database layers are imported inside the commands: `vmbackup store ...` shares this entry
# point and should not pay for loading SQLAlchemy and the models (~0.4 s) or pydantic-settings (~0.12 s).


# Ids are 32-bit integer columns (PostgreSQL ``integer``): a larger one names no backup, and would overflow the query.
MAX_ID = 2**31 - 1


def _sessions():  # type: ignore[no-untyped-def]
    """Settings and a session factory for an existing, migrated database; DatabaseUnavailable otherwise.

    These commands read what the service wrote: a missing SQLite file means the settings point elsewhere, so it is
    reported rather than created empty (which SQLite would do on connecting)."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from vmbackup.config import SettingsError, load_settings
    from vmbackup.db.session import make_engine, make_session_factory

    try:
        settings = load_settings()
    except SettingsError as exc:
        click.echo(f"vmbackup: {exc}", err=True)
        sys.exit(2)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise DatabaseUnavailable(
            f"no database at {url.database} (set VMBACKUP_DATA_DIR or VMBACKUP_DATABASE_URL to the service's)"
        )
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:  # errors reading it: main() reports them in one line
        if not inspect(conn).has_table("alembic_version"):
            raise DatabaseUnavailable(f"{url.render_as_string()} is not a vmbackup database (no schema version)")
    return settings, make_session_factory(engine)


@click.group()
def backups() -> None:
    """List the service's backups with their integrity, or check one now."""


@backups.command("list")
@click.option("--damaged", is_flag=True, help="Only backups the integrity check found damaged.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_backups(damaged: bool, as_json: bool) -> None:
    """Backups with their last integrity check (VMBACKUP_* settings choose the database)."""
    from sqlalchemy import select

    from vmbackup.db.models import Backup

    _, sessions = _sessions()
    with sessions() as db:
        q = select(Backup).order_by(Backup.id)
        if damaged:
            q = q.where(Backup.integrity == "damaged")
        rows = [
            {
                "id": b.id,
                "identifier": b.identifier,
                "backup_type": b.backup_type,
                "built": b.built,
                "backup_size_kb": b.backup_size,
                "integrity": b.integrity,
                "verified_at": b.verified_at.isoformat() if b.verified_at else None,
                "problems": b.integrity_log,
            }
            for b in db.scalars(q)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':>6}  {'identifier':14}  {'type':11}  {'built':5}  {'kB':>10}  {'integrity':9}  verified at")
    for r in rows:
        click.echo(
            f"{r['id']:>6}  {r['identifier']:14}  {r['backup_type']:11}  {str(r['built']).lower():5}  "
            f"{r['backup_size_kb']:>10}  {r['integrity'] or '-':9}  {r['verified_at'] or 'never'}"
        )
        if r["problems"]:
            for line in r["problems"].splitlines():
                click.echo(f"        {line}")


@backups.command("verify")
@click.argument("backup_id", type=int)
def verify(backup_id: int) -> None:
    """Check backup BACKUP_ID now and record the result; exit 13 when damaged."""
    from vmbackup.db.models import Backup
    from vmbackup.services import integrity

    settings, sessions = _sessions()
    with sessions() as db:
        if not 1 <= backup_id <= MAX_ID or db.get(Backup, backup_id) is None:
            raise NotFound(f"backup {backup_id} not found")
    ok = integrity.check(sessions, backup_id, settings.verify_max_mib_per_second)
    with sessions() as db:
        backup = db.get(Backup, backup_id)
        if backup is None:  # deleted meanwhile
            raise NotFound(f"backup {backup_id} not found")
        click.echo(f"backup {backup.id} ({backup.identifier}): {backup.integrity}")
        for line in (backup.integrity_log or "").splitlines():
            click.echo(f"  {line}")
    sys.exit(0 if ok else BackupDamaged.exit_code)
