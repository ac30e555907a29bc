"""sign-in names: every login and email, lower-cased, reserved once across both columns

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 20:30:00

Existing users get their names; where legacy data already has one user's login equal to another's email (what this
table now prevents), the older account (lower id) keeps the name, as sign-in resolves it (db/queries/users.py), and
the other must change that login or email before its next rename can be saved.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    names = op.create_table(
        "signin_names",
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_signin_names_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_signin_names")),
    )
    op.create_index(op.f("ix_signin_names_user_id"), "signin_names", ["user_id"], unique=False)
    claimed: dict[str, int] = {}
    for user_id, login, email in op.get_bind().execute(sa.text("SELECT id, login, email FROM users ORDER BY id")):
        for name in (login.lower(), email.lower()):  # db/models/users.signin_name, frozen here
            claimed.setdefault(name, user_id)
    if claimed:
        op.bulk_insert(names, [{"name": name, "user_id": user_id} for name, user_id in claimed.items()])


def downgrade() -> None:
    op.drop_index(op.f("ix_signin_names_user_id"), table_name="signin_names")
    op.drop_table("signin_names")
