"""The state store's tables (SQLAlchemy Core). Changes to them go through Alembic.

Times are ISO-8601 UTC strings ("2026-11-22T09:00:00Z"): portable between SQLite and
PostgreSQL and sortable as text.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

profiles = Table(
    "profiles",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("crm", Text, nullable=False),
    Column("groupware", Text, nullable=False),
    # JSON list of object kinds this profile syncs.
    Column("objects", Text, nullable=False),
    # JSON: {kind: {setting: value}}
    Column("settings", Text, nullable=False, default="{}"),
    Column("created_at", String(32), nullable=False),
)


def _side_columns(prefix: str) -> list[Column]:
    # The side's id and version, and its BASE: the item as that side had it at the last
    # sync of the pair, in the side's own format. A NULL gw_raw with a gw_fmt means the
    # groupware base is byte-for-byte the CRM base (an item copied verbatim), stored once.
    return [
        Column(f"{prefix}_id", Text),
        Column(f"{prefix}_version", Text),
        Column(f"{prefix}_fmt", String(64)),
        Column(f"{prefix}_modified", String(32)),
        Column(f"{prefix}_raw", Text),
    ]


pairs = Table(
    "pairs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("profile_id", Integer, ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    *_side_columns("crm"),
    *_side_columns("gw"),
    Column("updated_at", String(32), nullable=False),
    # A recorded event (SnapRecord): groupware changes flow to the CRM, never back.
    Column("one_way", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("profile_id", "kind", "crm_id", name="uq_pairs_crm"),
    UniqueConstraint("profile_id", "kind", "gw_id", name="uq_pairs_gw"),
)

cursors = Table(
    "cursors",
    metadata,
    Column("profile_id", Integer, ForeignKey("profiles.id", ondelete="CASCADE"),
           primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("side", String(16), primary_key=True),
    Column("value", Text),
    Column("updated_at", String(32), nullable=False),
)

# Items whose change was not settled by a run (failed, or a conflict awaiting a decision):
# the next run fetches them again although the cursor has moved past them.
pending = Table(
    "pending",
    metadata,
    Column("profile_id", Integer, ForeignKey("profiles.id", ondelete="CASCADE"),
           primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("side", String(16), primary_key=True),
    Column("item_id", Text, primary_key=True),
)

ignores = Table(
    "ignores",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("profile_id", Integer, ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("side", String(16), nullable=False),
    Column("item_id", Text, nullable=False),
    # "forever", or "until-change" (lifted when either side changes again)
    Column("mode", String(16), nullable=False),
    # Each side's version when the ignore was set (until-change compares with them).
    Column("crm_version", Text),
    Column("gw_version", Text),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("profile_id", "kind", "side", "item_id", name="uq_ignores_item"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("profile_id", Integer, ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False),
    Column("objects", Text, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("started_by", String(100)),
    # running | ok | partial | failed | aborted | cancelled
    Column("status", String(16), nullable=False),
    Column("started_at", String(32), nullable=False),
    Column("finished_at", String(32)),
    # JSON: {kind: {"create:crm": n, ...}}
    Column("counts", Text),
    Column("error", Text),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("duration_ms", Integer),
    # JSON: requests sent per side and a side's other counters (API calls, allowance):
    # {"requests": {"crm": 4}, "api": {"crm": {"api_calls": 4, "api_limit": 15000}}}
    Column("usage", Text),
)
Index("ix_runs_profile_started", runs.c.profile_id, runs.c.started_at)

run_items = Table(
    "run_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("kind", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    # The side the action writes or, for a skip, concerns; NULL when neither.
    Column("side", String(16)),
    Column("crm_id", Text),
    Column("gw_id", Text),
    Column("label", Text),
    # applied | skipped | failed | conflict
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
)
