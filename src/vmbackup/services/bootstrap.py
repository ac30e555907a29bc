"""First start: the admin account, the auto-backup presets, and a backup server on the local storage directory."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vmbackup.db.models import BackupServer
from vmbackup.services.auth import Authenticator
from vmbackup.services.schedules import seed_presets
from vmbackup.services.users import ensure_admin


def first_start(
    db: Session, auth: Authenticator, *, login: str, email: str, password: str | None, storage_dir: Path
) -> str | None:
    """Seed an empty database; returns the admin password when it was generated (to print once)."""
    generated = ensure_admin(db, auth, login, email, password)
    seed_presets(db)
    if not db.scalar(select(func.count()).select_from(BackupServer)):
        storage_dir.mkdir(parents=True, exist_ok=True)
        db.add(BackupServer(label="Local storage", ip_address="127.0.0.1", storage_path=str(storage_dir)))
        db.commit()
    return generated
