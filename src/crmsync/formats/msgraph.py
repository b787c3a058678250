"""Microsoft Graph items: JSON documents <-> canonical records.

An item of the ``msgraph`` connector is the JSON document of what Graph returned for it,
so that a stored base parses without a connector (and without HTTP):

``{"event": {...}, "exceptions": [...], "cancelled": [...]}``
    An event as Graph returns it (``Prefer: outlook.timezone="UTC"``). For a recurring
    series, ``event`` is the seriesMaster (with its ``recurrence``), ``exceptions`` the
    instances of type ``exception`` and ``cancelled`` the original starts (MOMENTs) of the
    occurrences the pattern has but the calendar no longer shows: Graph v1.0 keeps no list
    of cancelled occurrences, the connector works them out when it reads the series.
``{"contact": {...}}``, ``{"task": {...}}``
    A contact; a Microsoft To Do task.

:func:`parse_event` and friends map a document to a record; :func:`render_event` and
friends write a record over a template document: fields the record models are set, every
other Graph property is kept, so the connector sends only what differs.

Time zones. Times are read in UTC and the zone the event was written in comes from
``originalStartTimeZone``: a Windows zone name ("W. Europe Standard Time") mapped to IANA
with the CLDR table icalendar ships (``icalendar.timezone.windows_to_olson``). Writing uses
the Windows name when the table has one and the IANA name otherwise (Graph takes both).
https://learn.microsoft.com/en-us/graph/api/resources/datetimetimezone

Bodies, deliberately. Outlook stores HTML; the model's description is plain text. Reading
turns HTML into the text Outlook shows (block elements and ``<br>`` are line breaks,
entities decoded, ``<style>``/``<script>``/``<head>`` dropped, white space collapsed as a
browser does). Writing sends ``contentType: text`` and only when the text changed: an
unchanged description never rewrites the body, so the user's formatting survives every
sync that does not change the words.

Attendees without invitations. crmsync never writes Graph ``attendees`` (that mails them,
see :mod:`crmsync.connectors.msgraph`); the attendees of an event that comes from the CRM
are kept in the body as the invitee block of :mod:`crmsync.formats.salesforce` and read
back as attendees, so they round-trip without a message being sent.

Recurrence: ``patternedRecurrence`` <-> RRULE (daily, weekly, absolute/relative monthly and
yearly; numbered, endDate and noEnd ranges), exceptions <-> overrides keyed by their
``originalStart``, cancelled occurrences <-> EXDATEs.
https://learn.microsoft.com/en-us/graph/api/resources/patternedrecurrence
https://learn.microsoft.com/en-us/graph/api/resources/event
https://learn.microsoft.com/en-us/graph/api/resources/contact
https://learn.microsoft.com/en-us/graph/api/resources/todotask
"""

from __future__ import annotations

import copy
import dataclasses
import html
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmsync.errors import FormatError
from crmsync.formats import jsondoc
from crmsync.formats.salesforce import join_description, split_description
from crmsync.model import Address, Attendee, Contact, Event, Occurrence, Person, Phone, Task

FORMAT = "application/vnd.crmsync.msgraph+json"

Doc = jsondoc.Doc


def load(raw: str, key: str) -> Doc:
    return jsondoc.load(raw, key, "Microsoft Graph")


dump = jsondoc.dump


def _str(value: Any) -> str:
    return "" if value is None else str(value)


# --- time zones --------------------------------------------------------------------------


def _windows_table() -> dict[str, str]:
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    return WINDOWS_TO_OLSON


def iana_zone(name: str | None) -> str | None:
    """A Graph time zone name (Windows or IANA) as an IANA name; None when unknown/UTC."""
    if not name or name.upper() in ("UTC", "ETC/UTC", "TZONE://MICROSOFT/UTC"):
        return None
    iana = _windows_table().get(name, name)
    try:
        ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return iana


def windows_zone(iana: str | None) -> str:
    """The name to write for an IANA zone: its Windows name if CLDR maps one to it."""
    if not iana or iana in ("UTC", "Etc/UTC"):
        return "UTC"
    for windows, olson in _windows_table().items():
        if olson == iana:
            return windows
    return iana


def _zone(iana: str | None) -> Any:
    try:
        return ZoneInfo(iana) if iana else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def read_time(value: Any, all_day: bool = False) -> str | None:
    """A dateTimeTimeZone as a MOMENT (a date for all-day events)."""
    if not isinstance(value, Mapping) or not value.get("dateTime"):
        return None
    text = str(value["dateTime"])
    local = datetime.fromisoformat(text[:19])
    if all_day:
        return local.date().isoformat()
    zone = _zone(iana_zone(value.get("timeZone")))
    return local.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def write_time(m: str, iana: str | None) -> dict[str, str]:
    """A MOMENT as a dateTimeTimeZone in the zone ``iana`` (UTC when None)."""
    if "T" not in m:
        return {"dateTime": f"{m}T00:00:00.0000000", "timeZone": windows_zone(iana)}
    if m.endswith("Z"):
        when = datetime.fromisoformat(m[:-1]).replace(tzinfo=UTC).astimezone(_zone(iana))
    else:  # floating: taken as written in the zone
        when = datetime.fromisoformat(m)
    return {"dateTime": when.replace(tzinfo=None).isoformat() + ".0000000",
            "timeZone": windows_zone(iana)}


def read_offset(value: Any) -> str | None:
    """A DateTimeOffset (``2026-11-22T09:00:00Z``) as a UTC MOMENT."""
    if not value:
        return None
    when = datetime.fromisoformat(str(value).replace("Z", "+00:00")[:32])
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


# --- bodies --------------------------------------------------------------------------------

_BLOCKS = frozenset({"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table",
                     "ul", "ol", "blockquote", "pre", "hr"})
_SKIP = frozenset({"head", "style", "script", "title"})


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            # HTML white space (line breaks in the source too) collapses to one space.
            self.parts.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def html_to_text(source: str) -> str:
    """The text an HTML body shows; see the module docstring."""
    parser = _Text()
    parser.feed(source)
    parser.close()
    lines = "".join(parser.parts).replace("\xa0", " ").split("\n")
    text = "\n".join(line.strip(" ") for line in lines)
    # Block boundaries give blank lines of their own; a paragraph break is one blank line.
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def text_to_html(text: str) -> str:
    """Plain text as the HTML a browser shows the same way (for the sandbox and tests)."""
    body = html.escape(text).replace("  ", " &nbsp;").replace("\n", "<br>\r\n")
    return f"<html><body><div>{body}</div></body></html>"


def body_text(body: Any) -> str:
    if not isinstance(body, Mapping):
        return ""
    content = _str(body.get("content"))
    if _str(body.get("contentType")).lower() == "html":
        return html_to_text(content)
    return content.replace("\r\n", "\n").strip("\n")


# --- recurrence -----------------------------------------------------------------------------

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ICAL_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_INDEX_OUT = {v: k for k, v in _INDEX.items()}


def _day(name: str) -> str:
    return _ICAL_DAYS[_DAYS.index(name.lower())]


def _day_name(code: str) -> str:
    return _DAYS[_ICAL_DAYS.index(code.upper())]


def pattern_to_rrule(recurrence: Mapping[str, Any], first: date, all_day: bool,
                     zone: Any) -> str:
    """A patternedRecurrence as an RRULE value, canonical as the iCalendar codec writes it.

    Parts that only repeat what DTSTART says (the weekday of a weekly rule, the day of an
    absolute monthly one) are left out, so a rule that went through Graph compares equal
    to the one it was written from.
    """
    from icalendar import vRecur

    pattern = recurrence.get("pattern") or {}
    span = recurrence.get("range") or {}
    kind = pattern.get("type")
    parts: dict[str, list[Any]] = {}
    interval = int(pattern.get("interval") or 1)
    days = [_day(d) for d in pattern.get("daysOfWeek") or []]
    if kind == "daily":
        parts["FREQ"] = ["DAILY"]
    elif kind == "weekly":
        parts["FREQ"] = ["WEEKLY"]
        if days and days != [_ICAL_DAYS[first.weekday()]]:
            parts["BYDAY"] = days
        wkst = _day(pattern.get("firstDayOfWeek") or "sunday")
        if interval > 1 and wkst != "MO":
            parts["WKST"] = [wkst]
    elif kind in ("absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"):
        parts["FREQ"] = ["MONTHLY" if kind.endswith("Monthly") else "YEARLY"]
        if kind.startswith("relative"):
            index = _INDEX.get(pattern.get("index") or "first", 1)
            parts["BYDAY"] = [f"{index}{d}" for d in days]
        elif int(pattern.get("dayOfMonth") or first.day) != first.day:
            parts["BYMONTHDAY"] = [int(pattern["dayOfMonth"])]
        if kind.endswith("Yearly") and int(pattern.get("month") or first.month) != first.month \
                or kind == "relativeYearly":
            parts["BYMONTH"] = [int(pattern.get("month") or first.month)]
    else:
        raise FormatError(f"unknown recurrence pattern type {kind!r}")
    if interval > 1:
        parts["INTERVAL"] = [interval]
    if span.get("type") == "numbered" and span.get("numberOfOccurrences"):
        parts["COUNT"] = [int(span["numberOfOccurrences"])]
    elif span.get("type") == "endDate" and span.get("endDate"):
        end = date.fromisoformat(str(span["endDate"])[:10])
        if all_day:
            parts["UNTIL"] = [end]
        else:
            last = datetime.combine(end, datetime.max.time()).replace(microsecond=0,
                                                                       tzinfo=zone)
            parts["UNTIL"] = [last.astimezone(UTC)]
    return vRecur(parts).to_ical().decode()


def rrule_to_pattern(rrule: str, first: date, zone: Any, tz_name: str) -> Doc:
    """An RRULE value as a patternedRecurrence starting on ``first`` (a local date)."""
    from icalendar import vRecur

    rule = vRecur.from_ical(rrule)
    freq = (rule.get("FREQ") or [""])[0]
    interval = int((rule.get("INTERVAL") or [1])[0])
    bydays = [str(d) for d in rule.get("BYDAY") or []]
    setpos = rule.get("BYSETPOS") or []
    pattern: Doc = {"interval": interval}
    if freq == "DAILY" and not bydays:
        pattern["type"] = "daily"
    elif freq in ("DAILY", "WEEKLY"):
        pattern["type"] = "weekly"
        pattern["daysOfWeek"] = [_day_name(d[-2:]) for d in bydays] or [_DAYS[first.weekday()]]
        pattern["firstDayOfWeek"] = _day_name((rule.get("WKST") or ["MO"])[0])
    elif freq in ("MONTHLY", "YEARLY"):
        relative = [d for d in bydays if d[:-2] or setpos]
        if bydays and not relative:
            raise FormatError(f"RRULE {rrule!r} has no Outlook pattern (BYDAY without a "
                              "position)")
        if relative:
            index = int(relative[0][:-2] or setpos[0])
            if index not in _INDEX_OUT:
                raise FormatError(f"RRULE {rrule!r}: Outlook knows first..fourth and last")
            pattern["type"] = "relativeMonthly" if freq == "MONTHLY" else "relativeYearly"
            pattern["daysOfWeek"] = [_day_name(d[-2:]) for d in bydays]
            pattern["index"] = _INDEX_OUT[index]
        else:
            pattern["type"] = "absoluteMonthly" if freq == "MONTHLY" else "absoluteYearly"
            pattern["dayOfMonth"] = int((rule.get("BYMONTHDAY") or [first.day])[0])
        if freq == "YEARLY":
            pattern["month"] = int((rule.get("BYMONTH") or [first.month])[0])
    else:
        raise FormatError(f"RRULE {rrule!r}: Outlook has no {freq or 'such'} recurrence")
    span: Doc = {"type": "noEnd", "startDate": first.isoformat(), "recurrenceTimeZone": tz_name}
    if rule.get("COUNT"):
        span.update(type="numbered", numberOfOccurrences=int(rule["COUNT"][0]))
    elif rule.get("UNTIL"):
        until = rule["UNTIL"][0]
        if isinstance(until, datetime):
            until = (until if until.tzinfo else until.replace(tzinfo=UTC)).astimezone(zone)
            until = until.date()
        span.update(type="endDate", endDate=until.isoformat())
    return {"pattern": pattern, "range": span}


# --- events ---------------------------------------------------------------------------------

_RESPONSE_IN = {"accepted": "accepted", "declined": "declined",
                "tentativelyAccepted": "tentative", "organizer": "accepted"}
_ROLE_IN = {"required": "req-participant", "optional": "opt-participant",
            "resource": "non-participant"}


def _times(ev: Mapping[str, Any]) -> tuple[str | None, str | None]:
    all_day = bool(ev.get("isAllDay"))
    return read_time(ev.get("start"), all_day), read_time(ev.get("end"), all_day)


def parse_event(raw: str) -> Event:
    doc = load(raw, "event")
    ev = doc["event"]
    start, end = _times(ev)
    text, listed, _files = split_description(body_text(ev.get("body")))
    attendees = {a.email.lower(): a for a in listed}
    for att in ev.get("attendees") or []:
        address = _str((att.get("emailAddress") or {}).get("address")).strip()
        if address:
            attendees[address.lower()] = Attendee(
                address, _str((att.get("emailAddress") or {}).get("name")),
                _RESPONSE_IN.get(_str((att.get("status") or {}).get("response")), "needs-action"),
                _ROLE_IN.get(_str(att.get("type")), "req-participant"))
    organizer = (ev.get("organizer") or {}).get("emailAddress") or {}
    event = Event(
        uid=_str(ev.get("iCalUId")),
        summary=_str(ev.get("subject")),
        start=start,
        end=end,
        tz=iana_zone(ev.get("originalStartTimeZone")),
        location=_str((ev.get("location") or {}).get("displayName")),
        description=text,
        private=ev.get("sensitivity") in ("private", "confidential"),
        show_as="free" if ev.get("showAs") == "free" else "busy",
        status="cancelled" if ev.get("isCancelled") else "confirmed",
        categories=list(ev.get("categories") or []),
        organizer=Person(organizer["address"], _str(organizer.get("name")))
        if organizer.get("address") else None,
        attendees=list(attendees.values()),
        reminders=[int(ev.get("reminderMinutesBeforeStart") or 0)]
        if ev.get("isReminderOn") else [],
    )
    recurrence = ev.get("recurrence")
    if isinstance(recurrence, Mapping) and recurrence.get("pattern") and start:
        zone = _zone(event.tz)
        first = date.fromisoformat(start) if "T" not in start else \
            datetime.fromisoformat(start[:-1]).replace(tzinfo=UTC).astimezone(zone).date()
        event.rrule = pattern_to_rrule(recurrence, first, "T" not in start, zone)
        event.exdates = [str(c) for c in doc.get("cancelled") or []]
        event.overrides = {key: occ for key, occ in
                           (_exception(x, event) for x in doc.get("exceptions") or [])
                           if key is not None}
        event.__post_init__()
    return event


def original_start(instance: Mapping[str, Any], all_day: bool) -> str | None:
    """An instance's original start as the MOMENT its override is keyed by."""
    key = read_offset(instance.get("originalStart"))
    return key[:10] if key and all_day else key


def _exception(ex: Mapping[str, Any], series: Event) -> tuple[str | None, Occurrence]:
    start, end = _times(ex)
    text, _, _ = split_description(body_text(ex.get("body")))
    return original_start(ex, series.all_day), Occurrence(
        summary=_str(ex.get("subject")), start=start, end=end,
        location=_str((ex.get("location") or {}).get("displayName")), description=text,
        status="cancelled" if ex.get("isCancelled") else "confirmed")


def event_fields(event: Event, template: Mapping[str, Any] | None = None) -> Doc:
    """The Graph event properties for ``event``, written over ``template``'s."""
    ev: Doc = copy.deepcopy(dict(template or {}))
    tz = event.tz or iana_zone(ev.get("originalStartTimeZone"))
    ev["subject"] = event.summary
    # Read-only in Graph (the server sets it from the start's zone); kept in the document
    # so that a rendered item says which zone it was written in.
    ev["originalStartTimeZone"] = windows_zone(tz)
    if event.start:
        ev["isAllDay"] = event.all_day
        ev["start"] = write_time(event.start, tz)
        end = event.end or (event.start if not event.all_day else
                            (date.fromisoformat(event.start) + timedelta(days=1)).isoformat())
        ev["end"] = write_time(end, tz)
    ev["location"] = {**(ev.get("location") or {}), "displayName": event.location}
    old = template.get("body") if template else None
    if old is None or body_text(old) != _description(event, old):
        ev["body"] = {"contentType": "text", "content": _description(event, old)}
    if event.private:
        if ev.get("sensitivity") not in ("private", "confidential"):
            ev["sensitivity"] = "private"
    elif ev.get("sensitivity") in ("private", "confidential") or "sensitivity" not in ev:
        ev["sensitivity"] = "normal"
    if event.show_as == "free":
        ev["showAs"] = "free"
    elif ev.get("showAs") in (None, "free"):
        ev["showAs"] = "busy"
    ev["categories"] = list(event.categories)
    ev["isReminderOn"] = bool(event.reminders)
    if event.reminders:
        ev["reminderMinutesBeforeStart"] = event.reminders[0]
    if event.rrule and event.start:
        zone = _zone(tz)
        first = date.fromisoformat(event.start) if event.all_day else \
            datetime.fromisoformat(event.start.rstrip("Z")).replace(tzinfo=UTC).astimezone(
                zone).date()
        ev["recurrence"] = rrule_to_pattern(event.rrule, first, zone, windows_zone(tz))
    else:
        ev["recurrence"] = None
    return ev


def _description(event: Event, old_body: Any) -> str:
    """The body text: the description, and the attendees that are not Graph attendees
    (those live in the invitee block; see the module docstring)."""
    return join_description(event.description, event.attendees)


def render_event(event: Event, template: str | None = None) -> str:
    doc = load(template, "event") if template else {"event": {}}
    doc["event"] = event_fields(event, doc["event"])
    doc["exceptions"] = [
        {"originalStart": key if "T" in key else f"{key}T00:00:00Z", "subject": occ.summary,
         "start": write_time(occ.start, event.tz) if occ.start else None,
         "end": write_time(occ.end, event.tz) if occ.end else None,
         "location": {"displayName": occ.location},
         "body": {"contentType": "text", "content": occ.description},
         "isCancelled": occ.status == "cancelled"}
        for key, occ in event.overrides.items()]
    doc["cancelled"] = list(event.exdates)
    return dump(doc)


def occurrence_fields(occ: Occurrence, series: Event,
                      template: Mapping[str, Any] | None = None) -> Doc:
    """The properties to PATCH on an occurrence to make it the override ``occ``."""
    out: Doc = {"subject": occ.summary,
                "location": {"displayName": occ.location}}
    if occ.start:
        out["start"] = write_time(occ.start, series.tz)
    if occ.end:
        out["end"] = write_time(occ.end, series.tz)
    if template is None or body_text(template.get("body")) != occ.description:
        out["body"] = {"contentType": "text", "content": occ.description}
    return out


# --- tasks ----------------------------------------------------------------------------------

_TASK_STATUS_IN = {"notStarted": "needs-action", "inProgress": "in-process",
                   "completed": "completed", "waitingOnOthers": "in-process",
                   "deferred": "needs-action"}
_TASK_STATUS_OUT = {"needs-action": "notStarted", "in-process": "inProgress",
                    "completed": "completed", "cancelled": "deferred"}
_IMPORTANCE_IN = {"high": 1, "normal": 5, "low": 9}


def _importance(priority: int) -> str:
    if priority == 0:
        return "normal"
    return "high" if priority < 5 else "normal" if priority == 5 else "low"


def parse_task(raw: str) -> Task:
    task = load(raw, "task")["task"]
    due = task.get("dueDateTime")
    return Task(
        uid="",
        summary=_str(task.get("title")),
        description=body_text(task.get("body")),
        start=read_time(task.get("startDateTime"), all_day=True),
        due=read_time(due, all_day=True) if due else None,
        status=_TASK_STATUS_IN.get(_str(task.get("status")), "needs-action"),
        priority=_IMPORTANCE_IN.get(_str(task.get("importance")), 5),
        completed=read_time(task.get("completedDateTime")),
        categories=list(task.get("categories") or []),
    )


def task_fields(task: Task, template: Mapping[str, Any] | None = None) -> Doc:
    out: Doc = copy.deepcopy(dict(template or {}))
    out["title"] = task.summary
    if template is None or body_text(template.get("body")) != task.description:
        out["body"] = {"contentType": "text", "content": task.description}
    out["dueDateTime"] = write_time(task.due[:10], None) if task.due else None
    out["startDateTime"] = write_time(task.start[:10], None) if task.start else None
    # A status the model cannot tell apart (waiting, deferred) is kept when it maps alike.
    if _TASK_STATUS_IN.get(_str(out.get("status"))) != task.status:
        out["status"] = _TASK_STATUS_OUT.get(task.status, "notStarted")
    out["importance"] = _importance(task.priority)
    out["categories"] = list(task.categories)
    return out


def render_task(task: Task, template: str | None = None) -> str:
    doc = load(template, "task") if template else {"task": {}}
    doc["task"] = task_fields(task, doc["task"])
    return dump(doc)


# --- contacts -------------------------------------------------------------------------------

ADDRESSES = {"businessAddress": "work", "homeAddress": "home", "otherAddress": "other"}
_ADDRESS_PARTS = {"street": "street", "city": "city", "state": "region",
                  "postalCode": "postal_code", "countryOrRegion": "country"}


def parse_contact(raw: str) -> Contact:
    c = load(raw, "contact")["contact"]
    phones = [Phone(p, "work") for p in c.get("businessPhones") or [] if p][:1]
    phones += [Phone(p, "other") for p in (c.get("businessPhones") or [])[1:] if p]
    if c.get("mobilePhone"):
        phones.append(Phone(c["mobilePhone"], "cell"))
    phones += [Phone(p, "home") for p in c.get("homePhones") or [] if p]
    addresses = []
    for key, kind in ADDRESSES.items():
        a = c.get(key) or {}
        if any(a.get(part) for part in _ADDRESS_PARTS):
            addresses.append(Address(kind, **{ours: _str(a.get(theirs))
                                              for theirs, ours in _ADDRESS_PARTS.items()}))
    birthday = read_offset(c.get("birthday"))
    return Contact(
        uid="",
        full_name=_str(c.get("displayName")),
        given_name=_str(c.get("givenName")),
        family_name=_str(c.get("surname")),
        emails=[e["address"] for e in c.get("emailAddresses") or [] if e.get("address")],
        phones=phones,
        company=_str(c.get("companyName")),
        title=_str(c.get("jobTitle")),
        addresses=addresses,
        birthday=birthday[:10] if birthday else None,
        note=_str(c.get("personalNotes")),
        categories=list(c.get("categories") or []),
    )


def contact_fields(contact: Contact, template: Mapping[str, Any] | None = None) -> Doc:
    out: Doc = copy.deepcopy(dict(template or {}))
    out["displayName"] = contact.full_name or " ".join(
        p for p in (contact.given_name, contact.family_name) if p)
    out["givenName"] = contact.given_name
    out["surname"] = contact.family_name
    names = {e.get("address", "").lower(): e.get("name") for e in out.get("emailAddresses") or []}
    out["emailAddresses"] = [{"address": e, "name": names.get(e.lower()) or e}
                             for e in contact.emails[:3]]
    by_type: dict[str, list[str]] = {}
    for phone in contact.phones:
        by_type.setdefault(phone.type, []).append(phone.value)
    # Graph has no fax field: fax numbers go with the other business numbers.
    out["businessPhones"] = by_type.get("work", []) + by_type.get("other", []) \
        + by_type.get("fax", [])
    out["mobilePhone"] = (by_type.get("cell") or [None])[0]
    out["homePhones"] = by_type.get("home", [])
    wanted = {a.type: a for a in contact.addresses}
    for key, kind in ADDRESSES.items():
        a = wanted.get(kind)
        out[key] = {theirs: getattr(a, ours) for theirs, ours in _ADDRESS_PARTS.items()} \
            if a is not None else {}
    out["companyName"] = contact.company
    out["jobTitle"] = contact.title
    out["birthday"] = f"{contact.birthday}T11:59:00Z" if contact.birthday else None
    out["personalNotes"] = contact.note
    out["categories"] = list(contact.categories)
    return out


def render_contact(contact: Contact, template: str | None = None) -> str:
    doc = load(template, "contact") if template else {"contact": {}}
    doc["contact"] = contact_fields(contact, doc["contact"])
    return dump(doc)


# --- images ----------------------------------------------------------------------------

def image(record: Event | Task | Contact) -> Event | Task | Contact:
    """``record`` as Outlook keeps it once written and read back: a description becomes
    a text body, read without its surrounding blank lines and with LF line ends. Other
    fields are kept as given."""
    if isinstance(record, Event | Task) and record.description:
        text = body_text({"contentType": "text", "content": record.description})
        if text != record.description:
            return dataclasses.replace(record, description=text)  # type: ignore[type-var]
    return record
