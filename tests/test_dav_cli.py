"""End to end through the CLI: a vdir CRM <-> real CalDAV/CardDAV servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from crmsync import formats
from crmsync.model import Contact, Occurrence, Task, moment

from conftest import Sides, day, event
from test_cli import crmsync


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
