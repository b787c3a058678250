"""The canonical model: what crmsync knows about an event, a contact and a task.

Every connector converts its native items (iCalendar, vCard, Salesforce JSON, ...) to and
from these records; the planner compares records field by field. A record is a plain,
normalized dataclass: two records describing the same thing compare equal, whatever
system they came from.

Vocabulary used throughout:

MOMENT
    A point in time as a normalized string, so that records compare by value:
    ``"2026-11-22"`` (a date, all-day), ``"2026-11-22T10:00:00"`` (floating local time)
    or ``"2026-11-22T09:00:00Z"`` (an instant, always in UTC). A zoned time is stored as
    its UTC instant; the zone it was written in lives in the record's ``tz`` field, so a
    CRM that only knows UTC and a calendar that knows zones still agree on the instant.
FIELDS
    ``record.fields()``: the record as a JSON-serializable dict, the unit the planner
    diffs and merges. ``from_fields`` builds a record back.

What a record does not model (X- properties, alarms' details, unknown parameters) is not
lost: formats keep the native item and write only the fields that changed over it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any, ClassVar, Literal, Self

ObjectKind = Literal["calendar", "contacts", "tasks"]
OBJECT_KINDS: tuple[ObjectKind, ...] = ("calendar", "contacts", "tasks")


# --- moments ---------------------------------------------------------------------------


def moment(value: date | datetime) -> str:
    """Normalize a date or datetime to a MOMENT string (zoned times become UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return value.replace(microsecond=0).isoformat()
        return value.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def pin(m: str, zone: tzinfo) -> str:
    """A floating local time as the UTC instant it is in ``zone``; other moments as they are."""
    if not is_floating(m):
        return m
    return moment(datetime.fromisoformat(m).replace(tzinfo=zone))


_UNTIL_UTC = re.compile(r"(?i)(?<![A-Z])UNTIL=(\d{8}T\d{6})Z")


def rule_in_zone(rrule: str, zone: tzinfo) -> str:
    """An RRULE for expanding on wall times in ``zone``: an UNTIL in UTC becomes the wall
    time it is there (expanded naively, 09:30Z would be taken for 09:30 local)."""
    def local(match: re.Match[str]) -> str:
        until = datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        return "UNTIL=" + until.astimezone(zone).strftime("%Y%m%dT%H%M%S")

    return _UNTIL_UTC.sub(local, rrule)


def is_all_day(m: str | None) -> bool:
    return m is not None and "T" not in m


def is_floating(m: str | None) -> bool:
    """A date-time without a zone (neither a date nor UTC)."""
    return m is not None and "T" in m and not m.endswith("Z")


def parse_moment(m: str, tz: tzinfo | None = None) -> date | datetime:
    """The inverse of :func:`moment`; a UTC instant is shown in ``tz`` when given."""
    if "T" not in m:
        return date.fromisoformat(m)
    if m.endswith("Z"):
        dt = datetime.fromisoformat(m[:-1]).replace(tzinfo=UTC)
        return dt.astimezone(tz) if tz is not None else dt
    return datetime.fromisoformat(m)


# --- records ---------------------------------------------------------------------------


class Record:
    """Base of Event, Contact and Task: field access shared by the planner."""

    kind: ClassVar[ObjectKind]
    # Fields that identify the item rather than describe it: never diffed or merged.
    identity: ClassVar[frozenset[str]] = frozenset({"uid", "crm_id"})

    uid: str
    # The kept id: on a groupware item, the Id of the CRM record it was paired with
    # (X-CRMSYNC-CRM-ID), so that a lost store re-pairs them. Never written to the CRM.
    crm_id: str

    def fields(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in vars(self).items() if k not in self.identity}

    @classmethod
    def from_fields(cls, values: dict[str, Any], uid: str = "", crm_id: str = "") -> Self:
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            spec = known.get(name)
            if spec is None or name in cls.identity:
                continue
            kwargs[name] = _revive(spec.type, value)
        return cls(uid=uid, crm_id=crm_id, **kwargs)

    def label(self) -> str:
        """A short human label for tables and reports."""
        raise NotImplementedError


def _plain(value: Any) -> Any:
    """A field value as plain JSON-able data; dataclasses.asdict without its deep copies."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value


def _revive(type_name: Any, value: Any) -> Any:
    """Turn JSON-ish nested values back into the nested dataclasses."""
    nested = {"list[Attendee]": Attendee, "list[Phone]": Phone, "list[Address]": Address}
    if value is None:
        return None
    if type_name in nested and isinstance(value, list):
        return [nested[type_name](**v) if isinstance(v, dict) else v for v in value]
    if type_name == "Person | None" and isinstance(value, dict):
        return Person(**value)
    if type_name == "dict[str, Occurrence]" and isinstance(value, dict):
        return {k: Occurrence.from_fields(v) if isinstance(v, dict) else v
                for k, v in value.items()}
    return value


@dataclass
class Person:
    email: str
    name: str = ""


@dataclass
class Attendee:
    email: str
    name: str = ""
    # needs-action | accepted | declined | tentative | delegated
    status: str = "needs-action"
    # req-participant | opt-participant | non-participant | chair
    role: str = "req-participant"


@dataclass
class Occurrence:
    """One overridden instance of a recurring series (VEVENT with RECURRENCE-ID)."""

    summary: str = ""
    start: str | None = None
    end: str | None = None
    location: str = ""
    description: str = ""
    # confirmed | tentative | cancelled
    status: str = "confirmed"

    def fields(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Occurrence:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class Event(Record):
    kind: ClassVar[ObjectKind] = "calendar"

    uid: str = ""
    crm_id: str = field(default="", compare=False)
    summary: str = ""
    start: str | None = None
    end: str | None = None
    # The IANA (or TZID) zone the times are expressed in on a zone-aware side.
    tz: str | None = None
    location: str = ""
    description: str = ""
    private: bool = False
    # busy | free
    show_as: str = "busy"
    # confirmed | tentative | cancelled
    status: str = "confirmed"
    categories: list[str] = field(default_factory=list)
    organizer: Person | None = None
    attendees: list[Attendee] = field(default_factory=list)
    # Minutes before start, one entry per display/audio alarm.
    reminders: list[int] = field(default_factory=list)
    # RRULE value as iCalendar text ("FREQ=WEEKLY;COUNT=10"), moments for the rest.
    rrule: str | None = None
    rdates: list[str] = field(default_factory=list)
    exdates: list[str] = field(default_factory=list)
    # Overridden instances keyed by their RECURRENCE-ID moment.
    overrides: dict[str, Occurrence] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.categories = sorted(set(self.categories))
        self.attendees = sorted(self.attendees, key=lambda a: a.email.lower())
        self.reminders = sorted(self.reminders)
        self.rdates = sorted(set(self.rdates))
        self.exdates = sorted(set(self.exdates))
        self.overrides = dict(sorted(self.overrides.items()))

    @property
    def all_day(self) -> bool:
        return is_all_day(self.start)

    def label(self) -> str:
        """``2026-11-24 10:00 Pricing call`` in the event's own zone (UTC when unknown)."""
        return f"{_when_label(self.start, self.tz)} {self.summary}".strip()


def _when_label(m: str | None, tz: str | None) -> str:
    if m is None:
        return "?"
    if is_all_day(m):
        return m
    zone: tzinfo | None = None
    if tz and m.endswith("Z"):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
    when = parse_moment(m, zone)
    text = when.strftime("%Y-%m-%d %H:%M")  # type: ignore[union-attr]
    return text if zone is not None or not m.endswith("Z") else text + " UTC"


@dataclass
class Phone:
    value: str
    # cell | work | home | fax | other
    type: str = "other"


@dataclass
class Address:
    type: str = "work"
    street: str = ""
    city: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass
class Contact(Record):
    kind: ClassVar[ObjectKind] = "contacts"

    uid: str = ""
    crm_id: str = field(default="", compare=False)
    full_name: str = ""
    given_name: str = ""
    family_name: str = ""
    # The first address is the primary one; order is kept.
    emails: list[str] = field(default_factory=list)
    phones: list[Phone] = field(default_factory=list)
    company: str = ""
    title: str = ""
    addresses: list[Address] = field(default_factory=list)
    birthday: str | None = None
    note: str = ""
    categories: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.categories = sorted(set(self.categories))

    def label(self) -> str:
        return self.full_name or " ".join(p for p in (self.given_name, self.family_name) if p)


@dataclass
class Task(Record):
    kind: ClassVar[ObjectKind] = "tasks"

    uid: str = ""
    crm_id: str = field(default="", compare=False)
    summary: str = ""
    description: str = ""
    start: str | None = None
    due: str | None = None
    # needs-action | in-process | completed | cancelled
    status: str = "needs-action"
    # 0 undefined, 1 highest .. 9 lowest (iCalendar PRIORITY)
    priority: int = 0
    completed: str | None = None
    private: bool = False
    categories: list[str] = field(default_factory=list)
    # A repeating task's RRULE value, as Event.rrule; a side without repeating tasks
    # reports the task rather than dropping the repetition.
    rrule: str | None = None

    def __post_init__(self) -> None:
        self.categories = sorted(set(self.categories))

    def label(self) -> str:
        return self.summary


RECORD_TYPES: dict[ObjectKind, type[Record]] = {
    "calendar": Event,
    "contacts": Contact,
    "tasks": Task,
}


def pinned(event: Event, zone: tzinfo) -> Event:
    """``event`` with its floating times pinned to ``zone`` (for a side that keeps instants
    only, such as Salesforce), and ``zone`` as its zone when it had none."""
    def one(m: str | None) -> str | None:
        return None if m is None else pin(m, zone)

    out = dataclasses.replace(
        event, start=one(event.start), end=one(event.end),
        rdates=[pin(m, zone) for m in event.rdates], exdates=[pin(m, zone) for m in event.exdates],
        overrides={pin(k, zone): dataclasses.replace(o, start=one(o.start), end=one(o.end))
                   for k, o in event.overrides.items()})
    if out != event and event.tz is None:
        out.tz = getattr(zone, "key", None)
    return out
