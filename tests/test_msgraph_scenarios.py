"""End to end through the command line: the Graph sandbox (Outlook) <-> the Salesforce sandbox.

Each test makes a crmsync home with profiles made by ``crmsync profile add`` (groupware
``msgraph:me?graph_url=...``), the credentials stored as ``crmsync login`` leaves them
(encrypted), and runs ``crmsync sync NAME --yes``. Outlook's side is changed through Graph
as its user would; Salesforce's through its REST API. No test may make Exchange send mail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from typer.testing import CliRunner

from crmsync import formats
from crmsync.cli import app
from crmsync.connectors.base import Credentials
from crmsync.errors import CrmsyncError
from crmsync.graphsandbox.server import GraphSandbox
from crmsync.model import Event
from crmsync.sandbox.server import Sandbox
from graphsandbox import GraphUser, delegated, gcontrol, sent_mail
from scenario import sf_time

from sfsandbox import API, control


class World:
    """One test's home, its profiles, Outlook (``outlook``) and the CRM (``crm``)."""

    def __init__(self, home: Path, graph: GraphSandbox, sandbox: Sandbox,
                 outlook: GraphUser) -> None:
        self.home, self.graph, self.sandbox, self.outlook = home, graph, sandbox, outlook
        self.crm = sandbox.client(timeout=10)

    def close(self) -> None:
        self.crm.close()

    def cli(self, *args: str, check: int | None = 0) -> str:
        result = CliRunner().invoke(app, ["--home", str(self.home), *args])
        code = result.exit_code
        if isinstance(result.exception, CrmsyncError):
            code = result.exception.exit_code
        elif result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if check is not None:
            assert code == check, result.stdout + result.stderr + repr(result.exception)
        return result.stdout

    def profile(self, name: str, objects: str = "calendar,contacts,tasks",
                **settings: str) -> None:
        query = "&".join(f"{k}={quote(v)}" for k, v in {"graph_url": self.graph.url,
                                                        **settings}.items())
        self.cli("profile", "add", name, "--crm", f"salesforce:{self.sandbox.url}",
                 "--groupware", f"msgraph:me?{query}", "--objects", objects)
        from crmsync.config import Paths
        from crmsync.secrets import SecretStore, save_credentials

        store = SecretStore(Paths.resolve(self.home))
        save_credentials(store, name, "crm", Credentials(
            client_id=self.sandbox.client_id, client_secret=self.sandbox.client_secret,
            refresh_token=self.sandbox.refresh_token, ca_bundle=str(self.sandbox.ca_path)))
        save_credentials(store, name, "groupware", delegated(self.graph))

    def sync(self, name: str, *objects: str) -> dict[str, Any]:
        args = [a for o in objects for a in ("--object", o)]
        return json.loads(self.cli("sync", name, *args, "--yes", "--json"))

    def crm_query(self, soql: str) -> list[dict[str, Any]]:
        answer = self.crm.get(f"{API}/query", params={"q": soql})
        answer.raise_for_status()
        return answer.json()["records"]

    def crm_insert(self, obj: str, **fields: Any) -> str:
        answer = self.crm.post(f"{API}/sobjects/{obj}", json=fields)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def crm_update(self, obj: str, record_id: str, **fields: Any) -> None:
        answer = self.crm.patch(f"{API}/sobjects/{obj}/{record_id}", json=fields)
        assert answer.status_code == 204, answer.text

    def events(self, calendar: str = "calendar") -> dict[str, Event]:
        """Subject -> record of every event (series whole) in an Outlook calendar."""
        from crmsync.connectors.msgraph import GraphConnector, Settings

        connector = GraphConnector("me", credentials=delegated(self.graph), settings=Settings(
            graph_url=self.graph.url, calendar=None if calendar == "calendar" else calendar))
        try:
            listing = connector.list_changes("calendar", None)
            records = [u[2].record() for u in listing.upserts if u[2] is not None]
        finally:
            connector.close()
        return {r.summary: r for r in records}  # type: ignore[attr-defined, misc]


@pytest.fixture
def world(graph: GraphSandbox, sandbox: Sandbox, outlook: GraphUser,
          tmp_path: Path) -> Iterator[World]:
    control(sandbox, "reset", records=True)
    w = World(tmp_path / "home", graph, sandbox, outlook)
    yield w
    w.close()
    assert sent_mail(graph) == [], "crmsync made Exchange send mail"


def writes(report: dict[str, Any]) -> dict[str, int]:
    """The creates, updates and deletes a run's report counts, by action and side."""
    return {k: v for o in report["objects"].values() for k, v in o["counts"].items()
            if v and k.split(":")[0] in ("create", "update", "delete")}


def at(days: int, hour: int = 9) -> datetime:
    return datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0) \
        + timedelta(days=days)


def local(when: datetime) -> str:
    """A UTC datetime as Berlin wall-clock time, as Outlook in Berlin writes it."""
    from zoneinfo import ZoneInfo

    return when.astimezone(ZoneInfo("Europe/Berlin")).replace(tzinfo=None).isoformat()


def berlin(start: datetime, end: datetime, subject: str, **extra: Any) -> dict[str, Any]:
    zone = "W. Europe Standard Time"
    return {"subject": subject, "start": {"dateTime": local(start), "timeZone": zone},
            "end": {"dateTime": local(end), "timeZone": zone}, **extra}


def test_calendar_both_ways(world: World) -> None:
    world.profile("p", "calendar")
    made = world.outlook("POST", "/me/events", berlin(
        at(3), at(3, 10), "Pricing call", body={"contentType": "html",
                                               "content": "<p>Bring the <b>deck</b></p>"},
        categories=["Customer"], location={"displayName": "Room 4"}))
    world.crm_insert("Event", Subject="From the CRM", StartDateTime=sf_time(at(4)),
                     EndDateTime=sf_time(at(4, 10)), Description="Call notes")
    report = world.sync("p")
    assert report["status"] == "ok", report
    assert writes(report) == {"create:crm": 1, "create:groupware": 1}
    crm = {r["Subject"]: r for r in world.crm_query(
        "SELECT Subject, Location, Description, StartDateTime FROM Event")}
    assert set(crm) == {"Pricing call", "From the CRM"}
    assert crm["Pricing call"]["Location"] == "Room 4"
    assert crm["Pricing call"]["Description"] == "Bring the deck"
    outlook = world.events()
    assert outlook["From the CRM"].start == at(4).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert outlook["From the CRM"].description == "Call notes"

    # A second run finds nothing to do (nothing read back differs from what was written),
    # and verify finds both pairs in agreement.
    again = world.sync("p")
    assert again["status"] == "ok"
    assert writes(again) == {}, again
    verified = json.loads(world.cli("verify", "p", "--json"))
    assert verified["objects"]["calendar"]["agree"] == 2

    world.outlook("PATCH", f"/me/events/{made['id']}", {"subject": "Pricing call (v2)"})
    world.sync("p")
    assert "Pricing call (v2)" in {r["Subject"] for r in world.crm_query(
        "SELECT Subject FROM Event")}
    world.outlook("DELETE", f"/me/events/{made['id']}")
    world.sync("p")
    assert [r["Subject"] for r in world.crm_query("SELECT Subject FROM Event")] == [
        "From the CRM"]


def test_contacts_both_ways(world: World) -> None:
    world.profile("p", "contacts")
    made = world.outlook("POST", "/me/contacts", {
        "givenName": "Ana", "surname": "Lima", "displayName": "Ana Lima",
        "emailAddresses": [{"address": "ana@example.com", "name": "Ana Lima"}],
        "businessPhones": ["+1 555 0100"], "companyName": "Acme", "jobTitle": "Buyer"})
    world.crm_insert("Contact", FirstName="Bo", LastName="Berg", Email="bo@example.com",
                     Title="CFO")
    report = world.sync("p", "contacts")
    assert report["status"] == "ok", report
    crm = {r["LastName"]: r for r in world.crm_query(
        "SELECT FirstName, LastName, Email, Phone, Title FROM Contact")}
    assert crm["Lima"]["Email"] == "ana@example.com" and crm["Lima"]["Phone"] == "+1 555 0100"
    contacts = world.outlook("GET", "/me/contacts/delta")["value"]
    berg = [c for c in contacts if c.get("surname") == "Berg"]
    assert len(berg) == 1 and berg[0]["jobTitle"] == "CFO"
    assert berg[0]["emailAddresses"][0]["address"] == "bo@example.com"

    world.outlook("PATCH", f"/me/contacts/{made['id']}", {"jobTitle": "Head of buying"})
    world.sync("p", "contacts")
    assert {r["Title"] for r in world.crm_query("SELECT Title FROM Contact")} == {
        "Head of buying", "CFO"}


def test_tasks_both_ways(world: World) -> None:
    world.profile("p", "tasks")
    lists = world.outlook("GET", "/me/todo/lists")["value"]
    default = next(x["id"] for x in lists if x["wellknownListName"] == "defaultList")
    due = (date.today() + timedelta(days=5)).isoformat()
    made = world.outlook("POST", f"/me/todo/lists/{default}/tasks", {
        "title": "Send the quote", "importance": "high",
        "dueDateTime": {"dateTime": f"{due}T00:00:00.0000000", "timeZone": "UTC"}})
    world.crm_insert("Task", Subject="Call back", ActivityDate=due, Status="Not Started",
                     Priority="Normal")
    report = world.sync("p", "tasks")
    assert report["status"] == "ok", report
    crm = {r["Subject"]: r for r in world.crm_query(
        "SELECT Subject, ActivityDate, Priority, Status FROM Task")}
    assert crm["Send the quote"]["ActivityDate"] == due
    assert crm["Send the quote"]["Priority"] == "High"
    tasks = world.outlook("GET", f"/me/todo/lists/{default}/tasks/delta")["value"]
    assert {t["title"] for t in tasks} == {"Send the quote", "Call back"}

    world.outlook("PATCH", f"/me/todo/lists/{default}/tasks/{made['id']}",
                  {"status": "completed"})
    world.sync("p", "tasks")
    assert world.crm_query("SELECT Status FROM Task WHERE Subject = 'Send the quote'")[0][
        "Status"] == "Completed"


def test_an_outlook_series_with_a_moved_and_a_cancelled_occurrence_round_trips(
        world: World) -> None:
    """Outlook -> Salesforce -> another Outlook calendar: the same series comes out."""
    world.profile("p", "calendar")
    first = at(7)
    series = world.outlook("POST", "/me/events", berlin(
        first, first + timedelta(hours=1), "Weekly pipeline review", recurrence={
            "pattern": {"type": "weekly", "interval": 1,
                        "daysOfWeek": [first.strftime("%A").lower()]},
            "range": {"type": "numbered", "numberOfOccurrences": 5,
                      "startDate": first.date().isoformat()}}))
    window = f"startDateTime={first:%Y-%m-%dT%H:%M:%SZ}&endDateTime={at(40):%Y-%m-%dT%H:%M:%SZ}"
    instances = world.outlook("GET", f"/me/events/{series['id']}/instances?{window}")["value"]
    assert len(instances) == 5
    moved_to = first + timedelta(days=8, hours=5)
    world.outlook("PATCH", f"/me/events/{instances[1]['id']}", berlin(
        moved_to, moved_to + timedelta(hours=1), "Pipeline review (moved)"))
    world.outlook("DELETE", f"/me/events/{instances[3]['id']}")
    original = world.events()["Weekly pipeline review"]
    assert len(original.exdates) == 1 and len(original.overrides) == 1

    report = world.sync("p")
    assert report["status"] == "ok", report
    crm = world.crm_query("SELECT Id, Subject, StartDateTime FROM Event")
    # Five slots, one cancelled: four occurrences (the series' own record shares a start).
    assert len({r["StartDateTime"] for r in crm}) == 4
    assert "Pipeline review (moved)" in {r["Subject"] for r in crm}

    # Stable: the next run has nothing to write either way.
    again = world.sync("p")
    assert writes(again) == {}, again

    # The CRM's copy goes out again, into the Work calendar, through a second profile.
    world.profile("q", "calendar", calendar="Work")
    out = world.sync("q")
    assert out["status"] == "ok", out
    copy = world.events("Work")["Weekly pipeline review"]
    for name in ("summary", "start", "end", "rrule", "exdates"):
        assert getattr(copy, name) == getattr(original, name), name
    assert {k: (o.summary, o.start, o.end) for k, o in copy.overrides.items()} == {
        k: (o.summary, o.start, o.end) for k, o in original.overrides.items()}

    # A rename in the CRM flows back to Outlook; the moved and cancelled occurrences stay.
    head = next(r for r in crm if r["Subject"] == "Weekly pipeline review")
    series_id = world.crm_query(f"SELECT ActivityRecurrence2Id FROM Event WHERE Id = "
                                f"'{head['Id']}'")[0]["ActivityRecurrence2Id"]
    for record in world.crm_query(f"SELECT Id, Subject FROM Event WHERE "
                                  f"ActivityRecurrence2Id = '{series_id}'"):
        if record["Subject"] == "Weekly pipeline review":
            world.crm_update("Event", record["Id"], Subject="Pipeline review")
    world.sync("p")
    renamed = world.events()["Pipeline review"]
    assert renamed.exdates == original.exdates
    assert [o.summary for o in renamed.overrides.values()] == ["Pipeline review (moved)"]


def test_outlook_item_formats_are_registered() -> None:
    raw = formats.render(formats.MSGRAPH, "calendar", Event(summary="x", start="2026-01-01"))
    assert formats.parse(formats.MSGRAPH, "calendar", raw).summary == "x"  # type: ignore[attr-defined]
    assert httpx is not None


def test_a_rotated_refresh_token_is_kept_for_the_next_run(world: World) -> None:
    """Microsoft may hand out a new refresh token with each access token and retire the
    one redeemed; every run must then use the newest, stored encrypted by the run before."""
    from crmsync.config import Paths
    from crmsync.secrets import credentials_for

    world.profile("p", "calendar")
    gcontrol(world.graph, "single-use-refresh", on=True)
    try:
        paths = Paths.resolve(world.home)
        first = credentials_for(paths, "p", "groupware")
        assert first is not None
        for _ in range(3):
            gcontrol(world.graph, "expire-tokens")  # each run must redeem a refresh token
            assert world.sync("p")["status"] == "ok"
        kept = credentials_for(paths, "p", "groupware")
        assert kept is not None and kept.refresh_token != first.refresh_token
        # ... stored encrypted, as the first was.
        assert kept.refresh_token not in (paths.data_dir / "secrets.json").read_text()
    finally:
        gcontrol(world.graph, "single-use-refresh", on=False)


# --- issue 16: a lost state store between Salesforce and Outlook ---------------------------


def _lose_store(world: World, name: str, objects: str) -> None:
    """Delete the state store (and SQLite's side files); make the profile again."""
    import gc

    from crmsync.config import Paths

    gc.collect()  # close what in-process commands left open
    for path in Paths.resolve(world.home).data_dir.glob("state.db*"):
        path.unlink()
    world.profile(name, objects)


def _dry_run(world: World, name: str) -> dict[str, Any]:
    return json.loads(world.cli("sync", name, "--dry-run", "--json"))["objects"]["calendar"]


def _planned_writes(plan: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in plan["counts"].items()
            if k.split(":")[0] in ("create", "update", "delete")}


LONG_BODY = "".join(f"Line {i:04d} of the meeting notes, kept in full in Outlook.\n"
                    for i in range(800))[:39_999] + "."
LONG_PLACE = ("Acme Tower, Conference Level, Room 12 (ask at reception, badge needed) "
              * 6)[:400]


def test_a_lost_store_plans_no_writes_for_cut_bodies_and_locations(world: World) -> None:
    """Salesforce keeps 32,000 characters of a body and 255 of a location: after the state
    store is lost, its cut copies are still the same items as Outlook's full ones."""
    assert len(LONG_BODY) == 40_000 and len(LONG_PLACE) == 400
    world.profile("p", "calendar")
    world.outlook("POST", "/me/events", berlin(
        at(3), at(3, 10), "Long notes", body={"contentType": "text", "content": LONG_BODY},
        location={"displayName": LONG_PLACE}))
    world.outlook("POST", "/me/events", berlin(at(4), at(4, 10), "Short notes",
                                               body={"contentType": "text", "content": "Hi"}))
    world.crm_insert("Event", Subject="From the CRM", StartDateTime=sf_time(at(5)),
                     EndDateTime=sf_time(at(5, 10)), Description="CRM notes",
                     Location="CRM room")
    report = world.sync("p")
    assert writes(report) == {"create:crm": 2, "create:groupware": 1}, report
    crm = {r["Subject"]: r for r in world.crm_query(
        "SELECT Subject, Location, Description FROM Event")}
    assert len(crm["Long notes"]["Description"]) == 32_000
    assert crm["Long notes"]["Location"] == LONG_PLACE[:255]
    assert writes(world.sync("p")) == {}

    _lose_store(world, "p", "calendar")
    plan = _dry_run(world, "p")
    assert _planned_writes(plan) == {}, plan
    assert plan["counts"] == {"link": 3}, plan
    report = world.sync("p")
    assert report["status"] == "ok" and writes(report) == {}, report
    # Nothing was cut in Outlook, nothing duplicated anywhere; the pairs are known again.
    events = world.events()
    assert sorted(events) == ["From the CRM", "Long notes", "Short notes"]
    assert events["Long notes"].description == LONG_BODY
    assert events["Long notes"].location == LONG_PLACE
    assert len(world.crm_query("SELECT Id FROM Event")) == 3
    assert _dry_run(world, "p")["counts"] == {}
    world.cli("verify", "p")


def test_a_pair_that_diverged_while_the_store_was_lost_is_not_created_again(
        world: World) -> None:
    world.profile("p", "calendar")
    world.outlook("POST", "/me/events", berlin(at(3), at(3, 10), "Stays the same"))
    world.outlook("POST", "/me/events", berlin(at(6), at(6, 10), "Pricing call"))
    assert writes(world.sync("p")) == {"create:crm": 2}
    _lose_store(world, "p", "calendar")
    renamed = next(r["Id"] for r in world.crm_query("SELECT Id, Subject FROM Event")
                   if r["Subject"] == "Pricing call")
    world.crm_update("Event", renamed, Subject="Pricing call (moved to Q3)")

    plan = _dry_run(world, "p")
    assert _planned_writes(plan) == {}, plan
    assert plan["counts"] == {"conflict": 1, "link": 1}, plan
    out = json.loads(world.cli("sync", "p", "--yes", "--json", check=3))
    assert writes(out) == {}, out
    assert sorted(world.events()) == ["Pricing call", "Stays the same"]
    assert len(world.crm_query("SELECT Id FROM Event")) == 2
    # The question is asked again until decided; verify counts the two as unpaired.
    assert _dry_run(world, "p")["counts"] == {"conflict": 1}
    found = json.loads(world.cli("verify", "p", "--json"))["objects"]["calendar"]
    assert (found["pairs"], found["agree"], found["unpaired"]) == (
        1, 1, {"crm": 1, "groupware": 1})
