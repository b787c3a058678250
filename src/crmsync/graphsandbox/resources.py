"""The Graph resources the connector uses, over :class:`crmsync.graphsandbox.store.Store`.

One function, :func:`handle`, answers a request (a :class:`Call`) with an :class:`Answer`;
the app calls it for each HTTP request and :mod:`crmsync.graphsandbox.batch` for each
request of a ``$batch``. Paths are those after ``/v1.0``, with ``/me`` or
``/users/{id|userPrincipalName}`` first.

What follows Graph's documentation:

* calendarView delta: single instances, occurrences and exceptions inside the window (no
  seriesMaster), ``@odata.nextLink`` pages (``Prefer: odata.maxpagesize``) then an
  ``@odata.deltaLink``; the next round lists what changed and ``@removed`` entries for
  what left; an unknown or expired token is ``410 Gone``.
  https://learn.microsoft.com/en-us/graph/api/event-delta
  https://learn.microsoft.com/en-us/graph/delta-query-events
  https://learn.microsoft.com/en-us/graph/delta-query-overview
* times in the zone of ``Prefer: outlook.timezone`` (UTC when absent); bodies as stored
  (HTML) unless ``Prefer: outlook.body-content-type="text"``.
  https://learn.microsoft.com/en-us/graph/api/user-list-events#support-various-time-zones
* events: create (``transactionId`` makes a retried POST return the first event),
  update and delete with ``If-Match`` (``412`` on a stale change key), instances of a
  series, an occurrence patched becomes an exception, an occurrence deleted is cancelled,
  a changed pattern drops the exceptions.
  https://learn.microsoft.com/en-us/graph/api/user-post-events
  https://learn.microsoft.com/en-us/graph/api/event-update
  https://learn.microsoft.com/en-us/graph/api/event-delete
  https://learn.microsoft.com/en-us/graph/api/event-list-instances
* mail: creating an event with attendees sends invitations; the organizer changing a
  meeting's subject, body, time, place, pattern or attendees sends updates, deleting it
  sends cancellations. Each is logged in the store's ``mail`` table.
* contacts and To Do tasks: CRUD and delta, same token semantics.
  https://learn.microsoft.com/en-us/graph/api/contact-delta
  https://learn.microsoft.com/en-us/graph/api/todotask-delta
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmsync.graphsandbox import recurrence
from crmsync.graphsandbox.store import Store, new_change_key

DEFAULT_PAGE = 50
SCHEDULING = frozenset({"subject", "body", "start", "end", "location", "locations",
                        "recurrence", "isAllDay", "attendees", "isOnlineMeeting"})
READ_ONLY = frozenset({"id", "changeKey", "createdDateTime", "lastModifiedDateTime",
                       "@odata.etag", "@odata.context", "iCalUId", "type", "seriesMasterId",
                       "originalStart", "isOrganizer", "organizer", "originalStartTimeZone",
                       "originalEndTimeZone", "responseStatus", "webLink"})


class GraphError(Exception):
    """An error answer in Graph's shape: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass(frozen=True)
class Principal:
    """Who a token acts for: a signed-in user (delegated) or an application."""

    kind: str  # "user" | "app"
    mailbox: str | None = None


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    principal: Principal
    base: str  # https://host:port/v1.0, for links


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Mailboxes:
    """The tenant's users and their well-known folders."""

    store: Store
    users: tuple[str, ...]

    def resolve(self, call: Call) -> tuple[str, str]:
        """(mailbox, rest of the path) for ``/me/...`` or ``/users/{id}/...``."""
        m = re.match(r"^/(me|users/([^/]+))(/.*)?$", call.path)
        if not m:
            raise GraphError(400, "BadRequest", f"Resource not found for the segment "
                             f"'{call.path.strip('/').split('/')[0]}'.")
        if m[1] == "me":
            if call.principal.kind != "user":
                raise GraphError(400, "BadRequest", "/me request is only valid with delegated "
                                 "authentication flow.")
            mailbox = call.principal.mailbox or ""
        else:
            wanted = m[2].lower()
            found = [u for u in self.users if u.lower() == wanted]
            if not found:
                raise GraphError(404, "ErrorInvalidUser",
                                 f"The requested user '{m[2]}' is invalid.")
            mailbox = found[0]
            if call.principal.kind == "user" and mailbox != call.principal.mailbox:
                raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check "
                                 "credentials and try again.")
        self.ensure(mailbox)
        return mailbox, m[3] or "/"

    def ensure(self, mailbox: str) -> None:
        if not self.store.children(mailbox, "calendar", mailbox):
            self.store.put(mailbox, "calendar", mailbox, {"name": "Calendar",
                                                          "isDefaultCalendar": True})
            self.store.put(mailbox, "calendar", mailbox, {"name": "Work",
                                                          "isDefaultCalendar": False})
            self.store.put(mailbox, "list", mailbox, {"displayName": "Tasks",
                                                      "wellknownListName": "defaultList"})
            self.store.put(mailbox, "list", mailbox, {"displayName": "CRM follow-ups",
                                                      "wellknownListName": "none"})

    def calendar(self, mailbox: str, calendar_id: str | None) -> str:
        cals = self.store.children(mailbox, "calendar", mailbox)
        for cal in cals:
            if calendar_id is None and cal.get("isDefaultCalendar") or cal["id"] == calendar_id:
                return cal["id"]
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in "
                         "the store.")

    def task_list(self, mailbox: str, list_id: str) -> str:
        for lst in self.store.children(mailbox, "list", mailbox):
            if lst["id"] == list_id:
                return lst["id"]
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in "
                         "the store.")


# --- dispatch ---------------------------------------------------------------------------------

Route = tuple[str, str, Callable[..., Answer]]


def handle(boxes: Mailboxes, call: Call) -> Answer:
    mailbox, rest = boxes.resolve(call)
    for method, pattern, fn in ROUTES:
        m = re.fullmatch(pattern, rest)
        if m and method == call.method:
            return fn(boxes, call, mailbox, *m.groups())
    if any(re.fullmatch(p, rest) for _, p, _ in ROUTES):
        raise GraphError(405, "MethodNotAllowed", f"{call.method} is not allowed here.")
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest}'.")


# --- output -----------------------------------------------------------------------------------


def _prefer(call: Call, name: str) -> str | None:
    for part in call.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name.lower():
            return value.strip().strip('"')
    return None


def _windows_to_iana(name: str) -> str:
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    return WINDOWS_TO_OLSON.get(name, name)


def zone(name: str | None) -> Any:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(_windows_to_iana(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise GraphError(400, "TimeZoneNotSupportedException",
                         f"A valid TimeZone value must be specified. The following TimeZone "
                         f"value is not supported: '{name}'.") from None


def instant(value: dict[str, Any]) -> datetime:
    """A dateTimeTimeZone as an aware UTC datetime."""
    local = datetime.fromisoformat(str(value["dateTime"])[:19])
    return local.replace(tzinfo=zone(value.get("timeZone"))).astimezone(UTC)


def _show_time(value: dict[str, Any] | None, tz: str, all_day: bool) -> dict[str, Any] | None:
    if not value:
        return value
    if all_day:
        # All-day events are dates: shown at midnight whatever zone is asked for.
        return {"dateTime": str(value["dateTime"])[:10] + "T00:00:00.0000000", "timeZone": tz}
    local = instant(value).astimezone(zone(tz)).replace(tzinfo=None)
    return {"dateTime": local.isoformat() + ".0000000", "timeZone": tz}


def exchange_html(text: str) -> str:
    """How Exchange stores a text body: as HTML, with a head and CRLF line breaks."""
    import html

    lines = [html.escape(line) for line in text.replace("\r\n", "\n").split("\n")]
    return ('<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; '
            'charset=utf-8">\r\n</head>\r\n<body>\r\n<div>' + "<br>\r\n".join(lines)
            + "</div>\r\n</body>\r\n</html>\r\n")


def _text_of(content: str) -> str:
    import html

    content = re.sub(r"(?is)<head>.*?</head>", "", content)
    content = re.sub(r"(?i)<br\s*/?>\s*", "\n", content)
    return html.unescape(re.sub(r"<[^>]+>", "", content)).strip()


def _store_body(body: Any) -> Any:
    if isinstance(body, dict) and str(body.get("contentType", "")).lower() == "text":
        return {"contentType": "html", "content": exchange_html(str(body.get("content") or ""))}
    return body


def _etag(entity: dict[str, Any]) -> str:
    return f'W/"{entity["changeKey"]}"'


def _public(entity: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entity.items() if not k.startswith("_") and not k.startswith("x_")}
    out["@odata.etag"] = _etag(entity)
    return out


def show_event(call: Call, ev: dict[str, Any]) -> dict[str, Any]:
    out = _public(ev)
    tz = _prefer(call, "outlook.timezone") or "UTC"
    all_day = bool(ev.get("isAllDay"))
    out["start"] = _show_time(ev.get("start"), tz, all_day)
    out["end"] = _show_time(ev.get("end"), tz, all_day)
    body = out.get("body")
    if isinstance(body, dict) and (_prefer(call, "outlook.body-content-type") or "").lower() \
            == "text" and body.get("contentType") == "html":
        out["body"] = {"contentType": "text", "content": _text_of(str(body.get("content")))}
    return out


def _check_etag(call: Call, entity: dict[str, Any]) -> None:
    wanted = call.headers.get("if-match")
    if wanted and wanted.strip() != "*" and \
            wanted.strip().removeprefix("W/").strip('"') != entity["changeKey"]:
        raise GraphError(412, "ErrorIrresolvableConflict",
                         "The send or update operation could not be performed because the "
                         "change key passed in the request does not match the current change "
                         "key for the item.")


def _not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound",
                      "The specified object was not found in the store.")


def _body(call: Call) -> dict[str, Any]:
    if not isinstance(call.body, dict):
        raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    return call.body


# --- events -----------------------------------------------------------------------------------


def _mail(boxes: Mailboxes, mailbox: str, kind: str, ev: dict[str, Any]) -> None:
    recipients = [str((a.get("emailAddress") or {}).get("address"))
                  for a in ev.get("attendees") or []]
    if recipients:
        boxes.store.send_mail(mailbox, kind, str(ev.get("subject") or ""), recipients)


def _is_meeting_i_organize(ev: dict[str, Any]) -> bool:
    return bool(ev.get("attendees")) and ev.get("isOrganizer", True) is not False


def create_event(boxes: Mailboxes, call: Call, mailbox: str, calendar_id: str | None = None
                 ) -> Answer:
    cal = boxes.calendar(mailbox, calendar_id)
    body = _body(call)
    for key in ("subject", "start", "end"):
        if key in ("start", "end") and not isinstance(body.get(key), dict):
            raise GraphError(400, "ErrorInvalidRequest", f"Your request can't be completed. "
                             f"The {key} time is missing.")
    tx = body.get("transactionId")
    if tx:
        for ev in boxes.store.children(mailbox, "event", cal):
            if ev.get("transactionId") == tx:
                return Answer(201, show_event(call, ev))
    doc = {k: v for k, v in body.items() if k not in READ_ONLY}
    zone(doc["start"].get("timeZone"))
    if instant(doc["end"]) < instant(doc["start"]):
        raise GraphError(400, "ErrorInvalidRequest", "Your request can't be completed. The "
                         "end time must be after the start time.")
    doc["body"] = _store_body(doc.get("body") or {"contentType": "text", "content": ""})
    doc.update(type="seriesMaster" if doc.get("recurrence") else "singleInstance",
               iCalUId="040000008200E00074C5B7101A82E008" + hashlib.sha1(
                   new_change_key().encode()).hexdigest().upper()[:32],
               isOrganizer=True, isCancelled=False,
               organizer={"emailAddress": {"address": mailbox, "name": mailbox.split("@")[0]}},
               originalStartTimeZone=doc["start"].get("timeZone") or "UTC",
               originalEndTimeZone=doc["end"].get("timeZone") or "UTC")
    doc.setdefault("attendees", [])
    doc.setdefault("categories", [])
    doc.setdefault("sensitivity", "normal")
    doc.setdefault("showAs", "busy")
    doc["x_cancelled"] = []
    ev = boxes.store.put(mailbox, "event", cal, doc)
    _mail(boxes, mailbox, "invitation", ev)
    return Answer(201, show_event(call, ev))


def _occurrence_key(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def occurrence_id(master_id: str, key: str) -> str:
    return f"{master_id}_{key.replace('-', '').replace(':', '')}"


def _split_occurrence(item_id: str) -> tuple[str, str] | None:
    m = re.fullmatch(r"(.+)_(\d{8}T\d{6}Z)", item_id)
    if not m:
        return None
    s = m[2]
    return m[1], f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}Z"


def _slots(master: dict[str, Any]) -> list[datetime]:
    start_tz = zone(master["start"].get("timeZone"))
    first = instant(master["start"]).astimezone(start_tz).replace(tzinfo=None)
    return [local.replace(tzinfo=start_tz).astimezone(UTC)
            for local in recurrence.starts(master["recurrence"], first)]


def instances(boxes: Mailboxes, master: dict[str, Any], window: tuple[datetime, datetime]
              ) -> list[dict[str, Any]]:
    """The occurrences and exceptions of a series that overlap ``window`` (stored form)."""
    span = instant(master["end"]) - instant(master["start"])
    exceptions = {e["originalStart"]: e for e in boxes.store.children(
        master["_mailbox"], "event", master["id"])}
    cancelled = set(master.get("x_cancelled") or [])
    out = []
    for when in _slots(master):
        if when >= window[1] + timedelta(days=366):
            break
        key = _occurrence_key(when)
        if key in cancelled:
            continue
        ex = exceptions.get(key)
        if ex is not None:
            if instant(ex["start"]) < window[1] and instant(ex["end"]) > window[0]:
                out.append(ex)
            continue
        if not (when < window[1] and when + span > window[0]):
            continue
        occ = {k: v for k, v in master.items() if k not in ("recurrence", "x_cancelled")}
        tz = master["start"].get("timeZone") or "UTC"
        local = when.astimezone(zone(tz)).replace(tzinfo=None)
        occ.update(id=occurrence_id(master["id"], key), type="occurrence",
                   seriesMasterId=master["id"], originalStart=key,
                   start={"dateTime": local.isoformat(), "timeZone": tz},
                   end={"dateTime": (local + span).isoformat(), "timeZone": tz},
                   changeKey=hashlib.sha1((master["changeKey"] + key).encode()).hexdigest()[:16])
        out.append(occ)
    return out


def _window(call: Call) -> tuple[datetime, datetime]:
    try:
        start = call.query["startDateTime"]
        end = call.query["endDateTime"]
        return (datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(UTC),
                datetime.fromisoformat(end.replace("Z", "+00:00")).astimezone(UTC))
    except (KeyError, ValueError):
        raise GraphError(400, "ErrorInvalidParameter", "This request requires a time window "
                         "specified by the query string parameters StartDateTime and "
                         "EndDateTime.") from None


def calendar_view(boxes: Mailboxes, mailbox: str, cal: str,
                  window: tuple[datetime, datetime]) -> dict[str, dict[str, Any]]:
    view: dict[str, dict[str, Any]] = {}
    for ev in boxes.store.children(mailbox, "event", cal):
        if ev.get("type") == "seriesMaster":
            for inst in instances(boxes, ev, window):
                view[inst["id"]] = inst
        elif instant(ev["start"]) < window[1] and instant(ev["end"]) > window[0]:
            view[ev["id"]] = ev
    return view


def get_event(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    return Answer(200, show_event(call, _event(boxes, mailbox, item_id)))


def _event(boxes: Mailboxes, mailbox: str, item_id: str) -> dict[str, Any]:
    ev = boxes.store.get(item_id, mailbox)
    if ev is not None and ev["_kind"] == "event":
        return ev
    split = _split_occurrence(item_id)
    if split is not None:
        master = boxes.store.get(split[0], mailbox)
        if master is not None and master.get("type") == "seriesMaster":
            when = datetime.fromisoformat(split[1].replace("Z", "+00:00"))
            for inst in instances(boxes, master, (when - timedelta(seconds=1),
                                                  when + timedelta(seconds=1))):
                if inst["originalStart"] == split[1]:
                    return inst
    raise _not_found()


def list_instances(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    master = _event(boxes, mailbox, item_id)
    if master.get("type") != "seriesMaster":
        return Answer(200, {"value": []})
    found = instances(boxes, master, _window(call))
    return Answer(200, {"value": [show_event(call, i) for i in found]})


def update_event(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    ev = _event(boxes, mailbox, item_id)
    _check_etag(call, ev)
    patch = {k: v for k, v in _body(call).items() if k not in READ_ONLY}
    if "body" in patch:
        patch["body"] = _store_body(patch["body"])
    master = boxes.store.get(ev["seriesMasterId"], mailbox) if ev.get("seriesMasterId") else None
    meeting = master if master is not None else ev
    if _is_meeting_i_organize(meeting) and set(patch) & SCHEDULING:
        _mail(boxes, mailbox, "update", {**meeting, **patch})
    elif patch.get("attendees"):
        _mail(boxes, mailbox, "invitation", {**meeting, **patch})
    if ev.get("type") == "occurrence":
        assert master is not None
        doc = {k: v for k, v in ev.items() if k not in ("changeKey",)}
        doc.update(patch, type="exception")
        saved = boxes.store.put(mailbox, "event", master["id"], doc, item_id=ev["id"])
        boxes.store.put(mailbox, "event", master["_parent"], master, item_id=master["id"])
        return Answer(200, show_event(call, saved))
    doc = {**ev, **patch}
    if ev.get("type") == "seriesMaster" and "recurrence" in patch:
        if patch["recurrence"] is None:
            doc["type"] = "singleInstance"
        if patch["recurrence"] != ev.get("recurrence"):
            # A new pattern: Exchange drops the exceptions and cancellations.
            for ex in boxes.store.children(mailbox, "event", ev["id"]):
                boxes.store.delete(ex["id"])
            doc["x_cancelled"] = []
    elif ev.get("type") == "singleInstance" and patch.get("recurrence"):
        doc["type"] = "seriesMaster"
    if "start" in doc and "end" in doc and instant(doc["end"]) < instant(doc["start"]):
        raise GraphError(400, "ErrorInvalidRequest", "Your request can't be completed. The "
                         "end time must be after the start time.")
    saved = boxes.store.put(mailbox, "event", ev["_parent"], doc, item_id=ev["id"])
    if ev.get("type") == "exception" and master is not None:
        boxes.store.put(mailbox, "event", master["_parent"], master, item_id=master["id"])
    return Answer(200, show_event(call, saved))


def delete_event(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    ev = _event(boxes, mailbox, item_id)
    _check_etag(call, ev)
    master = boxes.store.get(ev["seriesMasterId"], mailbox) if ev.get("seriesMasterId") else None
    if _is_meeting_i_organize(master if master is not None else ev):
        _mail(boxes, mailbox, "cancellation", master if master is not None else ev)
    if master is not None:
        if ev.get("type") == "exception":
            boxes.store.delete(ev["id"])
        master["x_cancelled"] = sorted({*master.get("x_cancelled", []), ev["originalStart"]})
        boxes.store.put(mailbox, "event", master["_parent"], master, item_id=master["id"])
    else:
        boxes.store.delete(ev["id"])
    return Answer(204)


def list_calendars(boxes: Mailboxes, call: Call, mailbox: str) -> Answer:
    return Answer(200, {"value": [_public(c) for c in
                                  boxes.store.children(mailbox, "calendar", mailbox)]})


# --- delta --------------------------------------------------------------------------------


def _delta(boxes: Mailboxes, call: Call, odata_type: str,
           view: Callable[[dict[str, Any]], dict[str, dict[str, Any]]],
           show: Callable[[dict[str, Any]], dict[str, Any]], params: dict[str, Any]) -> Answer:
    """One page of a delta round; see the module docstring."""
    link = call.base + call.path
    if "$skiptoken" in call.query:
        state = boxes.store.load_delta(call.query["$skiptoken"])
        if state is None or "pending" not in state:
            raise _gone()
        pending, snapshot, params = state["pending"], state["snapshot"], state["params"]
    else:
        old: dict[str, str] = {}
        if "$deltatoken" in call.query:
            state = boxes.store.load_delta(call.query["$deltatoken"])
            if state is None or "snapshot" not in state:
                raise _gone()
            old, params = state["snapshot"], state["params"]
        current = view(params)
        snapshot = {i: e["changeKey"] for i, e in current.items()}
        pending = [show(e) for i, e in current.items() if old.get(i) != e["changeKey"]]
        pending += [{"@odata.type": odata_type, "id": i, "@removed": {"reason": "deleted"}}
                    for i in sorted(old.keys() - current.keys())]
    size = DEFAULT_PAGE
    asked = _prefer(call, "odata.maxpagesize")
    if asked and asked.isdigit():
        size = max(1, int(asked))
    page, rest = pending[:size], pending[size:]
    out: dict[str, Any] = {"@odata.context": f"{call.base}/$metadata#Collection({odata_type})",
                           "value": page}
    if rest:
        token = boxes.store.save_delta({"pending": rest, "snapshot": snapshot, "params": params})
        out["@odata.nextLink"] = f"{link}?{urlencode({'$skiptoken': token})}"
    else:
        token = boxes.store.save_delta({"snapshot": snapshot, "params": params})
        out["@odata.deltaLink"] = f"{link}?{urlencode({'$deltatoken': token})}"
    return Answer(200, out)


def _gone() -> GraphError:
    return GraphError(410, "SyncStateNotFound", "The sync state generation is invalid or has "
                      "expired; start a full synchronization.")


def calendar_delta(boxes: Mailboxes, call: Call, mailbox: str,
                   calendar_id: str | None = None) -> Answer:
    cal = boxes.calendar(mailbox, calendar_id)
    params: dict[str, Any] = {}
    if "$deltatoken" not in call.query and "$skiptoken" not in call.query:
        start, end = _window(call)
        params = {"start": start.isoformat(), "end": end.isoformat()}

    def view(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return calendar_view(boxes, mailbox, cal, (datetime.fromisoformat(p["start"]),
                                                   datetime.fromisoformat(p["end"])))

    return _delta(boxes, call, "#microsoft.graph.event", view,
                  lambda e: show_event(call, e), params)


# --- contacts and To Do tasks -----------------------------------------------------------


def _entities(boxes: Mailboxes, mailbox: str, kind: str, parent: str
              ) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in boxes.store.children(mailbox, kind, parent)}


def contacts_delta(boxes: Mailboxes, call: Call, mailbox: str) -> Answer:
    return _delta(boxes, call, "#microsoft.graph.contact",
                  lambda p: _entities(boxes, mailbox, "contact", mailbox), _public, {})


def create_contact(boxes: Mailboxes, call: Call, mailbox: str) -> Answer:
    doc = {k: v for k, v in _body(call).items() if k not in READ_ONLY}
    return Answer(201, _public(boxes.store.put(mailbox, "contact", mailbox, doc)))


def _contact(boxes: Mailboxes, mailbox: str, item_id: str) -> dict[str, Any]:
    c = boxes.store.get(item_id, mailbox)
    if c is None or c["_kind"] != "contact":
        raise _not_found()
    return c


def get_contact(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    return Answer(200, _public(_contact(boxes, mailbox, item_id)))


def update_contact(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    c = _contact(boxes, mailbox, item_id)
    _check_etag(call, c)
    patch = {k: v for k, v in _body(call).items() if k not in READ_ONLY}
    return Answer(200, _public(boxes.store.put(mailbox, "contact", mailbox, {**c, **patch},
                                               item_id=item_id)))


def delete_contact(boxes: Mailboxes, call: Call, mailbox: str, item_id: str) -> Answer:
    c = _contact(boxes, mailbox, item_id)
    _check_etag(call, c)
    boxes.store.delete(item_id)
    return Answer(204)


def list_task_lists(boxes: Mailboxes, call: Call, mailbox: str) -> Answer:
    return Answer(200, {"value": [_public(x) for x in
                                  boxes.store.children(mailbox, "list", mailbox)]})


def tasks_delta(boxes: Mailboxes, call: Call, mailbox: str, list_id: str) -> Answer:
    lst = boxes.task_list(mailbox, list_id)
    return _delta(boxes, call, "#microsoft.graph.todoTask",
                  lambda p: _entities(boxes, mailbox, "task", lst), _public, {})


def create_task(boxes: Mailboxes, call: Call, mailbox: str, list_id: str) -> Answer:
    lst = boxes.task_list(mailbox, list_id)
    doc = {k: v for k, v in _body(call).items() if k not in READ_ONLY}
    if not doc.get("title"):
        raise GraphError(400, "invalidRequest", "Invalid request: title is required.")
    doc.setdefault("status", "notStarted")
    doc.setdefault("importance", "normal")
    return Answer(201, _public(boxes.store.put(mailbox, "task", lst, doc)))


def _task(boxes: Mailboxes, mailbox: str, list_id: str, item_id: str) -> dict[str, Any]:
    t = boxes.store.get(item_id, mailbox)
    if t is None or t["_kind"] != "task" or t["_parent"] != list_id:
        raise _not_found()
    return t


def get_task(boxes: Mailboxes, call: Call, mailbox: str, list_id: str, item_id: str) -> Answer:
    return Answer(200, _public(_task(boxes, mailbox, list_id, item_id)))


def update_task(boxes: Mailboxes, call: Call, mailbox: str, list_id: str,
                item_id: str) -> Answer:
    t = _task(boxes, mailbox, list_id, item_id)
    _check_etag(call, t)
    patch = {k: v for k, v in _body(call).items() if k not in READ_ONLY}
    if patch.get("status") == "completed" and t.get("status") != "completed":
        patch.setdefault("completedDateTime", {
            "dateTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
            "timeZone": "UTC"})
    elif "status" in patch and patch["status"] != "completed":
        patch["completedDateTime"] = None
    return Answer(200, _public(boxes.store.put(mailbox, "task", list_id, {**t, **patch},
                                               item_id=item_id)))


def delete_task(boxes: Mailboxes, call: Call, mailbox: str, list_id: str,
                item_id: str) -> Answer:
    t = _task(boxes, mailbox, list_id, item_id)
    _check_etag(call, t)
    boxes.store.delete(item_id)
    return Answer(204)


_ID = r"([^/]+)"
ROUTES: list[Route] = [
    ("GET", "/calendars", list_calendars),
    ("GET", "/calendar/calendarView/delta", calendar_delta),
    ("GET", "/calendarView/delta", calendar_delta),
    ("GET", f"/calendars/{_ID}/calendarView/delta", calendar_delta),
    ("POST", "/events", create_event),
    ("POST", "/calendar/events", create_event),
    ("POST", f"/calendars/{_ID}/events", create_event),
    ("GET", f"/events/{_ID}", get_event),
    ("PATCH", f"/events/{_ID}", update_event),
    ("DELETE", f"/events/{_ID}", delete_event),
    ("GET", f"/events/{_ID}/instances", list_instances),
    ("GET", "/contacts/delta", contacts_delta),
    ("POST", "/contacts", create_contact),
    ("GET", f"/contacts/{_ID}", get_contact),
    ("PATCH", f"/contacts/{_ID}", update_contact),
    ("DELETE", f"/contacts/{_ID}", delete_contact),
    ("GET", "/todo/lists", list_task_lists),
    ("GET", f"/todo/lists/{_ID}/tasks/delta", tasks_delta),
    ("POST", f"/todo/lists/{_ID}/tasks", create_task),
    ("GET", f"/todo/lists/{_ID}/tasks/{_ID}", get_task),
    ("PATCH", f"/todo/lists/{_ID}/tasks/{_ID}", update_task),
    ("DELETE", f"/todo/lists/{_ID}/tasks/{_ID}", delete_task),
]
