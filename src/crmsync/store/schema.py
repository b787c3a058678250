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


# --- the server edition (crmsync.server) ------------------------------------------------
# A user of the server owns one profile: its endpoints, objects and own settings. What a
# run uses is that profile's settings under the admin's defaults and locks
# (crmsync.server.settings).

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    # Lower-cased; the sign-in name.
    Column("email", String(254), nullable=False, unique=True),
    # argon2id hash (argon2-cffi's PasswordHasher); never the password.
    Column("password_hash", Text, nullable=False),
    Column("is_admin", Boolean, nullable=False, server_default=false()),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("profile_id", Integer, ForeignKey("profiles.id", ondelete="SET NULL"),
           unique=True),
    Column("created_at", String(32), nullable=False),
)

# Admin defaults for every user, per object and setting; a locked one overrides the
# user's own value and the server refuses changes to it.
admin_settings = Table(
    "admin_settings",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Text),  # JSON; NULL: no default, only a lock on the built-in one
    Column("locked", Boolean, nullable=False, server_default=false()),
    Column("updated_at", String(32), nullable=False),
)

# Server-wide switches, e.g. "paused" (admin: pause all sync). JSON values.
server_flags = Table(
    "server_flags",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", String(32), nullable=False),
)

# A user's connection secrets (crmsync.connectors.base.Credentials as JSON), encrypted
# with the server's Fernet key(s); never sent back to a browser.
user_secrets = Table(
    "user_secrets",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),  # "crm" | "groupware" | ...
    Column("ciphertext", Text, nullable=False),
    Column("updated_at", String(32), nullable=False),
    # The last run found the connection refused (e.g. a revoked Salesforce token): the
    # user must reconnect. Cleared when the connection is saved again or works.
    Column("error", Text),
    Column("error_at", String(32)),
)

# Signed-in browser sessions. The cookie holds a random token; only its SHA-256 is kept.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("expires_at", String(32), nullable=False),
)

# Failed sign-ins, for rate limiting across every web instance (key: email or address).
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(300), nullable=False),
    Column("at", String(32), nullable=False),
)
Index("ix_login_failures_key_at", login_failures.c.key, login_failures.c.at)

# The embedded job queue (SQLite mode; PostgreSQL mode uses Procrastinate's own tables).
# At most one queued and one running job per user and object.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | done | failed
    Column("reason", String(16), nullable=False),  # schedule | now | enabled | retry
    Column("queued_at", String(32), nullable=False),
    Column("started_at", String(32)),
    Column("finished_at", String(32)),
    # A running job whose worker stops beating is put back on the queue.
    Column("heartbeat_at", String(32)),
    Column("worker", String(100)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("run_id", Integer),
    Column("error", Text),
)
Index("ix_jobs_status_queued", jobs.c.status, jobs.c.queued_at)
Index("uq_jobs_queued", jobs.c.user_id, jobs.c.kind, unique=True,
      sqlite_where=jobs.c.status == "queued", postgresql_where=jobs.c.status == "queued")
Index("uq_jobs_running", jobs.c.user_id, jobs.c.kind, unique=True,
      sqlite_where=jobs.c.status == "running", postgresql_where=jobs.c.status == "running")

# Scheduled runs taken by a scheduler: the key makes sure several schedulers enqueue a
# due run once. slot: the start of the last run the due run follows (ISO UTC), or "never"
# (see crmsync.server.scheduler).
schedule_slots = Table(
    "schedule_slots",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("slot", String(32), primary_key=True),
    Column("taken_at", String(32), nullable=False),
)

# Manual sync in the server: a run's plan waiting for the user's review (a plan file,
# crmsync.planfile, with the user's edits), then confirmed and applied by a job.
plans = Table(
    "plans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("kind", String(16), nullable=False),
    # review | confirmed | applied | discarded | stale
    Column("status", String(16), nullable=False),
    Column("body", Text, nullable=False),  # the plan file (JSON), as edited in the review
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("run_id", Integer),  # the run that applied it
)

# The JOURNAL of a run: every write it applied, with the item as it was before (to undo it,
# see crmsync.undo). An entry is written as an intent before the write is sent (outcome
# NULL) and completed with its result after: an entry with a NULL outcome is a write that
# may or may not have happened (the run was cut off).
journal = Table(
    "journal",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    # Numbers the run's writes of one kind in the order they were sent.
    Column("seq", Integer, nullable=False),
    Column("side", String(16), nullable=False),  # the side written
    Column("action", String(16), nullable=False),  # create | update | delete
    # The item written; for a create, the new item's id (known once done).
    Column("item_id", Text),
    # The item before the write (update, delete): its version and content; for a create,
    # the item it copies, as sent.
    Column("before_version", Text),
    Column("before_fmt", String(64)),
    Column("before_raw", Text),
    # The item's version the write left (create, update).
    Column("after_version", Text),
    # The pair's items when the write was planned.
    Column("crm_id", Text),
    Column("gw_id", Text),
    # NULL until done: ok | exists | changed | failed
    Column("outcome", String(16)),
    UniqueConstraint("run_id", "kind", "seq", name="uq_journal_seq"),
)
