"""an index on virtual_machines.identifier

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:00:00

Control panels address VMs by identifier (Squall, Cloud.net, libcloud: issue 11): every such request resolves it
to the VM's id first, which without an index reads the whole table.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_virtual_machines_identifier"), "virtual_machines", ["identifier"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_virtual_machines_identifier"), table_name="virtual_machines")
