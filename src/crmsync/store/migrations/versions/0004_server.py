"""The server edition: users, admin defaults and locks, secrets, sessions, jobs, plans.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _user_fk(primary_key: bool = False, index: bool = False) -> sa.Column:
    return sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                     nullable=False, primary_key=primary_key, index=index)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(254), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("profile_id", sa.Integer,
                  sa.ForeignKey("profiles.id", ondelete="SET NULL"), unique=True),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "admin_settings",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("locked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "server_flags",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "user_secrets",
        _user_fk(primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("error_at", sa.String(32)),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        _user_fk(index=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
    )
    op.create_index("ix_login_failures_key_at", "login_failures", ["key", "at"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        _user_fk(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("queued_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32)),
        sa.Column("finished_at", sa.String(32)),
        sa.Column("heartbeat_at", sa.String(32)),
        sa.Column("worker", sa.String(100)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("run_id", sa.Integer),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_jobs_status_queued", "jobs", ["status", "queued_at"])
    for status in ("queued", "running"):
        where = sa.text(f"status = '{status}'")
        op.create_index(f"uq_jobs_{status}", "jobs", ["user_id", "kind"], unique=True,
                        sqlite_where=where, postgresql_where=where)
    op.create_table(
        "schedule_slots",
        _user_fk(primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("slot", sa.String(32), primary_key=True),
        sa.Column("taken_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer, primary_key=True),
        _user_fk(index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("run_id", sa.Integer),
    )


def downgrade() -> None:
    for table in ("plans", "schedule_slots", "jobs", "login_failures", "web_sessions",
                  "user_secrets", "server_flags", "admin_settings", "users"):
        op.drop_table(table)
