"""``msgraph:USER``: one mailbox's calendar, contacts and Microsoft To Do tasks over Graph.

USER is ``me`` (a signed-in user, delegated token) or a mailbox address (the server
edition, an application token). Settings come from the query string, e.g.
``msgraph:me?calendar=Work&tasklist=CRM%20follow-ups``:

``calendar``   the calendar's name or id (default: the user's default calendar)
``tasklist``   the To Do list's name or id (default: the list Outlook calls "Tasks")
``graph_url``  Graph's root (default https://graph.microsoft.com; the sandbox's URL)
``past_days``, ``future_days``  the calendarView window (defaults 30 and 365)
``page_size``  ``Prefer: odata.maxpagesize`` of delta rounds (default 100)

In the vocabulary of :mod:`crmsync.connectors.base`:

ID
    A Graph id: an event's (a recurring series': its seriesMaster's), a contact's, a
    todoTask's.
ITEM
    FORMAT ``application/vnd.crmsync.msgraph+json`` (:mod:`crmsync.formats.msgraph`).
VERSION
    The change key (events, contacts) or ``@odata.etag`` (tasks); for a series the
    master's change key plus a digest of its exceptions' and cancelled occurrences.
CURSOR
    JSON: the ``@odata.deltaLink`` of the last round, the calendarView window it was
    opened with and, for the calendar, which series each instance id belongs to (an
    ``@removed`` entry carries only the id).

Listing. calendarView delta lists single events, occurrences and exceptions inside the
window (re-opened with a full round once the sync range has moved on a week), never
series masters: a listed occurrence or exception means "read its series
again", which is its master and its instances (both in one ``$batch``). The occurrences
the pattern has but the instances lack are the cancelled ones (EXDATE). A delta token
Graph no longer knows (410 Gone) starts a full round. Contacts: ``/contacts/delta``;
tasks: ``/todo/lists/{id}/tasks/delta``.
https://learn.microsoft.com/en-us/graph/api/event-delta
https://learn.microsoft.com/en-us/graph/api/contact-delta
https://learn.microsoft.com/en-us/graph/api/todotask-delta

Writing. Requests go in JSON batches of 20. Updates and deletes carry ``If-Match`` with
the etag they were planned from; 412 is Result "changed" (the core re-plans). A create
carries a ``transactionId`` derived from its source item, so Graph answers a create sent
twice with the event of the first: event creates are safe to repeat; contact and task
creates are not, and a lost answer to one is not resent (see dav.Http).

No mail to attendees, by construction (Graph sends invitations when an event is created
with attendees, updates when the organizer changes a meeting, cancellations when the
organizer deletes one; https://learn.microsoft.com/en-us/graph/api/user-post-events,
.../event-update, .../event-delete):

* crmsync never writes the ``attendees`` property. The attendees of an event that comes
  from the CRM are kept in its body, in an invitee block that is read back as attendees.
* An event that already has Graph attendees (a meeting) is written only in the fields
  that stay in the user's own mailbox: categories, show-as, sensitivity, reminder. A
  change to its subject, time, place, body, attendees, pattern or occurrences fails that
  item with the reason (Outlook is where meetings are rescheduled).
* A meeting the user organizes is never deleted (that sends cancellations); a meeting
  someone else organizes may be (deleting an invitation sends nothing).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx

from crmsync.connectors.base import (
    Capabilities,
    Changes,
    Checkpoint,
    Connector,
    Create,
    Credentials,
    Item,
    ReadProgress,
    Result,
    Side,
    Update,
    Window,
    Write,
)
from crmsync.connectors.graphapi import GRAPH_URL, Client, GraphError, Reply, Request, Sleep
from crmsync.errors import ConfigError, CrmsyncError, unexpected
from crmsync.formats import msgraph as fmt
from crmsync.formats.salesforce import slots
from crmsync.merge import apply_changes
from crmsync.model import Event, ObjectKind, Record

FORMAT = fmt.FORMAT
WINDOW_SLACK = timedelta(days=7)
# Exchange keeps at most this many characters of an item's subject, and cuts longer ones
# ("The subject is limited to 255 characters", EWS Subject element): a cut copy would
# come back as a change, so such an item is not synced at all (SPEC 5).
SUBJECT_LIMIT = 255
RESYNC_CODES = ("SyncStateNotFound", "SyncStateInvalid", "resyncRequired", "syncStateNotFound")
# Fields of a meeting that stay in the user's mailbox: writing them mails nobody.
PRIVATE_FIELDS = frozenset({"categories", "show_as", "private", "reminders"})
EVENT_PROPERTIES = {
    "summary": ("subject",), "start": ("start", "end", "isAllDay"),
    "end": ("start", "end", "isAllDay"), "tz": ("start", "end"), "location": ("location",),
    "description": ("body",), "attendees": ("body",), "private": ("sensitivity",),
    "show_as": ("showAs",), "categories": ("categories",),
    "reminders": ("isReminderOn", "reminderMinutesBeforeStart"), "rrule": ("recurrence",),
}
CAPABILITY_FIELDS: dict[ObjectKind, frozenset[str]] = {
    "calendar": frozenset({"summary", "start", "end", "tz", "location", "description",
                           "private", "show_as", "categories", "attendees", "reminders",
                           "rrule", "exdates", "overrides"}),
    "contacts": frozenset({"full_name", "given_name", "family_name", "emails", "phones",
                           "company", "title", "addresses", "birthday", "note", "categories"}),
    "tasks": frozenset({"summary", "description", "start", "due", "status", "priority",
                        "categories"}),
}


@dataclass(frozen=True)
class Settings:
    calendar: str | None = None
    tasklist: str | None = None
    graph_url: str = GRAPH_URL
    past_days: int = 30
    future_days: int = 365
    page_size: int = 100

    @classmethod
    def from_query(cls, query: str) -> Settings:
        values: dict[str, Any] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in cls.__dataclass_fields__:
                raise ConfigError(f"unknown Microsoft Graph setting {name!r}; known: "
                                  f"{', '.join(sorted(cls.__dataclass_fields__))}")
            if cls.__dataclass_fields__[name].type == "int":
                if not value.isdigit():
                    raise ConfigError(f"Microsoft Graph setting {name}={value!r} is not a "
                                      "number")
                values[name] = int(value)
            else:
                values[name] = value or None
        if values.get("graph_url") is None:
            values.pop("graph_url", None)
        return cls(**values)


def split_endpoint(location: str) -> tuple[str, Settings]:
    """``me?calendar=Work`` -> ("me", settings)."""
    user, _, query = location.partition("?")
    if not user or "/" in user:
        raise ConfigError(f"msgraph endpoint {location!r} must name a user: msgraph:me or "
                          "msgraph:someone@example.com")
    settings = Settings.from_query(query)
    parts = urlsplit(settings.graph_url)
    if parts.scheme != "https" or not parts.netloc:
        raise ConfigError(f"graph_url {settings.graph_url!r} must be an https URL")
    return user, settings


@dataclass
class _Cursor:
    delta: str | None = None
    window: tuple[str, str] | None = None
    members: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps({"v": 1, "delta": self.delta, "window": self.window,
                           "members": self.members}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> _Cursor | None:
        try:
            data = json.loads(text or "")
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        window = data.get("window")
        return cls(data.get("delta"), tuple(window) if window else None,  # type: ignore[arg-type]
                   dict(data.get("members") or {}))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


def _etag(entity: dict[str, Any]) -> str:
    return str(entity.get("@odata.etag") or f'W/"{entity.get("changeKey", "")}"')


class GraphConnector(Connector):
    """One mailbox in one tenant; see the module docstring."""

    def __init__(self, location: str, side: Side = "groupware", *,
                 credentials: Credentials | None = None, settings: Settings | None = None,
                 time_range: tuple[datetime, datetime] | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Sleep = time.sleep) -> None:
        self.user, parsed = split_endpoint(location)
        self.settings = settings or parsed
        self.side = side
        self.client = Client(self.settings.graph_url, credentials, timeout=timeout,
                             transport=transport, sleep=sleep)
        self.prefix = "/me" if self.user == "me" else f"/users/{quote(self.user)}"
        if time_range is None:
            now = datetime.now(UTC).replace(microsecond=0)
            time_range = (now - timedelta(days=self.settings.past_days),
                          now + timedelta(days=self.settings.future_days))
        self.time_range = time_range
        self.capabilities = Capabilities(fields=dict(CAPABILITY_FIELDS), batch_size=100,
                                         keeps_uid=False)
        self._state: dict[ObjectKind, _Cursor] = {}
        self._calendar: str | None = None
        self._tasklist: str | None = None
        self._created = 0

    def __repr__(self) -> str:
        return f"GraphConnector({self.user})"

    def image(self, kind: ObjectKind) -> Callable[[Record], Record]:
        """A record as written here and read back (see formats.msgraph.image)."""
        return fmt.image  # type: ignore[return-value]

    def stats(self) -> dict[str, int]:
        return {"requests": self.client.http.requests, "api_calls": self.client.calls,
                "batches": self.client.batches, "throttled": self.client.throttled}

    def close(self) -> None:
        self.client.close()

    # --- where things are ------------------------------------------------------------------

    def calendar_path(self) -> str:
        if self._calendar is None:
            wanted = self.settings.calendar
            if wanted is None:
                self._calendar = f"{self.prefix}/calendar"
            else:
                found = self._named(f"{self.prefix}/calendars", "name", wanted)
                self._calendar = f"{self.prefix}/calendars/{quote(found)}"
        return self._calendar

    def tasks_path(self) -> str:
        if self._tasklist is None:
            lists = self.client.call("GET", f"{self.prefix}/todo/lists").get("value") or []
            wanted = self.settings.tasklist
            found = [x["id"] for x in lists if wanted in (x.get("id"), x.get("displayName"))] \
                if wanted else [x["id"] for x in lists
                                if x.get("wellknownListName") == "defaultList"]
            if not found:
                names = ", ".join(x.get("displayName", "") for x in lists)
                raise ConfigError(f"no To Do list {wanted or 'Tasks'!r} for {self.user}; "
                                  f"there are: {names}")
            self._tasklist = f"{self.prefix}/todo/lists/{quote(found[0])}/tasks"
        return self._tasklist

    def _named(self, path: str, key: str, wanted: str) -> str:
        values = self.client.call("GET", path).get("value") or []
        for value in values:
            if wanted in (value.get("id"), value.get(key)):
                return str(value["id"])
        raise ConfigError(f"no calendar {wanted!r} for {self.user}; there are: "
                          f"{', '.join(str(v.get(key)) for v in values)}")

    def _item_path(self, kind: ObjectKind, item_id: str) -> str:
        if kind == "calendar":
            return f"{self.prefix}/events/{quote(item_id)}"
        if kind == "contacts":
            return f"{self.prefix}/contacts/{quote(item_id)}"
        return f"{self.tasks_path()}/{quote(item_id)}"

    def _window(self, kind: ObjectKind) -> tuple[datetime, datetime]:
        state = self._state.get(kind)
        if state is not None and state.window:
            return (datetime.fromisoformat(state.window[0].replace("Z", "+00:00")),
                    datetime.fromisoformat(state.window[1].replace("Z", "+00:00")))
        return self.time_range

    def _prefer(self) -> dict[str, str]:
        return {"Prefer": f'outlook.timezone="UTC", odata.maxpagesize={self.settings.page_size}'}

    # --- listing ---------------------------------------------------------------------------

    def list_changes(self, kind: ObjectKind, cursor: str | None, *,
                     window: Window | None = None,
                     checkpoint: Checkpoint | None = None,
                     progress: ReadProgress | None = None) -> Changes:
        old = _Cursor.decode(cursor)
        if old is not None and old.window and datetime.fromisoformat(
                old.window[1].replace("Z", "+00:00")) < self.time_range[1] - WINDOW_SLACK:
            # A round is bound to its window; as the sync range moves on, a new round opens
            # (a full one, so the core checks the paired items it no longer lists).
            old = None
        state = _Cursor(members=dict(old.members)) if old is not None else _Cursor()
        if old is not None and old.delta:
            state.window = old.window
            url = old.delta
        else:
            url = self._first_url(kind, state, window)
        try:
            entries, delta = self.client.pages(url, self._prefer())
        except GraphError as exc:
            if old is None or not old.delta or exc.status != 410 and exc.code not in RESYNC_CODES:
                raise
            # Graph forgot the round (410 Gone): a full one, from which deletions follow.
            state = _Cursor()
            entries, delta = self.client.pages(self._first_url(kind, state, window),
                                               self._prefer())
            old = None
        state.delta = delta
        self._state[kind] = state
        changes = Changes(complete=old is None or not old.delta)
        if kind == "calendar":
            items, deleted = self._calendar_changes(entries, state)
        else:
            items = {e["id"]: self._item(kind, e) for e in entries if "@removed" not in e}
            deleted = [e["id"] for e in entries if "@removed" in e]
        changes.upserts = [(i.id, i.version, i) for i in sorted(items.values(), key=lambda i: i.id)]
        changes.deleted = sorted(set(deleted) - items.keys())
        changes.cursor = state.encode()
        return changes

    def _first_url(self, kind: ObjectKind, state: _Cursor, window: Window | None) -> str:
        if kind == "contacts":
            return f"{self.prefix}/contacts/delta"
        if kind == "tasks":
            return f"{self.tasks_path()}/delta"
        start, end = window or self.time_range
        state.window = (_iso(start), _iso(end))
        return (f"{self.calendar_path()}/calendarView/delta?"
                + urlencode({"startDateTime": _iso(start), "endDateTime": _iso(end)}))

    def _calendar_changes(self, entries: list[dict[str, Any]], state: _Cursor
                          ) -> tuple[dict[str, Item], list[str]]:
        singles: dict[str, Item] = {}
        touched: set[str] = set()
        removed: list[str] = []
        for entry in entries:
            entry_id = str(entry.get("id"))
            if "@removed" in entry:
                if entry_id in state.members:
                    touched.add(state.members.pop(entry_id))
                else:
                    removed.append(entry_id)
            elif entry.get("type") in ("occurrence", "exception"):
                state.members[entry_id] = str(entry["seriesMasterId"])
                touched.add(str(entry["seriesMasterId"]))
            elif entry.get("type") == "seriesMaster":
                touched.add(entry_id)
            else:
                singles[entry_id] = self._item("calendar", entry)
        series = self._read_series(sorted(touched))
        for master in touched - series.keys():
            removed.append(master)
            state.members = {i: m for i, m in state.members.items() if m != master}
        return {**singles, **series}, removed

    # --- reading ---------------------------------------------------------------------------

    def _item(self, kind: ObjectKind, entity: dict[str, Any],
              extra: dict[str, Any] | None = None) -> Item:
        key = {"calendar": "event", "contacts": "contact", "tasks": "task"}[kind]
        doc = {key: entity, **(extra or {})}
        version = str(entity.get("changeKey") or _etag(entity))
        if extra:
            version += "+" + _digest([*(str(x.get("changeKey") or x.get("@odata.etag"))
                                        for x in extra.get("exceptions") or []),
                                      *extra.get("cancelled", [])])
        return Item(str(entity["id"]), version, fmt.dump(doc), FORMAT, kind,
                    modified=fmt.read_offset(entity.get("lastModifiedDateTime")),
                    uid=str(entity.get("iCalUId") or "") or None)

    def _read_series(self, masters: Sequence[str]) -> dict[str, Item]:
        """Each series' master and instances in the window (one batch per 10 series)."""
        if not masters:
            return {}
        start, end = self._window("calendar")
        span = urlencode({"startDateTime": _iso(start), "endDateTime": _iso(end)})
        requests = []
        for master in masters:
            path = self._item_path("calendar", master)
            requests += [Request("GET", path), Request("GET", f"{path}/instances?{span}",
                                                       headers=self._prefer())]
        replies = self.client.batch(requests)
        out: dict[str, Item] = {}
        state = self._state.setdefault("calendar", _Cursor())
        for n, master_id in enumerate(masters):
            head, listing = replies[2 * n], replies[2 * n + 1]
            if head.status == 404:
                continue
            _ok(head, "reading a series")
            if head.body.get("type") != "seriesMaster":
                out[master_id] = self._item("calendar", head.body)
                continue
            instances = list(_ok(listing, "listing a series' instances").get("value") or [])
            if listing.body.get("@odata.nextLink"):
                more, _ = self.client.pages(listing.body["@odata.nextLink"], self._prefer())
                instances += more
            for inst in instances:
                state.members[str(inst["id"])] = master_id
            out[master_id] = self._series_item(head.body, instances, (start, end))
        return out

    def _series_item(self, master: dict[str, Any], instances: list[dict[str, Any]],
                     window: tuple[datetime, datetime]) -> Item:
        pattern = fmt.parse_event(fmt.dump({"event": master}))
        all_day = pattern.all_day
        shown = {fmt.original_start(i, all_day) for i in instances}
        lo, hi = (_iso(window[0]), _iso(window[1])) if not all_day else \
            (window[0].date().isoformat(), window[1].date().isoformat())
        cancelled = [s for s in slots(pattern, hi) if lo <= s < hi and s not in shown]
        exceptions = [i for i in instances if i.get("type") == "exception"]
        return self._item("calendar", master, {"exceptions": exceptions,
                                               "cancelled": cancelled})

    def fetch(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, Item]:
        if not ids:
            return {}
        replies = self.client.batch([Request("GET", self._item_path(kind, i)) for i in ids])
        out: dict[str, Item] = {}
        masters = []
        for item_id, reply in zip(ids, replies, strict=True):
            if reply.status == 404:
                continue
            body = _ok(reply, f"reading {item_id}")
            if kind == "calendar" and body.get("type") == "seriesMaster":
                masters.append(item_id)
            else:
                out[item_id] = self._item(kind, body)
        out.update(self._read_series(masters))
        return out

    # --- writing ---------------------------------------------------------------------------

    def refuses(self, kind: ObjectKind, record: Record) -> str | None:
        subject = getattr(record, "summary", "") or ""
        if kind != "contacts" and len(subject) > SUBJECT_LIMIT:
            return (f"the subject is {len(subject)} characters, Exchange keeps at most "
                    f"{SUBJECT_LIMIT} (it would cut it): not synced (shorten it)")
        return None

    def apply(self, kind: ObjectKind, writes: Sequence[Write]) -> list[Result]:
        results: list[Result | None] = [None] * len(writes)
        current = self.fetch(kind, [w.id for w in writes if not isinstance(w, Create)])
        requests: list[tuple[int, Request]] = []
        follow: dict[int, Record] = {}  # series whose occurrences need writing afterwards
        unchanged: dict[int, str] = {}
        for i, write in enumerate(writes):
            try:
                if isinstance(write, Create):
                    record = write.content()
                    requests.append((i, self._create_request(kind, write, record)))
                    if isinstance(record, Event) and (record.exdates or record.overrides):
                        follow[i] = record
                elif isinstance(write, Update):
                    item = current.get(write.id)
                    if item is None or item.version != write.version:
                        results[i] = Result("changed", item)
                        continue
                    request, record = self._update_request(kind, write, item)
                    if request is not None:
                        requests.append((i, request))
                    if isinstance(record, Event) and self._occurrences_differ(item, record):
                        follow[i] = record
                        if request is None:
                            unchanged[i] = write.id  # only its occurrences change
                    elif request is None:
                        results[i] = Result("ok", item)
                else:
                    item = current.get(write.id)
                    if item is None:
                        results[i] = Result("ok")
                        continue
                    if item.version != write.version:
                        results[i] = Result("changed", item)
                        continue
                    self._may_delete(kind, item)
                    requests.append((i, Request("DELETE", self._item_path(kind, write.id),
                                                headers={"If-Match": _etag(_entity(item))})))
            except CrmsyncError as exc:
                results[i] = Result("failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - a mapping bug fails this item only
                results[i] = Result("failed", error=f"cannot be mapped to Microsoft Graph: "
                                                    f"{unexpected(exc)}")
        replies = self.client.batch([r for _, r in requests])
        written: dict[int, str] = dict(unchanged)
        for (i, request), reply in zip(requests, replies, strict=True):
            if request.method == "DELETE":
                results[i] = Result("ok") if reply.status in (204, 404) else \
                    Result("changed") if reply.status == 412 else \
                    Result("failed", error=str(_error(reply)))
            elif reply.status == 412:
                results[i] = Result("changed")
            elif reply.status >= 400:
                results[i] = Result("failed", error=str(_error(reply)))
                follow.pop(i, None)
            else:
                written[i] = str(reply.body["id"])
                if not (kind == "calendar" and (reply.body.get("type") == "seriesMaster"
                                                or i in follow)):
                    results[i] = Result("ok", self._item(kind, reply.body))
        for i, record in follow.items():
            if i in written:
                error = self._write_occurrences(written[i], record)  # type: ignore[arg-type]
                if error:
                    results[i] = Result("failed", error=error)
        todo = {i: item_id for i, item_id in written.items() if results[i] is None}
        fresh = self.fetch(kind, sorted(set(todo.values())))
        for i, item_id in todo.items():
            results[i] = Result("ok", fresh.get(item_id))
        return [r if r is not None else Result("failed", error="not written") for r in results]

    def _create_request(self, kind: ObjectKind, write: Create, record: Record) -> Request:
        if kind == "calendar":
            assert isinstance(record, Event)
            body = {k: v for k, v in fmt.event_fields(record).items()
                    if k in _WRITABLE_EVENT and v is not None}
            # The same source item created twice is one event: Graph answers a POST with
            # a known transactionId with the event the first one made.
            body["transactionId"] = "crmsync-" + _digest(
                [write.source.id, write.source.version, record.summary])
            return Request("POST", f"{self.calendar_path()}/events", body)
        if kind == "contacts":
            body = fmt.contact_fields(record)  # type: ignore[arg-type]
            return Request("POST", f"{self.prefix}/contacts", _no_nulls(body), repeatable=False)
        body = fmt.task_fields(record)  # type: ignore[arg-type]
        return Request("POST", self.tasks_path(), _no_nulls(body), repeatable=False)

    def _update_request(self, kind: ObjectKind, write: Update, item: Item
                        ) -> tuple[Request | None, Record]:
        planned = write.planned if write.planned is not None \
            and write.planned.version == item.version else item
        record = apply_changes(planned.record(), write.changes)
        entity = _entity(item)
        if kind == "calendar":
            assert isinstance(record, Event)
            body = self._event_patch(item, record)
        elif kind == "contacts":
            new = fmt.contact_fields(record, entity)  # type: ignore[arg-type]
            body = {k: v for k, v in new.items() if entity.get(k) != v and not k.startswith("@")}
        else:
            new = fmt.task_fields(record, entity)  # type: ignore[arg-type]
            body = {k: v for k, v in new.items() if entity.get(k) != v and not k.startswith("@")}
        if not body:
            return None, record
        return Request("PATCH", self._item_path(kind, write.id), body,
                       {"If-Match": _etag(entity)}), record

    def _event_patch(self, item: Item, record: Event) -> dict[str, Any]:
        old = item.record()
        assert isinstance(old, Event)
        entity = _entity(item)
        changed = {name for name in EVENT_PROPERTIES
                   if getattr(old, name) != getattr(record, name)}
        if old.exdates != record.exdates or old.overrides != record.overrides:
            changed.add("occurrences")
        if entity.get("attendees"):
            _guard_meeting(entity, changed - PRIVATE_FIELDS)
        new = fmt.event_fields(record, entity)
        properties = {p for name in changed & EVENT_PROPERTIES.keys()
                      for p in EVENT_PROPERTIES[name]}
        return {p: new.get(p) for p in sorted(properties) if p in new}

    def _may_delete(self, kind: ObjectKind, item: Item) -> None:
        entity = _entity(item)
        if kind == "calendar" and entity.get("attendees") and entity.get("isOrganizer", True):
            raise CrmsyncError(
                f"{item.label()!r} is a meeting {self.user} organizes with attendees: deleting "
                "it would send them cancellations; crmsync leaves that to Outlook")

    def _occurrences_differ(self, item: Item, record: Event) -> bool:
        old = item.record()
        assert isinstance(old, Event)
        return old.exdates != record.exdates or old.overrides != record.overrides \
            or old.rrule != record.rrule and bool(record.exdates or record.overrides)

    def _write_occurrences(self, master_id: str, record: Event) -> str | None:
        """Cancel the EXDATEs and write the overrides of a series just written; the error
        when some could not be."""
        start, end = self._window("calendar")
        keys = [*record.exdates, *record.overrides]
        if keys:
            first = min(fmt.read_offset(k if "T" in k else k + "T00:00:00Z") or k for k in keys)
            last = max(fmt.read_offset(k if "T" in k else k + "T00:00:00Z") or k for k in keys)
            start = min(start, datetime.fromisoformat(first.replace("Z", "+00:00")))
            end = max(end, datetime.fromisoformat(last.replace("Z", "+00:00"))
                      + timedelta(days=1))
        span = urlencode({"startDateTime": _iso(start), "endDateTime": _iso(end)})
        instances, _ = self.client.pages(
            f"{self._item_path('calendar', master_id)}/instances?{span}", self._prefer())
        by_key = {fmt.original_start(i, record.all_day): i for i in instances}
        requests = []
        for key in record.exdates:
            inst = by_key.get(key)
            if inst is not None:
                requests.append(Request("DELETE", self._item_path("calendar", inst["id"])))
        for key, occ in record.overrides.items():
            inst = by_key.get(key)
            if inst is None:
                continue
            if occ.status == "cancelled":
                requests.append(Request("DELETE", self._item_path("calendar", inst["id"])))
                continue
            shown = fmt.parse_event(fmt.dump({"event": {**inst, "recurrence": None}}))
            patch = fmt.occurrence_fields(occ, record, inst)
            if (shown.summary, shown.start, shown.end, shown.location, shown.description) != (
                    occ.summary, occ.start, occ.end, occ.location, occ.description):
                requests.append(Request("PATCH", self._item_path("calendar", inst["id"]),
                                        patch))
        errors = [str(_error(r)) for r in self.client.batch(requests)
                  if r.status >= 400 and r.status != 404]
        return "; ".join(errors) or None


_WRITABLE_EVENT = frozenset({"subject", "body", "start", "end", "isAllDay", "location",
                             "sensitivity", "showAs", "categories", "isReminderOn",
                             "reminderMinutesBeforeStart", "recurrence"})


def _guard_meeting(entity: dict[str, Any], changed: set[str]) -> None:
    if not changed:
        return
    organizer = ((entity.get("organizer") or {}).get("emailAddress") or {}).get("address")
    raise CrmsyncError(
        f"{entity.get('subject')!r} is a meeting with attendees (organized by "
        f"{organizer or 'someone'}): changing its {', '.join(sorted(changed))} would send "
        "mail to the attendees; crmsync leaves meetings' scheduling to Outlook")


def _entity(item: Item) -> dict[str, Any]:
    doc = json.loads(item.raw)
    return doc.get("event") or doc.get("contact") or doc.get("task") or {}


def _no_nulls(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _ok(reply: Reply, what: str) -> dict[str, Any]:
    if reply.status >= 400 or not isinstance(reply.body, dict):
        raise _error(reply, what)
    return reply.body


def _error(reply: Reply, what: str = "") -> GraphError:
    from crmsync.connectors.graphapi import error_of

    error = error_of(reply.status, reply.body)
    if what:
        error.args = (f"{what}: {error}",)
    return error
