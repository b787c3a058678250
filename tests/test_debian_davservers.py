"""Smoke test: crmsync's CalDAV/CardDAV connector against Cyrus, DAViCal and SOGo.

The servers come from Debian's packages (see ``tests/servers/``) and start once per test
session; each test works in collections of its own. What the servers themselves get wrong
is asserted as it is, per server, with a comment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from crmsync.connectors.base import Create, Credentials, Delete, Item, Update
from crmsync.connectors.dav import DavConnector, discover
from crmsync.model import Attendee, Contact, ObjectKind, Person, Task

from conftest import day, event, item
from davservers import DEBIAN_VARIANTS, DavServer

pytestmark = pytest.mark.parametrize("dav_server", DEBIAN_VARIANTS, indirect=True)

Factory = Callable[..., DavConnector]


@pytest.fixture
def dav(dav_server: DavServer) -> Iterator[Factory]:
    opened: list[DavConnector] = []

    def make(url: str, protocol: str = "caldav") -> DavConnector:
        connector = DavConnector(url, "groupware", protocol=protocol,  # type: ignore[arg-type]
                                 credentials=Credentials(dav_server.username,
                                                         dav_server.password),
                                 sleep=lambda seconds: None)
        opened.append(connector)
        return connector

    yield make
    for connector in opened:
        connector.close()


def uid(label: str) -> str:
    # Cyrus keeps UIDs unique across all of a user's calendars: every test has its own.
    return f"{label}-{uuid.uuid4().hex[:10]}@example.org"


def listing(conn: DavConnector, kind: ObjectKind, cursor: str | None = None
            ) -> tuple[dict[str, Item], list[str], str | None]:
    """Items named by a listing (fetched where not handed over), deletions, new cursor."""
    changes = conn.list_changes(kind, cursor)
    out = {i: it for i, _, it in changes.upserts if it is not None}
    out.update(conn.fetch(kind, [i for i, _, it in changes.upserts if it is None]))
    return out, changes.deleted, changes.cursor


def by_uid(items: dict[str, Item]) -> dict[str, object]:
    return {it.record().uid: it.record() for it in items.values()}


def changed(found: dict[str, Item], before: list[Item | None]) -> dict[str, Item]:
    """What a listing since a cursor names with a new version. SOGo's sync tokens count
    whole seconds and it lists again what changed in the token's second, unchanged."""
    versions = {it.id: it.version for it in before if it is not None}
    return {i: it for i, it in found.items() if versions.get(i) != it.version}


def sent(conn: DavConnector) -> int:
    """Requests sent, leaving out those sent again: SOGo closes idle keep-alive
    connections, and a request that meets one is sent again (counted, and logged)."""
    return conn.stats()["requests"] - conn.retries


def write(conn: DavConnector, kind: ObjectKind, writes: list) -> list[Item | None]:
    results = conn.apply(kind, writes)
    assert [r.status for r in results] == ["ok"] * len(writes), results
    return [r.item for r in results]


def test_the_server_starts(dav_server: DavServer, record_property) -> None:
    # The start-up time (cold: packages installed, nothing running) goes into the report.
    record_property(f"{dav_server.name}_start_seconds", round(dav_server.started_in or 0, 2))
    print(f"{dav_server.name} started in {dav_server.started_in:.2f} s")
    with dav_server.client() as client:
        for url in (dav_server.calendar_url, dav_server.addressbook_url):
            response = client.request("PROPFIND", url, headers={"Depth": "0"})
            assert response.status_code == 207, (url, response.text[:500])
        response = client.request("PROPFIND", dav_server.calendar_url,
                                  headers={"Depth": "0"}, auth=("ana", "wrong"))
        assert response.status_code == 401


def test_discovery_finds_default_and_new_collections(dav_server: DavServer) -> None:
    calendar = dav_server.make_collection("calendar")
    tasks = dav_server.make_collection("tasks")
    book = dav_server.make_collection("addressbook")
    login = Credentials(dav_server.username, dav_server.password)
    for start in (dav_server.base_url, dav_server.principal_url, dav_server.calendar_home_url):
        calendars = {c.url: c for c in discover(start, "caldav", login)}
        assert {dav_server.calendar_url, calendar, tasks} <= calendars.keys(), start
        assert book not in calendars
        assert {"VEVENT", "VTODO"} <= calendars[calendar].components
        # SOGo ignores supported-calendar-component-set in MKCALENDAR: every calendar of
        # its takes VEVENT, VTODO and VFREEBUSY.
        assert calendars[tasks].components == (
            {"VEVENT", "VTODO", "VFREEBUSY"} if dav_server.name == "sogo" else {"VTODO"})
    for start in (dav_server.base_url, dav_server.principal_url,
                  dav_server.addressbook_home_url):
        books = {c.url: c for c in discover(start, "carddav", login)}
        assert {dav_server.addressbook_url, book} <= books.keys(), start
        assert calendar not in books and books[book].kind == "addressbook"
    assert [c.url for c in discover(calendar, "caldav", login)] == [calendar]


def test_events_and_tasks_round_trip(dav_server: DavServer, dav: Factory) -> None:
    conn = dav(dav_server.make_collection("calendar"))
    events = [event(uid(f"ev{n}"), f"Meeting {n}", day(n), day(n, "10:00"),
                    location=f"Room {n}") for n in range(3)]
    tasks = [Task(uid=uid(f"task{n}"), summary=f"Task {n}", due=day(n, None),
                  priority=n + 1) for n in range(2)]
    made = write(conn, "calendar", [Create(item(e)) for e in events])
    made_tasks = write(conn, "tasks", [Create(item(t)) for t in tasks])
    assert all(m is not None and m.version for m in made + made_tasks)

    found, _, cursor = listing(conn, "calendar")
    assert by_uid(found) == {e.uid: e for e in events}
    found_tasks, _, task_cursor = listing(conn, "tasks")
    assert set(by_uid(found_tasks)) == {t.uid for t in tasks}
    for task in tasks:
        got = by_uid(found_tasks)[task.uid]
        assert (got.summary, got.due, got.priority) == (task.summary, task.due, task.priority)

    first, last = made[0], made[2]
    assert first is not None and last is not None
    [updated, _] = write(conn, "calendar", [
        Update(first.id, first.version, {"summary": "Meeting 0, moved"}, planned=first),
        Delete(last.id, last.version)])
    assert updated is not None and updated.version != first.version
    found, deleted, _ = listing(conn, "calendar", cursor)
    assert [i.record().summary for i in changed(found, made).values()] == ["Meeting 0, moved"]
    assert deleted == [last.id]
    found, _, _ = listing(conn, "calendar")
    assert {r.summary for r in by_uid(found).values()} == {"Meeting 0, moved", "Meeting 1"}
    assert found[first.id].version == updated.version

    done, gone = made_tasks
    assert done is not None and gone is not None
    write(conn, "tasks", [
        Update(done.id, done.version, {"status": "completed", "completed": day(0)},
               planned=done),
        Delete(gone.id, gone.version)])
    found_tasks, deleted, _ = listing(conn, "tasks", task_cursor)
    # A deleted item's kind is unknown, so the event deleted above is listed here too.
    assert set(deleted) == {gone.id, last.id}
    assert [i.record().status for i in changed(found_tasks, made_tasks).values()] == [
        "completed"]
    found_tasks, _, _ = listing(conn, "tasks")
    assert list(by_uid(found_tasks)) == [tasks[0].uid]


def test_contacts_round_trip(dav_server: DavServer, dav: Factory) -> None:
    conn = dav(dav_server.make_collection("addressbook"), "carddav")
    contacts = [Contact(uid="jo@example.org", full_name="Jo Acme", given_name="Jo",
                        family_name="Acme", emails=["jo@acme.example"], company="Acme Inc.",
                        title="Buyer"),
                Contact(uid="kim@example.org", full_name="Kim Lee", given_name="Kim",
                        family_name="Lee", emails=["kim@lee.example"], note="Met at the fair")]
    made = write(conn, "contacts", [Create(item(c)) for c in contacts])
    found, _, cursor = listing(conn, "contacts")
    assert by_uid(found) == {c.uid: c for c in contacts}

    jo, kim = made
    assert jo is not None and kim is not None
    [updated, _] = write(conn, "contacts", [
        Update(jo.id, jo.version, {"title": "Head of purchasing"}, planned=jo),
        Delete(kim.id, kim.version)])
    assert updated is not None and updated.version != jo.version
    found, deleted, _ = listing(conn, "contacts", cursor)
    assert deleted == [kim.id]
    assert [i.record().title for i in changed(found, made).values()] == ["Head of purchasing"]
    found, _, _ = listing(conn, "contacts")
    assert list(by_uid(found)) == ["jo@example.org"]


def test_the_default_collections_take_items(dav_server: DavServer, dav: Factory) -> None:
    assert dav_server.calendar_url and dav_server.addressbook_url
    calendar, book = dav(dav_server.calendar_url), dav(dav_server.addressbook_url, "carddav")
    name = uid("default")
    [ev] = write(calendar, "calendar", [Create(item(event(name)))])
    [card] = write(book, "contacts", [Create(item(Contact(uid=name, full_name="Dee Fault")))])
    assert ev is not None and card is not None
    assert name in by_uid(listing(calendar, "calendar")[0])
    assert name in by_uid(listing(book, "contacts")[0])
    write(calendar, "calendar", [Delete(ev.id, ev.version)])
    write(book, "contacts", [Delete(card.id, card.version)])


# --- conflicts: where the three servers and the connector part ways ------------------------
# DAViCal's 412 names the header that failed (<DAV:if-match/>, <DAV:if-none-match/>): a
# stale write. Cyrus refuses a second UID with 403 unique-scheduling-object-resource naming
# the item, SOGo with 409 and a text of its own: both are UID conflicts. Cyrus's gzipped GET
# gives a weak ETag (W/"x") where PUT, PROPFIND and REPORT give "x": one version.


def other_client_put(server: DavServer, url: str, raw: str, **headers: str) -> httpx.Response:
    media = "text/vcard" if url.endswith(".vcf") else "text/calendar"
    with server.client() as client:
        return client.put(url, content=raw.encode(),
                          headers={"Content-Type": f"{media}; charset=utf-8", **headers})


def test_creating_the_same_item_twice_finds_it(dav_server: DavServer, dav: Factory) -> None:
    # What a create sent again after a lost answer meets: its own item, under its name.
    conn = dav(dav_server.make_collection("calendar"))
    source = item(event(uid("twice"), "Twice"))
    [first] = write(conn, "calendar", [Create(source)])
    [again] = conn.apply("calendar", [Create(source)])
    if dav_server.name == "sogo":
        # SOGo ignores If-None-Match: * and overwrites the item (204), so the second
        # create "succeeds" on the same resource.
        assert again.status == "ok" and again.item is not None
        assert again.item.id == first.id and again.item.version != first.version
        return
    assert again.status == "exists" and again.item is not None
    assert again.item.id == first.id


def test_a_uid_another_client_stored_is_paired(dav_server: DavServer, dav: Factory) -> None:
    url = dav_server.make_collection("calendar")
    conn = dav(url)
    source = item(event(uid("theirs"), "Stored by another client"))
    assert other_client_put(dav_server, url + "their-name.ics", source.raw,
                            **{"If-None-Match": "*"}).is_success
    [result] = conn.apply("calendar", [Create(source)])
    if dav_server.name == "davical":
        # DAViCal does not refuse a second resource with a UID the calendar holds.
        assert result.status == "ok", result.error
        uids = [i.record().uid for i in listing(conn, "calendar")[0].values()]
        assert uids == [source.uid, source.uid]
        return
    assert result.status == "exists" and result.item is not None
    assert result.item.id.endswith("/their-name.ics")


def _changed_meanwhile(dav_server: DavServer, conn: DavConnector) -> tuple[Item, str]:
    """An event the connector made, then changed by another client; and its new ETag."""
    [made] = write(conn, "calendar", [Create(item(event(uid("stale"), "Planned")))])
    assert made is not None
    raw = made.raw.replace("SUMMARY:Planned", "SUMMARY:Changed elsewhere")
    response = other_client_put(dav_server, conn.url + made.id.rpartition("/")[2], raw,
                                **{"If-Match": made.version})
    assert response.is_success, response.text
    return made, response.headers.get("ETag", "")


def test_an_update_planned_from_an_old_version_is_changed(dav_server: DavServer,
                                                          dav: Factory) -> None:
    conn = dav(dav_server.make_collection("calendar"))
    made, _ = _changed_meanwhile(dav_server, conn)
    [result] = conn.apply("calendar", [Update(made.id, made.version, {"summary": "Mine"},
                                              planned=made)])
    assert result.status == "changed"
    assert conn.fetch("calendar", [made.id])[made.id].record().summary == "Changed elsewhere"


def test_a_delete_planned_from_an_old_version_is_changed(dav_server: DavServer,
                                                         dav: Factory) -> None:
    conn = dav(dav_server.make_collection("calendar"))
    made, _ = _changed_meanwhile(dav_server, conn)
    [result] = conn.apply("calendar", [Delete(made.id, made.version)])
    if dav_server.name == "sogo":
        # SOGo ignores If-Match on DELETE (204): the item changed elsewhere is gone.
        assert result.status == "ok" and conn.fetch("calendar", [made.id]) == {}
        return
    assert result.status == "changed"
    assert made.id in conn.fetch("calendar", [made.id])


def test_a_large_item_updated_without_its_planned_copy(dav_server: DavServer,
                                                       dav: Factory) -> None:
    # Without the planned copy the connector reads the item (GET) before writing over it.
    conn = dav(dav_server.make_collection("calendar"))
    long = event(uid("large"), "Long notes", description="Minutes. " * 400)
    [made] = write(conn, "calendar", [Create(item(long))])
    assert made is not None
    [result] = conn.apply("calendar", [Update(made.id, made.version, {"summary": "Short"})])
    assert result.status == "ok" and result.item is not None
    assert result.item.record().summary == "Short"


def test_a_uid_held_by_another_calendar_is_a_clear_failure(dav_server: DavServer,
                                                           dav: Factory) -> None:
    # Cyrus keeps a UID unique across all of the user's calendars and names the other
    # calendar's item: that item is not this collection's to pair with.
    first, second = (dav(dav_server.make_collection("calendar")) for _ in range(2))
    source = item(event(uid("shared"), "In two calendars"))
    [made] = write(first, "calendar", [Create(source)])
    assert made is not None
    [result] = second.apply("calendar", [Create(source)])
    if dav_server.name == "cyrus":
        assert result.status == "failed" and result.item is None
        assert "unique across the user's calendars" in (result.error or "")
        assert made.id in (result.error or "")
    else:
        # DAViCal and SOGo keep UIDs unique per calendar only.
        assert result.status == "ok" and result.item is not None
        assert result.item.id.startswith(second.path)


def test_tasks_without_a_start_are_listed_in_a_ranged_first_listing(
        dav_server: DavServer, dav: Factory) -> None:
    # DAViCal's time-range VTODO query matches only tasks with a DTSTART: a first listing
    # with a sync range lists every task instead, and saves a token past all of them.
    conn = dav(dav_server.make_collection("calendar"))
    tasks = [Task(uid=uid("due"), summary="Only a due date", due=day(2, None)),
             Task(uid=uid("undated"), summary="No date at all"),
             Task(uid=uid("started"), summary="With a start", start=day(1), due=day(3))]
    write(conn, "tasks", [Create(item(t)) for t in tasks])
    window = (datetime.now(UTC) - timedelta(days=30), datetime.now(UTC) + timedelta(days=60))
    changes = conn.list_changes("tasks", None, window=window)
    found = {it.record().uid for _, _, it in changes.upserts if it is not None}
    assert found == {t.uid for t in tasks}
    assert all(it is not None for _, _, it in changes.upserts)  # content came along
    again = dav(conn.url).list_changes("tasks", changes.cursor)
    assert [i for i, _, _ in again.upserts if i not in {u[0] for u in changes.upserts}] == []


def test_the_pair_is_based_on_what_the_server_stores(dav_server: DavServer,
                                                     dav: Factory) -> None:
    # SOGo rewrites what it stores (CLASS:PUBLIC, ORGANIZER;CN=, PARTSTAT, a trimmed N) and
    # still gives the PUT an ETag: the written item handed back is the server's copy, read
    # back in one multiget for the batch. The collection's cursor remembers that it does.
    conn = dav(dav_server.make_collection("calendar"))
    cursor = conn.list_changes("calendar", None).cursor
    sources = [item(event(uid(f"kept{n}"), f"Kept {n}", day(n), day(n, "10:00")))
               for n in range(3)]
    before = sent(conn)
    results = conn.apply("calendar", [Create(s) for s in sources])
    assert [r.status for r in results] == ["ok"] * 3, results
    # Three PUTs and one multiget reading them back: the first write tells.
    assert sent(conn) - before == 4
    stored = conn.fetch("calendar", [r.item.id for r in results if r.item is not None])
    for result in results:
        assert result.item is not None
        assert result.item.raw == stored[result.item.id].raw
        assert result.item.version == stored[result.item.id].version
    rewrites = dav_server.name == "sogo"
    saved = conn.cursor("calendar", cursor)
    assert saved is not None and json.loads(saved)["rewrites"] is rewrites
    # The next run's connector knows: it reads back again only where the server rewrites.
    nxt = dav(conn.url)
    nxt.list_changes("calendar", saved)
    before = sent(nxt)
    write(nxt, "calendar", [Create(item(event(uid("next"), "Next")))])
    assert sent(nxt) - before == (2 if rewrites else 1)


def test_events_with_an_organizer_are_read_back_in_one_multiget(dav_server: DavServer,
                                                                dav: Factory) -> None:
    # Cyrus answers the PUT of an event with an ORGANIZER with a Schedule-Tag and no ETag:
    # the batch's items are read back by one multiget, not one GET each (1,076 requests
    # for 570 items before). DAViCal and SOGo give ETags, and the first batch written to
    # a collection is read back anyway, to learn whether the server rewrites it.
    conn = dav(dav_server.make_collection("calendar"))
    conn.list_changes("calendar", None)
    events = [event(uid(f"org{n}"), f"Invite {n}", day(n), day(n, "10:00"),
                    organizer=Person("ana@example.org", "Ana"),
                    attendees=[Attendee("bo@example.org", "Bo")]) for n in range(5)]
    before = sent(conn)
    made = write(conn, "calendar", [Create(item(e)) for e in events])
    assert sent(conn) - before == 5 + 1
    stored = conn.fetch("calendar", [m.id for m in made if m is not None])
    assert {m.id: m.version for m in made if m is not None} == {
        i: it.version for i, it in stored.items()}
