"""Salesforce records as items: JSON documents <-> canonical records.

An item of the ``salesforce`` connector is the JSON document of what Salesforce returned
for it, so that a stored base parses without a connector (and without HTTP):

``{"Event": {...}, "Invitees": [...], "Occurrences": [...]}``
    An Event record as queried (``attributes`` dropped); its invitees, each an
    EventRelation with the Contact/Lead/User it names resolved (``RelationId``, ``Email``,
    ``Name``, ``Status``). For a Recurrence2 series, ``Event`` is the series (its first
    occurrence's content, starting at Recurrence2PatternStartDate) and ``Occurrences``
    every occurrence record there is.
``{"Contact": {..., "Account": {"Name": ...}}}``
    A Contact with its Account's name (a relationship field).
``{"Task": {...}}``
    A Task.

:func:`parse_event` and friends map a document to a record; :func:`render_event` and
friends write a record over a template document: fields the record models are set,
every other Salesforce field is kept, so a render's ``Event`` holds exactly what to send.

Description blocks. Salesforce has no invitee list of its own for people it does not
know, nor attachments; both may be listed in the Description, each in a block between
marker lines that :func:`split_description` removes again on the way back, so the
groupware never sees them. The invitee block is read back as attendees (it lists
everyone, known to Salesforce or not).

Field limits (SPEC section 5) are applied by :func:`fit`: a Subject over its limit is an
error for that item, other text fields are cut to fit.

Field reference: https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/
object_reference/sforce_api_objects_event.htm (Event), ..._task.htm, ..._contact.htm,
..._eventrelation.htm.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from crmsync.errors import ItemError
from crmsync.formats import jsondoc
from crmsync.model import (
    Address,
    Attendee,
    Contact,
    Event,
    Occurrence,
    Person,
    Phone,
    Task,
    is_all_day,
    is_floating,
    rule_in_zone,
)

FORMAT = "application/vnd.crmsync.salesforce+json"

Doc = jsondoc.Doc

# --- description blocks ------------------------------------------------------------------

INVITEES_BEGIN = "--- Invitees (crmsync) ---"
ATTACHMENTS_BEGIN = "--- Attachments (crmsync) ---"
BLOCK_END = "--- end ---"
_BLOCK = re.compile(
    r"(?:\r?\n){0,2}^(" + re.escape(INVITEES_BEGIN) + "|" + re.escape(ATTACHMENTS_BEGIN)
    + r")\r?\n(.*?)^" + re.escape(BLOCK_END) + r"[ \t]*(?:\r?\n)?",
    re.MULTILINE | re.DOTALL)
_INVITEE_LINE = re.compile(
    r"^(?:(?P<name>.*?) )?<(?P<email>[^<>\s]+)>(?: \((?P<status>[a-z-]+)\))?$")


def split_description(text: str) -> tuple[str, list[Attendee], list[str]]:
    """The user's text without crmsync's blocks, the invitees and the attachment names."""
    attendees: list[Attendee] = []
    files: list[str] = []

    def take(match: re.Match[str]) -> str:
        lines = [line.strip() for line in match[2].splitlines() if line.strip()]
        if match[1] == INVITEES_BEGIN:
            for line in lines:
                m = _INVITEE_LINE.match(line)
                if m:
                    attendees.append(Attendee(m["email"], m["name"] or "",
                                              m["status"] or "needs-action"))
        else:
            files.extend(line.removeprefix("- ") for line in lines)
        return ""

    rest = _BLOCK.sub(take, text or "")
    return rest, attendees, files


def join_description(text: str, attendees: Iterable[Attendee] = (),
                     files: Iterable[str] = ()) -> str:
    """``text`` followed by the invitee and attachment blocks (those not empty)."""
    blocks = []
    people = list(attendees)
    if people:
        lines = [(f"{a.name} <{a.email}>" if a.name else f"<{a.email}>") + f" ({a.status})"
                 for a in people]
        blocks.append("\n".join([INVITEES_BEGIN, *lines, BLOCK_END]))
    names = [f for f in files if f]
    if names:
        blocks.append("\n".join([ATTACHMENTS_BEGIN, *(f"- {n}" for n in names), BLOCK_END]))
    if not blocks:
        return text
    return "\n\n".join([text, *blocks]) if text else "\n\n".join(blocks)


# --- values ------------------------------------------------------------------------------


def parse_sf_datetime(value: str) -> datetime:
    """A Salesforce dateTime (``2026-11-22T10:00:00.000+0000``) as an aware UTC datetime."""
    text = value.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def sf_datetime(value: str | None) -> str | None:
    """A Salesforce dateTime as a MOMENT (UTC, whole seconds)."""
    if not value:
        return None
    return parse_sf_datetime(value).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def to_sf_datetime(m: str) -> str:
    """A MOMENT as a Salesforce dateTime. The core pins floating times to the user's zone
    before they reach Salesforce (Capabilities.floating); any left are taken as UTC."""
    if "T" not in m:
        return f"{m}T00:00:00.000+0000"
    return m.rstrip("Z")[:19] + ".000+0000"


def _day_after(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def _day_before(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def load(raw: str, kind_key: str) -> Doc:
    return jsondoc.load(raw, kind_key, "Salesforce")


dump = jsondoc.dump


# --- events ------------------------------------------------------------------------------

# EventRelation.Status <-> iCalendar PARTSTAT
_STATUS_IN = {"New": "needs-action", "Accepted": "accepted", "Declined": "declined"}
_STATUS_OUT = {"needs-action": "New", "accepted": "Accepted", "declined": "Declined",
               "tentative": "New", "delegated": "New"}


def _when(ev: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """An Event's start and end MOMENTs; an all-day end is exclusive, as in iCalendar."""
    if ev.get("IsAllDayEvent"):
        start = ev.get("ActivityDate") or (sf_datetime(ev.get("StartDateTime")) or "")[:10]
        end = ev.get("EndDate") or (sf_datetime(ev.get("EndDateTime")) or "")[:10] or start
        return start or None, _day_after(end) if end else None
    return sf_datetime(ev.get("StartDateTime")), sf_datetime(ev.get("EndDateTime"))


def parse_event(raw: str) -> Event:
    doc = load(raw, "Event")
    ev = doc["Event"]
    start, end = _when(ev)
    text, listed, _files = split_description(_str(ev.get("Description")))
    attendees: dict[str, Attendee] = {a.email.lower(): a for a in listed}
    for inv in doc.get("Invitees") or []:
        email = _str(inv.get("Email")).strip()
        if email:
            attendees[email.lower()] = Attendee(email, _str(inv.get("Name")),
                                                _STATUS_IN.get(inv.get("Status"), "needs-action"))
    owner = (ev.get("Owner") or {}).get("Email") if isinstance(ev.get("Owner"), dict) else None
    reminders = []
    reminder_at = sf_datetime(ev.get("ReminderDateTime"))
    if ev.get("IsReminderSet") and reminder_at and start and "T" in start:
        minutes = (_instant(start) - _instant(reminder_at)).total_seconds() // 60
        reminders.append(max(0, int(minutes)))
    event = Event(
        uid="",
        summary=_str(ev.get("Subject")),
        start=start,
        end=end,
        tz=ev.get("Recurrence2PatternTimeZone") or None,
        location=_str(ev.get("Location")),
        description=text,
        private=bool(ev.get("IsPrivate")),
        show_as="free" if ev.get("ShowAs") == "Free" else "busy",
        organizer=Person(owner) if owner else None,
        attendees=list(attendees.values()),
        reminders=reminders,
    )
    if ev.get("IsRecurrence2") and ev.get("Recurrence2PatternText"):
        _read_series(event, ev, doc.get("Occurrences") or [])
    return event


def _instant(m: str) -> datetime:
    return datetime.fromisoformat(m.rstrip("Z")).replace(tzinfo=UTC)


def rrule_of(pattern: str) -> str:
    """``RRULE:FREQ=...`` (Recurrence2PatternText) as the RRULE value; other lines dropped."""
    for line in pattern.replace("\r", "").split("\n"):
        if line.upper().startswith("RRULE:"):
            return line[6:].strip()
    return pattern.strip()


def slots(event: Event, until: str | None = None, limit: int = 1000) -> list[str]:
    """The start MOMENTs the series' RRULE gives (in its zone), up to ``until``.

    Expansion happens in the series' time zone so that a weekly 10:00 stays at 10:00
    across a DST change, as Salesforce and every calendar expand it.
    """
    from dateutil.rrule import rruleset, rrulestr

    if not event.rrule or not event.start:
        return []
    zone = _zone(event.tz)
    first = _local(event.start, zone)
    rule = rruleset()
    rule.rrule(rrulestr(rule_in_zone(event.rrule, zone), dtstart=first,  # type: ignore[arg-type]
                        ignoretz=True))
    rule.rdate(first)  # RFC 5545: the start is the first occurrence, on the rule or not
    end = _local(until, zone) if until else None
    out = []
    for when in rule:
        if end is not None and when > end or len(out) >= limit:
            break
        out.append(_moment_of(when, zone, all_day="T" not in event.start))
    return out


def _zone(tz: str | None) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz) if tz else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _local(m: str, zone: Any) -> datetime:
    if "T" not in m:
        return datetime.fromisoformat(m)
    return _instant(m).astimezone(zone).replace(tzinfo=None) if m.endswith("Z") \
        else datetime.fromisoformat(m)


def _moment_of(local: datetime, zone: Any, all_day: bool) -> str:
    if all_day:
        return local.date().isoformat()
    return local.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _read_series(event: Event, ev: Mapping[str, Any], others: list[Mapping[str, Any]]) -> None:
    """RRULE, exdates and overrides from a Recurrence2 series' occurrence records.

    Salesforce keeps one Event record per occurrence. An occurrence whose record has
    IsRecurrence2Exception set, or whose content differs from the series', is an
    override; a slot of the pattern (up to the last occurrence there is) without a
    record was deleted: an EXDATE. A moved occurrence is matched to the nearest slot left
    without a record; Salesforce keeps no RECURRENCE-ID.
    """
    event.rrule = rrule_of(ev["Recurrence2PatternText"])
    index, free = _match(event, others)
    for slot, record in index.items():
        if _differs(event, record):
            event.overrides[slot] = _occurrence(record)
    event.exdates = sorted(free)
    event.overrides = dict(sorted(event.overrides.items()))


def _match(event: Event, others: list[Mapping[str, Any]]
           ) -> tuple[dict[str, Mapping[str, Any]], list[str]]:
    """Slot -> occurrence record, and the slots without one."""
    records = [r for r in others if not r.get("IsRecurrence2Exclusion")]
    if not records:
        return {}, []
    return _assign(event, [(_when(r)[0] or "", r) for r in records])


T = TypeVar("T")


def _assign(event: Event, records: list[tuple[str, T]]) -> tuple[dict[str, T], list[str]]:
    """Slot -> the occurrence record (by its start) that fills it, and the slots without
    one. Salesforce keeps no RECURRENCE-ID: a record at a slot's time fills that slot, a
    moved one the nearest slot left free."""
    # (sorted, not keyed by start: two occurrences may be moved to the same time)
    starts = sorted(records, key=lambda sr: sr[0])
    last = max(s for s in [event.start, *(s for s, _ in starts)] if s)
    if _bounded(event.rrule or ""):
        # A series with an end: every slot up to Salesforce's horizon has (or had) a record.
        assert event.start is not None
        expected = slots(event, _shift_days(event.start, HORIZON_DAYS), MAX_OCCURRENCES)
    else:
        expected = slots(event, last)
    index: dict[str, T] = {}
    moved: list[tuple[str, T]] = []
    for start, record in starts:
        if start in expected and start not in index:
            index[start] = record
        else:
            moved.append((start, record))
    free = [s for s in expected if s not in index]
    for start, record in moved:
        if not free:
            break
        slot = min(free, key=lambda s: abs((_sortable(s) - _sortable(start)).total_seconds()))
        free.remove(slot)
        index[slot] = record
    return index, free


def _moves_told_apart(event: Event) -> bool:
    """Whether reading the series back (:func:`_assign`) gives every moved occurrence its
    own slot again: not when one lands on another's time and the nearest free slot is
    not where it came from."""
    moved = {k: o.start for k, o in event.overrides.items()
             if o.start and o.start != k and o.status != "cancelled"}
    if not moved or not event.start:
        return True
    try:
        expected = slots(event, max([*event.overrides, *moved.values()]))
    except (ValueError, TypeError, OverflowError):
        return True  # a rule Salesforce refuses says why itself
    gone = set(event.exdates) | {k for k, o in event.overrides.items()
                                 if o.status == "cancelled"}
    records = [(moved.get(slot, slot), slot) for slot in expected if slot not in gone]
    index, _ = _assign(event, records)
    return all(index.get(slot) == slot for slot in moved)


# How far ahead Salesforce lays out a series' occurrences (and at most how many): slots
# beyond are not missing, they are not there yet.
HORIZON_DAYS = 365
MAX_OCCURRENCES = 200


def _bounded(rrule: str) -> bool:
    return bool(re.search(r"(?:^|;)(?:COUNT|UNTIL)=", rrule.upper()))


def _shift_days(m: str, days: int) -> str:
    if "T" not in m:
        return (date.fromisoformat(m) + timedelta(days=days)).isoformat()
    return (datetime.fromisoformat(m.rstrip("Z")) + timedelta(days=days)).isoformat() + \
        ("Z" if m.endswith("Z") else "")


def occurrence_index(raw: str) -> dict[str, dict[str, Any]]:
    """A series item's occurrence records by the slot (RECURRENCE-ID) they fill."""
    doc = load(raw, "Event")
    event = parse_event(raw)
    if not event.rrule:
        return {}
    return {k: dict(v) for k, v in _match(event, doc.get("Occurrences") or [])[0].items()}


def _sortable(m: str) -> datetime:
    return datetime.fromisoformat(m.rstrip("Z")) if "T" in m else datetime.fromisoformat(m)


def _occurrence(record: Mapping[str, Any]) -> Occurrence:
    start, end = _when(record)
    text = split_description(_str(record.get("Description")))[0]
    return Occurrence(summary=_str(record.get("Subject")), start=start, end=end,
                      location=_str(record.get("Location")), description=text)


def _differs(event: Event, record: Mapping[str, Any]) -> bool:
    if record.get("IsRecurrence2Exception"):
        return True
    occ = _occurrence(record)
    duration = _span(event.start, event.end)
    return (occ.summary, occ.location, occ.description, _span(occ.start, occ.end)) != \
        (event.summary, event.location, event.description, duration)


def _span(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (_sortable(end) - _sortable(start)).total_seconds()


# The parts of an RFC 5545 RRULE; Salesforce's pattern takes these and no others (no
# RFC 7529 RSCALE/SKIP, no extensions, no misspelt parts).
RRULE_PARTS = frozenset({"FREQ", "UNTIL", "COUNT", "INTERVAL", "BYSECOND", "BYMINUTE",
                         "BYHOUR", "BYDAY", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO",
                         "BYMONTH", "BYSETPOS", "WKST"})


def unmappable(event: Event) -> None:
    """Raise ItemError when Salesforce cannot hold what ``event`` means: written anyway,
    it would come back as another event (SPEC section 4: reported per item, never
    dropped silently)."""
    if event.start and event.end and is_all_day(event.start) != is_all_day(event.end):
        kinds = ("a date (all day)", "a date and time")
        first, second = kinds if is_all_day(event.start) else kinds[::-1]
        raise ItemError(f"the start is {first} but the end {second}: Salesforce needs both "
                        "of one kind: not synced (make both dates or both times)")
    if event.start and event.end and not is_all_day(event.start) \
            and not is_all_day(event.end) and is_floating(event.start) != is_floating(event.end):
        first, second = ("no time zone (floating)", "one") if is_floating(event.start) \
            else ("a time zone", "none (floating)")
        raise ItemError(f"the start has {first} but the end {second}: which zone the "
                        "floating time means cannot be told, and Salesforce keeps instants: "
                        "not synced (give both the same zone)")
    if event.rdates:
        n = len(event.rdates)
        raise ItemError(f"{n} extra date{'s' if n > 1 else ''} (RDATE) cannot be held by "
                        "Salesforce, whose series repeat by their rule only: not synced")
    if not event.rrule and len(event.overrides) > 1:
        raise ItemError(f"{len(event.overrides)} occurrences of a series without its rule "
                        "(only changed occurrences were shared): Salesforce would keep the "
                        "first one alone: not synced")
    if event.rrule:
        names = [part.partition("=")[0].strip().upper() for part in event.rrule.split(";")]
        other = sorted({n for n in names if n and n not in RRULE_PARTS})
        if other:
            raise ItemError(f"the repeat rule's part{'s' if len(other) > 1 else ''} "
                            f"{', '.join(other)} cannot be held by Salesforce (its pattern "
                            "is a plain RFC 5545 RRULE): not synced")
        if event.start and event.start not in event.exdates and _off_pattern(event):
            raise ItemError("the first start is not a day the repeat rule gives, and "
                            "Salesforce's series holds only the rule's occurrences: not "
                            "synced (move the start onto the rule, e.g. its first day)")
        stray = _stray_overrides(event)
        if stray:
            raise ItemError(f"the changed occurrence {stray[0]} (RECURRENCE-ID) is not one "
                            "the repeat rule gives, so Salesforce cannot tell which "
                            "occurrence it changes: not synced")
        if not _moves_told_apart(event):
            raise ItemError("changed occurrences are moved onto each other's times: "
                            "Salesforce keeps no RECURRENCE-ID, so which is which cannot "
                            "be told on the way back: not synced")


def _stray_overrides(event: Event) -> list[str]:
    """The overrides whose RECURRENCE-ID is no slot of the series (a date-time on a day
    series, say): Salesforce keeps no RECURRENCE-ID, only the occurrence in its slot."""
    if not event.overrides or not event.start:
        return []
    try:
        known = set(slots(event, max(event.overrides), limit=1_000_000))
    except (ValueError, TypeError, OverflowError):
        return []  # a rule Salesforce refuses says why itself
    return [key for key in event.overrides if key not in known]


def _off_pattern(event: Event) -> bool:
    """Whether the series' start is not an occurrence of its RRULE (RFC 5545 counts it
    all the same; Salesforce, like dateutil, does not)."""
    from dateutil.rrule import rrulestr

    assert event.start is not None and event.rrule is not None
    zone = _zone(event.tz)
    first = _local(event.start, zone)
    try:
        rule = rrulestr(rule_in_zone(event.rrule, zone), dtstart=first, ignoretz=True)
        return next(iter(rule), None) != first  # type: ignore[call-overload]
    except (ValueError, TypeError, OverflowError):
        return False  # a rule Salesforce refuses says why itself


def event_fields(event: Event, *, invitees_in_description: bool = False,
                 attachments: Iterable[str] = (), event_type: str | None = None,
                 template: Mapping[str, Any] | None = None) -> Doc:
    """The Event fields to write for ``event`` (over ``template``, the record as read)."""
    unmappable(event)
    ev: Doc = dict(template or {})
    ev["Subject"] = event.summary
    if event.all_day and event.start:
        last = _day_before(event.end) if event.end and event.end > event.start else event.start
        ev.update(IsAllDayEvent=True, ActivityDate=event.start, EndDate=last,
                  StartDateTime=to_sf_datetime(event.start),
                  EndDateTime=to_sf_datetime(last))
        ev.pop("ActivityDateTime", None)
        ev.pop("DurationInMinutes", None)
    elif event.start:
        end = event.end or event.start
        ev.update(IsAllDayEvent=False, StartDateTime=to_sf_datetime(event.start),
                  EndDateTime=to_sf_datetime(end))
        for derived in ("ActivityDate", "ActivityDateTime", "EndDate", "DurationInMinutes"):
            ev.pop(derived, None)
    ev["Location"] = event.location
    _, _, old_files = split_description(_str(ev.get("Description")))
    files = list(attachments) or old_files
    ev["Description"] = join_description(
        event.description, event.attendees if invitees_in_description else (), files)
    ev["IsPrivate"] = event.private
    if event.show_as == "free":
        ev["ShowAs"] = "Free"
    elif ev.get("ShowAs") not in ("Busy", "OutOfOffice"):
        ev["ShowAs"] = "Busy"
    if event.reminders and event.start and "T" in event.start:
        at = _instant(event.start) - timedelta(minutes=event.reminders[0])
        ev.update(IsReminderSet=True, ReminderDateTime=to_sf_datetime(
            at.replace(tzinfo=None).isoformat() + "Z"))
    else:
        ev["IsReminderSet"] = False
        ev.pop("ReminderDateTime", None)
    if event_type and not ev.get("Type"):
        ev["Type"] = event_type
    if event.rrule:
        ev.update(IsRecurrence2=True, Recurrence2PatternText="RRULE:" + event.rrule,
                  Recurrence2PatternVersion=ev.get("Recurrence2PatternVersion") or "1")
        if event.tz:
            ev["Recurrence2PatternTimeZone"] = event.tz
    return ev


def render_event(event: Event, template: str | None = None, *,
                 invitees_in_description: bool = False, attachments: Iterable[str] = (),
                 event_type: str | None = None) -> str:
    doc = load(template, "Event") if template else {"Event": {}}
    doc["Event"] = event_fields(event, invitees_in_description=invitees_in_description,
                                attachments=attachments, event_type=event_type,
                                template=doc["Event"])
    old = {(i.get("Email") or "").lower(): i for i in doc.get("Invitees") or []}
    doc["Invitees"] = [
        {**old.get(a.email.lower(), {}), "Email": a.email, "Name": a.name,
         "Status": _STATUS_OUT.get(a.status, "New")}
        for a in event.attendees]
    if not event.rrule:
        doc.pop("Occurrences", None)
    return dump(doc)


def invitee_status(attendee: Attendee) -> str:
    return _STATUS_OUT.get(attendee.status, "New")


# --- tasks -------------------------------------------------------------------------------

_TASK_STATUS_IN = {"Not Started": "needs-action", "In Progress": "in-process",
                   "Completed": "completed", "Waiting on someone else": "needs-action",
                   "Deferred": "cancelled"}
_TASK_STATUS_OUT = {"needs-action": "Not Started", "in-process": "In Progress",
                    "completed": "Completed", "cancelled": "Deferred"}
_PRIORITY_IN = {"High": 1, "Normal": 5, "Low": 9}


def _priority_out(value: int) -> str:
    if 1 <= value <= 4:
        return "High"
    if value >= 6:
        return "Low"
    return "Normal"


def parse_task(raw: str) -> Task:
    task = load(raw, "Task")["Task"]
    return Task(
        uid="",
        summary=_str(task.get("Subject")),
        description=_str(task.get("Description")),
        due=task.get("ActivityDate") or None,
        status=_TASK_STATUS_IN.get(task.get("Status"), "needs-action"),
        priority=_PRIORITY_IN.get(task.get("Priority"), 0),
        completed=sf_datetime(task.get("CompletedDateTime")),
    )


def task_fields(task: Task, template: Mapping[str, Any] | None = None) -> Doc:
    if task.rrule:
        raise ItemError("a repeating task (RRULE) cannot be held by Salesforce, whose Task "
                        "has one due date: not synced")
    out: Doc = dict(template or {})
    out["Subject"] = task.summary
    out["Description"] = task.description
    out["ActivityDate"] = task.due[:10] if task.due else None
    # A status or priority that already means the same stays as it is ("Waiting on
    # someone else" is needs-action too).
    if _TASK_STATUS_IN.get(out.get("Status")) != task.status:
        out["Status"] = _TASK_STATUS_OUT.get(task.status, "Not Started")
    if _PRIORITY_IN.get(out.get("Priority"), 0) != task.priority:
        out["Priority"] = _priority_out(task.priority)
    return out


def render_task(task: Task, template: str | None = None) -> str:
    doc = load(template, "Task") if template else {"Task": {}}
    doc["Task"] = task_fields(task, doc["Task"])
    return dump(doc)


# --- contacts ----------------------------------------------------------------------------

PHONE_FIELDS = {"Phone": "work", "MobilePhone": "cell", "HomePhone": "home",
                "OtherPhone": "other", "Fax": "fax"}
ADDRESS_FIELDS = {"Mailing": "work", "Other": "home"}
_ADDRESS_PARTS = {"Street": "street", "City": "city", "State": "region",
                  "PostalCode": "postal_code", "Country": "country"}


def parse_contact(raw: str) -> Contact:
    c = load(raw, "Contact")["Contact"]
    given, family = _str(c.get("FirstName")), _str(c.get("LastName"))
    account = c.get("Account")
    addresses = []
    for prefix, kind in ADDRESS_FIELDS.items():
        parts = {attr: _str(c.get(prefix + name)) for name, attr in _ADDRESS_PARTS.items()}
        if any(parts.values()):
            addresses.append(Address(type=kind, **parts))
    return Contact(
        uid="",
        full_name=" ".join(p for p in (given, family) if p),
        given_name=given,
        family_name=family,
        emails=[c["Email"]] if c.get("Email") else [],
        phones=[Phone(c[name], kind) for name, kind in PHONE_FIELDS.items() if c.get(name)],
        company=_str(account.get("Name")) if isinstance(account, dict) else "",
        title=_str(c.get("Title")),
        addresses=addresses,
        birthday=c.get("Birthdate") or None,
        note=_str(c.get("Description")),
    )


def contact_fields(contact: Contact, template: Mapping[str, Any] | None = None) -> Doc:
    out: Doc = dict(template or {})
    given, family = contact.given_name, contact.family_name
    if not family and contact.full_name:
        # LastName is required: a contact known by one name is filed under it.
        head, _, tail = contact.full_name.strip().rpartition(" ")
        given, family = (head, tail) if head and not given else (given, tail or head)
    out["FirstName"] = given
    out["LastName"] = family
    out["Email"] = contact.emails[0] if contact.emails else None
    by_kind: dict[str, str] = {}
    for phone in contact.phones:
        by_kind.setdefault(phone.type, phone.value)
    for name, kind in PHONE_FIELDS.items():
        out[name] = by_kind.get(kind)
    out["Title"] = contact.title
    addresses = {a.type: a for a in contact.addresses}
    spare = [a for a in contact.addresses if a.type not in ADDRESS_FIELDS.values()]
    for prefix, kind in ADDRESS_FIELDS.items():
        address = addresses.get(kind) or (spare.pop(0) if spare else None)
        for name, attr in _ADDRESS_PARTS.items():
            out[prefix + name] = getattr(address, attr) if address else None
    out["Birthdate"] = contact.birthday[:10] if contact.birthday else None
    out["Description"] = contact.note
    out["Account"] = {"Name": contact.company} if contact.company else None
    return out


def render_contact(contact: Contact, template: str | None = None) -> str:
    doc = load(template, "Contact") if template else {"Contact": {}}
    doc["Contact"] = contact_fields(contact, doc["Contact"])
    return dump(doc)


# --- limits ------------------------------------------------------------------------------

# Lengths as in the Object Reference, used until describe says otherwise.
DEFAULT_LENGTHS: dict[str, dict[str, int]] = {
    "Event": {"Subject": 255, "Location": 255, "Description": 32000},
    "Task": {"Subject": 255, "Description": 32000},
    "Contact": {"FirstName": 40, "LastName": 80, "Email": 80, "Phone": 40, "MobilePhone": 40,
                "HomePhone": 40, "OtherPhone": 40, "Fax": 40, "Title": 128,
                "MailingStreet": 255, "MailingCity": 40, "MailingState": 80,
                "MailingPostalCode": 20, "MailingCountry": 80, "OtherStreet": 255,
                "OtherCity": 40, "OtherState": 80, "OtherPostalCode": 20,
                "OtherCountry": 80, "Description": 32000},
}
# Fields never cut: too long is an error for the item (SPEC section 5).
STRICT = frozenset({"Subject"})
# Fields cut to fit only when allowed (the body: on by default).
BODY = frozenset({"Description"})
_TRUNCATED = " [...]"


def fit(sobject: str, values: Doc, lengths: Mapping[str, int], *,
        truncate_body: bool = True) -> list[str]:
    """Cut ``values`` to ``lengths`` in place; returns the names of the fields cut.

    Raises ItemError for a Subject (or a body, when not allowed) over its limit.
    """
    cut = []
    for name, value in values.items():
        limit = lengths.get(name)
        if not isinstance(value, str) or limit is None or len(value) <= limit:
            continue
        if name in STRICT or name in BODY and not truncate_body:
            raise ItemError(f"{sobject}.{name} is {len(value)} characters, Salesforce "
                            f"takes at most {limit}: not synced (shorten it)")
        if name in BODY and limit > len(_TRUNCATED):
            values[name] = value[:limit - len(_TRUNCATED)] + _TRUNCATED
        else:
            values[name] = value[:limit]
        cut.append(name)
    return cut


# --- images ------------------------------------------------------------------------------

_SOBJECTS = {"calendar": "Event", "tasks": "Task", "contacts": "Contact"}
# The picklist defaults of a standard org, set on a record written without them.
_DEFAULTS = {"Task": {"Priority": "Normal", "Status": "Not Started"}}


def image(record: Event | Task | Contact, lengths: Mapping[str, int], *,
          invitees_in_description: bool = False, truncate_body: bool = True,
          known: Collection[str] | None = None) -> Event | Task | Contact:
    """``record`` as Salesforce keeps it once written and read back: text fields cut to
    ``lengths`` (the body with its " [...]" mark), invitee and attachment blocks taken out
    of the Description again, times as UTC instants (floating ones must be pinned first).
    ``known``: the (lower-case) emails of the people Salesforce can relate as invitees;
    other attendees are left out (None: all are kept, as the invitee block keeps them).
    A record Salesforce would refuse (a Subject over its limit) is its own image."""
    if isinstance(record, Event) and known is not None:
        record = replace(record, attendees=[a for a in record.attendees
                                            if a.email.lower() in known])
    if isinstance(record, Event):
        raw = render_event(record, invitees_in_description=invitees_in_description)
        parse: Any = parse_event
    elif isinstance(record, Task):
        raw, parse = render_task(record), parse_task
    else:
        raw, parse = render_contact(record), parse_contact
    sobject = _SOBJECTS[record.kind]
    doc = load(raw, sobject)
    for name, value in _DEFAULTS.get(sobject, {}).items():
        if doc[sobject].get(name) is None:
            doc[sobject][name] = value  # what Salesforce sets on a new record
    try:
        fit(sobject, doc[sobject], lengths, truncate_body=truncate_body)
    except ItemError:
        return record
    out = parse(dump(doc))
    if isinstance(record, Event):
        # A series' cancelled and moved occurrences are occurrence records of their own,
        # which a rendered document does not have: Salesforce keeps them as they are.
        out = replace(out, exdates=list(record.exdates), overrides=dict(record.overrides))
    return out
