"""procrastinate schema (PostgreSQL only)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 06:00:00.000000

On PostgreSQL, transactions reach workers through procrastinate, whose tables, types and functions live in our
database. They are created here rather than at worker start-up so that one command (`vmbackup migrate`, also run by
`serve` and `worker` at start) brings the whole database to a known state, API processes can defer jobs before any
worker ever started, and a procrastinate upgrade is a reviewed migration: a later revision applies procrastinate's
own `sql/migrations/*.sql` files between the two versions (this revision applies the full schema of the version
installed when it first runs). SQLite deployments use the polling worker and get nothing here. The tables are
procrastinate's, not our models': `env.py` and the migration test leave every `procrastinate_*` name out of the
model comparison.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is not None:
        return  # already applied by hand (`procrastinate schema --apply`): keep it
    from procrastinate.schema import SchemaManager

    # The driver reads %-placeholders even without parameters: escape them, as procrastinate's own apply_schema does.
    bind.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(
        "DROP TABLE IF EXISTS procrastinate_periodic_defers, procrastinate_events, procrastinate_jobs, "
        "procrastinate_workers CASCADE"
    )
    bind.exec_driver_sql(
        """
        DO $$
        DECLARE f record;
        BEGIN
            FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
                     JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE p.proname LIKE 'procrastinate\\_%%' AND n.nspname = current_schema()
            LOOP
                EXECUTE 'DROP FUNCTION IF EXISTS ' || f.sig || ' CASCADE';
            END LOOP;
        END $$
        """
    )
    bind.exec_driver_sql(
        "DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_status, procrastinate_job_event_type "
        "CASCADE"
    )
