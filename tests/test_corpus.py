"""The bad-input corpus (tests/corpus): every file ends in a correct sync or a clean
per-item error in the report; the run never crashes and no item's data is lost.

The groupware is a folder of the corpus files (vdir), the CRM the Salesforce sandbox.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync import formats
from crmsync.connectors.salesforce import SalesforceConnector
from crmsync.connectors.vdir import FORMAT, VdirConnector
from crmsync.errors import FormatError
from crmsync.formats import contentlines
from crmsync.sandbox.server import Sandbox
from crmsync.store import Store
from crmsync.sync import Syncer
from test_salesforce import api, creds

from sfsandbox import control

CORPUS = Path(__file__).with_name("corpus")
KINDS = {".ics": "calendar", ".vcf": "contacts"}
Row = dict[str, Any]


def event(subject: str, start: str, end: str, **more: Any) -> Callable[[list[Row]], None]:
    def check(rows: list[Row]) -> None:
        # (a series: its parent record, the one that holds the pattern)
        row = next(r for r in rows if r.get("Subject") == subject
                   and (not r.get("IsRecurrence2") or r.get("Recurrence2PatternText")))
        assert (row["StartDateTime"][:19], row["EndDateTime"][:19]) == (start, end), row
        for key, value in more.items():
            assert (len(row[key]) if key == "Description" else row[key]) == value, (key, row)
    return check


def contact(first: str, last: str, email: str, **more: Any) -> Callable[[list[Row]], None]:
    def check(rows: list[Row]) -> None:
        row = next(r for r in rows if r.get("Email") == email)
        assert (row["FirstName"], row["LastName"]) == (first, last), row
        for key, value in more.items():
            assert row[key] == value, (key, row)
    return check


# file -> what must become of it: a check of the CRM record, or the report's reason.
EXPECTED: dict[str, Callable[[list[Row]], None] | str] = {
    "missing-uid.ics": event("Corpus no UID", "2026-12-03T09:00:00", "2026-12-03T10:00:00"),
    "duplicate-uid-1.ics": event("Corpus duplicate one", "2026-12-04T09:00:00",
                                 "2026-12-04T10:00:00"),
    # Its twin syncs; it waits for `crmsync repair` (a second copy, or pair, of one UID).
    "duplicate-uid-2.ics": "same UID as duplicate-uid-1.ics in groupware (corpus-dup@x)",
    "unknown-tzid.ics": "unknown time zone 'Mars/Olympus_Mons'",
    # A VTIMEZONE of its own (CET rules) and a Windows zone name: 09:00 local is 08:00Z.
    "custom-vtimezone.ics": event("Corpus custom zone", "2026-12-07T08:00:00",
                                  "2026-12-07T09:00:00"),
    "windows-zone.ics": event("Corpus Windows zone", "2026-12-08T08:00:00",
                              "2026-12-08T09:00:00"),
    # Salesforce keeps instants: the floating 09:00 is 09:00 in the user's zone (the
    # profile's, Europe/Berlin here), 08:00 UTC in December.
    "floating.ics": event("Corpus floating time", "2026-12-09T08:00:00", "2026-12-09T09:00:00"),
    "dtend-before-dtstart.ics": "End Date/Time can't be earlier than Start Date/Time",
    "rrule-until-date.ics": event("Corpus UNTIL as a date", "2026-12-11T09:00:00",
                                  "2026-12-11T10:00:00", IsRecurrence2=True),
    "rrule-until-local.ics": event("Corpus UNTIL without Z", "2026-12-12T08:00:00",
                                   "2026-12-12T09:00:00", IsRecurrence2=True),
    # Bodies are truncated to Salesforce's 32,000 characters; subjects never are.
    "huge-description.ics": event("Corpus huge description", "2026-12-13T09:00:00",
                                  "2026-12-13T10:00:00", Description=32000),
    # Known before writing (Connector.refuses): skips with the reason, never sent.
    "huge-subject.ics": "Salesforce takes at most 255: not synced (shorten it)",
    "invalid-utf8.ics": "invalid-utf8.ics is not valid UTF-8 (byte 190)",
    # Folded inside a multi-byte character: read once unfolded.
    "folded-multibyte.ics": event("Corpus folded Grüße aus Köln – " + "ü" * 40,
                                  "2026-12-15T09:00:00", "2026-12-15T10:00:00"),
    "lf-only.ics": event("Corpus LF line ends", "2026-12-16T09:00:00", "2026-12-16T10:00:00"),
    "truncated.ics": "iCalendar is cut short: END:VEVENT missing",
    "not-icalendar.ics": "iCalendar line 1 is not a content line",
    "empty.ics": "not iCalendar: empty",
    "no-dtstart.ics": "needs a start (Event.StartDateTime)",
    "bad-date.ics": "DTSTART: bad date or date-time '2026-12-18 09:00'",
    "x-props-and-alarm.ics": event("Corpus with X- props", "2026-12-19T09:00:00",
                                   "2026-12-19T10:00:00", IsReminderSet=True),
    "allday-multi.ics": event("Corpus three days off", "2026-12-20T00:00:00",
                              "2026-12-22T00:00:00", IsAllDayEvent=True),
    # Real-world rules and times Salesforce cannot hold (issue 16): a reason per item.
    "rrule-untl-typo.ics": "the repeat rule's part UNTL cannot be held by Salesforce",
    "rrule-rscale-skip.ics": "the repeat rule's parts RSCALE, SKIP cannot be held",
    "rrule-rscale-hebrew.ics": "the repeat rule's parts RSCALE, SKIP cannot be held",
    "allday-start-timed-end.ics": "the start is a date (all day) but the end a date and time",
    "timed-start-allday-end.ics": "the start is a date and time but the end a date",
    "rdate-extra.ics": "2 extra dates (RDATE) cannot be held by Salesforce",
    "start-off-the-rule.ics": "the first start is not a day the repeat rule gives",
    "dtstart-twice.ics": "DTSTART is given 2 times",
    # "RRULE:" with nothing after it: no repetition.
    "empty-rrule.ics": event("Corpus empty RRULE", "2026-12-24T00:00:00",
                             "2026-12-24T00:00:00", IsAllDayEvent=True, IsRecurrence2=False),
    "vcard21-qp.vcf": contact("Jürgen", "Müller", "juergen.mueller@corpus.example",
                              Phone="+49 30 1234567",
                              Description="Line one\nLine two and more"),
    "photo.vcf": contact("Photo", "Person", "photo@corpus.example"),
    "vcard-missing-uid.vcf": contact("No Uid", "Person", "nouid@corpus.example"),
    "vcard-invalid-utf8.vcf": "vcard-invalid-utf8.vcf is not valid UTF-8 (byte 58)",
    "vcard-no-name.vcf": "needs a last name (Contact.LastName)",
    "vcard-garbage.vcf": "vCard line 2 is not a content line",
}

# Hostile single items (issue 16): each is its own outcome, the run goes on.
EXPECTED.update({
    # (An empty "RRULE:" is empty-rrule.ics above.) A rule part nobody knows: read, in
    # range from its start on, and not one Salesforce can hold.
    "hostile-unknown-rrule-part.ics": "the repeat rule's part BYFOO cannot be held",
    "hostile-allday-timed-end.ics": "the start is a date (all day) but the end a date and time",
    "hostile-two-vevents.ics": "holds 2 VEVENTs with different UIDs",
    "hostile-vjournal.ics": "no VEVENT in the calendar",
    # The event syncs; the journal and the to-do stay in the file (kept on updates).
    "hostile-mixed-components.ics": event("Hostile event among others", "2026-12-27T09:00:00",
                                          "2026-12-27T10:00:00"),
})


# Items the CRM would certainly refuse: planned as skips with the reason, not failures.
# The Salesforce mapping says so when the plan is made (Connector.refuses).
REFUSED = {"huge-subject.ics", "vcard-no-name.vcf", "no-dtstart.ics", "rrule-untl-typo.ics",
           "rrule-rscale-skip.ics", "rrule-rscale-hebrew.ics", "allday-start-timed-end.ics",
           "timed-start-allday-end.ics", "rdate-extra.ics", "start-off-the-rule.ics",
           "hostile-unknown-rrule-part.ics", "hostile-allday-timed-end.ics"}


def test_every_corpus_file_has_an_expectation():
    assert sorted(p.name for p in CORPUS.iterdir() if p.suffix in KINDS) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as sb:
        yield sb


def test_the_corpus_syncs_or_fails_item_by_item_and_nothing_is_lost(sandbox, tmp_path: Path):
    control(sandbox, "reset", records=True)
    gw = tmp_path / "groupware"
    for path in CORPUS.iterdir():
        if path.suffix in KINDS:
            (gw / KINDS[path.suffix]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, gw / KINDS[path.suffix] / path.name)
    before = {p.name: p.read_bytes() for p in gw.rglob("*.*")}
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    profile = store.add_profile("corpus", f"salesforce:{sandbox.url}", f"vdir:{gw}",
                                ("calendar", "contacts"),
                                {"calendar": {"timezone": "Europe/Berlin"}})
    crm = SalesforceConnector(sandbox.url, credentials=creds(sandbox))
    syncer = Syncer(store, profile, crm=crm, groupware=VdirConnector(gw, "groupware"),
                    clock=lambda: datetime(2026, 11, 22, tzinfo=UTC))
    try:
        report = syncer.run(syncer.prepare()).to_dict()
        assert report["status"] == "partial" and report["error"] is None
        failed = {i["groupware_id"]: i["reason"] for o in report["objects"].values()
                  for i in o["items"] if i["outcome"] == "failed"}
        skipped = {i["groupware_id"]: i["reason"] for o in report["objects"].values()
                   for i in o["items"] if i["outcome"] == "skipped"}
        events = api(sandbox, "GET", "query?q=SELECT+Subject,StartDateTime,EndDateTime,"
                     "IsAllDayEvent,IsRecurrence2,Recurrence2PatternText,Description,"
                     "IsReminderSet+FROM+Event").json()["records"]
        contacts = api(sandbox, "GET", "query?q=SELECT+FirstName,LastName,Email,Phone,"
                       "Description+FROM+Contact").json()["records"]
        for name, expected in EXPECTED.items():
            if isinstance(expected, str):
                assert expected in (skipped if name in REFUSED else failed).pop(name), name
            else:
                expected(events if name.endswith(".ics") else contacts)
        assert failed == {}  # no failure the corpus does not expect
        # Nothing in the groupware was rewritten or removed.
        assert {p.name: p.read_bytes() for p in gw.rglob("*.*")} == before
        # Run again: no duplicates; the broken items are reported again, not retried into
        # copies.
        again = syncer.run(syncer.prepare()).to_dict()
        assert all(not k.startswith("create") for o in again["objects"].values()
                   for k in o["counts"]), again["objects"]
        assert len(api(sandbox, "GET", "query?q=SELECT+Id+FROM+Contact").json()["records"]) \
            == len(contacts)
    finally:
        syncer.close()
        store.close()


def test_floating_times_reach_salesforce_in_the_users_zone(sandbox, tmp_path: Path):
    """Salesforce keeps instants: a floating 09:00 is 09:00 where the user is, on create
    and when it moves; the runs after that are quiet (the calendar keeps its floating
    time)."""
    control(sandbox, "reset", records=True)
    folder = tmp_path / "groupware" / "calendar"
    folder.mkdir(parents=True)
    path = folder / "floating.ics"
    shutil.copy(CORPUS / "floating.ics", path)
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    profile = store.add_profile("zone", f"salesforce:{sandbox.url}",
                                f"vdir:{tmp_path / 'groupware'}", ("calendar",),
                                {"calendar": {"timezone": "America/New_York"}})
    crm = SalesforceConnector(sandbox.url, credentials=creds(sandbox))
    syncer = Syncer(store, profile, crm=crm,
                    groupware=VdirConnector(tmp_path / "groupware", "groupware"),
                    clock=lambda: datetime(2026, 11, 22, tzinfo=UTC))

    def crm_times() -> list[tuple[str, str]]:
        rows = api(sandbox, "GET", "query?q=SELECT+StartDateTime,EndDateTime+FROM+Event"
                   ).json()["records"]
        return [(r["StartDateTime"][:19], r["EndDateTime"][:19]) for r in rows]

    def planned() -> dict[str, int]:
        return {k: n for o in syncer.run(syncer.prepare()).to_dict()["objects"].values()
                for k, n in o["counts"].items() if n}

    try:
        assert planned() == {"create:crm": 1}
        assert crm_times() == [("2026-12-09T14:00:00", "2026-12-09T15:00:00")]
        path.write_text(path.read_text().replace("T090000", "T110000")
                        .replace("T100000", "T113000"))
        assert planned() == {"update:crm": 1}
        assert crm_times() == [("2026-12-09T16:00:00", "2026-12-09T16:30:00")]
        assert planned() == {}
        assert "DTSTART:20261209T110000\n" in path.read_text().replace("\r\n", "\n")
    finally:
        syncer.close()
        store.close()


# --- the parsers under generated and mutated input ------------------------------------------

SEEDS = sorted(p for p in CORPUS.iterdir() if p.suffix in KINDS)


def _parse(kind: str, data: bytes) -> None:
    """Parse bytes as the groupware side would: a record, or a clean per-item error."""
    try:
        text = contentlines.decode(data)
    except UnicodeDecodeError:
        return
    try:
        record = formats.parse(FORMAT[kind], kind, text)
    except FormatError:
        return
    # What parses also renders, over its own text and afresh, and reads back the same
    # (afresh, a zone only the item itself defines becomes UTC: the same instants).
    fields = record.fields()
    over = formats.render(FORMAT[kind], kind, record, text)
    assert formats.parse(FORMAT[kind], kind, over).fields() == fields
    fresh = formats.parse(FORMAT[kind], kind, formats.render(FORMAT[kind], kind, record))
    assert fresh.fields() | {"tz": None} == fields | {"tz": None}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from([p for p in SEEDS if p.stat().st_size < 10_000]),
       cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 40),
                               st.binary(max_size=12)), max_size=4))
def test_mutated_corpus_files_parse_or_fail_cleanly(seed: Path, cuts):
    data = bytearray(seed.read_bytes())
    for at, length, insert in cuts:
        at %= len(data) + 1
        data[at:at + length] = insert
    _parse(KINDS[seed.suffix], bytes(data))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["calendar", "contacts", "tasks"]),
       lines=st.lists(st.text(max_size=60), max_size=12))
def test_generated_text_parses_or_fails_cleanly(kind: str, lines: list[str]):
    component = {"calendar": "VEVENT", "tasks": "VTODO"}.get(kind)
    if component:
        body = ["BEGIN:VCALENDAR", "VERSION:2.0", f"BEGIN:{component}", *lines,
                f"END:{component}", "END:VCALENDAR"]
    else:
        body = ["BEGIN:VCARD", "VERSION:3.0", *lines, "END:VCARD"]
    _parse(kind, "\r\n".join(body).encode("utf-8", "surrogatepass"))
