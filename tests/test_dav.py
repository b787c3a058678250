"""The CalDAV/CardDAV connector against real Radicale and Xandikos servers.

Every test that takes ``dav_server`` runs against each variant (see ``davservers.py``) in
its own fresh collections. What no real server can be made to do (truncate a
sync-collection answer, drop hrefs from a multiget, answer a PUT without an ETag, lack
sync-collection) is shown by swapping the connector's httpx transport: a small fake
server, or a wrapper that rewrites a real server's answers.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from crmsync import formats
from crmsync.connectors.base import Create, Credentials, Delete, Item, Update
from crmsync.connectors.dav import (
    MAX_TRIES,
    DavConnector,
    client_scheduling,
    discover,
    parse_multistatus,
)
from crmsync.connectors.vdir import VdirConnector
from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.model import Contact, ObjectKind, Task
from crmsync.store import Store
from crmsync.sync import Syncer

from conftest import day, event, item
from davservers import (
    ALL_VARIANTS,
    DEBIAN_VARIANTS,
    PASSWORD,
    USERNAME,
    DavServer,
    DavServerPool,
    FaultProxy,
)

ICAL, VCARD = formats.ICALENDAR, formats.VCARD
Factory = Callable[..., DavConnector]


def crlf(text: str) -> str:
    return text.strip("\n").replace("\n", "\r\n") + "\r\n"


def path_of(url: str) -> str:
    return unquote(urlsplit(url).path)


def credentials(server: DavServer) -> Credentials | None:
    return Credentials(server.username, server.password) if server.username else None


# The variants every test here runs against (see davservers.py).
VARIANTS_HERE = ALL_VARIANTS


@pytest.fixture(scope="session", params=VARIANTS_HERE, ids=list(VARIANTS_HERE))
def dav_server(request: pytest.FixtureRequest, dav_server_pool: DavServerPool) -> DavServer:
    """Every variant, Cyrus, DAViCal and SOGo (DEBIAN_VARIANTS) included: each skips with
    the reason where its packages are missing (a failure under CRMSYNC_REQUIRE_SERVICES=1).
    """
    return dav_server_pool.get(request.param)


@pytest.fixture
def dav(dav_server: DavServer) -> Iterator[Factory]:
    """Connectors to ``dav_server`` (closed after the test); retries never really sleep."""
    opened: list[DavConnector] = []

    def make(url: str, protocol: str = "caldav", **options: object) -> DavConnector:
        options.setdefault("sleep", lambda seconds: None)
        options.setdefault("credentials", credentials(dav_server))
        connector = DavConnector(url, "groupware", protocol=protocol,  # type: ignore[arg-type]
                                 **options)  # type: ignore[arg-type]
        opened.append(connector)
        return connector

    yield make
    for connector in opened:
        connector.close()


def put(server: DavServer, url: str, raw: str, **headers: str) -> httpx.Response:
    """Another client writing an item."""
    media = "text/vcard" if url.endswith(".vcf") else "text/calendar"
    with server.client() as client:
        return client.put(url, content=raw.encode(), headers={"Content-Type": media, **headers})


def create(connector: DavConnector, kind: ObjectKind, *sources: Item) -> list[Item]:
    results = connector.apply(kind, [Create(source) for source in sources])
    assert [r.status for r in results] == ["ok"] * len(sources), results
    return [r.item for r in results if r.item is not None]


def records(items: dict[str, Item]) -> dict[str, object]:
    return {i.record().uid: i.record() for i in items.values()}


def listed(connector: DavConnector, kind: ObjectKind, cursor: str | None = None
           ) -> tuple[dict[str, Item], str | None]:
    """All items a listing names, fetched where it did not hand them over."""
    changes = connector.list_changes(kind, cursor)
    missing = [i for i, _, it in changes.upserts if it is None]
    out = {i: it for i, _, it in changes.upserts if it is not None}
    out.update(connector.fetch(kind, missing))
    return out, changes.cursor


# --- items used across tests ---------------------------------------------------------------

BERLIN = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:STANDARD
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
END:DAYLIGHT
END:VTIMEZONE"""

SERIES = crlf(f"""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//crmsync//tests//EN
{BERLIN}
BEGIN:VEVENT
UID:series@example.org
DTSTAMP:20260101T000000Z
DTSTART;TZID=Europe/Berlin:20261201T090000
DTEND;TZID=Europe/Berlin:20261201T100000
RRULE:FREQ=WEEKLY;COUNT=6
EXDATE;TZID=Europe/Berlin:20261215T090000
SUMMARY:Weekly pipeline review
X-CRM-NOTE:kept as it is
ORGANIZER;CN=Ana:mailto:ana@example.org
ATTENDEE;CN=Bo;PARTSTAT=ACCEPTED:mailto:bo@example.org
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15M
DESCRIPTION:Reminder
END:VALARM
END:VEVENT
BEGIN:VEVENT
UID:series@example.org
DTSTAMP:20260101T000000Z
RECURRENCE-ID;TZID=Europe/Berlin:20261208T090000
DTSTART;TZID=Europe/Berlin:20261208T110000
DTEND;TZID=Europe/Berlin:20261208T120000
SUMMARY:Weekly pipeline review (moved)
END:VEVENT
END:VCALENDAR
""")

ALL_DAY = crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//crmsync//tests//EN
BEGIN:VEVENT
UID:allday@example.org
DTSTAMP:20260101T000000Z
DTSTART;VALUE=DATE:20261203
DTEND;VALUE=DATE:20261205
SUMMARY:Trade fair
CATEGORIES:Fair,Travel
TRANSP:TRANSPARENT
END:VEVENT
END:VCALENDAR
""")

FLOATING = crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//crmsync//tests//EN
BEGIN:VEVENT
UID:floating@example.org
DTSTAMP:20260101T000000Z
DTSTART:20261204T150000
DTEND:20261204T160000
SUMMARY:Call wherever I am
LOCATION:Phone
END:VEVENT
END:VCALENDAR
""")

TASK = crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//crmsync//tests//EN
BEGIN:VTODO
UID:task@example.org
DTSTAMP:20260101T000000Z
DUE;VALUE=DATE:20261202
SUMMARY:Send the quote
PRIORITY:1
STATUS:IN-PROCESS
END:VTODO
END:VCALENDAR
""")

VCARD3 = crlf("""
BEGIN:VCARD
VERSION:3.0
UID:card3@example.org
FN:Jo Acme
N:Acme;Jo;;;
ORG:Acme Inc.
TITLE:Buyer
EMAIL;TYPE=INTERNET,WORK:jo@acme.example
TEL;TYPE=CELL:+49 170 0000000
ADR;TYPE=WORK:;;Main St 1;Berlin;;10115;Germany
BDAY:1980-04-01
END:VCARD
""")

VCARD4 = crlf("""
BEGIN:VCARD
VERSION:4.0
UID:urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1
FN:Kim Lee
N:Lee;Kim;;;
EMAIL;TYPE=work;PREF=1:kim@lee.example
EMAIL;TYPE=home:kim@home.example
TEL;VALUE=uri;TYPE=voice,work:tel:+1-555-555-0100
NOTE:Met at the fair
END:VCARD
""")


def uid(label: str) -> str:
    """A UID of this test's own: Cyrus keeps a UID unique across all of a user's calendars
    (403 unique-scheduling-object-resource), so tests never share one."""
    return f"{label}-{uuid.uuid4().hex[:10]}@example.org"


def unique(raw: str) -> str:
    """A sample item with UIDs of this test's own (see uid())."""
    tag = uuid.uuid4().hex[:10]
    return re.sub(r"^UID:([^@\r\n]+)@", lambda m: f"UID:{m[1]}-{tag}@", raw, flags=re.M)


def name_of(made: Item) -> str:
    return made.id.rpartition("/")[2]


def raw_item(raw: str, kind: ObjectKind, item_id: str = "src") -> Item:
    return Item(item_id, "v1", raw, VCARD if kind == "contacts" else ICAL, kind)


# --- discovery -----------------------------------------------------------------------------


def test_discovery_from_the_root_and_from_the_principal(dav_server: DavServer) -> None:
    calendar = dav_server.make_collection("calendar")
    tasks = dav_server.make_collection("tasks")
    book = dav_server.make_collection("addressbook")
    # A server without authentication still needs a user name to know whose root it is.
    login = credentials(dav_server) or Credentials(USERNAME, "any")
    for start in (dav_server.base_url, dav_server.principal_url):
        calendars = {c.url: c for c in discover(start, "caldav", login)}
        assert {calendar, tasks} <= calendars.keys() and book not in calendars
        # SOGo ignores supported-calendar-component-set in MKCALENDAR.
        assert calendars[tasks].components == (
            {"VEVENT", "VTODO", "VFREEBUSY"} if dav_server.name == "sogo" else {"VTODO"})
        assert calendars[calendar].kind == "calendar"
        books = {c.url: c for c in discover(start, "carddav", login)}
        assert book in books and calendar not in books
        assert books[book].kind == "addressbook" and books[book].name == book.split("/")[-2]
    # A collection's own URL finds just that collection.
    assert [c.url for c in discover(tasks, "caldav", login)] == [tasks]


def test_a_url_that_is_not_a_collection_lists_the_ones_found(dav_server: DavServer,
                                                             dav: Factory) -> None:
    calendar = dav_server.make_collection("calendar")
    with pytest.raises(ConfigError) as error:
        dav(dav_server.principal_url).list_changes("calendar", None)
    assert "is not a calendar" in str(error.value)
    assert f"caldav:{calendar}" in str(error.value)


def test_objects_the_collection_cannot_hold_are_config_errors(dav_server: DavServer,
                                                              dav: Factory) -> None:
    book = dav_server.make_collection("addressbook")
    with pytest.raises(ConfigError, match="serves contacts, not calendar"):
        dav(book, "carddav").list_changes("calendar", None)
    tasks_only = dav_server.make_collection("tasks")
    if dav_server.name == "sogo":
        # Every SOGo calendar takes VEVENT, VTODO and VFREEBUSY (see discovery).
        assert dav(tasks_only).list_changes("calendar", None).upserts == []
    else:
        with pytest.raises(ConfigError, match="cannot hold calendar"):
            dav(tasks_only).list_changes("calendar", None)
    with pytest.raises(ConfigError, match="serves calendar and tasks, not contacts"):
        dav(tasks_only).fetch("contacts", [])


# --- writing with preconditions ------------------------------------------------------------


def test_create_update_delete_carry_preconditions(dav_server: DavServer, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    [made] = create(conn, "calendar", item(event("crud@example.org", "Kickoff")))
    assert made.id == path_of(url) + "crud@example.org.ics"
    assert made.version.startswith('"')
    listing = conn.list_changes("calendar", None)
    assert [(i, v) for i, v, _ in listing.upserts] == [(made.id, made.version)]

    [updated] = conn.apply("calendar", [Update(made.id, made.version, {"summary": "Kickoff 2"},
                                               planned=made)])
    assert updated.status == "ok" and updated.item is not None
    assert updated.item.version != made.version
    assert updated.item.record().summary == "Kickoff 2"
    assert conn.fetch("calendar", [made.id])[made.id].version == updated.item.version

    # Writes planned from the old version are refused, not applied blindly.
    stale = conn.apply("calendar", [Update(made.id, made.version, {"summary": "x"})])
    assert [r.status for r in stale] == ["changed"]
    if dav_server.name != "sogo":  # SOGo ignores If-Match on DELETE (see the 412 test)
        stale = conn.apply("calendar", [Delete(made.id, made.version)])
        assert [r.status for r in stale] == ["changed"]
    # Without the planned item the current one is read first (GET), then written.
    before = conn.stats()["requests"] - conn.retries
    [again] = conn.apply("calendar", [Update(made.id, updated.item.version,
                                             {"location": "Room 1"})])
    assert again.status == "ok" and again.item is not None
    assert again.item.record().summary == "Kickoff 2"
    # SOGo rewrites what it stores: the written item is read back (one multiget).
    assert conn.stats()["requests"] - conn.retries - before == (
        3 if dav_server.name == "sogo" else 2)

    done = conn.apply("calendar", [Delete(made.id, again.item.version),
                                   Delete(made.id, again.item.version),
                                   Update(made.id, again.item.version, {"summary": "y"})])
    # Deleting what is gone is a no-op; updating it is a change to re-plan.
    assert [r.status for r in done] == ["ok", "ok", "changed"]
    assert conn.fetch("calendar", [made.id]) == {}


def test_an_edit_between_listing_and_writing_is_a_412(dav_server: DavServer,
                                                     dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    [made] = create(conn, "calendar", item(event("race@example.org", "Before")))
    listing = conn.list_changes("calendar", None)
    [(item_id, version, _)] = listing.upserts
    planned = conn.fetch("calendar", [item_id])[item_id]
    # Someone else edits the item after our listing.
    edited = planned.raw.replace("SUMMARY:Before", "SUMMARY:Edited elsewhere")
    assert put(dav_server, url + "race@example.org.ics", edited).is_success

    results = conn.apply("calendar", [Update(item_id, version, {"summary": "Ours"},
                                             planned=planned),
                                      Delete(item_id, version)])
    if dav_server.name == "sogo":
        # SOGo ignores If-Match on DELETE (204): the item edited elsewhere is gone.
        assert [r.status for r in results] == ["changed", "ok"]
        assert conn.fetch("calendar", [item_id]) == {}
        return
    assert [r.status for r in results] == ["changed", "changed"]
    assert conn.fetch("calendar", [item_id])[item_id].record().summary == "Edited elsewhere"
    assert made.version == version


def test_creating_a_uid_already_there_pairs_with_that_item(dav_server: DavServer,
                                                           dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    # Another client stored the UID under a name of its own: the server refuses a second
    # item with that UID (Radicale 409, Xandikos 412, no-uid-conflict either way).
    source = item(event(uid("dup"), "Twice"))
    assert put(dav_server, url + "their-name.ics", source.raw).is_success
    [result] = conn.apply("calendar", [Create(source)])
    if dav_server.name == "davical":
        # DAViCal takes a second resource with a UID the calendar holds.
        assert result.status == "ok" and result.item is not None
        assert result.item.id.startswith(path_of(url))
        assert not result.item.id.endswith("/their-name.ics")
    else:
        assert result.status == "exists" and result.item is not None
        assert result.item.id == path_of(url) + "their-name.ics"
    assert result.item.uid == source.uid
    # Under our own name again (a create whose answer was lost): 412, the same item.
    again = uid("again")
    [first] = create(conn, "calendar", item(event(again)))
    [second] = conn.apply("calendar", [Create(item(event(again)))])
    if dav_server.name == "sogo":
        # SOGo ignores If-None-Match: * and overwrites the item under its name (204).
        assert second.status == "ok" and second.item is not None
        assert second.item.id == first.id and second.item.version != first.version
        return
    assert second.status == "exists" and second.item is not None
    assert (second.item.id, second.item.version) == (first.id, first.version)
    assert len(conn.list_changes("calendar", None).upserts) == (
        3 if dav_server.name == "davical" else 2)


def test_a_task_whose_uid_an_event_holds_is_refused_not_paired_with_the_event(
        dav_server: DavServer, dav: Factory) -> None:
    """A real-world file held an event and a task with one UID: the event went into the
    calendar first, the task's create met it ("exists") and was paired with the event;
    the next run, not finding a task there, took it as deleted and deleted the source."""
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    uid = f"shared-{uuid.uuid4().hex[:8]}@example.org"
    create(conn, "calendar", item(event(uid, "The event")))
    task = raw_item("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\n"
                    f"UID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nSUMMARY:The task\r\n"
                    "END:VTODO\r\nEND:VCALENDAR\r\n", "tasks")
    [result] = conn.apply("tasks", [Create(task)])
    assert result.status == "failed" and result.item is None
    if dav_server.name == "sogo":
        # SOGo refuses to put a task where its event is (HTTP 501) before crmsync asks.
        assert "HTTP 501" in (result.error or "")
        return
    assert "one UID cannot name two items" in (result.error or "") and uid in result.error


def test_creating_a_contact_uid_already_there(dav_server: DavServer, dav: Factory) -> None:
    book = dav_server.make_collection("addressbook")
    conn = dav(book, "carddav")
    # Rendered from the record; the UID has colons, so the name is a hash of it.
    card = formats.parse(VCARD, "contacts", VCARD4)
    [first] = conn.apply("contacts", [Create(raw_item(VCARD4, "contacts"), record=card)])
    [second] = conn.apply("contacts", [Create(raw_item(VCARD4, "contacts"), record=card)])
    assert first.item is not None and second.item is not None
    assert second.item.id == first.item.id
    if dav_server.name == "sogo":
        # SOGo ignores If-None-Match: * and overwrites the item under its name (204).
        assert (first.status, second.status) == ("ok", "ok")
        assert second.item.version != first.item.version
    else:
        assert (first.status, second.status) == ("ok", "exists")
    if dav_server.name.startswith("xandikos") or dav_server.name in DEBIAN_VARIANTS:
        # Xandikos, Cyrus, DAViCal and SOGo store two vCards with one UID (no CardDAV
        # no-uid-conflict).
        return
    assert put(dav_server, book + "theirs.vcf", VCARD3).is_success
    [result] = conn.apply("contacts", [Create(raw_item(VCARD3, "contacts"))])
    assert result.status == "exists" and result.item is not None
    assert result.item.id == path_of(book) + "theirs.vcf"


def test_a_refused_item_fails_alone(dav_server: DavServer, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    broken = raw_item(crlf("BEGIN:VCALENDAR\nVERSION:2.0\nBROKEN\nEND:VCALENDAR"), "calendar")
    results = conn.apply("calendar", [Create(broken), Create(item(event("fine@example.org")))])
    assert [r.status for r in results] == ["failed", "ok"]
    assert "HTTP 4" in (results[0].error or "")
    assert [u[0] for u in conn.list_changes("calendar", None).upserts] == [
        path_of(url) + "fine@example.org.ics"]


def test_schedule_agent_client_is_added_so_servers_send_no_mail(dav_server: DavServer,
                                                               dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    invite = SERIES.replace("ATTENDEE;CN=Bo", "ATTENDEE;CN=Someone with a very long name "
                            "indeed, long enough to fold;SCHEDULE-AGENT=SERVER;CN=Bo")
    [made] = create(conn, "calendar", raw_item(SERIES, "calendar"))
    with dav_server.client() as client:
        stored = client.get(url + "series@example.org.ics").text
    unfolded = re.sub(r"\r?\n[ \t]", "", stored)
    people = [line for line in unfolded.splitlines()
              if line.startswith(("ORGANIZER", "ATTENDEE"))]
    assert len(people) == 2
    assert all("SCHEDULE-AGENT=CLIENT" in line for line in people)
    sent = formats.parse(ICAL, "calendar", SERIES)
    if dav_server.name == "sogo":
        # SOGo stores the organizer with the user's name: the item handed back is the
        # server's copy, so the pair's base is what the server keeps.
        stored = made.record()
        assert stored.organizer != sent.organizer  # type: ignore[attr-defined]
        sent = dataclasses.replace(sent, organizer=stored.organizer)  # type: ignore
    assert made.record() == sent
    # A choice already made is the user's: kept as it is.
    assert "SCHEDULE-AGENT=SERVER" in client_scheduling(invite)


# --- listing -------------------------------------------------------------------------------


def test_sync_collection_reports_changes_and_deletions(dav_server: DavServer,
                                                       dav: Factory) -> None:
    url = dav_server.make_collection("tasks")
    conn = dav(url)
    made = create(conn, "tasks", *(item(Task(uid=f"t{n}@example.org", summary=f"Task {n}"))
                                   for n in range(3)))
    full = conn.list_changes("tasks", None)
    assert full.complete and not full.deleted
    assert sorted(u[0] for u in full.upserts) == sorted(i.id for i in made)
    # A collection that holds tasks only needs no reading to sort them: the core fetches.
    # The first listing asks for the content too; Xandikos does not give it there.
    assert all((u[2] is not None) == content_in_listing(dav_server) for u in full.upserts)
    assert json.loads(full.cursor or "")["token"]

    with dav_server.client() as client:
        assert client.delete(url + "t0@example.org.ics").is_success
    edited = made[1].raw.replace("SUMMARY:Task 1", "SUMMARY:Task 1 edited")
    assert put(dav_server, url + "t1@example.org.ics", edited).is_success
    later = dav(url).list_changes("tasks", full.cursor)
    assert not later.complete
    assert later.deleted == [made[0].id]
    if dav_server.name in ("davical", "sogo"):
        # DAViCal's token of a full listing is the one before the last change, and SOGo's
        # (kept a second early, see dav.settled) lists what changed in that second: items
        # come again, unchanged (the core knows their versions and skips them).
        again = [u[0] for u in later.upserts if u[1] == made[int(u[0][-17])].version]
        assert [u[0] for u in later.upserts if u[0] not in again] == [made[1].id]
        if dav_server.name == "davical":
            assert again == [made[2].id]
    else:
        assert [u[0] for u in later.upserts] == [made[1].id]
    assert later.upserts[0][1] != made[1].version
    # Nothing since: an empty listing, and the cursor stays as it is.
    quiet = dav(url).list_changes("tasks", later.cursor)
    if dav_server.name == "sogo":  # again what changed in the token's second, unchanged
        known = {**{m.id: m.version for m in made}, **{u[0]: u[1] for u in later.upserts}}
        assert all(known.get(u[0]) == u[1] for u in quiet.upserts)
        assert quiet.deleted in ([], [made[0].id])
    else:
        assert (quiet.upserts, quiet.deleted, quiet.cursor) == ([], [], later.cursor)


def test_an_unknown_sync_token_falls_back_to_a_full_listing(dav_server: DavServer,
                                                           dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    made = create(conn, "calendar", item(event(uid("a"))), item(event(uid("b"))))
    cursor = json.loads(conn.list_changes("calendar", None).cursor or "")
    # Radicale: 403, Xandikos: 412
    token = cursor["token"]
    cursor["token"] = token[:-8] + "deadbeef" if len(token) > 16 else token + "99999"
    changes = dav(url).list_changes("calendar", json.dumps(cursor))
    # DAViCal and SOGo take a token they never issued (DAViCal answers every item as for
    # an empty one, SOGo's is a time): the listing names every item, as changes.
    assert changes.complete is (dav_server.name not in ("davical", "sogo"))
    assert sorted(u[0] for u in changes.upserts) == sorted(i.id for i in made)
    assert json.loads(changes.cursor or "")["token"] != cursor["token"]
    # So does a cursor this version cannot read.
    assert dav(url).list_changes("calendar", "{not json").complete


def test_no_change_costs_one_request_for_events_and_tasks_together(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    create(dav(url), "calendar", item(event(uid("e1"))), item(event(uid("e2"))))
    create(dav(url), "tasks", item(Task(uid=uid("t1"), summary="Call back")))
    proxied = fault_proxy.translate(url)
    first = dav(proxied)
    events, tasks = (first.list_changes(k, None) for k in ("calendar", "tasks"))
    # One probe, one sync-collection and, where the listing came without the content,
    # one multiget to tell events from tasks: all shared by both objects.
    expected = ["PROPFIND", "REPORT"] + ([] if content_in_listing(dav_server) else ["REPORT"])
    assert [m for m, _ in fault_proxy.requests] == expected
    assert len(events.upserts) == 2 and len(tasks.upserts) == 1
    assert all(u[2] is not None for u in events.upserts + tasks.upserts)
    assert {u[2].kind for u in tasks.upserts if u[2]} == {"tasks"}
    assert events.cursor == tasks.cursor

    fault_proxy.reset()
    again = dav(proxied)
    quiet = [again.list_changes(k, c) for k, c in (("calendar", events.cursor),
                                                    ("tasks", tasks.cursor))]
    if dav_server.name == "sogo":
        # What changed in the token's second comes again, unchanged (see dav.settled),
        # and is read (one multiget) to tell events from tasks.
        listed = {u[:2] for u in events.upserts + tasks.upserts}
        assert all(u[:2] in listed for q in quiet for u in q.upserts)
        assert again.stats() == {"requests": 2 if quiet[0].upserts + quiet[1].upserts else 1}
        return
    assert fault_proxy.requests == [("REPORT", path_of(url))]
    assert again.stats() == {"requests": 1}
    assert all(not q.upserts and not q.deleted and q.cursor == events.cursor for q in quiet)


def test_changes_in_a_shared_calendar_are_sorted_into_events_and_tasks(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    e1, e2 = create(dav(url), "calendar", item(event(uid("e1"))), item(event(uid("e2"))))
    cursor = dav(url).list_changes("calendar", None).cursor
    with dav_server.client() as client:
        assert client.delete(url + name_of(e2)).is_success
    assert put(dav_server, url + name_of(e1),
               e1.raw.replace("SUMMARY:Meeting", "SUMMARY:Moved")).is_success
    assert put(dav_server, url + "new-task.ics", unique(TASK)).is_success

    fault_proxy.reset()
    conn = dav(fault_proxy.translate(url))
    events = conn.list_changes("calendar", cursor)
    tasks = conn.list_changes("tasks", cursor)
    # One sync-collection, one multiget for the two changed items.
    assert fault_proxy.count("REPORT") == 2 and len(fault_proxy.requests) == 2
    assert [(u[0], u[2].record().summary) for u in events.upserts if u[2]] == [
        (e1.id, "Moved")]
    assert [u[0] for u in tasks.upserts] == [path_of(url) + "new-task.ics"]
    # A deletion names no component: both objects hear of it (the core ignores strangers).
    assert events.deleted == tasks.deleted == [e2.id]
    # Listing an object again asks the server again.
    conn.list_changes("calendar", cursor)
    assert fault_proxy.count("REPORT") == 3 + 1


def test_multigets_come_in_batches(dav_server: DavServer, fault_proxy: FaultProxy,
                                   dav: Factory) -> None:
    book = dav_server.make_collection("addressbook")
    create(dav(book, "carddav"), "contacts",
           *(item(Contact(uid=f"c{n}@example.org", full_name=f"Contact {n}"))
             for n in range(25)))
    conn = dav(fault_proxy.translate(book), "carddav", multiget_batch=10)
    ids = [u[0] for u in conn.list_changes("contacts", None).upserts]
    fault_proxy.reset()
    before = conn.stats()["requests"]
    found = conn.fetch("contacts", ids)
    assert len(found) == 25
    assert {r.full_name for r in records(found).values()} == {f"Contact {n}" for n in range(25)}
    # ceil(25 / 10) multigets and nothing one by one.
    assert [m for m, _ in fault_proxy.requests] == ["REPORT"] * 3
    assert conn.stats() == {"requests": before + 3}
    # Gone items are simply absent.
    gone = path_of(book) + "never-there.vcf"
    assert gone not in conn.fetch("contacts", [gone, next(iter(found))])


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_a_thousand_item_calendar(dav_server: DavServer, fault_proxy: FaultProxy,
                                  dav: Factory) -> None:
    # Seeded in one PUT of the whole calendar, which Radicale accepts; Xandikos has no
    # such upload and commits each PUT to git (~40 ms), too slow for this suite.
    url = dav_server.calendar_home_url + f"big-{uuid.uuid4().hex[:8]}/"
    body = "".join(
        f"BEGIN:VEVENT\r\nUID:big{n}@example.org\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:20261201T{n % 24:02d}0000Z\r\nSUMMARY:Event {n}\r\nEND:VEVENT\r\n"
        for n in range(1000))
    assert put(dav_server, url, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\n"
               + body + "END:VCALENDAR\r\n").is_success
    conn = dav(fault_proxy.translate(url))
    events, cursor = listed(conn, "calendar")
    assert len(events) == 1000 and all(i.kind == "calendar" for i in events.values())
    assert {r.summary for r in records(events).values()} == {f"Event {n}" for n in range(1000)}
    # Radicale quotes "@" in hrefs; the ids do not.
    assert path_of(url) + "big7@example.org.ics" in events
    # Probe, then one sync-collection that brings the content along: no multigets.
    assert conn.stats() == {"requests": 2}
    assert dav(url).list_changes("tasks", cursor).upserts == []


def content_in_listing(server: DavServer) -> bool:
    """Radicale, Cyrus and SOGo answer calendar-data in a sync-collection; Xandikos with a
    404 propstat, DAViCal leaves it out."""
    return server.name.startswith("radicale") or server.name in ("cyrus", "sogo")


def test_a_truncated_sync_collection_is_followed_to_its_end() -> None:
    server = FakeDav([f"/cal/e{n}.ics" for n in range(5)], page=2)
    conn = DavConnector("http://dav.test/cal/", "groupware", protocol="caldav",
                        transport=httpx.MockTransport(server.handle))
    full = conn.list_changes("calendar", None)
    assert full.complete
    assert [u[0] for u in full.upserts] == [f"/cal/e{n}.ics" for n in range(5)]
    # Pages of 2, 2 and 1: the first two end with a 507 for the collection.
    assert server.reports == ["", "t2", "t4"]
    assert json.loads(full.cursor or "")["token"] == "t5"
    server.put("/cal/e9.ics")
    server.delete("/cal/e0.ics")
    server.put("/cal/e1.ics")
    later = conn.list_changes("calendar", full.cursor)
    assert server.reports[3:] == ["t5", "t7"]
    assert [(u[0], u[1]) for u in later.upserts] == [("/cal/e1.ics", '"8"'),
                                                     ("/cal/e9.ics", '"6"')]
    assert later.deleted == ["/cal/e0.ics"] and not later.complete
    assert conn.stats() == {"requests": 1 + 3 + 2}


def fake_dav_syncer(store: Store, tmp_path: Path, server: FakeDav) -> Syncer:
    """A profile syncing a local folder (the CRM) with ``server``'s calendar."""
    try:
        profile = store.profile("fake")
    except ConfigError:
        (tmp_path / "crm").mkdir()
        profile = store.add_profile("fake", f"vdir:{tmp_path / 'crm'}",
                                    "caldav:http://dav.test/cal/", ["calendar"], {})
    conn = DavConnector("http://dav.test/cal/", "groupware", protocol="caldav",
                        transport=httpx.MockTransport(server.handle), sleep=lambda s: None)
    return Syncer(store, profile, groupware=conn)


def test_a_listing_cut_off_between_pages_resumes_where_it_stopped(
        sqlite_store: Store, tmp_path: Path) -> None:
    server = FakeDav([f"/cal/e{n}.ics" for n in range(5)], page=2)
    server.broken.add("t4")
    first = fake_dav_syncer(sqlite_store, tmp_path, server)
    pid = first.profile.id
    with pytest.raises(ConnectionFailed):
        first.prepare()
    # The two pages read were saved: their token, and their items to look at again.
    assert json.loads(sqlite_store.cursor(pid, "calendar", "groupware") or "")["token"] == "t4"
    assert sqlite_store.pending(pid, "calendar")["groupware"] == {
        f"/cal/e{n}.ics" for n in range(4)}
    server.broken.clear()
    server.put("/cal/e1.ics")  # changed meanwhile: the new version is the one synced
    again = fake_dav_syncer(sqlite_store, tmp_path, server)
    report = again.run(again.prepare())
    assert server.reports[-1] == "t4"  # resumed, not started over
    assert report.objects["calendar"].counts == {"create:crm": 5}
    crm = VdirConnector(tmp_path / "crm", "crm")
    summaries = sorted(i.record().summary for _, _, i in
                       crm.list_changes("calendar", None).upserts if i is not None)
    assert summaries == ["Event e0 v1", "Event e1 v6", "Event e2 v3", "Event e3 v4",
                         "Event e4 v5"]
    assert sqlite_store.pending(pid, "calendar")["groupware"] == set()
    quiet = fake_dav_syncer(sqlite_store, tmp_path, server)
    assert quiet.prepare()[0].plan.writes == 0


def test_a_full_listing_over_known_pairs_saves_no_progress_part_way(
        sqlite_store: Store, tmp_path: Path) -> None:
    server = FakeDav([f"/cal/e{n}.ics" for n in range(5)], page=2)
    syncer = fake_dav_syncer(sqlite_store, tmp_path, server)
    syncer.run(syncer.prepare())
    pid = syncer.profile.id
    # The server forgot its tokens (ours is now unknown to it), and e4 was deleted: only
    # a complete listing can tell. Cut off part-way, it must not leave a token behind
    # from which the deletion would never be seen.
    stale = json.dumps({"v": 1, "token": "t99"})
    sqlite_store.save_progress(pid, "calendar", {"crm": sqlite_store.cursor(
        pid, "calendar", "crm"), "groupware": stale}, {"crm": set(), "groupware": set()})
    server.delete("/cal/e4.ics")
    server.broken.add("t2")
    with pytest.raises(ConnectionFailed):
        fake_dav_syncer(sqlite_store, tmp_path, server).prepare()
    assert sqlite_store.cursor(pid, "calendar", "groupware") == stale
    server.broken.clear()
    again = fake_dav_syncer(sqlite_store, tmp_path, server)
    report = again.run(again.prepare())
    assert report.objects["calendar"].counts == {"delete:crm": 1}


def test_a_first_listing_lists_every_item_of_its_kind_whatever_the_range(
        dav_server: DavServer, dav: Factory) -> None:
    """The server's time range is never trusted (Radicale left out a series with COUNT and
    UNTIL and an event with EXDATEs but no RRULE, DAViCal tasks without DTSTART): one
    calendar-query per kind, without a range; the core places the items itself."""
    url = dav_server.make_collection("calendar")
    writer = dav(url)
    inside, outside = create(writer, "calendar", item(event("in@example.org")),
                             item(event("out@example.org", start="2030-01-01T09:00:00Z",
                                        end="2030-01-01T10:00:00Z")))
    standup = crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//crmsync//tests//EN
BEGIN:VEVENT
UID:standup@example.org
DTSTAMP:20250101T000000Z
DTSTART:20250602T090000Z
DTEND:20250602T091500Z
RRULE:FREQ=WEEKLY
SUMMARY:Standup
END:VEVENT
END:VCALENDAR
""")
    series, _ = create(writer, "calendar", raw_item(standup, "calendar"),
                       raw_item(ALL_DAY, "calendar"))
    [task] = create(writer, "tasks", raw_item(TASK, "tasks"))
    window = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    conn = dav(url)
    events = conn.list_changes("calendar", None, window=window)
    # One probe and one calendar-query that hands the content along.
    assert conn.stats() == {"requests": 2}
    assert events.notes == []
    assert all(i is not None and i.record().uid for _, _, i in events.upserts)
    # Outside the range too, and the series that began a year earlier. Not complete (one
    # kind of a shared calendar): nothing missing from it is taken for deleted.
    assert not events.complete
    assert sorted(u[0] for u in events.upserts) == sorted(
        [inside.id, outside.id, series.id, path_of(url) + "allday@example.org.ics"])
    tasks = conn.list_changes("tasks", None, window=window)
    assert [u[0] for u in tasks.upserts] == [task.id]
    # Incremental listings use the sync token and see everything that changes.
    assert put(dav_server, url + "out@example.org.ics",
               outside.raw.replace("SUMMARY:Meeting", "SUMMARY:Later")).is_success
    later = dav(url).list_changes("calendar", events.cursor, window=window)
    if dav_server.name == "sogo":
        # What changed in the token's second comes again, unchanged (see dav.settled).
        first = {i.id: i.version for i in (inside, series)} | {
            u[0]: u[1] for u in events.upserts}
        assert [u[0] for u in later.upserts if first.get(u[0]) != u[1]] == [outside.id]
    else:
        assert [u[0] for u in later.upserts] == [outside.id]


# --- content survives the round trip -------------------------------------------------------


def as_stored(server: DavServer, record: Any) -> Any:
    """``record`` as the server keeps it. SOGo gives the organizer that is its user the
    user's name (its directory's "Ana Test"), and stores a floating time as UTC: a real
    change of the item, which the pair's base (the server's copy) takes in."""
    if server.name != "sogo" or record.kind != "calendar":
        return record
    if record.organizer is not None and record.organizer.email == "ana@example.org":
        record = dataclasses.replace(
            record, organizer=dataclasses.replace(record.organizer, name="Ana Test"))
    if record.tz is None and "T" in (record.start or "") and not record.start.endswith("Z"):
        record = dataclasses.replace(record, start=record.start + "Z", end=record.end + "Z",
                                     tz="Etc/UTC")
    return record


def test_items_round_trip_unchanged(dav_server: DavServer, dav: Factory) -> None:
    calendar = dav_server.make_collection("calendar")
    book = dav_server.make_collection("addressbook")
    samples: list[tuple[ObjectKind, str]] = [
        ("calendar", unique(SERIES)), ("calendar", unique(ALL_DAY)),
        ("calendar", unique(FLOATING)), ("tasks", unique(TASK)), ("contacts", VCARD3),
        ("contacts", VCARD4)]
    for kind, raw in samples:
        conn = dav(book, "carddav") if kind == "contacts" else dav(calendar)
        original = formats.parse(VCARD if kind == "contacts" else ICAL, kind, raw)
        # Copied verbatim, and rendered from the record alone under a new UID.
        rendered = dataclasses.replace(original, uid=original.uid + "-rendered")
        conn.apply(kind, [Create(raw_item(raw, kind))])
        conn.apply(kind, [Create(raw_item(raw, kind), record=rendered)])
    for kind in ("calendar", "tasks", "contacts"):
        conn = dav(book, "carddav") if kind == "contacts" else dav(calendar)
        found = records(listed(conn, kind)[0])
        expected = {}
        for sample_kind, raw in samples:
            if sample_kind == kind:
                record = formats.parse(VCARD if kind == "contacts" else ICAL, kind, raw)
                expected[record.uid] = as_stored(dav_server, record)
                expected[record.uid + "-rendered"] = as_stored(dav_server, dataclasses.replace(
                    record, uid=record.uid + "-rendered"))
        assert found == expected, kind


def test_items_know_when_they_changed(dav_server: DavServer, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    stamped = ALL_DAY.replace("DTSTAMP:", "LAST-MODIFIED:20260305T101500Z\r\nDTSTAMP:")
    made = create(conn, "calendar", raw_item(unique(FLOATING), "calendar"),
                  raw_item(unique(stamped), "calendar"))
    assert all(i.modified for i in made)
    fetched = listed(conn, "calendar")[0]
    # The server's getlastmodified when it tells (neither does in a REPORT), else the
    # item's own LAST-MODIFIED, else its DTSTAMP.
    assert sorted(i.modified or "" for i in fetched.values()) == [
        "2026-01-01T00:00:00Z", "2026-03-05T10:15:00Z"]


# --- robust HTTP ---------------------------------------------------------------------------


NO_DTSTART = crlf("""
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//crmsync//tests//EN
BEGIN:VEVENT
UID:nostart@example.org
DTSTAMP:20250101T000000Z
SUMMARY:Sometime
END:VEVENT
END:VCALENDAR
""")
WINDOW = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_a_calendar_query_the_server_fails_falls_back_to_sync_collection(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    [inside] = create(dav(url), "calendar", item(event(uid("in"))))
    slept: list[float] = []
    conn = dav(fault_proxy.translate(url), sleep=slept.append)
    fault_proxy.fail(500, times=MAX_TRIES, methods={"REPORT"}, body=b"calendar-query")
    changes = conn.list_changes("calendar", None, window=WINDOW)
    # Retried as any 5xx (bounded), then listed in full: a warning, not a failure.
    assert fault_proxy.pending_faults == 0 and len(slept) == MAX_TRIES - 1
    assert changes.complete and [u[0] for u in changes.upserts] == [inside.id]
    [note] = changes.notes
    assert "calendar-query" in note and "HTTP 500" in note and "another way" in note
    # The next listing goes on from the full listing's token (on SOGo, what changed in
    # the token's second comes again, unchanged: see dav.settled).
    again = conn.list_changes("calendar", changes.cursor).upserts
    assert again == ([] if dav_server.name != "sogo" or not again
                     else [(inside.id, inside.version, again[0][2])])


def test_a_sync_collection_the_server_fails_falls_back_to_etags(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    writer = dav(url)
    [kept, gone] = create(writer, "calendar", item(event("kept@example.org")),
                          item(event("gone@example.org")))
    conn = dav(fault_proxy.translate(url))
    cursor = conn.list_changes("calendar", None).cursor
    assert writer.apply("calendar", [Delete(gone.id, gone.version)])[0].status == "ok"
    # Every sync-collection fails now, incremental and full alike.
    fault_proxy.fail(503, times=2 * MAX_TRIES, methods={"REPORT"}, body=b"sync-collection")
    changes = dav(fault_proxy.translate(url)).list_changes("calendar", cursor)
    # A full listing by PROPFIND and multiget: complete, so the core checks the paired
    # items it misses (here the deleted one) before taking them for deleted.
    assert changes.complete and [u[0] for u in changes.upserts] == [kept.id]
    assert [n for n in changes.notes if "sync-collection" in n] == changes.notes != []
    # Tried once per run: a failing way is not asked again.
    assert fault_proxy.pending_faults == MAX_TRIES


def test_a_multiget_the_server_fails_reads_the_items_one_by_one(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    made = create(dav(url), "calendar", *(item(event(f"m{n}@example.org")) for n in range(3)))
    conn = dav(fault_proxy.translate(url))
    changes = conn.list_changes("calendar", None)
    fault_proxy.fail(500, times=MAX_TRIES, methods={"REPORT"}, body=b"multiget")
    got = conn.fetch("calendar", [m.id for m in made])
    assert fault_proxy.pending_faults == 0
    assert {i: it.version for i, it in got.items()} == {m.id: m.version for m in made}
    # Said in the next listing's report.
    [note] = conn.list_changes("calendar", changes.cursor).notes
    assert "multiget" in note and "one by one" in note


@pytest.mark.parametrize("dav_server", ["xandikos"], indirect=True)
def test_an_event_without_dtstart_is_in_a_first_listing(
        dav_server: DavServer, dav: Factory) -> None:
    # Xandikos takes a VEVENT without DTSTART; no time-range query ever matches it, and
    # a first listing asks for none.
    url = dav_server.make_collection("calendar")
    assert put(dav_server, url + "nostart.ics", NO_DTSTART).is_success
    [dated] = create(dav(url), "calendar", item(event("dated@example.org")))
    changes = dav(url).list_changes("calendar", None, window=WINDOW)
    nostart = path_of(url) + "nostart.ics"
    assert sorted(u[0] for u in changes.upserts) == sorted([dated.id, nostart])
    assert all(u[2] is not None for u in changes.upserts)
    assert not changes.complete and changes.deleted == [] and changes.notes == []


def test_5xx_is_retried_honouring_retry_after(dav_server: DavServer,
                                             fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    slept: list[float] = []
    conn = dav(fault_proxy.translate(url), sleep=slept.append)
    fault_proxy.fail(503, times=2, retry_after=3)
    assert conn.list_changes("calendar", None).complete
    assert slept == [3.0, 3.0]
    assert conn.stats() == {"requests": 4}  # the failed tries count too
    # Without Retry-After: exponential backoff with full jitter, capped.
    fault_proxy.fail(502, times=3)
    create(conn, "calendar", item(event("retry@example.org")))
    assert len(slept) == 5 and all(0 <= s <= 2 ** n for n, s in enumerate(slept[2:]))


def test_a_dropped_connection_is_retried_and_writes_stay_single(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(fault_proxy.translate(url))
    fault_proxy.drop(times=1)
    assert conn.list_changes("calendar", None).complete
    # The PUT reaches the server but its answer is lost: the retry finds the item there.
    fault_proxy.drop(times=1, methods={"PUT"}, after_forward=True)
    [result] = conn.apply("calendar", [Create(item(event("once@example.org")))])
    assert result.status in ("ok", "exists") and result.item is not None
    assert len(dav(url).list_changes("calendar", None).upserts) == 1
    fault_proxy.drop(times=1, methods={"DELETE"}, after_forward=True)
    [deleted] = conn.apply("calendar", [Delete(result.item.id, result.item.version)])
    assert deleted.status == "ok"
    assert dav(url).list_changes("calendar", None).upserts == []


def test_every_try_is_a_request_and_a_retry_is_logged(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory,
        caplog: pytest.LogCaptureFixture) -> None:
    # SOGo resets some PUT connections: each try is counted, as the server saw it, and
    # each retry shows at -v (the log), never silently.
    url = dav_server.make_collection("calendar")
    conn = dav(fault_proxy.translate(url))
    conn.list_changes("calendar", None)
    fault_proxy.reset()
    before = conn.stats()["requests"]
    fault_proxy.drop(times=2, methods={"PUT"}, after_forward=True)
    with caplog.at_level("INFO", logger="crmsync.connectors.dav"):
        [result] = conn.apply("calendar", [Create(item(event(f"reset-{uuid.uuid4().hex}")))])
    assert result.status in ("ok", "exists")
    assert fault_proxy.count("PUT") == 3
    assert conn.stats()["requests"] - before == len(fault_proxy.requests)
    retries = [r.getMessage() for r in caplog.records if "sending it again" in r.getMessage()]
    assert len(retries) == 2 and all(m.startswith("PUT ") for m in retries), retries
    assert "try 3 of 4" in retries[1] and conn.retries == 2


def test_a_slow_answer_times_out_and_is_retried(dav_server: DavServer,
                                               fault_proxy: FaultProxy, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(fault_proxy.translate(url), timeout=0.3)
    fault_proxy.delay(1.0, times=1)
    assert conn.list_changes("calendar", None).complete


def test_an_unavailable_server_stops_the_run(dav_server: DavServer, fault_proxy: FaultProxy,
                                            dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    slept: list[float] = []
    conn = dav(fault_proxy.translate(url), sleep=slept.append)
    fault_proxy.fail(503, times=4)
    with pytest.raises(ConnectionFailed) as error:
        conn.list_changes("calendar", None)
    message = str(error.value)
    assert "HTTP 503" in message and "4 tries" in message
    assert fault_proxy.translate(url) in message and PASSWORD not in message
    assert len(slept) == 3
    # A server asking for a longer wait than we would make is given up on at once.
    fault_proxy.reset()
    fault_proxy.fail(429, times=1, retry_after=3600)
    with pytest.raises(ConnectionFailed, match="retry in 3600 s"):
        conn.list_changes("calendar", None)
    # Writes stop the run too: nothing is lost, the next run starts over.
    fault_proxy.fail(503, times=4, methods={"PUT"})
    with pytest.raises(ConnectionFailed):
        conn.apply("calendar", [Create(item(event("never@example.org")))])


def test_an_unreachable_server_is_a_connection_failure() -> None:
    with FaultProxy("http://127.0.0.1:9/") as proxy:
        url = proxy.url
    slept: list[float] = []
    conn = DavConnector(url + "cal/", "groupware", protocol="caldav", sleep=slept.append,
                        credentials=Credentials("ana", "hunter2"))
    with pytest.raises(ConnectionFailed, match="unreachable after 4 tries") as error:
        conn.list_changes("calendar", None)
    assert url in str(error.value) and "hunter2" not in str(error.value)
    assert len(slept) == 3


@pytest.mark.parametrize("dav_server", ["radicale-auth", "xandikos-auth"], indirect=True)
def test_refused_credentials_are_a_connection_failure(dav_server: DavServer,
                                                      dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    wrong = Credentials(dav_server.username, "not-" + PASSWORD)
    with pytest.raises(ConnectionFailed, match="refused the credentials") as error:
        dav(url, credentials=wrong).list_changes("calendar", None)
    assert "not-" + PASSWORD not in str(error.value)
    with pytest.raises(ConnectionFailed, match="asks for credentials"):
        dav(url, credentials=None).list_changes("calendar", None)
    with pytest.raises(ConnectionFailed, match="refused the credentials"):
        discover(dav_server.principal_url, "caldav", wrong)


# --- transport swaps: what real servers here do not do ------------------------------------


class Rewrite(httpx.BaseTransport):
    """Forwards to the real server and lets a test rewrite its answers."""

    def __init__(self, rewrite: Callable[[httpx.Request, httpx.Response], httpx.Response]
                 ) -> None:
        self._inner = httpx.HTTPTransport()
        self._rewrite = rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        response.read()
        # The body is decoded now: drop the headers describing its encoding on the wire.
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length",
                                        "transfer-encoding")]
        plain = httpx.Response(response.status_code, headers=headers,
                               content=response.content, request=request)
        return self._rewrite(request, plain)

    def close(self) -> None:
        self._inner.close()


def _replace(response: httpx.Response, content: bytes | None = None,
             drop: tuple[str, ...] = (), status: int | None = None) -> httpx.Response:
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in drop]
    return httpx.Response(status or response.status_code, headers=headers,
                          content=response.content if content is None else content,
                          request=response.request)


def test_without_sync_collection_etags_are_compared(dav_server: DavServer,
                                                    dav: Factory) -> None:
    if dav_server.name == "sogo":
        pytest.skip("SOGo's ctag counts whole seconds like its sync token: a change in the "
                    "ctag's second leaves it as it was; SOGo has sync-collection, which the "
                    "connector uses (this test hides it)")
    def no_sync(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if b"sync-collection" in request.content:
            return _replace(response, b"", status=501)
        if request.method == "PROPFIND":
            body = re.sub(rb"<(\w+:)?supported-report>(?:(?!supported-report>).)*"
                          rb"sync-collection(?:(?!supported-report>).)*</\1?supported-report>",
                          b"", response.content, flags=re.S)
            body = re.sub(rb"<(\w+:)?sync-token>[^<]*</\1?sync-token>", b"", body)
            return _replace(response, body)
        return response

    url = dav_server.make_collection("calendar")
    made = create(dav(url), "calendar", item(event(uid("a"))), item(event(uid("b"))))
    conn = dav(url, transport=Rewrite(no_sync))
    full = conn.list_changes("calendar", None)
    assert full.complete and len(full.upserts) == 2
    cursor = json.loads(full.cursor or "")
    assert "token" not in cursor and cursor["ctag"] and len(cursor["etags"]) == 2

    quiet = dav(url, transport=Rewrite(no_sync))
    assert quiet.list_changes("calendar", full.cursor).upserts == []
    assert quiet.stats() == {"requests": 1}  # one PROPFIND of the ctag

    with dav_server.client() as client:
        assert client.delete(url + name_of(made[0])).is_success
    assert put(dav_server, url + name_of(made[1]),
               made[1].raw.replace("SUMMARY:Meeting", "SUMMARY:Changed")).is_success
    later = dav(url, transport=Rewrite(no_sync)).list_changes("calendar", full.cursor)
    assert later.deleted == [made[0].id] and not later.complete
    assert [(u[0], u[2].record().summary) for u in later.upserts if u[2]] == [
        (made[1].id, "Changed")]


def test_hrefs_a_multiget_leaves_out_are_fetched_one_by_one(dav_server: DavServer,
                                                            dav: Factory) -> None:
    def capped(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if b"multiget" not in request.content:
            return response
        tree = parse_multistatus(response.content, str(request.url))
        assert len(tree.responses) == 3
        # Keep only the first response, like a server with a silent cap of one.
        body = re.sub(rb"(</(?:\w+:)?response>).*(</(?:\w+:)?multistatus>)", rb"\1\2",
                      response.content, count=1, flags=re.S)
        return _replace(response, body)

    book = dav_server.make_collection("addressbook")
    made = create(dav(book, "carddav"), "contacts",
                  *(item(Contact(uid=f"c{n}@example.org", full_name=f"C {n}"))
                    for n in range(3)))
    conn = dav(book, "carddav", transport=Rewrite(capped))
    found = conn.fetch("contacts", [i.id for i in made])
    assert {i.id: i.version for i in found.values()} == {i.id: i.version for i in made}
    assert conn.stats() == {"requests": 3}  # one multiget, two GETs


def test_a_put_answered_without_etag_reads_the_version_back(dav_server: DavServer,
                                                           dav: Factory) -> None:
    def no_etag(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        return _replace(response, drop=("etag",)) if request.method == "PUT" else response

    url = dav_server.make_collection("calendar")
    conn = dav(url, transport=Rewrite(no_etag))
    [made] = create(conn, "calendar", item(event("noetag@example.org")))
    assert conn.stats() == {"requests": 2}  # the PUT and a GET
    assert made.version == dav(url).fetch("calendar", [made.id])[made.id].version
    [updated] = conn.apply("calendar", [Update(made.id, made.version, {"summary": "v2"},
                                               planned=made)])
    assert updated.status == "ok" and updated.item is not None
    assert updated.item.version == dav(url).fetch("calendar", [made.id])[made.id].version


class FakeDav:
    """A tiny in-memory calendar (events only) whose sync-collection answers hold at most
    ``page`` changes: a longer one ends with a 507 for the collection and a token to go on
    from. Tokens are "t<n>": the first n entries of the change log have been reported."""

    def __init__(self, paths: list[str], page: int) -> None:
        self.page = page
        self.etags: dict[str, str] = {}
        self.log: list[str] = []  # the paths changed, in order
        self.reports: list[str] = []  # the tokens sync-collection was asked with
        # sync-collection from these tokens loses the connection (the server went away
        # mid-listing; a server error would be a reason to list another way instead).
        self.broken: set[str] = set()
        for path in paths:
            self.put(path)

    def raw(self, path: str) -> str:
        """The item at ``path``: an event whose summary tells its version."""
        uid = path.rsplit("/", 1)[-1].removesuffix(".ics")
        return formats.render(formats.ICALENDAR, "calendar", event(
            f"{uid}@fake", f"Event {uid} v{self.etags[path].strip(chr(34))}"))

    def put(self, path: str) -> None:
        self.log.append(path)
        self.etags[path] = f'"{len(self.log)}"'

    def delete(self, path: str) -> None:
        self.log.append(path)
        del self.etags[path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PROPFIND":
            return self._multistatus(
                "<D:response><D:href>/cal/</D:href><D:propstat><D:prop><D:resourcetype>"
                "<D:collection/><C:calendar/></D:resourcetype><D:supported-report-set>"
                "<D:supported-report><D:report><D:sync-collection/></D:report>"
                "</D:supported-report></D:supported-report-set>"
                '<C:supported-calendar-component-set><C:comp name="VEVENT"/>'
                "</C:supported-calendar-component-set></D:prop>"
                "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")
        body = request.content.decode()
        assert request.method == "REPORT"
        if "calendar-query" in body:  # no time-range filtering here
            return httpx.Response(403, content=b'<D:error xmlns:D="DAV:"><C:supported-filter '
                                  b'xmlns:C="urn:ietf:params:xml:ns:caldav"/></D:error>')
        if "calendar-multiget" in body:
            return self._multiget(re.findall(r"<D:href>([^<]*)</D:href>", body))
        token = re.search(r"<D:sync-token>([^<]*)</D:sync-token>", body)
        assert token is not None
        self.reports.append(token[1])
        if token[1] in self.broken:
            raise httpx.ReadError("connection lost", request=request)
        if token[1] and int(token[1][1:]) > len(self.log):
            return httpx.Response(403, content=b'<D:error xmlns:D="DAV:">'
                                  b"<D:valid-sync-token/></D:error>")
        start = int(token[1][1:] or 0)
        end = min(start + self.page, len(self.log))
        parts = []
        for path in self.log[start:end]:  # each as it is now, like real servers
            if path in self.etags:
                parts.append(f"<D:response><D:href>{path}</D:href><D:propstat><D:prop>"
                             f"<D:getetag>{self.etags[path]}</D:getetag></D:prop>"
                             "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")
            else:
                parts.append(f"<D:response><D:href>{path}</D:href>"
                             "<D:status>HTTP/1.1 404 Not Found</D:status></D:response>")
        if end < len(self.log):
            parts.append("<D:response><D:href>/cal/</D:href><D:status>HTTP/1.1 507 "
                         "Insufficient Storage</D:status></D:response>")
        return self._multistatus("".join(parts) + f"<D:sync-token>t{end}</D:sync-token>")

    def _multiget(self, hrefs: list[str]) -> httpx.Response:
        parts = []
        for path in hrefs:
            if path in self.etags:
                data = self.raw(path).replace("&", "&amp;").replace("<", "&lt;")
                parts.append(f"<D:response><D:href>{path}</D:href><D:propstat><D:prop>"
                             f"<D:getetag>{self.etags[path]}</D:getetag>"
                             f"<C:calendar-data>{data}</C:calendar-data></D:prop>"
                             "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>")
            else:
                parts.append(f"<D:response><D:href>{path}</D:href>"
                             "<D:status>HTTP/1.1 404 Not Found</D:status></D:response>")
        return self._multistatus("".join(parts))

    @staticmethod
    def _multistatus(inner: str) -> httpx.Response:
        return httpx.Response(207, headers={"Content-Type": "application/xml"}, content=(
            '<D:multistatus xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f"{inner}</D:multistatus>").encode())


# --- small parts ---------------------------------------------------------------------------


def test_bearer_tokens_and_secrets_stay_out_of_sight() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization", ""))
        return httpx.Response(401)

    creds = Credentials(token="t0ken-s3cret")
    conn = DavConnector("http://user:pw@dav.test/cal", "groupware", protocol="caldav",
                        credentials=creds, transport=httpx.MockTransport(handler))
    assert conn.url == "http://user:pw@dav.test/cal/"
    with pytest.raises(ConnectionFailed, match="refused the credentials") as error:
        conn.list_changes("calendar", None)
    assert seen == ["Bearer t0ken-s3cret"]
    for text in (str(error.value), repr(conn), repr(creds)):
        assert "t0ken" not in text and "pw@" not in text


def test_retry_after_may_be_an_http_date() -> None:
    answers = iter([httpx.Response(503, headers={"Retry-After": email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=20), usegmt=True)})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or FakeDav(["/cal/e1.ics"], page=5).handle(request)

    slept: list[float] = []
    conn = DavConnector("http://dav.test/cal/", "groupware", protocol="caldav",
                        transport=httpx.MockTransport(handler), sleep=slept.append)
    assert len(conn.list_changes("calendar", None).upserts) == 1
    assert len(slept) == 1 and 18 <= slept[0] <= 20


def test_a_get_without_etag_asks_for_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, text=crlf(
                "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//t//t//EN\nBEGIN:VEVENT\nUID:e1\n"
                "DTSTAMP:20260101T000000Z\nDTSTART:20261201T090000Z\nSUMMARY:e1\n"
                "END:VEVENT\nEND:VCALENDAR"))
        if request.method == "PUT":
            return httpx.Response(204, headers={"ETag": '"8"'})
        return FakeDav._multistatus(
            '<D:response><D:href>/cal/e1.ics</D:href><D:propstat><D:prop><D:getetag>"7"'
            "</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
            "</D:response>")

    conn = DavConnector("http://dav.test/cal/", "groupware", protocol="caldav",
                        transport=httpx.MockTransport(handler))
    [result] = conn.apply("calendar", [Update("/cal/e1.ics", '"7"', {"summary": "x"})])
    assert result.status == "ok" and result.item is not None
    assert result.item.version == '"8"' and result.item.record().summary == "x"
    # GET, PROPFIND for its etag, PUT; then the first write to a collection is read back
    # to learn whether the server rewrites what it stores: a multiget (answered here
    # without content), so a GET and a PROPFIND for its etag.
    assert conn.stats() == {"requests": 6}


def test_a_forbidden_collection_is_a_connection_failure() -> None:
    conn = DavConnector("http://dav.test/cal/", "groupware", protocol="caldav",
                        credentials=Credentials("ana", "pw"),
                        transport=httpx.MockTransport(lambda r: httpx.Response(403)))
    with pytest.raises(ConnectionFailed, match="refused the credentials"):
        conn.list_changes("calendar", None)


def test_bad_endpoints_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="http"):
        DavConnector("ftp://dav.test/cal/", "groupware", protocol="caldav")
    with pytest.raises(ConfigError, match="CA bundle"):
        DavConnector("https://dav.test/cal/", "groupware", protocol="caldav",
                     credentials=Credentials(ca_bundle=str(tmp_path / "missing.pem")))


def test_client_scheduling_touches_only_organizer_and_attendee_lines() -> None:
    raw = crlf("""
BEGIN:VCALENDAR
BEGIN:VEVENT
SUMMARY:Attendees and organizers
DESCRIPTION:ATTENDEE:mailto:not-a-property@example.org
ORGANIZER:mailto:ana@example.org
ATTENDEE;DELEGATED-FROM="mailto:x@example.org";CN=Bo:mailto:bo@example.org
item1.ATTENDEE;SCHEDULE-AGENT=NONE:mailto:cy@example.org
ATTENDEE;CN="A name so long that the line must be folded once the parameter is i
 n":mailto:long@example.org
END:VEVENT
END:VCALENDAR
""")
    out = client_scheduling(raw)
    lines = out.split("\r\n")
    assert "ORGANIZER;SCHEDULE-AGENT=CLIENT:mailto:ana@example.org" in lines
    assert "item1.ATTENDEE;SCHEDULE-AGENT=NONE:mailto:cy@example.org" in lines
    assert "DESCRIPTION:ATTENDEE:mailto:not-a-property@example.org" in lines
    # Lines the parameter makes too long are folded again.
    assert all(len(line.encode()) <= 75 for line in lines)
    unfolded = re.sub(r"\r\n ", "", out)
    assert ('ATTENDEE;SCHEDULE-AGENT=CLIENT;DELEGATED-FROM="mailto:x@example.org";CN=Bo:'
            "mailto:bo@example.org") in unfolded.split("\r\n")
    assert ('ATTENDEE;SCHEDULE-AGENT=CLIENT;CN="A name so long that the line must be folded '
            'once the parameter is in":mailto:long@example.org') in unfolded
    assert client_scheduling(out) == out
    # Everything else keeps its bytes.
    assert re.sub(r";SCHEDULE-AGENT=CLIENT", "", unfolded) == re.sub(r"\r\n ", "", raw)
    plain = crlf("BEGIN:VCALENDAR\nBEGIN:VTODO\nSUMMARY:x\nEND:VTODO\nEND:VCALENDAR")
    assert client_scheduling(plain) is plain


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_a_server_error_on_one_write_fails_that_item_only(
        dav_server: DavServer, fault_proxy: FaultProxy, dav: Factory) -> None:
    """DAViCal answered 500 to the PUT of one real-world item (after the retries) and took
    the others: the run stopped at it. Now that item fails; a 503 (the server itself is
    unavailable) still stops the run."""
    url = dav_server.make_collection("calendar")
    conn = dav(fault_proxy.translate(url))
    bad, good = uid("bad"), uid("good")
    fault_proxy.fail(500, times=MAX_TRIES, methods={"PUT"}, body=bad.encode(),
                     retry_after=0)
    results = conn.apply("calendar", [Create(item(event(bad))), Create(item(event(good)))])
    assert [r.status for r in results] == ["failed", "ok"]
    assert "the server failed to store it" in (results[0].error or "")
    assert "HTTP 500" in (results[0].error or "")
    fault_proxy.fail(503, times=MAX_TRIES, methods={"PUT"}, retry_after=0)
    with pytest.raises(ConnectionFailed):
        conn.apply("calendar", [Create(item(event(uid("down"))))])


@pytest.mark.parametrize("dav_server", ["sogo"], indirect=True)
def test_what_a_server_changes_as_it_stores_an_item_is_said(dav_server: DavServer,
                                                              dav: Factory) -> None:
    """SOGo gives an event without length an hour, and makes some all-day events timed:
    the item is synced as the server keeps it, and the report says what changed."""
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    [result] = conn.apply("calendar", [Create(item(event(uid("zero"), start=day(1),
                                                         end=None)))])
    assert result.status == "ok" and result.item is not None
    assert result.note is not None and "the server changed end" in result.note, result
    assert result.item.record().end is not None  # the base is the server's copy
    [plain] = conn.apply("calendar", [Create(item(event(uid("plain"))))])
    assert plain.status == "ok" and plain.note is None
