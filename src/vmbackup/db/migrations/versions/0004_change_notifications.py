"""change notifications for the listing cache (PostgreSQL only)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:00:00.000000

API processes keep rendered backup listings in memory (api/listing_cache.py) and must learn of every commit that
changes what a listing shows, whichever process or tool made it. A statement-level trigger on each table a listing
reads sends ``NOTIFY vmbackup_changes``; PostgreSQL delivers it at commit (never for a rolled-back transaction) and
folds repeats within one transaction into one. Statement-level, so a bulk UPDATE costs one notification, not one per
row. SQLite needs nothing: its ``data_version`` pragma already moves on every commit (db/changes.py).
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FUNCTION = "vmbackup_notify_change"
# As db/changes.py had them when this revision was written (a migration does not follow later edits of the code).
CHANNEL = "vmbackup_changes"
WATCHED_TABLES = ("users", "virtual_machines", "disks", "backups")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END $$
        """
    )
    for table in WATCHED_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in WATCHED_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_change ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
