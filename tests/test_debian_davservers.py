"""Smoke test: crmsync's CalDAV/CardDAV connector against Cyrus, DAViCal and SOGo.

The servers come from Debian's packages (see ``tests/servers/``) and start once per test
session; each test works in collections of its own. Where the connector goes wrong on one
of them, the step is marked xfail with the server's answer, for the issue that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from crmsync.connectors.base import Create, Credentials, Delete, Item, Update
from crmsync.connectors.dav import DavConnector, discover
from crmsync.model import Contact, ObjectKind, Task

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
    for start in (dav_server.principal_url, dav_server.calendar_home_url):
        calendars = {c.url: c for c in discover(start, "caldav", login)}
        assert {dav_server.calendar_url, calendar, tasks} <= calendars.keys(), start
        assert book not in calendars
        assert {"VEVENT", "VTODO"} <= calendars[calendar].components
        # SOGo ignores supported-calendar-component-set in MKCALENDAR: every calendar of
        # its takes VEVENT, VTODO and VFREEBUSY.
        assert calendars[tasks].components == (
            {"VEVENT", "VTODO", "VFREEBUSY"} if dav_server.name == "sogo" else {"VTODO"})
    for start in (dav_server.principal_url, dav_server.addressbook_home_url):
        books = {c.url: c for c in discover(start, "carddav", login)}
        assert {dav_server.addressbook_url, book} <= books.keys(), start
        assert calendar not in books and books[book].kind == "addressbook"
    assert [c.url for c in discover(calendar, "caldav", login)] == [calendar]


def test_events_and_tasks_round_trip(dav_server: DavServer, dav: Factory) -> None:
    conn = dav(dav_server.make_collection("calendar"))
    events = [event(f"ev{n}@example.org", f"Meeting {n}", day(n), day(n, "10:00"),
                    location=f"Room {n}") for n in range(3)]
    tasks = [Task(uid=f"task{n}@example.org", summary=f"Task {n}", due=day(n, None),
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
    [ev] = write(calendar, "calendar", [Create(item(event("default@example.org")))])
    [card] = write(book, "contacts", [Create(item(Contact(uid="default@example.org",
                                                            full_name="Dee Fault")))])
    assert ev is not None and card is not None
    assert "default@example.org" in by_uid(listing(calendar, "calendar")[0])
    assert "default@example.org" in by_uid(listing(book, "contacts")[0])
    write(calendar, "calendar", [Delete(ev.id, ev.version)])
    write(book, "contacts", [Delete(card.id, card.version)])
