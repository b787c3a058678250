"""The sandbox's storage: one SQLite database for every mailbox.

``items`` holds entities (events, contacts, To Do lists and tasks) as the JSON Graph
returns, plus the fields only the server knows (change key, series links, cancelled
occurrences). ``deltas`` holds the state a delta token stands for: the change key of
every entity the round had shown, so the next round reports what differs (changed,
added) and what is gone (``@removed``). ``mail`` logs every message Exchange would have
sent (invitations, updates, cancellations): tests assert crmsync sends none.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, mailbox TEXT NOT NULL, kind TEXT NOT NULL, parent TEXT NOT NULL,
    doc TEXT NOT NULL, change_key TEXT NOT NULL, created TEXT NOT NULL, modified TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_parent ON items (mailbox, kind, parent);
CREATE TABLE IF NOT EXISTS deltas (token TEXT PRIMARY KEY, state TEXT NOT NULL,
                                   created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mail (n INTEGER PRIMARY KEY AUTOINCREMENT, mailbox TEXT,
                                 kind TEXT, subject TEXT, recipients TEXT, at TEXT);
"""


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_id(prefix: str) -> str:
    # Graph ids are long opaque base64 strings; ours are opaque too, just shorter.
    return f"{prefix}{secrets.token_urlsafe(18)}"


def new_change_key() -> str:
    return secrets.token_urlsafe(12)


class Store:
    """Thread-safe access to the database (uvicorn serves from one thread, tests and the
    control API come from others)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    # --- entities -------------------------------------------------------------------------

    def get(self, item_id: str, mailbox: str | None = None) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT doc, change_key, created, modified, mailbox, kind, "
                                  "parent FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None or mailbox is not None and row[4] != mailbox:
            return None
        return self._entity(item_id, row)

    def _entity(self, item_id: str, row: tuple[Any, ...]) -> dict[str, Any]:
        doc = json.loads(row[0])
        doc.update(id=item_id, changeKey=row[1], createdDateTime=row[2],
                   lastModifiedDateTime=row[3])
        doc["_mailbox"], doc["_kind"], doc["_parent"] = row[4], row[5], row[6]
        return doc

    def children(self, mailbox: str, kind: str, parent: str) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT id, doc, change_key, created, modified, mailbox, kind, "
                                   "parent FROM items WHERE mailbox = ? AND kind = ? AND "
                                   "parent = ? ORDER BY created, id",
                                   (mailbox, kind, parent)).fetchall()
        return [self._entity(r[0], r[1:]) for r in rows]

    def put(self, mailbox: str, kind: str, parent: str, doc: dict[str, Any],
            item_id: str | None = None) -> dict[str, Any]:
        """Insert or replace an entity; a new change key every time."""
        body = {k: v for k, v in doc.items() if not k.startswith("_") and k not in (
            "id", "changeKey", "createdDateTime", "lastModifiedDateTime", "@odata.etag")}
        stamp = now_text()
        with self.lock:
            if item_id is None:
                item_id = new_id({"event": "AAMkE", "contact": "AAMkC", "task": "AAMkT",
                                  "list": "AAMkL"}.get(kind, "AAMk"))
            old = self.db.execute("SELECT created FROM items WHERE id = ?", (item_id,)).fetchone()
            self.db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (item_id, mailbox, kind, parent, json.dumps(body), new_change_key(),
                             old[0] if old else stamp, stamp))
            self.db.commit()
        entity = self.get(item_id)
        assert entity is not None
        return entity

    def delete(self, item_id: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM items WHERE id = ? OR parent = ?", (item_id, item_id))
            self.db.commit()

    def wipe(self) -> None:
        with self.lock:
            self.db.execute("DELETE FROM items WHERE kind != 'list' AND kind != 'calendar'")
            self.db.execute("DELETE FROM deltas")
            self.db.execute("DELETE FROM mail")
            self.db.commit()

    # --- delta states -------------------------------------------------------------------

    def save_delta(self, state: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.db.execute("INSERT INTO deltas VALUES (?, ?, ?)",
                            (token, json.dumps(state), now_text()))
            self.db.commit()
        return token

    def load_delta(self, token: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT state FROM deltas WHERE token = ?", (token,)).fetchone()
        return json.loads(row[0]) if row else None

    def expire_deltas(self) -> int:
        """Forget every delta state: the next round with an old token gets 410 Gone."""
        with self.lock:
            count = self.db.execute("DELETE FROM deltas").rowcount
            self.db.commit()
        return count

    # --- mail ---------------------------------------------------------------------------

    def send_mail(self, mailbox: str, kind: str, subject: str, recipients: list[str]) -> None:
        with self.lock:
            self.db.execute("INSERT INTO mail (mailbox, kind, subject, recipients, at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (mailbox, kind, subject, json.dumps(recipients), now_text()))
            self.db.commit()

    def mail(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT mailbox, kind, subject, recipients, at FROM mail "
                                   "ORDER BY n").fetchall()
        return [{"mailbox": r[0], "kind": r[1], "subject": r[2],
                 "recipients": json.loads(r[3]), "at": r[4]} for r in rows]
