"""Storage of the sandbox org: records, the delete log, tokens and counters, in SQLite.

A record is one row: its Id, object, the field values as JSON (datetimes already in
Salesforce's text form, which sorts in time order), IsDeleted and the deletion time. The
server's clock lives here too, because SystemModstamp and retention both read it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from crmsync.sandbox.schema import KEY_PREFIXES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY, sobject TEXT NOT NULL, data TEXT NOT NULL,
    modstamp TEXT NOT NULL, is_deleted INTEGER NOT NULL DEFAULT 0, deleted_at TEXT
);
CREATE INDEX IF NOT EXISTS records_by_object ON records (sobject, is_deleted, modstamp);
CREATE INDEX IF NOT EXISTS records_by_series
    ON records (json_extract(data, '$.ActivityRecurrence2Id')) WHERE sobject = 'Event';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, kind TEXT NOT NULL, user_id TEXT NOT NULL, expires TEXT
);
"""

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def id18(id15: str) -> str:
    """Add the case-safe suffix: one character per 5-character chunk, its bits set where
    the chunk has an upper-case letter (the documented 15 -> 18 character conversion)."""
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, c in enumerate(chunk) if "A" <= c <= "Z")
        suffix += _SUFFIX[bits]
    return id15 + suffix


def valid_id(value: str) -> bool:
    if not isinstance(value, str) or len(value) not in (15, 18) or not value.isalnum():
        return False
    return len(value) == 15 or id18(value[:15]) == value


def to_id18(value: str) -> str:
    return value if len(value) == 18 else id18(value)


def format_datetime(moment: datetime) -> str:
    """Salesforce's form: ``2026-11-22T10:00:00.000+0000`` (UTC, milliseconds)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime:
    """ISO 8601 with ``Z``, ``+0000`` or ``+00:00``; naive means UTC. Raises ValueError."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = text[:-2] + ":" + text[-2:]
    moment = datetime.fromisoformat(text)
    if "T" not in text:
        raise ValueError(f"not a datetime: {text}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_date(text: str) -> date:
    if len(text) != 10:
        raise ValueError(f"not a date: {text}")
    return date.fromisoformat(text)


class Org:
    """The sandbox's one org. Thread-safe: every method holds the lock."""

    def __init__(self, path: str | Path | None = None, daily_limit: int = 15000) -> None:
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(str(path) if path else ":memory:",
                                    check_same_thread=False, isolation_level=None)
        self.conn.executescript(_SCHEMA)
        self.clock_offset = timedelta(0)
        self._last_stamp: datetime | None = None
        self.daily_limit = self.configured_daily_limit = daily_limit
        self.api_calls = 0  # since start, for /_sandbox/stats
        self.api_calls_by: dict[str, int] = {}  # the same, per kind of call
        if self.meta("org_id") is None:
            self.set_meta("org_id", id18("00D" + "RM" + "0" + "000000001"))
            # Whole minutes, as replication reads them.
            self.set_meta("created", format_datetime(self.now().replace(second=0,
                                                                         microsecond=0)))
            self.set_meta("api_used", "0")
        stamp = self.conn.execute("SELECT max(modstamp) FROM records").fetchone()[0]
        if stamp:
            self._last_stamp = parse_datetime(stamp)

    # --- clock --------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def next_stamp(self) -> str:
        """A SystemModstamp later than every earlier one (by at least a millisecond)."""
        with self.lock:
            now = self.now().replace(microsecond=self.now().microsecond // 1000 * 1000)
            if self._last_stamp is not None and now <= self._last_stamp:
                now = self._last_stamp + timedelta(milliseconds=1)
            self._last_stamp = now
            return format_datetime(now)

    # --- counters and settings ----------------------------------------------------------

    def meta(self, key: str) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.lock:
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                              (key, value))

    @property
    def api_used(self) -> int:
        return int(self.meta("api_used") or 0)

    @api_used.setter
    def api_used(self, value: int) -> None:
        self.set_meta("api_used", str(value))

    def new_id(self, sobject: str) -> str:
        return self.new_id_with_prefix(KEY_PREFIXES[sobject])

    def new_id_with_prefix(self, prefix: str) -> str:
        """prefix + pod "RM" + "0" + a 9-character base-62 sequence, then the suffix."""
        with self.lock:
            n = int(self.meta("seq") or 0) + 1
            self.set_meta("seq", str(n))
        digits = ""
        for _ in range(9):
            n, r = divmod(n, 62)
            digits = _BASE62[r] + digits
        return id18(prefix + "RM0" + digits)

    # --- records ------------------------------------------------------------------------

    def insert(self, sobject: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.conn.execute(
                "INSERT INTO records (id, sobject, data, modstamp) VALUES (?, ?, ?, ?)",
                (data["Id"], sobject, json.dumps(data), data["SystemModstamp"]))

    def get(self, record_id: str) -> tuple[str, dict[str, Any], str | None] | None:
        """(object, fields, deleted_at or None) of a record, deleted or not."""
        with self.lock:
            row = self.conn.execute(
                "SELECT sobject, data, deleted_at FROM records WHERE id = ?",
                (to_id18(record_id),)).fetchone()
        if row is None:
            return None
        return row[0], json.loads(row[1]), row[2]

    def save(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.conn.execute("UPDATE records SET data = ?, modstamp = ? WHERE id = ?",
                              (json.dumps(data), data["SystemModstamp"], data["Id"]))

    def mark_deleted(self, record_id: str) -> None:
        stamp = self.next_stamp()
        with self.lock:
            row = self.get(record_id)
            assert row is not None
            data = row[1] | {"IsDeleted": True, "SystemModstamp": stamp}
            self.conn.execute(
                "UPDATE records SET data = ?, modstamp = ?, is_deleted = 1, deleted_at = ? "
                "WHERE id = ?", (json.dumps(data), stamp, stamp, data["Id"]))

    def records(self, sobject: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT data FROM records WHERE sobject = ?"
        if not include_deleted:
            sql += " AND is_deleted = 0"
        with self.lock:
            rows = self.conn.execute(sql + " ORDER BY rowid", (sobject,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def series_records(self, series_id: str) -> list[dict[str, Any]]:
        """The Event records (not deleted) of one series: deleting an occurrence of a
        large org's series does not read every Event."""
        return self.records_with("Event", "ActivityRecurrence2Id", [series_id])

    def records_with(self, sobject: str, name: str, values: list[str],
                     include_deleted: bool = False) -> list[dict[str, Any]]:
        """The records whose ``Id`` or ``ActivityRecurrence2Id`` (indexed) is one of
        ``values``, in insertion order."""
        column = {"Id": "id", "ActivityRecurrence2Id":
                  "json_extract(data, '$.ActivityRecurrence2Id')"}[name]
        found: list[tuple[int, str]] = []
        for n in range(0, len(values), 500):
            chunk = values[n:n + 500]
            sql = (f"SELECT rowid, data FROM records WHERE sobject = ? AND {column} IN "
                   f"({', '.join('?' * len(chunk))})")
            if not include_deleted:
                sql += " AND is_deleted = 0"
            with self.lock:
                found += self.conn.execute(sql, (sobject, *chunk)).fetchall()
        return [json.loads(data) for _, data in sorted(found)]

    def updated_ids(self, sobject: str, start: str, end: str) -> list[str]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT id FROM records WHERE sobject = ? AND is_deleted = 0 "
                "AND modstamp >= ? AND modstamp < ? ORDER BY modstamp", (sobject, start, end))
            return [r[0] for r in rows]

    def deleted_between(self, sobject: str, start: str, end: str) -> list[tuple[str, str]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT id, deleted_at FROM records WHERE sobject = ? AND is_deleted = 1 "
                "AND deleted_at >= ? AND deleted_at < ? ORDER BY deleted_at",
                (sobject, start, end))
            return [(r[0], r[1]) for r in rows]

    def purge_deleted(self, before: str) -> None:
        """Empty the recycle bin of records deleted before ``before``; remember the latest
        purged deletion so that getDeleted can refuse to answer for earlier times."""
        with self.lock:
            latest = self.conn.execute(
                "SELECT max(deleted_at) FROM records WHERE is_deleted = 1 AND deleted_at < ?",
                (before,)).fetchone()[0]
            if latest is None:
                return
            self.conn.execute("DELETE FROM records WHERE is_deleted = 1 AND deleted_at < ?",
                              (before,))
            if latest > (self.meta("purged_until") or ""):
                self.set_meta("purged_until", latest)

    def clear_records(self) -> None:
        with self.lock:
            self.conn.execute("DELETE FROM records WHERE sobject != 'User'")

    # --- transactions -------------------------------------------------------------------

    def savepoint(self) -> _Savepoint:
        return _Savepoint(self)

    # --- tokens -------------------------------------------------------------------------

    def issue_token(self, kind: str, user_id: str, ttl: timedelta | None) -> str:
        org = self.meta("org_id") or ""
        token = (org[:15] + "!" if kind == "access" else "5Aep861") + secrets.token_urlsafe(48)
        expires = format_datetime(self.now() + ttl) if ttl else None
        with self.lock:
            self.conn.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)",
                              (token, kind, user_id, expires))
        return token

    def token_user(self, token: str, kind: str) -> str | None:
        """The user a live token of that kind belongs to, else None."""
        with self.lock:
            row = self.conn.execute(
                "SELECT user_id, expires FROM tokens WHERE token = ? AND kind = ?",
                (token, kind)).fetchone()
        if row is None:
            return None
        if row[1] is not None and row[1] <= format_datetime(self.now()):
            return None
        return row[0]

    def revoke(self, token: str | None = None, kind: str | None = None) -> None:
        with self.lock:
            if token is not None:
                self.conn.execute("DELETE FROM tokens WHERE token = ?", (token,))
            else:
                self.conn.execute("DELETE FROM tokens WHERE kind = ?", (kind,))

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class _Savepoint:
    """``with org.savepoint() as sp: ... sp.rollback()``: all-or-nothing writes."""

    def __init__(self, org: Org) -> None:
        self.org = org
        self.rolled_back = False

    def __enter__(self) -> _Savepoint:
        self.org.lock.acquire()
        self.org.conn.execute("SAVEPOINT dml")
        return self

    def rollback(self) -> None:
        self.org.conn.execute("ROLLBACK TO dml")
        self.rolled_back = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None and not self.rolled_back:
                self.org.conn.execute("ROLLBACK TO dml")
            self.org.conn.execute("RELEASE dml")
        finally:
            self.org.lock.release()
