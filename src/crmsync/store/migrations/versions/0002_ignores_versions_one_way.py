"""Ignores remember each side's version when set; pairs can be one-way (recorded events).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ignores") as batch:
        batch.add_column(sa.Column("crm_version", sa.Text))
        batch.add_column(sa.Column("gw_version", sa.Text))
    with op.batch_alter_table("pairs") as batch:
        batch.add_column(sa.Column("one_way", sa.Boolean, nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("pairs") as batch:
        batch.drop_column("one_way")
    with op.batch_alter_table("ignores") as batch:
        batch.drop_column("gw_version")
        batch.drop_column("crm_version")
