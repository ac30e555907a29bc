"""the fleet: hypervisors and their zones, backup server joins, VM addresses and placement fields, workers,
transaction queues, per-user backup space

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:50:00

Issue 11. Existing VMs run on no hypervisor (backed up as before, by any worker); existing transactions go to the
"default" queue, which every worker without --hypervisor/--backup-server serves.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    ]


def _add_fk_column(table: str, column: str, referred: str) -> None:
    """An integer column referring to ``referred.id``. SQLite cannot ALTER a constraint in, but takes one inline in
    ADD COLUMN (no table rebuild, so the AUTOINCREMENT of 0005 stays); the name is the models' convention."""
    name = f"fk_{table}_{column}_{referred}"
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER CONSTRAINT {name} REFERENCES {referred} (id)")
    else:
        op.add_column(table, sa.Column(column, sa.Integer(), nullable=True))
        op.create_foreign_key(name, table, referred, [column], ["id"])
    op.create_index(f"ix_{table}_{column}", table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "hypervisor_zones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=14), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("location_group_id", sa.Integer(), nullable=True),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.Column("server_type", sa.String(length=32), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hypervisor_zones")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "hypervisors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=14), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("hypervisor_type", sa.String(length=32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("hypervisor_group_id", sa.Integer(), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["hypervisor_group_id"],
            ["hypervisor_zones.id"],
            name=op.f("fk_hypervisors_hypervisor_group_id_hypervisor_zones"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hypervisors")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_hypervisors_hypervisor_group_id"), "hypervisors", ["hypervisor_group_id"], unique=False)
    op.create_table(
        "backup_server_joins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backup_server_id", sa.Integer(), nullable=False),
        sa.Column("target_join_type", sa.String(length=32), nullable=False),
        sa.Column("target_join_id", sa.Integer(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["backup_server_id"],
            ["backup_servers.id"],
            name=op.f("fk_backup_server_joins_backup_server_id_backup_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_server_joins")),
        sa.UniqueConstraint(
            "backup_server_id",
            "target_join_type",
            "target_join_id",
            name=op.f("uq_backup_server_joins_backup_server_id"),
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_backup_server_joins_backup_server_id"), "backup_server_joins", ["backup_server_id"], unique=False
    )
    op.create_table(
        "ip_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.Integer(), nullable=True),
        sa.Column("gateway", sa.String(length=64), nullable=True),
        sa.Column("broadcast", sa.String(length=64), nullable=True),
        sa.Column("network_address", sa.String(length=64), nullable=True),
        sa.Column("ipv4", sa.Boolean(), nullable=False),
        sa.Column("ip_net_id", sa.Integer(), nullable=True),
        sa.Column("ip_range_id", sa.Integer(), nullable=True),
        sa.Column("network_id", sa.Integer(), nullable=True),
        sa.Column("virtual_machine_id", sa.Integer(), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["virtual_machine_id"],
            ["virtual_machines.id"],
            name=op.f("fk_ip_addresses_virtual_machine_id_virtual_machines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_addresses")),
        sa.UniqueConstraint("address", name=op.f("uq_ip_addresses_address")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_ip_addresses_virtual_machine_id"), "ip_addresses", ["virtual_machine_id"], unique=False)
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("hypervisor_ids", sa.JSON(), nullable=False),
        sa.Column("backup_server_ids", sa.JSON(), nullable=False),
        sa.Column("cpu_idle", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )

    op.add_column("virtual_machines", sa.Column("cpu_shares", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("virtual_machines", sa.Column("state", sa.String(32), nullable=False, server_default="delivered"))
    op.add_column(
        "virtual_machines", sa.Column("recovery_mode", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "virtual_machines", sa.Column("storage_server_type", sa.String(32), nullable=False, server_default="other")
    )
    _add_fk_column("virtual_machines", "hypervisor_id", "hypervisors")
    op.add_column("users", sa.Column("backup_space_limit", sa.Integer(), nullable=True))
    op.add_column("transactions", sa.Column("queue", sa.String(64), nullable=False, server_default="default"))
    op.create_index("ix_transactions_status_queue", "transactions", ["status", "queue", "id"], unique=False)
    # The server defaults only fill existing rows; the models give new rows their values, as for every column.
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot drop a default without a rebuild; it is harmless
        for table, column in (
            ("virtual_machines", "cpu_shares"),
            ("virtual_machines", "state"),
            ("virtual_machines", "recovery_mode"),
            ("virtual_machines", "storage_server_type"),
            ("transactions", "queue"),
        ):
            op.alter_column(table, column, server_default=None)


def downgrade() -> None:
    op.drop_index("ix_transactions_status_queue", table_name="transactions")
    with op.batch_alter_table("transactions") as batch:
        batch.drop_column("queue")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("backup_space_limit")
    op.drop_index("ix_virtual_machines_hypervisor_id", table_name="virtual_machines")
    with op.batch_alter_table("virtual_machines") as batch:
        if op.get_bind().dialect.name != "sqlite":
            batch.drop_constraint("fk_virtual_machines_hypervisor_id_hypervisors", type_="foreignkey")
        for column in ("hypervisor_id", "storage_server_type", "recovery_mode", "state", "cpu_shares"):
            batch.drop_column(column)
    op.drop_table("workers")
    op.drop_index(op.f("ix_ip_addresses_virtual_machine_id"), table_name="ip_addresses")
    op.drop_table("ip_addresses")
    op.drop_index(op.f("ix_backup_server_joins_backup_server_id"), table_name="backup_server_joins")
    op.drop_table("backup_server_joins")
    op.drop_index(op.f("ix_hypervisors_hypervisor_group_id"), table_name="hypervisors")
    op.drop_table("hypervisors")
    op.drop_table("hypervisor_zones")
