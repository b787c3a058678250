"""The initial schema: profiles, pairs, cursors, pending, ignores, runs, run items.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _side(prefix: str) -> list[sa.Column]:
    return [
        sa.Column(f"{prefix}_id", sa.Text),
        sa.Column(f"{prefix}_version", sa.Text),
        sa.Column(f"{prefix}_fmt", sa.String(64)),
        sa.Column(f"{prefix}_modified", sa.String(32)),
        sa.Column(f"{prefix}_raw", sa.Text),
    ]


def _profile_fk(primary_key: bool = False) -> sa.Column:
    return sa.Column("profile_id", sa.Integer,
                     sa.ForeignKey("profiles.id", ondelete="CASCADE"),
                     nullable=False, primary_key=primary_key)


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("crm", sa.Text, nullable=False),
        sa.Column("groupware", sa.Text, nullable=False),
        sa.Column("objects", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "pairs",
        sa.Column("id", sa.Integer, primary_key=True),
        _profile_fk(),
        sa.Column("kind", sa.String(16), nullable=False),
        *_side("crm"),
        *_side("gw"),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("profile_id", "kind", "crm_id", name="uq_pairs_crm"),
        sa.UniqueConstraint("profile_id", "kind", "gw_id", name="uq_pairs_gw"),
    )
    op.create_table(
        "cursors",
        _profile_fk(primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("side", sa.String(16), primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "pending",
        _profile_fk(primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("side", sa.String(16), primary_key=True),
        sa.Column("item_id", sa.Text, primary_key=True),
    )
    op.create_table(
        "ignores",
        sa.Column("id", sa.Integer, primary_key=True),
        _profile_fk(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("item_id", sa.Text, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("profile_id", "kind", "side", "item_id", name="uq_ignores_item"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        _profile_fk(),
        sa.Column("objects", sa.Text, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("started_by", sa.String(100)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32)),
        sa.Column("counts", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("dry_run", sa.Boolean, nullable=False),
    )
    op.create_index("ix_runs_profile_started", "runs", ["profile_id", "started_at"])
    op.create_table(
        "run_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("crm_id", sa.Text),
        sa.Column("gw_id", sa.Text),
        sa.Column("label", sa.Text),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_run_items_run_id", "run_items", ["run_id"])


def downgrade() -> None:
    for table in ("run_items", "runs", "ignores", "pending", "cursors", "pairs", "profiles"):
        op.drop_table(table)
