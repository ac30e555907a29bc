"""ids never reused, backups bound to what they were taken of, lock keys in a table

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:30:00.000000

Issue 10, F1 and F2:
- SQLite tables become AUTOINCREMENT (a table rebuild: SQLite cannot ALTER that), so a deleted VM's, disk's or
  user's id is never handed to the next one. Each table's counter starts above every id still referred to
  anywhere, not only above the highest row left, so an id deleted before this revision is not reused either.
  PostgreSQL's sequences never reused ids.
- backups get the identifiers of the VM and disk(s) they were taken of. Existing backups are matched to the
  VM and disks that now carry their ids only when those were created before the backup; otherwise the id was
  reused and the backup is left bound to nothing (restorable to a new path by an admin, never onto a stranger).
- transactions get a list of lock keys (``lock_keys``) instead of one, and held keys live in ``locks``; their
  logs keep admin-only text (paths) aside, in ``log_secrets`` (F13).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Every table with an integer id, as of this revision.
TABLES = (
    "users",
    "image_templates",
    "data_stores",
    "backup_server_zones",
    "backup_servers",
    "virtual_machines",
    "disks",
    "backups",
    "transactions",
    "autobackup_presets",
    "schedules",
    "schedule_logs",
)

# Ids held by other rows, beyond each table's own: the counter must pass these too.
REFERENCES = {
    "users": [
        "SELECT max(user_id) FROM backups",
        "SELECT max(user_id) FROM transactions",
        "SELECT max(user_id) FROM schedules",
    ],
    "virtual_machines": [
        "SELECT max(virtual_machine_id) FROM backups",
        "SELECT max(associated_object_id) FROM transactions",
        "SELECT max(target_id) FROM schedules WHERE target_type = 'VirtualMachine'",
    ],
    "disks": ["SELECT max(disk_id) FROM backups", "SELECT max(target_id) FROM schedules WHERE target_type = 'Disk'"],
    "backups": [
        "SELECT max(parent_id) FROM transactions WHERE parent_type = 'Backup'",
        "SELECT max(parent_backup_id) FROM image_templates",
    ],
}


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"

    with op.batch_alter_table("backups") as b:
        b.add_column(sa.Column("vm_identifier", sa.String(14), nullable=True))
        b.add_column(sa.Column("disk_identifier", sa.String(14), nullable=True))
        b.add_column(sa.Column("disk_identifiers", sa.JSON(), nullable=True))
    _bind_existing_backups(bind)

    with op.batch_alter_table("transactions") as b:
        b.add_column(sa.Column("lock_keys", sa.JSON(), nullable=True))
        b.add_column(sa.Column("log_secrets", sa.JSON(), nullable=True))
    rows = bind.execute(sa.text("SELECT id, lock_key FROM transactions")).all()
    txs = sa.table("transactions", sa.column("id", sa.Integer), sa.column("lock_keys", sa.JSON))
    for tx_id, key in rows:
        bind.execute(txs.update().where(txs.c.id == tx_id).values(lock_keys=[key] if key else []))
    with op.batch_alter_table("transactions") as b:
        b.drop_index("ix_transactions_lock")
        b.drop_column("lock_key")
        b.alter_column("lock_keys", existing_type=sa.JSON(), nullable=False)

    op.create_table(
        "locks",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_locks")),
    )
    op.create_index(op.f("ix_locks_transaction_id"), "locks", ["transaction_id"])

    if sqlite:
        # Needs foreign keys off (vmbackup.db.migrate does that for SQLite): the rebuild drops each old table,
        # which with them on would run its ON DELETE actions (schedule logs, templates' owners).
        for table in TABLES:
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
                pass
        for table in TABLES:
            high = max(
                [bind.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar() or 0]
                + [bind.execute(sa.text(q)).scalar() or 0 for q in REFERENCES.get(table, [])]
            )
            bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
            bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"), {"t": table, "s": high})


def _bind_existing_backups(bind: Any) -> None:
    vms = {
        vm_id: (ident, created)
        for vm_id, ident, created in bind.execute(sa.text("SELECT id, identifier, created_at FROM virtual_machines"))
    }
    disks: dict[int, tuple[str, Any, int]] = {
        d_id: (ident, created, vm_id)
        for d_id, ident, created, vm_id in bind.execute(
            sa.text("SELECT id, identifier, created_at, virtual_machine_id FROM disks")
        )
    }
    backups = sa.table(
        "backups",
        sa.column("id", sa.Integer),
        sa.column("vm_identifier", sa.String),
        sa.column("disk_identifier", sa.String),
        sa.column("disk_identifiers", sa.JSON),
    )
    rows = bind.execute(sa.text("SELECT id, virtual_machine_id, disk_id, created_at FROM backups")).all()
    for backup_id, vm_id, disk_id, created in rows:
        vm = vms.get(vm_id)
        if vm is None or vm[1] > created:
            continue  # the VM is gone, or the id now belongs to a VM made after this backup
        if disk_id is not None:
            disk = disks.get(disk_id)
            ok = disk is not None and disk[1] <= created and disk[2] == vm_id
            ids = {f"disk-{disk_id}": disk[0]} if ok and disk else {}
        else:
            ids = {f"disk-{d}": v[0] for d, v in disks.items() if v[2] == vm_id and v[1] <= created}
        bind.execute(
            backups.update()
            .where(backups.c.id == backup_id)
            .values(
                vm_identifier=vm[0],
                disk_identifier=next(iter(ids.values()), None) if disk_id is not None else None,
                disk_identifiers=ids,
            )
        )


def downgrade() -> None:
    raise NotImplementedError("0005 is not reversible: it rebuilds tables and drops transactions.lock_key")
