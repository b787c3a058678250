"""Deterministic generator of realistic iCalendar events for the crmsync benchmark.

One ``.ics`` file per item, named ``<uid>.ics``, CRLF line endings, lines folded at 75
octets. The mix: zoned (TZID=Europe/Berlin, VTIMEZONE included) and UTC times, some
all-day events, attendees/organizer on many, a VALARM on some, and a share of recurring
events (DAILY/WEEKLY/MONTHLY with COUNT or UNTIL), each with 1-2 overridden instances
(RECURRENCE-ID VEVENTs in the same file) and an EXDATE.

Everything is drawn from ``random.Random(seed)`` and a reference day ``base`` (default:
today, UTC), so the same seed and base day always give byte-identical folders.

Used as a module by ``bench/run.py`` and as a CLI::

    python bench/generate.py OUT_DIR --events 10000 [--seed 42] [--base 2026-01-01]
    python bench/generate.py OUT_DIR --modify 100 [--seed 42] [--round 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

PRODID = "-//crmsync//bench generator//EN"
TZID = "Europe/Berlin"
CRLF = "\r\n"

VTIMEZONE_BERLIN = [
    "BEGIN:VTIMEZONE",
    "TZID:Europe/Berlin",
    "BEGIN:DAYLIGHT",
    "TZOFFSETFROM:+0100",
    "TZOFFSETTO:+0200",
    "TZNAME:CEST",
    "DTSTART:19700329T020000",
    "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
    "END:DAYLIGHT",
    "BEGIN:STANDARD",
    "TZOFFSETFROM:+0200",
    "TZOFFSETTO:+0100",
    "TZNAME:CET",
    "DTSTART:19701025T030000",
    "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
    "END:STANDARD",
    "END:VTIMEZONE",
]

FIRST_NAMES = (
    "Anna Jonas Lea Lukas Marie Felix Sophie Paul Emma Leon Mia Finn Hannah Elias "
    "Clara Noah Jürgen Zoë Björn Renée Oliver Charlotte James Olivia Mateo Lucía "
    "Chen Aiko Priya"
).split()
LAST_NAMES = (
    "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Koch "
    "Richter Klein Wolf Schröder Neumann Smith Johnson García Martínez Dubois Rossi "
    "Nowak Jensen"
).split()
COMPANIES = [
    "Acme GmbH",
    "Globex AG",
    "Initech",
    "Umbrella Corp",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli",
    "Vandelay Industries",
    "Soylent KG",
    "Tyrell Corp",
    "Cyberdyne Systems",
    "Nordwind Logistik",
    "Bäckerei Sonnenschein",
    "Blue Sun Ltd",
]
DOMAINS = ["example.com", "example.org", "example.net", "acme.example", "globex.example"]
TOPICS = [
    "Q3 pipeline review",
    "contract renewal",
    "onboarding",
    "pricing proposal",
    "product demo",
    "quarterly business review",
    "support escalation",
    "roadmap",
    "kick-off",
    "invoice clarification",
    "budget planning",
    "partner workshop",
    "security questionnaire",
    "data migration",
    "license audit",
    "renewal negotiation",
]
SUMMARY_TEMPLATES = [
    "Meeting with {person} ({company})",
    "Call: {company} - {topic}",
    "{topic} with {company}",
    "{company} {topic}",
    "Lunch with {person}",
    "Follow-up: {topic}",
    "Demo for {company}",
    "Internal sync: {topic}",
    "1:1 {person}",
    "Workshop: {topic} @ {company}",
]
LOCATIONS = [
    "Meeting room Berlin 2.04",
    "Konferenzraum Süd, 3. OG",
    "Friedrichstraße 123, 10117 Berlin",
    "Main office, room 'Elbe'",
    "Zoom: https://zoom.example.com/j/81234567890",
    "Microsoft Teams meeting",
    "Café Einstein, Unter den Linden 42",
    "Customer site: Hafenstraße 7, 20457 Hamburg",
    "Phone: +49 30 1234567",
    "Google Meet: https://meet.example.com/abc-defg-hij",
    "Marienplatz 8, 80331 München",
]
SENTENCES = [
    "Please review the attached proposal before the meeting.",
    "Agenda: status update, open issues, next steps; AOB.",
    "We will go through the numbers for the current quarter.",
    "Bring the latest version of the contract draft, including annex B.",
    "Dial-in details are in the invitation; the PIN is 4711.",
    "Goal: agree on scope, timeline and responsibilities.",
    "Notes from the last call are in the shared folder.",
    "Customer asked for a discount of 12%, to be discussed with sales lead.",
    "Participants: account manager, solutions engineer, customer IT.",
    "Parking is available in the garage, entrance Hinterhof.",
    "Bitte Unterlagen vorab lesen; Rückfragen gerne per E-Mail.",
    "Follow up on ticket #12345 and the open invoice.",
    "The demo environment will be reset the day before.",
    "Decision needed on the rollout date for phase 2.",
]
CATEGORIES = ["Customer", "Internal", "Sales", "Support", "Partner", "Travel", "Follow-up"]
DURATIONS_MIN = [15, 30, 30, 30, 45, 60, 60, 60, 90, 120, 180]


# --- iCalendar text helpers --------------------------------------------------------------


def escape_text(value: str) -> str:
    """Escape a TEXT value (RFC 5545 3.3.11)."""
    return (
        value.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
    )


def unescape_text(value: str) -> str:
    """Undo :func:`escape_text`."""
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append("\n" if nxt in ("n", "N") else nxt)
        else:
            out.append(ch)
    return "".join(out)


def fold(line: str) -> str:
    """Fold a content line at 75 octets without splitting UTF-8 sequences."""
    data = line.encode("utf-8")
    if len(data) <= 75:
        return line
    parts: list[str] = []
    current = ""
    size = 0
    limit = 75
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > limit:
            parts.append(current)
            current = ""
            size = 0
            limit = 74  # continuation lines start with a space
        current += ch
        size += n
    parts.append(current)
    return (CRLF + " ").join(parts)


def unfold(text: str) -> list[str]:
    """Split iCalendar text into unfolded content lines."""
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += raw[1:]
        elif raw:
            lines.append(raw)
    return lines


def render(lines: Iterable[str]) -> bytes:
    return (CRLF.join(fold(line) for line in lines) + CRLF).encode("utf-8")


def split_prop(line: str) -> tuple[str, str, str]:
    """Split a content line into (NAME, ;params, value); quoted params may contain ':'."""
    in_quotes = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == ":" and not in_quotes:
            head, value = line[:i], line[i + 1 :]
            name, _, params = head.partition(";")
            return name.upper(), (";" + params) if params else "", value
    return line.upper(), "", ""


# --- time helpers -----------------------------------------------------------------------


def _last_sunday(year: int, month: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def berlin_offset(local: datetime) -> timedelta:
    """UTC offset of a naive Europe/Berlin wall time (EU rules; no tzdata needed)."""
    start = datetime.combine(_last_sunday(local.year, 3), datetime.min.time()) + timedelta(hours=2)
    end = datetime.combine(_last_sunday(local.year, 10), datetime.min.time()) + timedelta(hours=3)
    return timedelta(hours=2) if start <= local < end else timedelta(hours=1)


def fmt_utc(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")


def fmt_local(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%S")


def fmt_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def add_months(value: datetime, months: int) -> datetime:
    month0 = value.month - 1 + months
    return value.replace(year=value.year + month0 // 12, month=month0 % 12 + 1)


@dataclass(frozen=True)
class Kind:
    """How an event's times are written: 'berlin' (TZID), 'utc' or 'allday'."""

    name: str

    def prop(self, name: str, value: datetime) -> str:
        if self.name == "berlin":
            return f"{name};TZID={TZID}:{fmt_local(value)}"
        if self.name == "utc":
            return f"{name}:{fmt_utc(value)}"
        return f"{name};VALUE=DATE:{fmt_date(value.date())}"

    def until(self, value: datetime) -> str:
        if self.name == "berlin":
            return fmt_utc(value - berlin_offset(value))
        if self.name == "utc":
            return fmt_utc(value)
        return fmt_date(value.date())


# --- generation -------------------------------------------------------------------------


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = f"{first}.{last}".lower()
    local = local.encode("ascii", "ignore").decode().replace(" ", "")
    return f"{first} {last}", f"{local}@{rng.choice(DOMAINS)}"


def _description(rng: random.Random) -> str:
    target = rng.randint(200, 600)
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < target:
        parts.append(rng.choice(SENTENCES))
    text = " ".join(parts)
    if rng.random() < 0.5:
        text += "\n\nContact: " + _person(rng)[0] + ", " + rng.choice(COMPANIES)
    return text


def _summary(rng: random.Random) -> str:
    return rng.choice(SUMMARY_TEMPLATES).format(
        person=_person(rng)[0], company=rng.choice(COMPANIES), topic=rng.choice(TOPICS)
    )


def make_event(rng: random.Random, base: datetime, recurring: bool) -> tuple[str, bytes]:
    """Return (uid, file content) of one realistic calendar item."""
    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    roll = rng.random()
    kind = Kind("berlin" if roll < 0.65 else "utc" if roll < 0.88 else "allday")

    # Inside crmsync's default sync range (30 days back, 365 ahead), so that every tool
    # has the same events to move.
    day = (base - timedelta(days=29)).date() + timedelta(days=rng.randrange(393))
    if kind.name == "allday":
        start = datetime.combine(day, datetime.min.time())
        end = start + timedelta(days=rng.choice([1, 1, 1, 1, 2, 3, 5]))
    else:
        hour = rng.randint(7 if kind.name == "utc" else 8, 17)
        start = datetime.combine(day, datetime.min.time()).replace(
            hour=hour, minute=rng.choice([0, 0, 15, 30, 30, 45])
        )
        end = start + timedelta(minutes=rng.choice(DURATIONS_MIN))

    created = base - timedelta(days=rng.randint(31, 400), seconds=rng.randrange(86400))
    modified = created + timedelta(days=rng.randint(0, 30), seconds=rng.randrange(86400))
    modified = min(modified, base)

    name, email = _person(rng)
    attendees: list[tuple[str, str]] = []
    has_people = rng.random() < 0.6
    if has_people:
        attendees = [_person(rng) for _ in range(rng.randint(1, 6))]

    master: list[str] = [
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{fmt_utc(modified)}",
        f"CREATED:{fmt_utc(created)}",
        f"LAST-MODIFIED:{fmt_utc(modified)}",
        f"SEQUENCE:{rng.choice([0, 0, 0, 1, 2])}",
        kind.prop("DTSTART", start),
        kind.prop("DTEND", end),
        f"SUMMARY:{escape_text(_summary(rng))}",
    ]
    if kind.name != "allday" or rng.random() < 0.3:
        master.append(f"LOCATION:{escape_text(rng.choice(LOCATIONS))}")
    if rng.random() < 0.9:
        master.append(f"DESCRIPTION:{escape_text(_description(rng))}")
    master.append(f"STATUS:{rng.choice(['CONFIRMED'] * 8 + ['TENTATIVE'])}")
    master.append(f"TRANSP:{'TRANSPARENT' if kind.name == 'allday' else 'OPAQUE'}")
    if rng.random() < 0.4:
        cats = rng.sample(CATEGORIES, rng.randint(1, 2))
        master.append("CATEGORIES:" + ",".join(escape_text(c) for c in cats))
    if rng.random() < 0.1:
        master.append("CLASS:PRIVATE")
    if has_people:
        master.append(f'ORGANIZER;CN="{name}":mailto:{email}')
        for a_name, a_email in attendees:
            partstat = rng.choice(["ACCEPTED", "ACCEPTED", "TENTATIVE", "NEEDS-ACTION"])
            role = rng.choice(["REQ-PARTICIPANT"] * 4 + ["OPT-PARTICIPANT"])
            master.append(
                f"ATTENDEE;CUTYPE=INDIVIDUAL;ROLE={role};PARTSTAT={partstat};RSVP=TRUE;"
                f'CN="{a_name}":mailto:{a_email}'
            )

    overrides: list[list[str]] = []
    if recurring:
        freq = rng.choice(["DAILY", "WEEKLY", "WEEKLY", "MONTHLY"])
        if freq == "MONTHLY" and start.day > 28:
            shift = timedelta(days=start.day - 28)
            start, end = start - shift, end - shift
            master[6], master[7] = kind.prop("DTSTART", start), kind.prop("DTEND", end)
        count = rng.randint(5, 26)

        def occurrence(i: int) -> datetime:
            if freq == "DAILY":
                return start + timedelta(days=i)
            if freq == "WEEKLY":
                return start + timedelta(weeks=i)
            return add_months(start, i)

        rule = f"RRULE:FREQ={freq}"
        if freq == "WEEKLY":
            rule += ";BYDAY=" + ["MO", "TU", "WE", "TH", "FR", "SA", "SU"][start.weekday()]
        if freq == "MONTHLY":
            rule += f";BYMONTHDAY={start.day}"
        if rng.random() < 0.5:
            rule += f";COUNT={count}"
        else:
            rule += f";UNTIL={kind.until(occurrence(count - 1))}"
        master.append(rule)

        picks = rng.sample(range(1, count), rng.randint(2, 3))
        exdate, moved = picks[0], picks[1:]
        master.append(kind.prop("EXDATE", occurrence(exdate)))
        for n, idx in enumerate(sorted(moved)):
            orig = occurrence(idx)
            if kind.name == "allday":
                new_start, new_end = orig + timedelta(days=1), orig + (end - start)
                new_end += timedelta(days=1)
            else:
                new_start = orig + timedelta(hours=rng.choice([-2, -1, 1, 2]))
                new_end = new_start + (end - start)
            ov = [
                "BEGIN:VEVENT",
                f"UID:{uid}",
                f"DTSTAMP:{fmt_utc(modified)}",
                kind.prop("RECURRENCE-ID", orig),
                f"SEQUENCE:{n + 1}",
                kind.prop("DTSTART", new_start),
                kind.prop("DTEND", new_end),
                master[8] if rng.random() < 0.6 else f"SUMMARY:{escape_text(_summary(rng))}",
            ]
            if rng.random() < 0.5:
                ov.append(f"LOCATION:{escape_text(rng.choice(LOCATIONS))}")
            if rng.random() < 0.5:
                ov.append("DESCRIPTION:" + escape_text("Moved: " + rng.choice(SENTENCES)))
            ov.append("END:VEVENT")
            overrides.append(ov)

    if rng.random() < 0.3:
        minutes = rng.choice([5, 10, 15, 15, 30, 60])
        master += [
            "BEGIN:VALARM",
            "ACTION:DISPLAY",
            "DESCRIPTION:Reminder",
            f"TRIGGER:-PT{minutes}M",
            "END:VALARM",
        ]
    master.append("END:VEVENT")

    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "CALSCALE:GREGORIAN"]
    if kind.name == "berlin":
        lines += VTIMEZONE_BERLIN
    lines += master
    for ov in overrides:
        lines += ov
    lines.append("END:VCALENDAR")
    return uid, render(lines)


def default_base() -> datetime:
    """Today at 00:00 (naive, UTC day): the reference 'now' for generated times."""
    today = datetime.now(UTC).date()
    return datetime.combine(today, datetime.min.time())


def generate(
    folder: Path,
    count: int,
    *,
    seed: int = 42,
    base: datetime | None = None,
    recurring_share: float = 0.1,
) -> list[str]:
    """Write ``count`` events as ``folder/<uid>.ics``; return the UIDs (in creation order).

    Exactly ``round(count * recurring_share)`` items are recurring (with overrides and an
    EXDATE), spread evenly over the set.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = base or default_base()
    rng = random.Random(seed)
    n_recurring = round(count * recurring_share)
    recurring_at = {int(i * count / n_recurring) for i in range(n_recurring)}
    uids: list[str] = []
    for i in range(count):
        uid, data = make_event(rng, base, i in recurring_at)
        (folder / f"{uid}.ics").write_bytes(data)
        uids.append(uid)
    return uids


# --- modification -----------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    uid: str
    file: str
    summary: str
    location: str


def _master_range(lines: list[str]) -> tuple[int, int]:
    """Index range of the VEVENT without RECURRENCE-ID (the master), as [begin, end]."""
    begin = -1
    for i, line in enumerate(lines):
        if line == "BEGIN:VEVENT":
            begin = i
        elif line == "END:VEVENT" and begin >= 0:
            block = lines[begin:i]
            if not any(split_prop(x)[0] == "RECURRENCE-ID" for x in block):
                return begin, i
            begin = -1
    raise ValueError("no master VEVENT")


def modify_items(folder: Path, count: int, *, seed: int = 42, round_no: int = 1) -> list[Change]:
    """Change SUMMARY and LOCATION of ``count`` items in place (and bump LAST-MODIFIED).

    Deterministic: the items are picked from the sorted file names with a RNG seeded by
    ``seed`` and ``round_no``, and the new values depend only on those and the old
    content, so identical folders get identical modifications.
    """
    files = sorted(p.name for p in folder.glob("*.ics"))
    rng = random.Random(f"modify-{seed}-{round_no}")
    picked = rng.sample(files, min(count, len(files)))
    changes: list[Change] = []
    for n, fname in enumerate(picked):
        path = folder / fname
        lines = unfold(path.read_bytes().decode("utf-8"))
        begin, end = _master_range(lines)
        summary = f"{_summary(rng)} [changed r{round_no}-{n:04d}]"
        location = f"{rng.choice(LOCATIONS)} (moved r{round_no}-{n:04d})"
        uid = ""
        out = lines[:begin]
        seen_location = False
        depth = 0
        for line in lines[begin:end]:
            name, params, value = split_prop(line)
            depth += (name == "BEGIN") - (name == "END")
            if depth != 1:  # the VEVENT's own properties only, not a VALARM's
                out.append(line)
                continue
            if name == "UID":
                uid = value
            if name == "SUMMARY":
                line = f"SUMMARY{params}:{escape_text(summary)}"
            elif name == "LOCATION":
                line = f"LOCATION{params}:{escape_text(location)}"
                seen_location = True
            elif name == "LAST-MODIFIED":
                old = datetime.strptime(value, "%Y%m%dT%H%M%SZ")
                line = f"LAST-MODIFIED:{fmt_utc(old + timedelta(days=round_no, hours=1))}"
            out.append(line)
        if not seen_location:
            out.insert(begin + 2, f"LOCATION:{escape_text(location)}")
        out += lines[end:]
        path.write_bytes(render(out))
        changes.append(Change(uid=uid, file=fname, summary=summary, location=location))
    return changes


# --- reading back (used by the harness's checks) ---------------------------------------


@dataclass
class ItemInfo:
    uid: str
    summary: str | None
    location: str | None
    vevents: int
    overrides: int
    exdates: int


def read_item(data: bytes) -> ItemInfo:
    """Summarize one .ics file: UID, master SUMMARY/LOCATION, component counts."""
    uid = ""
    summary: str | None = None
    location: str | None = None
    vevents = overrides = exdates = 0
    stack: list[str] = []
    props: dict[str, str] = {}
    for line in unfold(data.decode("utf-8", errors="replace")):
        name, _params, value = split_prop(line)
        if name == "BEGIN":
            stack.append(value.upper())
            if stack[-1] == "VEVENT":
                vevents += 1
                props = {}
        elif name == "END":
            comp = stack.pop() if stack else ""
            if comp == "VEVENT":
                if "RECURRENCE-ID" in props:
                    overrides += 1
                else:
                    summary = unescape_text(props["SUMMARY"]) if "SUMMARY" in props else None
                    loc = props.get("LOCATION")
                    location = unescape_text(loc) if loc is not None else None
        elif stack and stack[-1] == "VEVENT":
            props.setdefault(name, value)
            if name == "UID" and not uid:
                uid = value
            elif name == "EXDATE":
                exdates += 1
    return ItemInfo(uid, summary, location, vevents, overrides, exdates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--base", type=date.fromisoformat, default=None, help="reference day")
    ap.add_argument(
        "--modify",
        type=int,
        default=0,
        metavar="K",
        help="instead of generating, modify K items of FOLDER in place",
    )
    ap.add_argument("--round", type=int, default=1, dest="round_no")
    args = ap.parse_args(argv)
    if args.modify:
        changes = modify_items(args.folder, args.modify, seed=args.seed, round_no=args.round_no)
        for c in changes:
            print(f"{c.file}\t{c.summary}")
        return 0
    base = datetime.combine(args.base, datetime.min.time()) if args.base else None
    uids = generate(args.folder, args.events, seed=args.seed, base=base)
    print(f"wrote {len(uids)} events to {args.folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
