"""The journal: every write a run applied, with the item before it (for `crmsync undo`).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("item_id", sa.Text),
        sa.Column("before_version", sa.Text),
        sa.Column("before_fmt", sa.String(64)),
        sa.Column("before_raw", sa.Text),
        sa.Column("after_version", sa.Text),
        sa.Column("crm_id", sa.Text),
        sa.Column("gw_id", sa.Text),
        sa.Column("outcome", sa.String(16)),
        sa.UniqueConstraint("run_id", "kind", "seq", name="uq_journal_seq"),
    )


def downgrade() -> None:
    op.drop_table("journal")
