"""Alembic environment: runs against the connection or URL handed over by ``vmbackup.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

from vmbackup.db import models  # noqa: F401  (registers every table)
from vmbackup.db.base import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.begin() as conn:
        _migrate(conn)


def _ours(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave procrastinate's tables (revision 0002, PostgreSQL only) out of autogenerate: they are not our models."""
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
        include_name=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
