"""End to end through the CLI: a vdir CRM <-> real CalDAV/CardDAV servers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from crmsync import formats
from crmsync.connectors.dav import MAX_TRIES
from crmsync.model import Contact, Event, Occurrence, Person, Task, moment

from conftest import Sides, day, event
from davservers import ALL_VARIANTS, DavServer, DavServerPool
from test_cli import crmsync

# The variants every test here runs against (see davservers.py).
VARIANTS_HERE = ALL_VARIANTS


@pytest.fixture(scope="session", params=VARIANTS_HERE, ids=list(VARIANTS_HERE))
def dav_server(request: pytest.FixtureRequest, dav_server_pool: DavServerPool) -> DavServer:
    """Every variant, Cyrus, DAViCal and SOGo (DEBIAN_VARIANTS) included: each skips with
    the reason where its packages are missing (a failure under CRMSYNC_REQUIRE_SERVICES=1).
    """
    return dav_server_pool.get(request.param)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_vdir_to_caldav_and_carddav_and_back(dav_server, home: Path, sides: Sides):
    calendar = dav_server.make_collection("calendar")
    book = dav_server.make_collection("addressbook")
    sides.put("crm", event("ev1@x", "Pricing call", rrule="FREQ=WEEKLY;COUNT=3",
                           overrides={day(7): Occurrence(
                               summary="moved", start=day(7, "11:00"),
                               end=day(7, "12:00"))}))
    sides.put("crm", event("ev2@x", "All day", start=day(2, None), end=day(3, None)))
    sides.put("crm", Task(uid="t1@x", summary="Send quote", due=day(1, None)))
    sides.put("crm", Contact(uid="c1@x", full_name="Jo Acme", emails=["jo@acme.example"]))
    crm, _ = sides.endpoints()
    crmsync(home, "profile", "add", "w", "--crm", crm,
            "--groupware", f"caldav:{calendar}",
            "--groupware", f"contacts=carddav:{book}",
            "--objects", "calendar,tasks,contacts")
    if dav_server.username:
        crmsync(home, "login", "w", "--username", dav_server.username, "--password-stdin",
                input=dav_server.password + "\n")
    report = json.loads(crmsync(home, "sync", "w", "--yes", "--json").stdout)
    assert report["status"] == "ok", report
    counts = {k: v["counts"] for k, v in report["objects"].items()}
    assert counts == {"calendar": {"create:groupware": 2}, "tasks": {"create:groupware": 1},
                      "contacts": {"create:groupware": 1}}
    assert report["requests"]["groupware"] > 0

    # An edit on the server comes back to the CRM folder.
    with dav_server.client() as client:
        listing = client.request(
            "PROPFIND", calendar, headers={"Depth": "1", "Content-Type": "application/xml"},
            content=b'<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>')
        href = next(h for h in _hrefs(listing.text) if unquote(h).endswith("ev2@x.ics"))
        url = str(httpx.URL(calendar).join(href))
        body = client.get(url).text.replace("SUMMARY:All day", "SUMMARY:All day (moved)")
        assert client.put(url, content=body.encode(),
                          headers={"Content-Type": "text/calendar"}).status_code in (201, 204)
    report = json.loads(crmsync(home, "sync", "w", "--yes", "--json").stdout)
    assert report["objects"]["calendar"]["counts"] == {"update:crm": 1}
    assert sides.records("crm", "calendar")["ev2@x"].summary == "All day (moved)"
    # The recurring series survived the round trip through the server.
    assert sides.records("crm", "calendar")["ev1@x"].overrides[day(7)] \
        .summary == "moved"

    again = json.loads(crmsync(home, "sync", "w", "--yes", "--json").stdout)
    assert all(not v["counts"] for v in again["objects"].values())


@pytest.mark.parametrize("dav_server", ["radicale-auth", "xandikos-auth"], indirect=True)
def test_wrong_password_is_a_connection_failure_with_exit_5(dav_server, home: Path,
                                                           sides: Sides):
    calendar = dav_server.make_collection("calendar")
    crm, _ = sides.endpoints()
    crmsync(home, "profile", "add", "w", "--crm", crm, "--groupware", f"caldav:{calendar}",
            "--objects", "calendar")
    crmsync(home, "login", "w", "--username", dav_server.username, "--password-stdin",
            input="wrong\n")
    out = crmsync(home, "sync", "w", "--yes", check=5)
    assert "credentials" in out.stderr and "wrong" not in out.stderr


def _hrefs(xml: str) -> list[str]:
    import re

    return re.findall(r"<(?:\w+:)?href>([^<]+)</(?:\w+:)?href>", xml)


def test_collections_lists_what_discovery_finds(dav_server, home: Path, monkeypatch):
    calendar = dav_server.make_collection("calendar")
    book = dav_server.make_collection("addressbook")
    args = ["--username", dav_server.username] if dav_server.username else []
    if dav_server.password:
        monkeypatch.setenv("CRMSYNC_GROUPWARE_PASSWORD", dav_server.password)
    found = json.loads(crmsync(home, "collections", f"caldav:{dav_server.principal_url}",
                               *args, "--json").stdout)
    assert f"caldav:{calendar}" in {c["endpoint"] for c in found}
    assert all(c["kind"] == "calendar" for c in found)
    books = json.loads(crmsync(home, "collections", f"carddav:{dav_server.principal_url}",
                               *args, "--json").stdout)
    assert f"carddav:{book}" in {c["endpoint"] for c in books}


@pytest.mark.parametrize("dav_server", ["sogo"], indirect=True)
def test_collections_at_a_login_page_says_so(dav_server, home: Path, monkeypatch):
    # SOGo's root answers PROPFIND with its web login page (200 text/html).
    root = str(httpx.URL(dav_server.base_url).join("/SOGo/"))
    monkeypatch.setenv("CRMSYNC_GROUPWARE_PASSWORD", dav_server.password)
    out = crmsync(home, "collections", f"caldav:{root}", "--username", dav_server.username,
                  check=2)
    assert "answered with an HTML page (a login page?), not a DAV collection" in out.stderr
    assert f"try {root}dav/{dav_server.username}/" in out.stderr
    # The suggested URL is the right one.
    found = json.loads(crmsync(home, "collections", f"caldav:{root}dav/"
                               f"{dav_server.username}/", "--username", dav_server.username,
                               "--json").stdout)
    assert f"caldav:{dav_server.calendar_url}" in {c["endpoint"] for c in found}


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_collections_where_there_are_none_says_so(dav_server, home: Path):
    out = crmsync(home, "collections", f"caldav:{dav_server.base_url}nobody-here/", check=2)
    assert "no calendar was found at" in out.stderr and out.stdout == ""


def test_a_first_sync_downloads_only_the_sync_range(dav_server, home: Path, sides: Sides):
    calendar = dav_server.make_collection("calendar")
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    far = soon + timedelta(days=3 * 365)
    with dav_server.client() as client:
        for uid, start in (("soon@x", soon), ("far@x", far)):
            body = formats.render(formats.ICALENDAR, "calendar", event(
                uid, start=moment(start), end=moment(start + timedelta(hours=1))))
            assert client.put(f"{calendar}{uid}.ics", content=body.encode(),
                              headers={"Content-Type": "text/calendar"}).is_success
    crm, _ = sides.endpoints()
    crmsync(home, "profile", "add", "r", "--crm", crm, "--groupware", f"caldav:{calendar}",
            "--objects", "calendar")
    if dav_server.username:
        crmsync(home, "login", "r", "--username", dav_server.username, "--password-stdin",
                input=dav_server.password + "\n")
    report = json.loads(crmsync(home, "sync", "r", "--yes", "--json").stdout)
    assert report["objects"]["calendar"]["counts"] == {"create:crm": 1}
    assert list(sides.records("crm", "calendar")) == ["soon@x"]
    # The probe and one calendar-query carrying the content; nothing read item by item.
    assert report["requests"]["groupware"] == 2


def _warnings(report: dict) -> list[str]:
    return [i["reason"] for o in report["objects"].values() for i in o["items"]
            if i["outcome"] == "warning"]


@pytest.mark.parametrize("dav_server", ["xandikos"], indirect=True)
def test_an_event_without_dtstart_is_reported_and_never_deleted_from_the_crm(
        dav_server, fault_proxy, tmp_path: Path, sides: Sides):
    # Xandikos takes an event without DTSTART, and no time-range query ever matches it.
    calendar = dav_server.make_collection("calendar")
    sides.put("crm", Event(uid="nostart@x", summary="Sometime"))
    sides.put("crm", event("dated@x", "Dated", start=moment(datetime.now(UTC)),
                           end=moment(datetime.now(UTC) + timedelta(hours=1))))
    crm, _ = sides.endpoints()

    homes: set[Path] = set()

    def sync(home: Path, url: str) -> dict:
        if home not in homes:
            crmsync(home, "profile", "add", "p", "--crm", crm, "--groupware", f"caldav:{url}",
                    "--objects", "calendar")
            homes.add(home)
        out = crmsync(home, "sync", "p", "--yes", "--json")
        return json.loads(out.stdout)

    first = sync(tmp_path / "one", calendar)
    assert first["status"] == "ok"
    assert first["objects"]["calendar"]["counts"] == {"create:groupware": 2}
    # Reported per item as it is written: the server will not list it in a time range.
    [written] = _warnings(first)
    assert "nostart@x" in written and "DTSTART" in written

    # A first run of a new profile asks for no time range: the item is found and paired,
    # neither created again nor deleted.
    second = sync(tmp_path / "two", calendar)
    assert second["status"] == "ok", second
    assert second["objects"]["calendar"]["counts"] == {"link": 2}
    assert _warnings(second) == []

    # The same when the server fails the calendar-query (HTTP 500, every try): the run
    # lists everything another way, says so, and completes.
    fault_proxy.fail(500, times=MAX_TRIES, methods={"REPORT"}, body=b"calendar-query",
                     retry_after=0)
    third = sync(tmp_path / "three", fault_proxy.translate(calendar))
    assert third["status"] == "ok", third
    assert third["objects"]["calendar"]["counts"] == {"link": 2}
    assert fault_proxy.pending_faults == 0
    [fallback] = _warnings(third)
    assert "calendar-query" in fallback and "HTTP 500" in fallback

    # Runs on: the paired event is never taken for deleted, so never deleted in the CRM.
    for home in ("one", "two", "three"):
        again = sync(tmp_path / home, calendar if home != "three"
                     else fault_proxy.translate(calendar))
        assert again["status"] == "ok" and not again["objects"]["calendar"]["counts"], again
    assert sorted(sides.records("crm", "calendar")) == ["dated@x", "nostart@x"]


def test_what_the_server_rewrites_never_comes_back_as_a_change(dav_server, home: Path,
                                                               sides: Sides):
    # SOGo names the organizer from its directory ("Ana Test") and stores a floating time
    # as UTC, yet answers the PUT with an ETag. The pair's base is what the server stores
    # (read back), so a later edit elsewhere brings that edit to the CRM, and nothing else.
    calendar = dav_server.make_collection("calendar")
    tag = uuid.uuid4().hex[:8]
    sides.put("crm", event(f"rw-{tag}@x", "Review", start="2026-12-04T15:00:00",
                           end="2026-12-04T16:00:00",
                           organizer=Person("ana@example.org", "Ana")))
    crm, _ = sides.endpoints()
    crmsync(home, "profile", "add", "w", "--crm", crm, "--groupware", f"caldav:{calendar}",
            "--objects", "calendar")
    if dav_server.username:
        crmsync(home, "login", "w", "--username", dav_server.username, "--password-stdin",
                input=dav_server.password + "\n")
    first = json.loads(crmsync(home, "sync", "w", "--yes", "--json").stdout)
    assert first["objects"]["calendar"]["counts"] == {"create:groupware": 1}
    with dav_server.client() as client:
        url = f"{calendar}rw-{tag}@x.ics"
        body = client.get(url).text.replace("SUMMARY:Review", "SUMMARY:Review (moved)")
        assert client.put(url, content=body.encode(),
                          headers={"Content-Type": "text/calendar"}).is_success
    second = json.loads(crmsync(home, "sync", "w", "--yes", "--json").stdout)
    assert second["objects"]["calendar"]["counts"] == {"update:crm": 1}
    [record] = sides.records("crm", "calendar").values()
    assert record.summary == "Review (moved)"
    assert (record.organizer, record.start) == (Person("ana@example.org", "Ana"),
                                                "2026-12-04T15:00:00")


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_a_card_put_back_after_a_kept_deletion_is_paired_again(dav_server, home: Path,
                                                                 sides: Sides):
    """A card deleted on the server, kept in the CRM by "do not delete in CRM" (the
    contacts default), then put back with its UID (a restore, another client): every run
    after that failed with "an item with the same UID already exists there"."""
    book = dav_server.make_collection("addressbook")
    uid = f"back-{uuid.uuid4().hex[:8]}@x"
    sides.put("crm", Contact(uid=uid, full_name="Jo Back", emails=["jo@back.example"]))
    crm, _ = sides.endpoints()
    crmsync(home, "profile", "add", "w", "--crm", crm,
            "--groupware", f"contacts=carddav:{book}", "--objects", "contacts")

    def sync() -> dict:
        return json.loads(crmsync(home, "sync", "w", "--yes", "--json", check=None).stdout)

    assert sync()["objects"]["contacts"]["counts"] == {"create:groupware": 1}
    with dav_server.client() as client:
        listing = client.request(
            "PROPFIND", book, headers={"Depth": "1", "Content-Type": "application/xml"},
            content=b'<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>')
        href = next(h for h in _hrefs(listing.text) if h.endswith(".vcf"))
        url = str(httpx.URL(book).join(href))
        card = client.get(url).text
        assert client.delete(url).status_code in (200, 204)
        kept = sync()
        assert kept["status"] == "ok", kept
        assert uid in sides.records("crm", "contacts")  # kept: "do not delete in CRM"
        # Put back by another client under a name of its own.
        assert client.put(str(httpx.URL(book).join("restored.vcf")), content=card.encode(),
                          headers={"Content-Type": "text/vcard"}).status_code in (201, 204)
    for _ in range(2):
        report = sync()
        assert report["status"] == "ok", report["objects"]
        assert not any(k.startswith(("create", "delete")) for k in
                       report["objects"]["contacts"]["counts"]), report
    assert list(sides.records("crm", "contacts")) == [uid]
