"""Run reports keep their duration and the requests/API calls used; run items their side.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("duration_ms", sa.Integer))
        batch.add_column(sa.Column("usage", sa.Text))
    with op.batch_alter_table("run_items") as batch:
        batch.add_column(sa.Column("side", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("run_items") as batch:
        batch.drop_column("side")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("usage")
        batch.drop_column("duration_ms")
