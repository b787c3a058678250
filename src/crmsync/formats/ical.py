"""iCalendar (RFC 5545): VEVENT items as Events, VTODO items as Tasks.

An item is read into a tree of content lines that remembers every line exactly as it was
written. Rendering edits that tree: only properties whose modeled value changed are
rewritten, so the rest (X- properties, alarms, unknown parameters, VTIMEZONEs, even folding
and order) keeps its bytes. icalendar decodes and encodes the values themselves.

The tree and its line handling are in contentlines.py, shared with vcard.py.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from icalendar import Timezone
from icalendar.parser import (
    Contentline,
    param_value,
    rfc_6868_unescape,
    split_on_unescaped_comma,
    unescape_backslash,
)
from icalendar.prop import vDate, vDatetime, vDuration, vRecur
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from crmsync.errors import FormatError
from crmsync.formats.contentlines import (
    KEPT_ID,
    PRODID,
    Component,
    Line,
    dump_component,
    guard,
    read_component,
    reuse,
)
from crmsync.model import Attendee, Event, Occurrence, Person, Task, moment, parse_moment

__all__ = ["parse_event", "parse_task", "render_event", "render_task"]

# --- iCalendar values --------------------------------------------------------------------

_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


def _parts(line: Line) -> tuple[Mapping[str, Any], str]:
    """The parameters (upper-case names) and the raw, still escaped, value of a property."""
    if line.cache is None:
        text, at = line.text, line.head
        if text[at] == ":":
            line.cache = (_NO_PARAMS, text[at + 1 :])
        else:
            line.cache = _split_params(text, at) or Contentline(text).raw_parts()[1:]
    return line.cache


_PARAM = re.compile(r';([A-Za-z0-9-]+)=((?:"[^"]*"|[^";:,]*)(?:,(?:"[^"]*"|[^";:,]*))*)')
_PARAM_VALUE = re.compile(r'"([^"]*)"|([^",]+)')


def _split_params(text: str, at: int) -> tuple[dict[str, Any], str] | None:
    """Parameters by the RFC 5545 grammar, where a backslash is a plain character: icalendar
    reads it as an escape and so garbles a name holding one. None for lines off the
    grammar, which icalendar's lenient parser then reads or rejects."""
    params: dict[str, Any] = {}
    while (match := _PARAM.match(text, at)) is not None:
        values = [rfc_6868_unescape(q or bare) for q, bare in _PARAM_VALUE.findall(match[2])]
        params[match[1].upper()] = values if len(values) > 1 else (values or [""])[0]
        at = match.end()
    return (params, text[at + 1 :]) if text.startswith(":", at) else None


def _param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if isinstance(value, list):
        return str(value[0]) if value else None
    return value


def _text(comp: Component, name: str) -> str:
    line = comp.first(name)
    # a bare CR inside a line is a line break, as _escape writes it back
    text = unescape_backslash(_parts(line)[1]) if line else ""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _escape(text: str) -> str:
    # Not icalendar's vText: it turns a literal backslash-N into a line break.
    return (
        text.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\n")
        .replace("\r", "\n")
        .replace("\n", "\\n")
    )


def _prop(name: str, value: str, params: Mapping[str, Any] | None = None) -> Line:
    """A new property; ``value`` is already in iCalendar syntax."""
    # Not Parameters.to_ical: it drops TZID=UTC, which names a zone here, not a UTC time
    heads = [name, *(f"{key.upper()}={_param_text(v)}" for key, v in (params or {}).items())]
    return Line.new(f"{';'.join(heads)}:{value}")


def _param_text(value: Any) -> str:
    # Lenient parsers (icalendar's too) strip blanks next to "=" even inside a bare value
    quote = isinstance(value, str) and (value != value.strip() or "=" in value)
    return param_value(value, always_quote=quote)


def _basic(value: date | datetime) -> str:
    """ISO 8601 basic format, as iCalendar writes dates and times."""
    return value.isoformat().replace("-", "").replace(":", "")


def _stamp() -> str:
    return _basic(datetime.now(UTC).replace(tzinfo=None, microsecond=0)) + "Z"


# --- time zones ----------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _iana(tzid: str) -> str | None:
    """The IANA zone a TZID names, also through the aliases icalendar knows (Windows names,
    vendor-prefixed ids); None for a zone only a VTIMEZONE can define.

    Not icalendar's ``tzp.timezone``: it answers from a process-wide cache that every
    VTIMEZONE icalendar ever parsed fills, so a Windows name resolved or not depending
    on which calendars were read before."""
    cleaned = tzid.strip("/")
    candidates = [tzid, cleaned, WINDOWS_TO_OLSON.get(cleaned)]
    if tzid.startswith("/"):  # RFC 5545 3.2.19 "globally unique": /vendor/.../Olson/Name
        parts = cleaned.split("/")
        candidates += ["/".join(parts[start:]) for start in range(1, len(parts))]
    for name in candidates:
        if not name:
            continue
        try:
            return ZoneInfo(name).key
        except Exception:  # not found, not a valid key, a directory: each has its own type
            continue
    return None


@lru_cache(maxsize=64)
def _vtimezone_tz(text: str) -> tzinfo:
    return Timezone.from_ical(text).to_tz(lookup_tzid=False)


@lru_cache(maxsize=64)
def _vtimezone(iana: str) -> Component:
    # Shared between items, never edited in place: inserted as is or copied to be renamed
    return read_component(Timezone.from_tzid(iana).to_ical().decode(), "VTIMEZONE")[0]


class _Zones:
    """Resolves TZIDs for one calendar: IANA names first, then its own VTIMEZONEs."""

    def __init__(self, cal: Component) -> None:
        self._cal = cal
        self._defs: dict[str, Component] | None = None
        self._read: dict[str, tuple[tzinfo, str]] = {}

    def defs(self) -> dict[str, Component]:
        if self._defs is None:
            self._defs = {_text(c, "TZID"): c for c in self._cal.subs("VTIMEZONE")}
        return self._defs

    def read(self, tzid: str) -> tuple[tzinfo, str]:
        """The zone and the name Event.tz gets for a TZID."""
        if tzid not in self._read:
            iana = _iana(tzid)
            vtz = None if iana else self.defs().get(tzid)
            if iana:
                self._read[tzid] = ZoneInfo(iana), iana
            elif vtz is None:
                raise FormatError(f"unknown time zone {tzid!r}: no VTIMEZONE defines it")
            else:
                self._read[tzid] = _vtimezone_tz(dump_component(vtz, "\r\n")), tzid
        return self._read[tzid]

    def writer(self, name: str | None) -> tuple[tzinfo, str] | None:
        """The zone to write times in for ``name`` and the TZID to call it, preferring the
        TZID the calendar already defines that zone under; None when it can't be resolved."""
        if not name:
            return None
        iana = _iana(name)
        if iana is None:
            return (self.read(name)[0], name) if name in self.defs() else None
        known = [tzid for tzid in self.defs() if _iana(tzid) == iana]
        return ZoneInfo(iana), (name if name in known or not known else known[0])

    def add(self, tzids: Iterable[str]) -> None:
        """Give the calendar a VTIMEZONE for each TZID written that it does not define."""
        new: list[Line | Component] = []
        for tzid in sorted(set(tzids) - self.defs().keys()):
            vtz = _vtimezone(_iana(tzid) or tzid)
            if _text(vtz, "TZID") != tzid:
                vtz = Component(vtz.name, vtz.begin, list(vtz.items))
                vtz.replace("TZID", [_prop("TZID", _escape(tzid))])
            new.append(vtz)
        if new:  # ahead of the item, for readers that resolve TZIDs as they go
            item = next(c for c in self._cal.items
                        if isinstance(c, Component) and c.name != "VTIMEZONE")
            self._cal.swap([item], [*new, item])
            self._defs = None


# --- dates and times -----------------------------------------------------------------------


def _decode_when(
    line: Line, value: str, tzid: str | None, zones: _Zones
) -> tuple[date | datetime, str | None]:
    """A DATE or DATE-TIME value and the zone name its TZID gives it."""
    value = value.split("/")[0]  # an RDATE period counts from its start
    try:
        if len(value) == 8:
            return vDate.from_ical(value), None
        if tzid and not value.endswith("Z"):
            tz, name = zones.read(tzid)
            return vDatetime.from_ical(value, timezone=tz), name
        return vDatetime.from_ical(value), None
    except ValueError:
        raise FormatError(f"{line.name}: bad date or date-time {value!r}") from None


def _when(line: Line, zones: _Zones) -> tuple[date | datetime, str | None]:
    params, value = _parts(line)
    return _decode_when(line, value.split(",")[0], _param(params, "TZID"), zones)


def _add(start: date | datetime, span: timedelta) -> date | datetime:
    if isinstance(start, datetime) and start.tzinfo is not None:
        # RFC 5545: days are nominal (wall clock, DST-aware), hours and less exact
        return (start + timedelta(days=span.days)).astimezone(UTC) + timedelta(
            seconds=span.seconds
        )
    return start + span


def _when_value(m: str, item: _Item, zoned: bool = True) -> tuple[dict[str, str], str]:
    """Parameters and value to write a MOMENT with: instants in the item's zone if any."""
    value = parse_moment(m)
    if not isinstance(value, datetime):
        return {"VALUE": "DATE"}, _basic(value)
    if value.tzinfo is None:
        return {}, _basic(value.replace(microsecond=0))
    value = value.astimezone(UTC).replace(microsecond=0)
    if zoned and item.zone is not None:
        tz, tzid = item.zone
        local = value.astimezone(tz).replace(tzinfo=None, fold=0)
        # In the hour repeated when DST ends, wall time alone names the first instant only
        if local.replace(tzinfo=tz).astimezone(UTC) == value:
            item.used.add(tzid)
            return {"TZID": tzid}, _basic(local)
    return {}, _basic(value.replace(tzinfo=None)) + "Z"


def _when_line(name: str, m: str, item: _Item, zoned: bool = True) -> Line:
    params, value = _when_value(m, item, zoned)
    return _prop(name, value, params)


# --- fields ----------------------------------------------------------------------------------
# A field reads one record attribute from a component and writes it back; what the model
# leaves out of a property (its other parameters, an alarm's sound) is the writers' care.

Reader = Callable[[Component, str, "_Item"], Any]
Writer = Callable[[Component, str, Any, "_Item"], None]


class _Field(NamedTuple):
    attr: str
    prop: str
    read: Reader
    write: Writer
    timed: bool = False  # written in the event's zone: redone when the zone changes


def _read_text(comp: Component, prop: str, item: _Item) -> str:
    return _text(comp, prop)


def _write_text(comp: Component, prop: str, value: str, item: _Item) -> None:
    comp.replace(prop, [_prop(prop, _escape(value))] if value else [])


def _once(comp: Component, prop: str) -> Line | None:
    """The one line of a property that may occur once; FormatError when it occurs again
    with another value (which one is meant cannot be known)."""
    lines = comp.props(prop)
    if len(lines) > 1 and len({_parts(line)[1].strip() for line in lines}) > 1:
        values = ", ".join(repr(_parts(line)[1].strip()) for line in lines)
        raise FormatError(f"{prop} is given {len(lines)} times ({values}): which one is "
                          "meant cannot be told")
    return lines[0] if lines else None


def _read_when(comp: Component, prop: str, item: _Item) -> str | None:
    line = _once(comp, prop)
    return moment(_when(line, item.zones)[0]) if line else None


def _write_when(comp: Component, prop: str, value: str | None, item: _Item) -> None:
    comp.replace(prop, [_when_line(prop, value, item)] if value else [])


def _write_utc(comp: Component, prop: str, value: str | None, item: _Item) -> None:
    # RFC 5545 wants COMPLETED in UTC whatever zone the rest is in
    comp.replace(prop, [_when_line(prop, value, item, zoned=False)] if value else [])


def _read_end(comp: Component, prop: str, item: _Item) -> str | None:
    line, duration, start = _once(comp, prop), comp.first("DURATION"), comp.first("DTSTART")
    if line is not None:
        return moment(_when(line, item.zones)[0])
    if duration is None or start is None:
        return None
    first, span = _when(start, item.zones)[0], vDuration.from_ical(_parts(duration)[1])
    if not isinstance(first, datetime) and span % timedelta(days=1):
        # RFC 5545 3.8.2.5: a day start takes a duration in days or weeks; hours cannot be
        # added to a day without guessing where it begins
        raise FormatError(f"DURATION {_parts(duration)[1].strip()} is not whole days, but "
                          "the start is a date (all day)")
    return moment(_add(first, span))


def _write_end(comp: Component, prop: str, value: str | None, item: _Item) -> None:
    _write_when(comp, prop, value, item)
    comp.replace("DURATION", [])


def _status(default: str) -> tuple[Reader, Writer]:
    def read(comp: Component, prop: str, item: _Item) -> str:
        return _text(comp, prop).lower() or default

    def write(comp: Component, prop: str, value: str, item: _Item) -> None:
        comp.replace(prop, [_prop(prop, _escape(value.upper()))] if value else [])

    return read, write


def _read_private(comp: Component, prop: str, item: _Item) -> bool:
    return _text(comp, prop).upper() in ("PRIVATE", "CONFIDENTIAL")


def _write_private(comp: Component, prop: str, value: bool, item: _Item) -> None:
    comp.replace(prop, [_prop(prop, "PRIVATE")] if value else [])


def _read_show_as(comp: Component, prop: str, item: _Item) -> str:
    return "free" if _text(comp, prop).upper() == "TRANSPARENT" else "busy"


def _write_show_as(comp: Component, prop: str, value: str, item: _Item) -> None:
    comp.replace(prop, [_prop(prop, "TRANSPARENT" if value == "free" else "OPAQUE")])


def _read_int(comp: Component, prop: str, item: _Item) -> int:
    text = _text(comp, prop).strip()
    if text and not text.isdigit():
        raise FormatError(f"{prop}: not a number: {text!r}")
    return int(text or 0)


def _write_int(comp: Component, prop: str, value: int, item: _Item) -> None:
    comp.replace(prop, [_prop(prop, str(value))] if value else [])


def _read_list(comp: Component, prop: str, item: _Item) -> list[str]:
    return [v for line in comp.props(prop) for v in split_on_unescaped_comma(_parts(line)[1]) if v]


def _write_list(comp: Component, prop: str, values: list[str], item: _Item) -> None:
    comp.replace(prop, [_prop(prop, ",".join(map(_escape, values)))] if values else [])


def _who(line: Line) -> tuple[str, str]:
    """Email (mailto: stripped, lower-cased) and name of an ORGANIZER or ATTENDEE."""
    params, value = _parts(line)
    value = value.strip()
    email = value[7:] if value[:7].lower() == "mailto:" else value
    return email.lower(), _param(params, "CN") or ""


def _attendees(comp: Component, prop: str) -> list[tuple[Attendee, Line]]:
    out = []
    for line in comp.props(prop):
        params = _parts(line)[0]
        status = (_param(params, "PARTSTAT") or "needs-action").lower()
        role = (_param(params, "ROLE") or "req-participant").lower()
        out.append((Attendee(*_who(line), status=status, role=role), line))
    return out


def _person_line(prop: str, person: Person | Attendee, old: Line | None) -> Line:
    """ORGANIZER/ATTENDEE for ``person``, keeping the other parameters of its old line."""
    if old is not None:
        params, value = dict(_parts(old)[0]), _parts(old)[1]
    else:
        email = person.email
        params, value = {}, email if ":" in email else f"mailto:{email}"
    updates = {"CN": person.name}
    if isinstance(person, Attendee):
        updates |= {"PARTSTAT": person.status.upper(), "ROLE": person.role.upper()}
    for key, new in updates.items():
        if new:
            params[key] = new
        else:
            params.pop(key, None)
    return _prop(prop, value, params)


def _read_organizer(comp: Component, prop: str, item: _Item) -> Person | None:
    line = comp.first(prop)
    return Person(*_who(line)) if line else None


def _write_organizer(comp: Component, prop: str, value: Person | None, item: _Item) -> None:
    old = comp.first(prop)
    if value is None:
        comp.replace(prop, [])
    else:
        same = old is not None and _who(old)[0] == value.email
        comp.replace(prop, [_person_line(prop, value, old if same else None)])


def _read_attendees(comp: Component, prop: str, item: _Item) -> list[Attendee]:
    return [a for a, _ in _attendees(comp, prop)]


def _write_attendees(comp: Component, prop: str, values: list[Attendee], item: _Item) -> None:
    old = _attendees(comp, prop)
    place = {a.email: i for i, (a, _) in enumerate(old)}  # keep the file's order
    wanted = sorted(values, key=lambda a: place.get(a.email, len(place)))
    lines = reuse(old, wanted, lambda a, line: _person_line(prop, a, line),
                  same=lambda a, b: a.email == b.email)
    comp.replace(prop, lines)


def _minutes(alarm: Component) -> int | None:
    """Minutes before the start of a display or audio alarm; None for alarms the model
    does not cover (email, absolute, after the start or relative to the end)."""
    trigger = alarm.first("TRIGGER")
    if trigger is None or _text(alarm, "ACTION").upper() not in ("DISPLAY", "AUDIO"):
        return None
    params, value = _parts(trigger)
    if (_param(params, "VALUE") or "DURATION").upper() != "DURATION":
        return None
    if (_param(params, "RELATED") or "START").upper() != "START":
        return None
    before = -vDuration.from_ical(value.strip())
    return int(before.total_seconds() // 60) if before >= timedelta(0) else None


def _alarms(comp: Component) -> list[tuple[int, Component]]:
    return [(m, a) for a in comp.subs("VALARM") if (m := _minutes(a)) is not None]


def _read_reminders(comp: Component, prop: str, item: _Item) -> list[int]:
    return [m for m, _ in _alarms(comp)]


def _new_alarm(minutes: int, old: Component | None) -> Component:
    trigger = vDuration(timedelta(minutes=-minutes)).to_ical().decode()
    return Component.new("VALARM", [
        _prop("ACTION", "DISPLAY"), _prop("DESCRIPTION", "Reminder"), _prop("TRIGGER", trigger),
    ])


def _write_reminders(comp: Component, prop: str, values: list[int], item: _Item) -> None:
    old = _alarms(comp)
    comp.swap([a for _, a in old], reuse(old, values, _new_alarm, same=lambda a, b: False))


def _rrule(text: str) -> str:
    rule = vRecur.from_ical(text.strip())
    if "FREQ" not in rule:
        raise FormatError(f"RRULE without FREQ: {text!r}")
    # icalendar's own order of the rule parts, so equal rules compare equal
    return vRecur(rule).to_ical().decode()


def _read_rrule(comp: Component, prop: str, item: _Item) -> str | None:
    lines = [line for line in comp.props(prop) if _parts(line)[1].strip()]
    if len({_parts(line)[1].strip().upper() for line in lines}) > 1:
        # RFC 2445 allowed several (their union); RFC 5545 deprecates it
        raise FormatError(f"{len(lines)} repeat rules (RRULE): crmsync holds one rule per "
                          "series")
    line = comp.first(prop)
    # An empty RRULE (some exporters write "RRULE:" for no repetition) is no rule at all
    return _rrule(_parts(line)[1]) if line and _parts(line)[1].strip() else None


def _write_rrule(comp: Component, prop: str, value: str | None, item: _Item) -> None:
    comp.replace(prop, [_prop(prop, _rrule(value))] if value else [])


def _read_dates(comp: Component, prop: str, item: _Item) -> list[str]:
    out = []
    for line in comp.props(prop):
        params, values = _parts(line)
        tzid = _param(params, "TZID")
        out += [moment(_decode_when(line, v, tzid, item.zones)[0]) for v in values.split(",") if v]
    return out


def _write_dates(comp: Component, prop: str, values: list[str], item: _Item) -> None:
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for m in values:  # one line per kind of value: dates, floating, zoned, UTC
        params, value = _when_value(m, item)
        groups.setdefault(tuple(params.items()), []).append(value)
    comp.replace(prop, [_prop(prop, ",".join(v), dict(p)) for p, v in groups.items()])


_OCCURRENCE_FIELDS = (
    _Field("summary", "SUMMARY", _read_text, _write_text),
    _Field("start", "DTSTART", _read_when, _write_when, timed=True),
    _Field("end", "DTEND", _read_end, _write_end, timed=True),
    _Field("location", "LOCATION", _read_text, _write_text),
    _Field("description", "DESCRIPTION", _read_text, _write_text),
    _Field("status", "STATUS", *_status("confirmed")),
)
_EVENT_FIELDS = (
    *_OCCURRENCE_FIELDS,
    _Field("private", "CLASS", _read_private, _write_private),
    _Field("show_as", "TRANSP", _read_show_as, _write_show_as),
    _Field("categories", "CATEGORIES", _read_list, _write_list),
    _Field("organizer", "ORGANIZER", _read_organizer, _write_organizer),
    _Field("attendees", "ATTENDEE", _read_attendees, _write_attendees),
    _Field("reminders", "VALARM", _read_reminders, _write_reminders),
    _Field("rrule", "RRULE", _read_rrule, _write_rrule),
    _Field("rdates", "RDATE", _read_dates, _write_dates, timed=True),
    _Field("exdates", "EXDATE", _read_dates, _write_dates, timed=True),
)
_TASK_FIELDS = (
    _Field("summary", "SUMMARY", _read_text, _write_text),
    _Field("description", "DESCRIPTION", _read_text, _write_text),
    _Field("start", "DTSTART", _read_when, _write_when),
    _Field("due", "DUE", _read_end, _write_end),
    _Field("status", "STATUS", *_status("needs-action")),
    _Field("priority", "PRIORITY", _read_int, _write_int),
    _Field("completed", "COMPLETED", _read_when, _write_utc),
    _Field("private", "CLASS", _read_private, _write_private),
    _Field("categories", "CATEGORIES", _read_list, _write_list),
    _Field("rrule", "RRULE", _read_rrule, _write_rrule),
)


# --- items -----------------------------------------------------------------------------------


class _Item:
    """One calendar object: the VCALENDAR tree and the components of its one item."""

    def __init__(self, raw: str, kind: str) -> None:
        self.cal, self.eol = read_component(raw, "VCALENDAR")
        self.kind = kind
        comps = self.cal.subs(kind)
        if not comps:
            raise FormatError(f"no {kind} in the calendar")
        masters = [c for c in comps if c.first("RECURRENCE-ID") is None]
        self.master = masters[0] if masters else None
        uid = _text(self.master, "UID") if self.master else ""
        twins = [c for c in masters if _text(c, "UID") == uid]
        if len(twins) > 1:
            raise FormatError(f"{len(twins)} {kind}s with UID {uid!r} and no RECURRENCE-ID: "
                              "which one is the item cannot be told")
        # Without a master (an invitation to single instances) the first instance stands in
        self.head = self.master or comps[0]
        self.uid = _text(self.head, "UID")
        others = sorted({u for c in comps if (u := _text(c, "UID"))} - {self.uid})
        if others:
            # Not one item: syncing the first would leave the others out without a word.
            raise FormatError(f"holds {len(others) + 1} {kind}s with different UIDs "
                              f"({', '.join([self.uid, *others][:3])}): one item per file "
                              "is needed; split it")
        self.family = [
            c for c in comps
            if c is self.head or (c.first("RECURRENCE-ID") and _text(c, "UID") == self.uid)
        ]
        self.zones = _Zones(self.cal)
        self.zone: tuple[tzinfo, str] | None = None  # where rendering writes instants
        self.used: set[str] = set()  # TZIDs written, which need a VTIMEZONE

    @classmethod
    def open(cls, template: str | None, kind: str, uid: str) -> _Item:
        if template is not None:
            return cls(template, kind)
        uid = _escape(uid or str(uuid.uuid4()))
        return cls(
            f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:{PRODID}\r\nBEGIN:{kind}\r\n"
            f"UID:{uid}\r\nDTSTAMP:{_stamp()}\r\nEND:{kind}\r\nEND:VCALENDAR\r\n",
            kind,
        )

    def read(self, comp: Component, fields: Iterable[_Field]) -> dict[str, Any]:
        return {f.attr: f.read(comp, f.prop, self) for f in fields}

    def write(
        self, comp: Component, fields: Iterable[_Field], old: Any, new: Any, rezone: bool = False
    ) -> None:
        """Rewrite the properties whose value differs between the ``old`` and ``new`` records."""
        done: set[str] = set()
        for f in fields:
            value = getattr(new, f.attr)
            # an end kept as a DURATION would move with a new start: pin it
            follows = f.write is _write_end and "start" in done and comp.first("DURATION")
            if value != getattr(old, f.attr) or (f.timed and rezone) or follows:
                f.write(comp, f.prop, value, self)
                done.add(f.attr)

    def tz(self) -> str | None:
        """The zone named by the start's (or else the due date's) TZID."""
        lines = (self.head.first("DTSTART"), self.head.first("DUE"))
        return next((z for line in lines if line and (z := _when(line, self.zones)[1])), None)

    def overrides(self) -> dict[str, Component]:
        rids = ((c, c.first("RECURRENCE-ID")) for c in self.family)
        return {moment(_when(rid, self.zones)[0]): c for c, rid in rids if rid}

    def set_uid(self, uid: str) -> None:
        if uid and uid != self.uid:
            for comp in self.family:
                comp.replace("UID", [_prop("UID", _escape(uid))])
            self.uid = uid

    def keep(self, crm_id: str) -> None:
        """Write the kept CRM id (see :attr:`crmsync.model.Record.crm_id`) on the head."""
        if crm_id and crm_id != _text(self.head, KEPT_ID):
            self.head.replace(KEPT_ID, [_prop(KEPT_ID, _escape(crm_id))])

    def add(self, recurrence_id: str | None) -> Component:
        """A new component of the item, after its others."""
        lines: list[Line | Component] = [_prop("UID", _escape(self.uid)),
                                         _prop("DTSTAMP", _stamp())]
        if recurrence_id:
            lines.append(_when_line("RECURRENCE-ID", recurrence_id, self))
        comp = Component.new(self.kind, lines)
        if self.family:
            self.cal.swap([self.family[-1]], [self.family[-1], comp])
        else:
            self.cal.items.append(comp)
        self.family.append(comp)
        return comp

    def drop(self, comp: Component) -> None:
        self.cal.swap([comp], [])
        self.family.remove(comp)

    def dump(self) -> str:
        self.zones.add(self.used)
        return dump_component(self.cal, self.eol)


def _event(item: _Item) -> Event:
    overrides = {
        key: Occurrence(**item.read(comp, _OCCURRENCE_FIELDS))
        for key, comp in item.overrides().items()
    }
    return Event(
        uid=item.uid, crm_id=_text(item.head, KEPT_ID), tz=item.tz(), overrides=overrides,
        **item.read(item.head, _EVENT_FIELDS)
    )


@guard("iCalendar event")
def parse_event(raw: str) -> Event:
    """Read the event a VCALENDAR holds: its master VEVENT and overridden instances."""
    return _event(_Item(raw, "VEVENT"))


@guard("iCalendar event")
def render_event(event: Event, template: str | None) -> str:
    """Write ``event`` as a VCALENDAR, over ``template`` (the item's current text) if given."""
    event = dataclasses.replace(event)  # re-normalized, as parsing gives it
    item = _Item.open(template, "VEVENT", event.uid)
    old = _event(item)
    item.set_uid(event.uid)
    item.keep(event.crm_id)
    item.zone = item.zones.writer(event.tz)
    have = item.overrides()
    for key in have.keys() - event.overrides.keys():
        item.drop(have[key])
    for key, occurrence in event.overrides.items():
        comp = have.get(key) or item.add(key)
        item.write(comp, _OCCURRENCE_FIELDS, old.overrides.get(key, Occurrence()), occurrence)
    if item.head not in item.family:  # the instance standing in for a missing master is gone
        if item.family:
            item.head = item.family[0]
        else:
            item.head = item.add(None)
            old = Event(tz=old.tz, **item.read(item.head, _EVENT_FIELDS))
    item.write(item.head, _EVENT_FIELDS, old, event, rezone=event.tz != old.tz)
    return item.dump()


@guard("iCalendar task")
def parse_task(raw: str) -> Task:
    """Read the task (VTODO) a VCALENDAR holds."""
    item = _Item(raw, "VTODO")
    return Task(uid=item.uid, crm_id=_text(item.head, KEPT_ID),
                **item.read(item.head, _TASK_FIELDS))


@guard("iCalendar task")
def render_task(task: Task, template: str | None) -> str:
    """Write ``task`` as a VCALENDAR, over ``template`` (the item's current text) if given."""
    task = dataclasses.replace(task)
    item = _Item.open(template, "VTODO", task.uid)
    old = Task(uid=item.uid, **item.read(item.head, _TASK_FIELDS))
    item.set_uid(task.uid)
    item.keep(task.crm_id)
    # Task has no zone of its own: changed times keep the zone the item already uses
    item.zone = item.zones.writer(item.tz())
    item.write(item.head, _TASK_FIELDS, old, task)
    return item.dump()
