"""The real-world corpus: calendar items written by other projects, assembled at test time.

We may not commit files taken from other repositories, so the items are derived, when the
tests run, from the test calendars that installed packages ship (see
tests/realworld/README.md for the sources, their versions and licences), plus our own
hostile files in tests/corpus:

- every source file is split into vdir items, one per UID: the components sharing it
  (master and RECURRENCE-ID overrides) with the VTIMEZONEs they name. A component without
  a UID gets a stable derived one (source, file, index); a UID already used by an
  earlier file gets the file's name appended, so that every item has its own identity.
  VEVENTs go to ``calendar``, VTODOs to ``tasks``; other components (VJOURNAL,
  VFREEBUSY, VAVAILABILITY, ...) are dropped and counted.
- a file icalendar cannot read at all is kept whole, as it is: hostile input too.
- dates outside the sync range are shifted in: each item's dates (DTSTART, DTEND, DUE,
  RECURRENCE-ID, EXDATE, RDATE, RRULE UNTIL) move by one common number of whole weeks
  (weekdays and wall-clock times stay), so that its first start falls a few days after
  ``now``. An item whose dates icalendar cannot shift is kept unshifted and counted.

:func:`occurrences` is the independent reference the harness compares with: what
recurring_ical_events expands an item to over the sync range.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("corpus")


@dataclass(frozen=True)
class Source:
    name: str  # a short prefix for item names
    package: str  # the distribution that ships the files ("" for our own)
    folder: Any  # a Traversable (or Path) holding the .ics files

    def files(self) -> list[Any]:
        return sorted((p for p in self.folder.iterdir() if p.name.endswith(".ics")),
                      key=lambda p: p.name)

    def version(self) -> str:
        return importlib.metadata.version(self.package) if self.package else "tests/corpus"

    def licence(self) -> str:
        if not self.package:
            return "Apache-2.0 (crmsync's own)"
        meta = importlib.metadata.metadata(self.package)
        return meta.get("License-Expression") or meta.get("License") or "?"


# (name, distribution, module, folder inside it)
PACKAGED = (
    ("ical", "icalendar", "icalendar", "tests/calendars"),
    ("rie", "recurring-ical-events", "recurring_ical_events", "test/calendars"),
)


def sources() -> tuple[list[Source], list[str]]:
    """The sources there are, and why each missing one is missing."""
    found, missing = [], []
    for name, dist, module, sub in PACKAGED:
        try:
            folder = importlib.resources.files(module).joinpath(*sub.split("/"))
        except ModuleNotFoundError:
            missing.append(f"{dist} is not installed (pip install -e '.[test]')")
            continue
        if not folder.is_dir():
            missing.append(f"{dist} {importlib.metadata.version(dist)} ships no {sub}/")
            continue
        found.append(Source(name, dist, folder))
    found.append(Source("own", "", CORPUS))
    return found, missing


@dataclass
class Corpus:
    """Derived items: file name -> bytes, per object, and how they were made."""

    items: dict[str, dict[str, bytes]] = field(
        default_factory=lambda: {"calendar": {}, "tasks": {}})
    # file name -> (source, source file) it came from
    origin: dict[str, tuple[str, str]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # name -> package, version and licence of each source used
    sources: dict[str, dict[str, str]] = field(default_factory=dict)

    def shards(self, n: int) -> list[Corpus]:
        """The items in ``n`` parts, each item in one (by a hash of its name: stable)."""
        parts = [Corpus() for _ in range(n)]
        for kind, items in self.items.items():
            for name, data in items.items():
                part = parts[int(hashlib.sha1(name.encode()).hexdigest(), 16) % n]
                part.items[kind][name] = data
                part.origin[name] = self.origin[name]
        return parts

    def sample(self, every: int) -> Corpus:
        """Every ``every``-th item (by a hash of its name: stable); all of them for 1."""
        if every == 1:
            return self
        return self.shards(every)[0]

    def composition(self) -> dict[str, Any]:
        per_source: dict[str, Counter[str]] = {}
        for name, (source, _) in self.origin.items():
            kind = "tasks" if name in self.items["tasks"] else "calendar"
            per_source.setdefault(source, Counter())[kind] += 1
        return {"sources": self.sources,
                "items": {k: len(v) for k, v in self.items.items()},
                "per_source": {s: dict(c) for s, c in sorted(per_source.items())},
                "notes": dict(sorted(self.counts.items()))}


_KINDS = {"VEVENT": "calendar", "VTODO": "tasks"}
_UID = re.compile(rb"^UID:([^\r\n]*)", re.MULTILINE)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def build(now: datetime, wanted: list[Source]) -> Corpus:
    import icalendar

    corpus = Corpus()
    seen_uids: set[str] = set()
    for source in wanted:
        corpus.sources[source.name] = {"package": source.package or "crmsync",
                                       "version": source.version(),
                                       "licence": source.licence()}
        for path in source.files():
            data = path.read_bytes()
            stem = _SAFE.sub("_", path.name.removesuffix(".ics"))
            corpus.counts[f"{source.name}: source files"] += 1
            found = _UID.search(data)
            own_uid = found[1].decode("utf-8", "replace") if found else None
            if not source.package and (own_uid is None or own_uid not in seen_uids):
                # Our own hostile files go in byte for byte (read and written again by
                # icalendar, invalid UTF-8 or bare LFs would be repaired): they are dated
                # for the same "now" as tests/test_corpus.py, inside the range already.
                # (Not a second file of one UID: duplicate UIDs are tests/test_corpus.py's.)
                if own_uid is not None:
                    seen_uids.add(own_uid)
                name = f"{source.name}-{stem}.ics"
                corpus.items["calendar"][name] = data
                corpus.origin[name] = (source.name, path.name)
                corpus.counts[f"{source.name}: kept byte for byte"] += 1
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cals = icalendar.Calendar.from_ical(data, multiple=True)
            except Exception:
                cals = None
            if not cals:
                name = f"{source.name}-{stem}.ics"
                corpus.items["calendar"][name] = data
                corpus.origin[name] = (source.name, path.name)
                corpus.counts[f"{source.name}: kept whole (icalendar cannot read it)"] += 1
                continue
            n = 0
            for cal in cals:
                for kind, uid, comps in _groups(cal, source.name, stem, corpus.counts):
                    if uid in seen_uids:
                        uid = f"{uid}-{source.name}-{stem}"
                        corpus.counts["UIDs made unique (used by an earlier file)"] += 1
                    seen_uids.add(uid)
                    name = f"{source.name}-{stem}-{n}.ics"
                    n += 1
                    corpus.items[kind][name] = _item(cal, uid, comps, now, corpus.counts)
                    corpus.origin[name] = (source.name, path.name)
    return corpus


def _groups(cal: Any, source: str, stem: str, counts: Counter[str]
            ) -> Iterator[tuple[str, str, list[Any]]]:
    by_uid: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for i, comp in enumerate(cal.subcomponents):
        if comp.name == "VTIMEZONE":
            continue
        if comp.name not in _KINDS:
            counts[f"{source}: {comp.name} components dropped"] += 1
            continue
        uid = str(comp.get("UID") or "")
        if not uid:
            uid = f"{source}-{stem}-{i}-" + hashlib.sha1(
                f"{source}/{stem}/{i}".encode()).hexdigest()[:8] + "@corpus.crmsync"
            counts["UIDs derived (component without UID)"] += 1
        # The same UID in a VEVENT and a VTODO: two items.
        key = f"{comp.name}\0{uid}"
        by_uid.setdefault(key, []).append(comp)
        kinds[key] = _KINDS[comp.name]
    for key, comps in by_uid.items():
        yield kinds[key], key.split("\0", 1)[1], comps


def _item(cal: Any, uid: str, comps: list[Any], now: datetime, counts: Counter[str]) -> bytes:
    import icalendar

    out = icalendar.Calendar()
    for name, value in cal.property_items(recursive=False)[1:-1]:
        out.add(name, value, encode=False)
    body = re.sub(rb"\r?\n[ \t]", b"", b"".join(c.to_ical() for c in comps))
    for vtz in cal.walk("VTIMEZONE"):
        if f"TZID={vtz.get('TZID', '')}".encode() in body \
                or f'TZID="{vtz.get("TZID", "")}"'.encode() in body:
            out.add_component(vtz)
    for comp in comps:
        if str(comp.get("UID") or "") != uid:
            comp.pop("UID", None)
            comp.add("UID", uid)
        out.add_component(comp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shifted = _shifted(out, now)
        if shifted is not None:
            counts["items shifted into the sync range"] += 1
            return shifted
    except Exception:
        pass
    data = out.to_ical()
    shifted = _shifted_text(data, now)
    counts["items shifted as text (icalendar cannot shift them)" if shifted
           else "items without a date to shift"] += 1
    return shifted or data


# --- shifting ----------------------------------------------------------------------------


def _shifted(cal: Any, now: datetime) -> bytes | None:
    """``cal`` with its items' dates moved by whole weeks so that the first start lies a
    few days after ``now``; None when it has no date."""
    import icalendar

    cal = icalendar.Calendar.from_ical(cal.to_ical())  # a copy to edit
    items = [c for c in cal.subcomponents if c.name in _KINDS]
    firsts = [_day(v.dt) for c in items for p in ("DTSTART", "DUE") if p in c
              for v in (c[p] if isinstance(c[p], list) else [c[p]])]
    if not firsts:
        return None
    weeks = -((min(firsts) - (now.date() + timedelta(days=1))).days // 7)
    delta = timedelta(weeks=weeks)
    if not weeks:
        return cal.to_ical()
    for comp in items:
        start = comp.get("DTSTART")
        start = start[0] if isinstance(start, list) else start
        zone = start.dt.tzinfo if start is not None and isinstance(start.dt, datetime) \
            else None
        for name in ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID"):
            props = comp.get(name)
            for prop in props if isinstance(props, list) else [props] if props else []:
                prop.dt = _move(prop.dt, delta, zone)  # (a property given twice: both)
        for name in ("EXDATE", "RDATE"):
            lists = comp.get(name)
            for lst in lists if isinstance(lists, list) else [lists] if lists else []:
                for one in lst.dts:
                    one.dt = _move(one.dt, delta, zone)
        rule = comp.get("RRULE")
        if rule is not None and "UNTIL" in rule:
            rule["UNTIL"] = [_move(u, delta, zone) for u in rule["UNTIL"]]
    return cal.to_ical()


_DATED = re.compile(rb"^(DTSTART|DTEND|DUE|RECURRENCE-ID|EXDATE|RDATE|RRULE)([;:].*)$",
                    re.MULTILINE)
_STAMP = re.compile(rb"(?<![0-9])(\d{8})(T\d{6}Z?)?(?![0-9])")


def _shifted_text(data: bytes, now: datetime) -> bytes | None:
    """The fallback for what icalendar cannot read: the same shift on the text of the
    dated lines (a value's digits); None when no start is found."""
    text = re.sub(rb"\r?\n[ \t]", b"", data)
    starts = [m for line in _DATED.finditer(text) if line[1] in (b"DTSTART", b"DUE")
              for m in _STAMP.finditer(line[2].rpartition(b":")[2])]
    firsts = []
    for m in starts:
        try:
            firsts.append(datetime.strptime(m[1].decode(), "%Y%m%d").date())
        except ValueError:
            continue
    if not firsts:
        return None
    delta = timedelta(weeks=-((min(firsts) - (now.date() + timedelta(days=1))).days // 7))

    def move(m: re.Match[bytes]) -> bytes:
        try:
            day = datetime.strptime(m[1].decode(), "%Y%m%d").date() + delta
        except ValueError:
            return m[0]
        return day.strftime("%Y%m%d").encode() + (m[2] or b"")

    def line(m: re.Match[bytes]) -> bytes:
        head, _, value = m[2].rpartition(b":") if m[1] != b"RRULE" else (b"", b"", m[2])
        return m[1] + head + (b":" if head else b"") + _STAMP.sub(move, value)

    return _DATED.sub(line, text)


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    raise TypeError(f"not a date: {value!r}")


def _move(value: Any, delta: timedelta, zone: tzinfo | None) -> Any:
    """``value`` moved by ``delta`` on the wall clock of the item's zone: a UTC time of a
    zoned series moves as the series' local times do, so RECURRENCE-IDs still match."""
    if isinstance(value, tuple):  # an RDATE period
        return tuple(_move(v, delta, zone) if isinstance(v, date) else v for v in value)
    if isinstance(value, datetime) and value.tzinfo is not None and zone is not None \
            and value.utcoffset() == timedelta(0) and zone is not value.tzinfo:
        return (value.astimezone(zone) + delta).astimezone(value.tzinfo)
    if isinstance(value, date):
        return value + delta
    raise TypeError(f"cannot shift {value!r}")


# --- the reference: occurrences over the sync range ------------------------------------------

Occ = tuple[str, str, str, str, str]
_LIMIT = 2000


def occurrences(data: bytes, kind: str, lo: datetime, hi: datetime, zone: tzinfo
                ) -> list[Occ]:
    """(start, end, summary, location, description) of each occurrence that overlaps
    [lo, hi), sorted; floating times read in ``zone``, instants as UTC, days as days.

    Raises whatever recurring_ical_events raises on an item it cannot expand."""
    import icalendar
    import recurring_ical_events

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Unfolded as octets first (RFC 5545 3.1 folds octets: a line may be folded
        # inside a UTF-8 character, which icalendar, decoding line by line, garbles)
        cal = icalendar.Calendar.from_ical(re.sub(rb"\r?\n[ \t]", b"", data))
        component = "VTODO" if kind == "tasks" else "VEVENT"
        out = []
        for occ in recurring_ical_events.of(cal, components=[component]).between(lo, hi):
            if str(occ.get("STATUS", "")).upper() == "CANCELLED":
                continue  # it does not take place (Salesforce deletes such an occurrence)
            start = _at(occ.get("DTSTART"), zone)
            end = _at(occ.get("DUE" if kind == "tasks" else "DTEND"), zone)
            if kind == "calendar" and "T" not in start and "T" not in end and end <= start:
                # RFC 5545 3.6.1: a day event without a later DTEND lasts that one day
                end = (date.fromisoformat(start) + timedelta(days=1)).isoformat()
            out.append((start, end,
                        str(occ.get("SUMMARY", "")), str(occ.get("LOCATION", "")),
                        _text(occ.get("DESCRIPTION", ""))))
            if len(out) > _LIMIT:
                break
    return sorted(out)


def _text(value: Any) -> str:
    return str(value).replace("\r\n", "\n").replace("\r", "\n")


def _at(prop: Any, zone: tzinfo) -> str:
    if prop is None:
        return ""
    value = prop.dt
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()
