"""iCalendar and vCard codecs: what parsing reads, and that rendering loses nothing."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from icalendar import Calendar
from icalendar.prop import vRecur

from crmsync import formats
from crmsync.errors import FormatError
from crmsync.formats.ical import parse_event, parse_task, render_event, render_task
from crmsync.formats.vcard import parse_contact, render_contact
from crmsync.model import Address, Attendee, Contact, Event, Occurrence, Person, Phone, Task


def crlf(text: str) -> str:
    return text.lstrip("\n").replace("\r\n", "\n").replace("\n", "\r\n")


def diff(before: str, after: str) -> tuple[list[str], list[str]]:
    """Unfolded lines only in ``before`` and those only in ``after``."""
    old, new = (Counter(t.replace("\r\n ", "").splitlines()) for t in (before, after))
    return sorted((old - new).elements()), sorted((new - old).elements())


SERIES = crlf("""
BEGIN:VCALENDAR
PRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN
VERSION:2.0
X-WR-CALNAME:Work
BEGIN:VTIMEZONE
TZID:Europe/Berlin
X-LIC-LOCATION:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE
BEGIN:VEVENT
UID:series-1@example.com
DTSTAMP:20260101T080000Z
SEQUENCE:3
DTSTART;TZID=Europe/Berlin:20260105T100000
DTEND;TZID=Europe/Berlin:20260105T110000
SUMMARY;LANGUAGE=en:Pipeline review
LOCATION:Room 4\\, Building B
DESCRIPTION:Agenda:\\n- forecast\\n- deals at risk\\, and anything else that c
 omes up
CLASS:CONFIDENTIAL
TRANSP:TRANSPARENT
CATEGORIES:Sales,Weekly
CATEGORIES:Internal
ORGANIZER;CN="Lead, Alice";X-ORG-ID=42:mailto:Alice@Example.com
ATTENDEE;CN=Bob;PARTSTAT=ACCEPTED;ROLE=CHAIR;X-FOO=bar:mailto:bob@example.com
ATTENDEE;RSVP=TRUE;CN="Doe, Carol":MAILTO:carol@example.com
RRULE:BYDAY=MO;FREQ=WEEKLY;COUNT=10
EXDATE;TZID=Europe/Berlin:20260119T100000
RDATE;TZID=Europe/Berlin:20260131T100000
X-MICROSOFT-CDO-BUSYSTATUS:FREE
X-CUSTOM;X-PARAM="a;b":value with \\, escapes
BEGIN:VALARM
ACTION:DISPLAY
DESCRIPTION:Reminder
TRIGGER;RELATED=START:-PT15M
X-WR-ALARMUID:alarm-1
END:VALARM
BEGIN:VALARM
ACTION:EMAIL
SUMMARY:Mail
DESCRIPTION:Mail reminder
ATTENDEE:mailto:bob@example.com
TRIGGER:-P1D
END:VALARM
END:VEVENT
BEGIN:VEVENT
UID:series-1@example.com
RECURRENCE-ID;TZID=Europe/Berlin:20260112T100000
DTSTAMP:20260101T080000Z
DTSTART;TZID=Europe/Berlin:20260112T140000
DTEND;TZID=Europe/Berlin:20260112T150000
SUMMARY:Pipeline review (moved)
X-OVERRIDE:keep me
END:VEVENT
BEGIN:VEVENT
UID:series-1@example.com
RECURRENCE-ID;TZID=Europe/Berlin:20260126T100000
DTSTAMP:20260101T080000Z
DTSTART;TZID=Europe/Berlin:20260126T100000
DTEND;TZID=Europe/Berlin:20260126T110000
SUMMARY:Pipeline review
STATUS:CANCELLED
END:VEVENT
END:VCALENDAR
""")

SERIES_EVENT = Event(
    uid="series-1@example.com",
    summary="Pipeline review",
    start="2026-01-05T09:00:00Z",
    end="2026-01-05T10:00:00Z",
    tz="Europe/Berlin",
    location="Room 4, Building B",
    description="Agenda:\n- forecast\n- deals at risk, and anything else that comes up",
    private=True,
    show_as="free",
    categories=["Sales", "Weekly", "Internal"],
    organizer=Person("alice@example.com", "Lead, Alice"),
    attendees=[
        Attendee("bob@example.com", "Bob", "accepted", "chair"),
        Attendee("carol@example.com", "Doe, Carol"),
    ],
    reminders=[15],
    rrule="FREQ=WEEKLY;COUNT=10;BYDAY=MO",
    rdates=["2026-01-31T09:00:00Z"],
    exdates=["2026-01-19T09:00:00Z"],
    overrides={
        "2026-01-12T09:00:00Z": Occurrence(
            "Pipeline review (moved)", "2026-01-12T13:00:00Z", "2026-01-12T14:00:00Z"
        ),
        "2026-01-26T09:00:00Z": Occurrence(
            "Pipeline review", "2026-01-26T09:00:00Z", "2026-01-26T10:00:00Z",
            status="cancelled",
        ),
    },
)


def calendar(*vevent_lines: str, extra: str = "") -> str:
    body = "\n".join(vevent_lines)
    return crlf(f"""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//EN
{extra}BEGIN:VEVENT
UID:e-1
DTSTAMP:20260101T000000Z
{body}
END:VEVENT
END:VCALENDAR
""")


# --- events: parsing -----------------------------------------------------------------------


def test_parse_recurring_series_with_overrides() -> None:
    assert parse_event(SERIES) == SERIES_EVENT


@pytest.mark.parametrize(
    ("lines", "start", "end", "tz"),
    [
        (["DTSTART;VALUE=DATE:20260301", "DTEND;VALUE=DATE:20260302"], "2026-03-01",
         "2026-03-02", None),
        (["DTSTART:20260301T090000", "DTEND:20260301T100000"], "2026-03-01T09:00:00",
         "2026-03-01T10:00:00", None),
        (["DTSTART:20260301T090000Z", "DTEND:20260301T100000Z"], "2026-03-01T09:00:00Z",
         "2026-03-01T10:00:00Z", None),
        (["DTSTART;TZID=Europe/Berlin:20260701T090000"], "2026-07-01T07:00:00Z", None,
         "Europe/Berlin"),
        (["DTSTART:20260301T090000Z", "DURATION:PT1H30M"], "2026-03-01T09:00:00Z",
         "2026-03-01T10:30:00Z", None),
        (["DTSTART;VALUE=DATE:20260301", "DURATION:P2D"], "2026-03-01", "2026-03-03", None),
        # a nominal day across the switch to summer time lasts 23 hours
        (["DTSTART;TZID=Europe/Berlin:20260328T120000", "DURATION:P1D"],
         "2026-03-28T11:00:00Z", "2026-03-29T10:00:00Z", "Europe/Berlin"),
    ],
)
def test_parse_kinds_of_time(lines: list[str], start: str, end: str | None,
                             tz: str | None) -> None:
    event = parse_event(calendar(*lines))
    assert (event.start, event.end, event.tz) == (start, end, tz)


def test_new_york_series_across_dst() -> None:
    raw = calendar(
        "DTSTART;TZID=America/New_York:20260302T100000",
        "RRULE:FREQ=WEEKLY;COUNT=4",
        "EXDATE;TZID=America/New_York:20260316T100000",
    ) + crlf("")
    override = crlf("""
BEGIN:VEVENT
UID:e-1
DTSTAMP:20260101T000000Z
RECURRENCE-ID;TZID=America/New_York:20260309T100000
DTSTART;TZID=America/New_York:20260309T110000
END:VEVENT
""")
    raw = raw.replace("END:VCALENDAR\r\n", override + "END:VCALENDAR\r\n")
    event = parse_event(raw)
    assert event.start == "2026-03-02T15:00:00Z"  # EST, UTC-5
    assert event.exdates == ["2026-03-16T14:00:00Z"]  # EDT, UTC-4
    assert event.overrides == {"2026-03-09T14:00:00Z": Occurrence(start="2026-03-09T15:00:00Z")}

    fresh = render_event(event, None)
    assert "DTSTART;TZID=America/New_York:20260302T100000\r\n" in fresh
    assert "EXDATE;TZID=America/New_York:20260316T100000\r\n" in fresh
    assert "RECURRENCE-ID;TZID=America/New_York:20260309T100000\r\n" in fresh
    assert "BEGIN:VTIMEZONE\r\nTZID:America/New_York\r\n" in fresh
    assert parse_event(fresh) == event


def test_calendar_with_overrides_only() -> None:
    raw = calendar(
        "RECURRENCE-ID:20260112T090000Z",
        "DTSTART:20260112T100000Z",
        "SUMMARY:Just this one",
    )
    event = parse_event(raw)
    assert (event.summary, event.start, event.rrule) == ("Just this one",
                                                          "2026-01-12T10:00:00Z", None)
    assert event.overrides == {
        "2026-01-12T09:00:00Z": Occurrence("Just this one", "2026-01-12T10:00:00Z")
    }
    assert render_event(event, raw) == raw
    moved = render_event(dataclasses.replace(event, summary="Renamed"), raw)
    assert diff(raw, moved) == (["SUMMARY:Just this one"], ["SUMMARY:Renamed"])
    single = dataclasses.replace(event, overrides={})  # no longer an exception: a plain event
    out = render_event(single, raw)
    assert "RECURRENCE-ID" not in out and parse_event(out) == single


def test_windows_tzid_maps_to_iana_and_is_reused() -> None:
    vtimezone = SERIES[SERIES.index("BEGIN:VTIMEZONE"):SERIES.index("BEGIN:VEVENT")]
    vtimezone = vtimezone.replace("TZID:Europe/Berlin", "TZID:W. Europe Standard Time")
    raw = calendar("DTSTART;TZID=W. Europe Standard Time:20260105T100000", extra=vtimezone)
    event = parse_event(raw)
    assert (event.start, event.tz) == ("2026-01-05T09:00:00Z", "Europe/Berlin")
    moved = render_event(dataclasses.replace(event, start="2026-01-06T09:00:00Z"), raw)
    assert diff(raw, moved) == (["DTSTART;TZID=W. Europe Standard Time:20260105T100000"],
                                ["DTSTART;TZID=W. Europe Standard Time:20260106T100000"])


def test_zone_only_a_vtimezone_defines() -> None:
    vtimezone = crlf("""
BEGIN:VTIMEZONE
TZID:Custom India
BEGIN:STANDARD
DTSTART:19700101T000000
TZOFFSETFROM:+0530
TZOFFSETTO:+0530
END:STANDARD
END:VTIMEZONE
""")
    raw = calendar("DTSTART;TZID=Custom India:20260105T100000", extra=vtimezone)
    event = parse_event(raw)
    assert (event.start, event.tz) == ("2026-01-05T04:30:00Z", "Custom India")
    moved = render_event(dataclasses.replace(event, start="2026-01-05T05:30:00Z"), raw)
    assert "DTSTART;TZID=Custom India:20260105T110000\r\n" in moved
    assert parse_event(moved).start == "2026-01-05T05:30:00Z"


# --- events: rendering over a template -------------------------------------------------------


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_unchanged_event_renders_byte_for_byte(eol: str) -> None:
    raw = SERIES.replace("\r\n", eol)
    assert render_event(parse_event(raw), raw) == raw


def test_changing_one_field_rewrites_only_its_line() -> None:
    out = render_event(dataclasses.replace(SERIES_EVENT, summary="Forecast; Q3"), SERIES)
    assert diff(SERIES, out) == (["SUMMARY;LANGUAGE=en:Pipeline review"],
                                 ["SUMMARY:Forecast\\; Q3"])
    out = render_event(dataclasses.replace(SERIES_EVENT, categories=["Sales"]), SERIES)
    assert diff(SERIES, out) == (["CATEGORIES:Internal", "CATEGORIES:Sales,Weekly"],
                                 ["CATEGORIES:Sales"])
    out = render_event(dataclasses.replace(SERIES_EVENT, private=False, show_as="busy"), SERIES)
    assert diff(SERIES, out) == (["CLASS:CONFIDENTIAL", "TRANSP:TRANSPARENT"], ["TRANSP:OPAQUE"])


def test_attendee_update_keeps_its_other_parameters() -> None:
    attendees = [Attendee("bob@example.com", "Robert", "declined", "chair"),
                 SERIES_EVENT.attendees[1], Attendee("dan@example.com")]
    event = dataclasses.replace(SERIES_EVENT, attendees=attendees)
    out = render_event(event, SERIES)
    assert diff(SERIES, out) == (
        ["ATTENDEE;CN=Bob;PARTSTAT=ACCEPTED;ROLE=CHAIR;X-FOO=bar:mailto:bob@example.com"],
        ["ATTENDEE;CN=Robert;PARTSTAT=DECLINED;ROLE=CHAIR;X-FOO=bar:mailto:bob@example.com",
         "ATTENDEE;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT:mailto:dan@example.com"],
    )
    assert parse_event(out) == event
    out = render_event(dataclasses.replace(SERIES_EVENT, organizer=Person("alice@example.com")),
                       SERIES)
    assert diff(SERIES, out)[1] == ["ORGANIZER;X-ORG-ID=42:mailto:Alice@Example.com"]


def test_reminders_keep_alarm_details() -> None:
    out = render_event(dataclasses.replace(SERIES_EVENT, reminders=[15, 60]), SERIES)
    removed, added = diff(SERIES, out)
    assert removed == []
    assert added == ["ACTION:DISPLAY", "BEGIN:VALARM", "DESCRIPTION:Reminder", "END:VALARM",
                     "TRIGGER:-PT1H"]
    assert parse_event(out).reminders == [15, 60]

    out = render_event(dataclasses.replace(SERIES_EVENT, reminders=[]), SERIES)
    assert "X-WR-ALARMUID" not in out
    assert "ACTION:EMAIL" in out  # not a modeled reminder: kept
    assert parse_event(out).reminders == []


def test_overrides_update_drop_and_add() -> None:
    overrides = {
        "2026-01-12T09:00:00Z": dataclasses.replace(
            SERIES_EVENT.overrides["2026-01-12T09:00:00Z"], location="Room 9"),
        "2026-02-02T09:00:00Z": Occurrence("Extra", "2026-02-02T10:00:00Z", status="tentative"),
    }
    event = dataclasses.replace(SERIES_EVENT, overrides=overrides)
    out = render_event(event, SERIES)
    assert parse_event(out) == event
    assert "X-OVERRIDE:keep me\r\nLOCATION:Room 9\r\n" in out
    assert "STATUS:CANCELLED" not in out
    assert "RECURRENCE-ID;TZID=Europe/Berlin:20260202T100000\r\n" in out
    assert out.count("BEGIN:VTIMEZONE") == 1


def test_master_edit_leaves_override_blocks_untouched() -> None:
    out = render_event(dataclasses.replace(SERIES_EVENT, exdates=[], rrule=None), SERIES)
    tail = SERIES[SERIES.index("BEGIN:VEVENT\r\nUID:series-1@example.com\r\nRECURRENCE-ID"):]
    assert out.endswith(tail)
    assert diff(SERIES, out) == (["EXDATE;TZID=Europe/Berlin:20260119T100000",
                                  "RRULE:BYDAY=MO;FREQ=WEEKLY;COUNT=10"], [])


def test_zone_change_rewrites_times_and_adds_vtimezone() -> None:
    event = dataclasses.replace(SERIES_EVENT, tz="America/New_York")
    out = render_event(event, SERIES)
    assert "DTSTART;TZID=America/New_York:20260105T040000\r\n" in out
    assert "EXDATE;TZID=America/New_York:20260119T040000\r\n" in out
    assert out.count("BEGIN:VTIMEZONE") == 2
    assert parse_event(out) == event


def test_unresolvable_zone_falls_back_to_utc() -> None:
    out = render_event(Event(uid="x", start="2026-03-01T09:00:00Z", tz="Mars/Olympus"), None)
    assert "DTSTART:20260301T090000Z\r\n" in out and "VTIMEZONE" not in out
    assert parse_event(out).tz is None


def test_new_start_pins_an_end_given_as_duration() -> None:
    raw = calendar("DTSTART:20260301T090000Z", "DURATION:PT1H")
    event = dataclasses.replace(parse_event(raw), start="2026-03-01T08:00:00Z")
    out = render_event(event, raw)
    assert "DURATION" not in out and "DTEND:20260301T100000Z\r\n" in out
    assert parse_event(out) == event


def test_fresh_event_and_uid_rules() -> None:
    out = render_event(Event(uid="u1", summary="Call", start="2026-03-01"), None)
    assert out.startswith("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//crmsync//EN\r\n")
    assert "DTSTAMP:" in out and "DTSTART;VALUE=DATE:20260301\r\n" in out
    assert "STATUS" not in out and "TRANSP" not in out  # defaults are left implicit
    assert parse_event(out) == Event(uid="u1", summary="Call", start="2026-03-01")
    assert parse_event(render_event(Event(), None)).uid  # a UID is made up
    assert parse_event(render_event(Event(summary="x"), SERIES)).uid == "series-1@example.com"
    renamed = render_event(dataclasses.replace(SERIES_EVENT, uid="other"), SERIES)
    assert renamed.count("UID:other\r\n") == 3 and "series-1" not in renamed


def test_registry_dispatches_to_the_codecs() -> None:
    assert formats.parse(formats.ICALENDAR, "calendar", SERIES) == SERIES_EVENT
    assert formats.render(formats.ICALENDAR, "calendar", SERIES_EVENT, SERIES) == SERIES


# --- tasks -----------------------------------------------------------------------------------

TODO = crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Nextcloud Tasks v0.16//EN
BEGIN:VTODO
UID:task-1
DTSTAMP:20260101T080000Z
CREATED:20260101T080000Z
SUMMARY:Send quote
DESCRIPTION:Include volume discount\\; ask legal
DTSTART;TZID=Europe/Berlin:20260110T090000
DUE;TZID=Europe/Berlin:20260115T170000
STATUS:IN-PROCESS
PRIORITY:1
PERCENT-COMPLETE:40
CLASS:PRIVATE
CATEGORIES:Sales
X-APPLE-SORT-ORDER:12
RELATED-TO:parent-task
END:VTODO
END:VCALENDAR
""")

TODO_TASK = Task(
    uid="task-1", summary="Send quote", description="Include volume discount; ask legal",
    start="2026-01-10T08:00:00Z", due="2026-01-15T16:00:00Z", status="in-process", priority=1,
    private=True, categories=["Sales"],
)


def test_task_parse_and_unchanged_render() -> None:
    assert parse_task(TODO) == TODO_TASK
    assert render_task(TODO_TASK, TODO) == TODO


def test_task_update_keeps_zone_and_unmodeled_lines() -> None:
    task = dataclasses.replace(TODO_TASK, status="completed", completed="2026-01-14T10:00:00Z",
                               due="2026-01-14T16:00:00Z", priority=0)
    out = render_task(task, TODO)
    removed, added = diff(TODO, out)
    assert removed == ["DUE;TZID=Europe/Berlin:20260115T170000", "PRIORITY:1",
                       "STATUS:IN-PROCESS"]
    assert {"DUE;TZID=Europe/Berlin:20260114T170000", "STATUS:COMPLETED",
            "COMPLETED:20260114T100000Z", "TZID:Europe/Berlin"} <= set(added)
    assert parse_task(out) == task


def test_fresh_task() -> None:
    task = Task(uid="t", summary="Call back", due="2026-02-01")
    out = render_task(task, None)
    assert "BEGIN:VTODO\r\n" in out and "DUE;VALUE=DATE:20260201\r\n" in out
    assert "STATUS" not in out and "PRIORITY" not in out
    assert parse_task(out) == task


# --- vCard -----------------------------------------------------------------------------------

VCARD3 = crlf("""
BEGIN:VCARD
VERSION:3.0
PRODID:-//Apple Inc.//iPhone OS 17.0//EN
N:Müller;Anna;Maria;Dr.;
FN:Dr. Anna Müller
ORG:Example GmbH;Sales
TITLE:Head of Sales
item1.EMAIL;type=INTERNET;type=WORK:anna@example.com
item1.X-ABLabel:Work
EMAIL;type=INTERNET;type=HOME;type=pref:anna.private@example.org
TEL;type=CELL;type=VOICE;type=pref:+49 170 1234567
TEL;type=WORK;type=VOICE:+49 30 123456
TEL;type=HOME;type=FAX:+49 30 654321
ADR;type=WORK:;Suite 5;Hauptstr. 1;Berlin;BE;10115;Germany
ADR;type=HOME:;;Gartenweg 2\\, Hinterhaus;Potsdam;;14467;Germany
BDAY:1980-04-12
NOTE:Met at the fair\\, 2024.\\nLikes coffee.
CATEGORIES:Customer,VIP
PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKD
 BQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJ
X-SOCIALPROFILE;type=twitter:https://twitter.com/anna
UID:card-1
END:VCARD
""")

VCARD3_CONTACT = Contact(
    uid="card-1", full_name="Dr. Anna Müller", given_name="Anna", family_name="Müller",
    emails=["anna.private@example.org", "anna@example.com"],
    phones=[Phone("+49 170 1234567", "cell"), Phone("+49 30 123456", "work"),
            Phone("+49 30 654321", "fax")],
    company="Example GmbH", title="Head of Sales",
    addresses=[Address("work", "Hauptstr. 1", "Berlin", "BE", "10115", "Germany"),
               Address("home", "Gartenweg 2, Hinterhaus", "Potsdam", "", "14467", "Germany")],
    birthday="1980-04-12", note="Met at the fair, 2024.\nLikes coffee.",
    categories=["Customer", "VIP"],
)

VCARD4 = crlf("""
BEGIN:VCARD
VERSION:4.0
UID:urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1
FN:Jürgen O'Neil
N:O'Neil;Jürgen;;;
EMAIL;TYPE=work:j.oneil@example.com
EMAIL;PREF=1;TYPE=home:jurgen@example.org
TEL;VALUE=uri;TYPE="voice,cell":tel:+49-170-555-0100
TEL;VALUE=uri;TYPE=work:tel:+49-30-555-0101
ADR;TYPE=work;LABEL="Hauptstr. 1\\n10115 Berlin":;;Hauptstr. 1;Berlin;;10115;Germany
ORG:ACME;R&D
BDAY:--1231
PHOTO:data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQ
 VR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==
X-ABShowAs:PERSON
END:VCARD
""")

VCARD21 = crlf("""
BEGIN:VCARD
VERSION:2.1
N;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:M=C3=BCller;J=C3=B6rg;;;
FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:J=C3=B6rg M=C3=BCller
TEL;CELL;VOICE:+49 170 1
TEL;WORK;FAX:+49 30 2
EMAIL;INTERNET;PREF:joerg@example.com
NOTE;ENCODING=QUOTED-PRINTABLE:First line=0Asecond line, long enough to be soft=
broken
END:VCARD
""")


def test_parse_vcards() -> None:
    assert parse_contact(VCARD3) == VCARD3_CONTACT
    v4 = parse_contact(VCARD4)
    assert v4.emails == ["jurgen@example.org", "j.oneil@example.com"]
    assert v4.phones == [Phone("+49-170-555-0100", "cell"), Phone("+49-30-555-0101", "work")]
    assert v4.addresses == [Address("work", "Hauptstr. 1", "Berlin", "", "10115", "Germany")]
    assert (v4.company, v4.birthday, v4.full_name) == ("ACME", "--1231", "Jürgen O'Neil")
    v21 = parse_contact(VCARD21)
    assert (v21.full_name, v21.given_name, v21.family_name) == ("Jörg Müller", "Jörg", "Müller")
    assert v21.phones == [Phone("+49 170 1", "cell"), Phone("+49 30 2", "fax")]
    assert v21.note == "First line\nsecond line, long enough to be softbroken"


@pytest.mark.parametrize("raw", [VCARD3, VCARD4, VCARD21, VCARD3.replace("\r\n", "\n")])
def test_unchanged_vcard_renders_byte_for_byte(raw: str) -> None:
    assert render_contact(parse_contact(raw), raw) == raw


def test_vcard_list_edits_keep_what_is_not_modeled() -> None:
    contact = dataclasses.replace(
        VCARD3_CONTACT,
        emails=["anna@example.com", "anna.private@example.org"],  # a new primary
        phones=VCARD3_CONTACT.phones[:2] + [Phone("+1 555 0100", "home")],
        addresses=[dataclasses.replace(VCARD3_CONTACT.addresses[0], city="Hamburg"),
                   VCARD3_CONTACT.addresses[1]],
    )
    out = render_contact(contact, VCARD3)
    assert parse_contact(out) == contact
    removed, added = diff(VCARD3, out)
    assert removed == ["ADR;type=WORK:;Suite 5;Hauptstr. 1;Berlin;BE;10115;Germany",
                       "EMAIL;type=INTERNET;type=HOME;type=pref:anna.private@example.org",
                       "TEL;type=HOME;type=FAX:+49 30 654321"]
    assert added == ["ADR;TYPE=WORK:;Suite 5;Hauptstr. 1;Hamburg;BE;10115;Germany",
                     "EMAIL;TYPE=INTERNET,HOME:anna.private@example.org",
                     "TEL;TYPE=HOME:+1 555 0100"]


def test_vcard4_and_21_edits_use_their_dialect() -> None:
    v4 = dataclasses.replace(parse_contact(VCARD4), birthday="1990-12-31",
                             phones=[Phone("+1 555", "cell")])
    out = render_contact(v4, VCARD4)
    assert "BDAY:19901231\r\n" in out and "TEL;TYPE=voice,cell:+1 555\r\n" in out
    assert "PHOTO:data:image/png" in out and parse_contact(out) == v4
    v21 = dataclasses.replace(parse_contact(VCARD21), note="Grüße", phones=[Phone("1", "home")])
    out = render_contact(v21, VCARD21)
    assert "NOTE;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:Gr=C3=BC=C3=9Fe\r\n" in out
    assert "TEL;HOME:1\r\n" in out and parse_contact(out) == v21


def test_fresh_vcard() -> None:
    out = render_contact(Contact(uid="c-9", given_name="Ann", family_name="Lee"), None)
    assert out.startswith("BEGIN:VCARD\r\nVERSION:3.0\r\n")
    assert {"UID:c-9", "FN:", "N:Lee;Ann;;;"} <= set(out.splitlines())
    assert parse_contact(out) == Contact(uid="c-9", given_name="Ann", family_name="Lee")


# --- broken input --------------------------------------------------------------------------

EVENT_TEXT = calendar("DTSTART:20260301T090000Z")


@pytest.mark.parametrize("raw", [
    "", "hello world", None, b"\xff\xfe",
    VCARD3,  # not iCalendar
    EVENT_TEXT.replace("VEVENT", "VTODO"),  # no VEVENT
    EVENT_TEXT.replace("END:VCALENDAR\r\n", ""),  # cut short
    EVENT_TEXT + EVENT_TEXT,  # two objects
    EVENT_TEXT.replace("DTSTAMP", "GARBAGE LINE\r\nDTSTAMP"),
    EVENT_TEXT.replace("END:VEVENT", "END:VTODO"),
    calendar("DTSTART:20261301T090000Z"),
    calendar("DTSTART:2026-03-01"),
    calendar("DTSTART;TZID=Nowhere/Land:20260301T090000"),
    calendar("DTSTART:20260301T090000Z", "RRULE:FREQ=SOMETIMES"),
    calendar("DTSTART:20260301T090000Z", "EXDATE:20260230"),
    calendar('ATTENDEE;CN="unterminated:mailto:x@example.com'),
    calendar("BEGIN:VALARM", "ACTION:DISPLAY", "TRIGGER:soon", "END:VALARM"),
])
def test_broken_calendars_raise_format_error(raw: str) -> None:
    with pytest.raises(FormatError):
        parse_event(raw)
    if raw is not None:  # None asks for a fresh item
        with pytest.raises(FormatError):
            render_event(Event(summary="x"), raw)


@pytest.mark.parametrize("raw", [
    EVENT_TEXT, calendar("PRIORITY:high").replace("VEVENT", "VTODO"),
    calendar("DUE:tomorrow").replace("VEVENT", "VTODO"),
])
def test_broken_tasks_raise_format_error(raw: str) -> None:
    with pytest.raises(FormatError):
        parse_task(raw)


@pytest.mark.parametrize("raw", [
    "", "BEGIN:VCARD", EVENT_TEXT, VCARD3.replace("END:VCARD\r\n", ""),
    VCARD3.replace("TITLE:", "TITLE"), VCARD3.replace("1980-04-12", "1980-13-45"),
    VCARD3.replace("type=HOME;type=pref", 'type="HOME'), VCARD3 + VCARD3,
    VCARD21.replace("CHARSET=UTF-8", "CHARSET=NO-SUCH-CHARSET"),
])
def test_broken_vcards_raise_format_error(raw: str) -> None:
    with pytest.raises(FormatError):
        parse_contact(raw)
    with pytest.raises(FormatError):
        render_contact(Contact(full_name="x"), raw)


@pytest.mark.parametrize("record", [
    Event(start="next tuesday"), Event(rrule="FREQ=WEEKLY;COUNT=many"), Event(exdates=["x"]),
])
def test_unwritable_records_raise_format_error(record: Event) -> None:
    with pytest.raises(FormatError):
        render_event(record, None)


# --- speed -----------------------------------------------------------------------------------


def test_parsing_costs_no_more_than_icalendar_itself() -> None:
    def best(fn: Callable[[str], object], raw: str) -> float:
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(100):
                fn(raw)
            runs.append(time.perf_counter() - t)
        return min(runs)

    raw = SERIES[:SERIES.index("BEGIN:VALARM")] + "END:VEVENT\r\nEND:VCALENDAR\r\n"
    raw = raw[:raw.index("BEGIN:VTIMEZONE")] + raw[raw.index("BEGIN:VEVENT"):]
    assert best(parse_event, raw) < 1.5 * best(Calendar.from_ical, raw)


# --- property tests: parse(render(r)) == r, fresh and over a template --------------------------

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"]
plain = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from(
    list(",;:\\\"'^\n\t "))
text = st.text(plain, max_size=30)
words = st.lists(st.text(plain, min_size=1, max_size=12), max_size=3)
emails = st.from_regex(r"[a-z0-9._]{1,10}@[a-z]{1,8}\.(com|org|de)", fullmatch=True)
instants = st.datetimes(datetime(1971, 1, 1), datetime(2037, 12, 31)).map(
    lambda d: d.replace(microsecond=0).isoformat() + "Z")
floating = st.datetimes(datetime(1971, 1, 1), datetime(2037, 12, 31)).map(
    lambda d: d.replace(microsecond=0).isoformat())
dates = st.dates(datetime(1971, 1, 1).date(), datetime(2037, 12, 31).date()).map(
    lambda d: d.isoformat())
moments = instants | floating | dates
rrules = st.sampled_from(["FREQ=DAILY;COUNT=5", "BYDAY=MO,WE;FREQ=WEEKLY;INTERVAL=2",
                          "FREQ=MONTHLY;UNTIL=20301231T000000Z;BYMONTHDAY=1"]).map(
    lambda r: vRecur(vRecur.from_ical(r)).to_ical().decode())
occurrences = st.builds(
    Occurrence, summary=text, start=st.none() | instants, end=st.none() | instants,
    location=text, description=text, status=st.sampled_from(["confirmed", "cancelled"]))
attendees = st.builds(
    Attendee, email=emails, name=text,
    status=st.sampled_from(["needs-action", "accepted", "declined", "tentative"]),
    role=st.sampled_from(["req-participant", "opt-participant", "chair"]))


def wall_time_is_unique(instant: str, zone: str) -> bool:
    """False in the hour repeated when DST ends: wall time there names two instants."""
    utc = datetime.fromisoformat(instant[:-1]).replace(tzinfo=UTC)
    local = utc.astimezone(ZoneInfo(zone)).replace(fold=0)
    return local.astimezone(UTC) == utc


@st.composite
def events(draw: st.DrawFn) -> Event:
    start = draw(st.none() | moments)
    zoned = start is not None and start.endswith("Z")
    tz = draw(st.sampled_from(ZONES)) if zoned and draw(st.booleans()) else None
    assume(tz is None or wall_time_is_unique(start, tz))  # type: ignore[arg-type]
    return Event(
        uid=draw(st.text(plain, min_size=1, max_size=20)), summary=draw(text), start=start,
        end=draw(st.none() | moments), tz=tz, location=draw(text), description=draw(text),
        private=draw(st.booleans()), show_as=draw(st.sampled_from(["busy", "free"])),
        status=draw(st.sampled_from(["confirmed", "tentative", "cancelled"])),
        categories=draw(words),
        organizer=draw(st.none() | st.builds(Person, email=emails, name=text)),
        attendees=draw(st.lists(attendees, max_size=3, unique_by=lambda a: a.email)),
        reminders=draw(st.lists(st.integers(0, 20000), max_size=3)),
        rrule=draw(st.none() | rrules),
        rdates=draw(st.lists(moments, max_size=2)), exdates=draw(st.lists(moments, max_size=2)),
        overrides=draw(st.dictionaries(instants, occurrences, max_size=2)),
    )


tasks = st.builds(
    Task, uid=st.text(plain, min_size=1, max_size=20), summary=text, description=text,
    start=st.none() | moments, due=st.none() | moments,
    status=st.sampled_from(["needs-action", "in-process", "completed", "cancelled"]),
    priority=st.integers(0, 9), completed=st.none() | instants, private=st.booleans(),
    categories=words)
contacts = st.builds(
    Contact, uid=st.text(plain, min_size=1, max_size=20), full_name=text, given_name=text,
    family_name=text, emails=st.lists(st.text(plain, min_size=1, max_size=20), max_size=3),
    phones=st.lists(st.builds(
        Phone, value=st.text(plain, min_size=1, max_size=15).filter(
            lambda v: not v.lower().startswith("tel:")),
        type=st.sampled_from(["cell", "work", "home", "fax", "other"])), max_size=3),
    company=text, title=text,
    addresses=st.lists(st.builds(
        Address, type=st.sampled_from(["home", "work", "other"]), street=text, city=text,
        region=text, postal_code=text, country=text), max_size=2),
    birthday=st.none() | dates | st.sampled_from(["--1231", "--0229"]), note=text,
    categories=words)

property_settings = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@property_settings
@given(event=events(), template=st.sampled_from([None, SERIES]))
def test_event_round_trip(event: Event, template: str | None) -> None:
    out = render_event(event, template)
    assert parse_event(out) == event
    if template:
        assert "X-CUSTOM;X-PARAM=\"a;b\":value with \\, escapes\r\n" in out
        assert "TZID:Europe/Berlin\r\nX-LIC-LOCATION:Europe/Berlin\r\n" in out
    assert render_event(event, out) == out  # rendering again changes nothing


@property_settings
@given(task=tasks, template=st.sampled_from([None, TODO]))
def test_task_round_trip(task: Task, template: str | None) -> None:
    out = render_task(task, template)
    assert parse_task(out) == task
    assert template is None or "X-APPLE-SORT-ORDER:12\r\n" in out
    assert render_task(task, out) == out


@property_settings
@given(contact=contacts, template=st.sampled_from([None, VCARD3, VCARD4, VCARD21]))
def test_contact_round_trip(contact: Contact, template: str | None) -> None:
    out = render_contact(contact, template)
    assert parse_contact(out) == contact
    assert "PHOTO" not in (template or "") or "PHOTO" in out
    assert render_contact(contact, out) == out


# --- real-world oddities (issue 16) ------------------------------------------------------------


def test_an_empty_rrule_is_no_repetition_and_is_kept() -> None:
    """Some exporters (German holiday feeds) write "RRULE:" for a single event: read as
    no rule, not as a broken item, and the line stays when the event is edited."""
    raw = calendar("SUMMARY:Neujahr", "DTSTART;VALUE=DATE:20270101", "RRULE:")
    event = parse_event(raw)
    assert (event.rrule, event.start, event.summary) == (None, "2027-01-01", "Neujahr")
    event.summary = "Neujahrstag"
    assert diff(raw, render_event(event, raw)) == (["SUMMARY:Neujahr"], ["SUMMARY:Neujahrstag"])


def test_a_start_given_twice_with_two_values_is_a_format_error() -> None:
    """Which of two DTSTARTs is meant cannot be told: the item fails with the reason
    rather than syncing one of them."""
    raw = calendar("SUMMARY:Twice", "DTSTART:20261209T080000Z", "DTSTART:20261209T100000Z")
    with pytest.raises(FormatError, match=r"DTSTART is given 2 times \('20261209T080000Z', "
                                          r"'20261209T100000Z'\)"):
        parse_event(raw)
    # the same value twice means that value
    assert parse_event(calendar("DTSTART:20261209T080000Z", "DTSTART:20261209T080000Z",
                                "DTEND:20261209T090000Z")).start == "2026-12-09T08:00:00Z"


def test_a_day_start_with_a_duration_in_hours_is_a_format_error() -> None:
    raw = calendar("SUMMARY:Ten hours", "DTSTART;VALUE=DATE:20261212", "DURATION:PT10H")
    with pytest.raises(FormatError, match="DURATION PT10H is not whole days, but the start "
                                          r"is a date \(all day\)"):
        parse_event(raw)
    two_days = calendar("DTSTART;VALUE=DATE:20261212", "DURATION:P2D")
    assert (parse_event(two_days).start, parse_event(two_days).end) == (
        "2026-12-12", "2026-12-14")


def test_two_repeat_rules_are_a_format_error() -> None:
    raw = calendar("DTSTART:20261210T100000Z", "RRULE:FREQ=WEEKLY;COUNT=20;BYDAY=TH",
                   "RRULE:FREQ=MONTHLY;COUNT=2;BYDAY=2MO")
    with pytest.raises(FormatError, match=r"2 repeat rules \(RRULE\): crmsync holds one"):
        parse_event(raw)


def test_two_masters_with_one_uid_are_a_format_error() -> None:
    """Two VEVENTs of one UID without RECURRENCE-ID (an edited copy left beside the
    original): which is the event cannot be told."""
    one = "BEGIN:VEVENT\r\nUID:e-1\r\nDTSTART:20261207T090000Z\r\nSUMMARY:{}\r\nEND:VEVENT\r\n"
    raw = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n" + one.format("test")
           + one.format("test - edited") + "END:VCALENDAR\r\n")
    with pytest.raises(FormatError, match="2 VEVENTs with UID 'e-1' and no RECURRENCE-ID"):
        parse_event(raw)


def test_a_windows_zone_name_resolves_whatever_calendars_were_read_before() -> None:
    """icalendar caches every VTIMEZONE it parses process-wide, under its TZID: an item
    naming a Windows zone without defining it must still get the IANA zone, not fail as
    "unknown" because some other calendar once defined a zone of that name."""
    from crmsync.formats import ical

    Calendar.from_ical(crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//other//EN
BEGIN:VTIMEZONE
TZID:Tokyo Standard Time
BEGIN:STANDARD
DTSTART:16010101T000000
TZOFFSETFROM:+0900
TZOFFSETTO:+0900
END:STANDARD
END:VTIMEZONE
BEGIN:VEVENT
UID:other
DTSTART;TZID=Tokyo Standard Time:20261201T090000
END:VEVENT
END:VCALENDAR
"""))
    ical._iana.cache_clear()
    event = parse_event(calendar("DTSTART;TZID=Tokyo Standard Time:20261208T090000"))
    assert (event.start, event.tz) == ("2026-12-08T00:00:00Z", "Asia/Tokyo")


def test_a_bare_cr_inside_a_text_value_is_a_line_break_both_ways() -> None:
    """Found by the mutated corpus: a lone CR in FN (or SUMMARY) came back as LF from a
    fresh render, so the item read differently after its own round trip."""
    card = crlf("BEGIN:VCARD\nVERSION:3.0\nUID:c-1\nN:Person;Jo;;;\nEND:VCARD\n").replace(
        "N:Person;Jo;;;", "FN:Jo\rPerson\r\nN:Person;Jo;;;")
    contact = parse_contact(card)
    assert contact.full_name == "Jo\nPerson"
    assert parse_contact(render_contact(contact, None)).full_name == "Jo\nPerson"
    event = parse_event(calendar("SUMMARY:one\rtwo", "DTSTART:20261208T090000Z"))
    assert event.summary == "one\ntwo"
    assert parse_event(render_event(event, None)).summary == "one\ntwo"
