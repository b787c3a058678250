"""Issue 9 part 4: a lost (or old) state store. Items re-pair by the CRM Id a groupware
item keeps (X-CRMSYNC-CRM-ID), else by content; nothing is duplicated.

Radicale + the Salesforce sandbox, driven as in tests/scenario.py.
"""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmsync.config import Paths
from crmsync.model import Attendee, Contact, Event, Task, moment
from scenario import Scenario, sf_time
from test_planfile import add_profile

from conftest import Sides, day, event
from test_cli import crmsync

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)


def _store(scn: Scenario) -> Path:
    return Paths.resolve(scn.home).data_dir / "state.db"


def _lose(scn: Scenario, old: Path | None = None) -> None:
    """Delete the store (and SQLite's side files), then make the profile again as its
    user would; or put ``old`` in its place."""
    gc.collect()  # as when no crmsync runs: close what in-process commands left open
    db = _store(scn)
    for path in db.parent.glob("state.db*"):
        path.unlink()
    if old is not None:
        shutil.copy(old, db)
    else:
        scn.cli(*scn.profile_args, check=0)


def _gw_event(scn: Scenario, uid: str, summary: str, hours: int) -> None:
    start = T0 + timedelta(hours=hours)
    scn.put(Event(uid=uid, summary=summary, start=moment(start),
                  end=moment(start + timedelta(hours=1))))


def _crm_event(scn: Scenario, subject: str, hours: int) -> str:
    start = T0 + timedelta(hours=hours)
    return scn.crm_insert("Event", Subject=subject, StartDateTime=sf_time(start),
                          EndDateTime=sf_time(start + timedelta(hours=1)))


def _crm_events(scn: Scenario) -> dict[str, str]:
    return {r["Id"]: r["Subject"] for r in scn.crm_query("SELECT Id, Subject FROM Event")}


def test_lost_store_repairs_by_kept_id_and_content(scn: Scenario):
    _gw_event(scn, "a@t", "Calendar A", 0)
    _gw_event(scn, "b@t", "Calendar B", 2)
    moved = _crm_event(scn, "CRM C", 4)
    retitled = _crm_event(scn, "CRM D", 6)
    plans, report = scn.sync()
    assert plans[0].counts() == {"create:crm": 2, "create:groupware": 2}
    # The groupware copies of CRM events keep the CRM Id.
    kept = {r.summary: r.crm_id for r in scn.records().values()}
    assert kept["CRM C"] == moved and kept["CRM D"] == retitled
    assert "X-CRMSYNC-CRM-ID:" + moved in scn.raw(
        next(u for u, r in scn.records().items() if r.summary == "CRM C"))

    # An item created in the CRM from the calendar gets the CRM Id at its next update.
    a_crm = next(i for i, subject in _crm_events(scn).items() if subject == "Calendar A")
    assert scn.records()["a@t"].crm_id == ""
    scn.crm_update("Event", a_crm, Subject="Calendar A!")
    plans, _ = scn.sync()
    assert plans[0].counts() == {"update:groupware": 1}
    assert scn.records()["a@t"].crm_id == a_crm
    assert scn.records()["a@t"].summary == "Calendar A!"

    _lose(scn)
    start = T0 + timedelta(hours=10)
    scn.crm_update("Event", moved, StartDateTime=sf_time(start),
                   EndDateTime=sf_time(start + timedelta(hours=1)))
    uid_d = next(u for u, r in scn.records().items() if r.summary == "CRM D")
    scn.edit(uid_d, summary="Retitled D")

    plans, report = scn.sync()
    counts = plans[0].counts()
    assert report.status == "ok"
    assert not any(code.startswith("create") for code in counts), counts
    # Without the lost bases, each of the two changed items differs between the sides and
    # the conflict rule ("newest", by the two servers' clocks) picks its version: one
    # update each, on whichever side lost; the two unchanged ones are linked.
    assert counts.get("link") == 2 and sum(counts.values()) == 4, counts
    crm = _crm_events(scn)
    records = scn.records()
    assert len(crm) == len(records) == 4
    assert sorted(crm.values()) == sorted(r.summary for r in records.values())
    assert {"Calendar A!", "Calendar B"} <= set(crm.values())
    assert "Retitled D" in crm.values() or "CRM D" in crm.values()
    c = next(r for r in records.values() if r.summary == "CRM C")
    c_crm = scn.crm_query(f"SELECT StartDateTime FROM Event WHERE Id = '{moved}'")
    assert c_crm[0]["StartDateTime"][:19] == c.start.rstrip("Z")
    # A third run has nothing to do: the pairs are stored again, and they all agree.
    plans, _ = scn.sync()
    assert plans[0].counts() == {}
    scn.cli("verify", "p", check=0)


def test_old_store_copy_does_not_duplicate(scn: Scenario):
    _gw_event(scn, "a@t", "Calendar A", 0)
    _crm_event(scn, "CRM B", 2)
    scn.sync()
    old = scn.home.parent / "old-state.db"
    with sqlite3.connect(_store(scn)) as live, sqlite3.connect(old) as copy:
        live.backup(copy)  # what its write-ahead log holds too

    _gw_event(scn, "e@t", "Calendar E", 4)
    _crm_event(scn, "CRM F", 6)
    plans, _ = scn.sync()
    assert plans[0].counts() == {"create:crm": 1, "create:groupware": 1}

    _lose(scn, old)
    plans, report = scn.sync()
    assert report.status == "ok"
    assert not any(code.startswith("create") for code in plans[0].counts())
    assert sorted(_crm_events(scn).values()) == [
        "CRM B", "CRM F", "Calendar A", "Calendar E"]
    assert sorted(r.summary for r in scn.records().values()) == [
        "CRM B", "CRM F", "Calendar A", "Calendar E"]
    scn.cli("verify", "p", check=0)


def test_contacts_and_tasks_repair(scn: Scenario):
    kinds = ("contacts", "tasks")
    scn.put(Contact(uid="c@t", full_name="Cal Endar", given_name="Cal", family_name="Endar",
                    emails=["cal@client.example"]))
    ann = scn.crm_insert("Contact", FirstName="Ann", LastName="Crm",
                         Email="ann@client.example")
    due = (T0 + timedelta(days=1)).date()
    scn.put(Task(uid="t@t", summary="Calendar task", due=due.isoformat()))
    call = scn.crm_insert("Task", Subject="Call back", ActivityDate=due.isoformat(),
                          Status="Not Started")
    plans, report = scn.sync(kinds)
    assert report.status == "ok"
    assert [p.counts() for p in plans] == [{"create:crm": 1, "create:groupware": 1}] * 2
    assert {r.crm_id for r in scn.records("contacts").values()} == {"", ann}
    assert {r.crm_id for r in scn.records("tasks").values()} == {"", call}

    _lose(scn)
    # Changed in the CRM while the store was lost: only the kept Id still pairs them.
    scn.crm_update("Contact", ann, Email="ann@elsewhere.example")
    scn.crm_update("Task", call, Subject="Call back soon")
    plans, report = scn.sync(kinds)
    assert report.status == "ok"
    for plan in plans:
        assert not any(code.startswith("create") for code in plan.counts()), plan.counts()
    contacts = scn.records("contacts")
    assert len(contacts) == 2 and len(scn.crm_query("SELECT Id FROM Contact")) == 2
    assert any(r.emails == ["ann@elsewhere.example"] for r in contacts.values())
    tasks = scn.records("tasks")
    assert len(tasks) == 2 and len(scn.crm_query("SELECT Id FROM Task")) == 2
    assert "Call back soon" in {r.summary for r in tasks.values()}
    verified = json.loads(scn.cli("verify", "p", "--json", check=0).stdout)
    assert {k: o["agree"] for k, o in verified["objects"].items()} == {
        "calendar": 0, "contacts": 2, "tasks": 2}


def test_look_alike_events_are_never_paired_by_guess(scn: Scenario):
    """Issue 16 (A): two events with the same start, end and subject but different bodies
    and attendees. After the store is lost, content cannot tell which CRM record is whose
    copy: none is paired, nothing is written or created, and each is reported."""
    start = T0 + timedelta(hours=12)
    big = "First body. " + "x" * 20_000
    for uid, description, people in (("twin-1@t", big, 0), ("twin-2@t", "Second body", 40)):
        scn.put(Event(uid=uid, summary="Standup", start=moment(start),
                      end=moment(start + timedelta(hours=1)), description=description,
                      attendees=[Attendee(f"p{i}@guests.example") for i in range(people)]))
    plans, report = scn.sync()
    assert plans[0].counts() == {"create:crm": 2} and report.status == "ok"
    before = {uid: scn.raw(uid) for uid in ("twin-1@t", "twin-2@t")}
    crm_before = {r["Id"]: r["Description"] for r in scn.crm_query(
        "SELECT Id, Description FROM Event")}

    _lose(scn)
    plans, report = scn.sync()
    assert plans[0].counts() == {"skip": 4}, plans[0].counts()
    reasons = {a.reason for _, a in plans[0].actions()}
    assert len(reasons) == 1 and "4 look-alike items (2 in CRM, 2 in groupware" in reasons.pop()
    assert {uid: scn.raw(uid) for uid in before} == before
    assert {r["Id"]: r["Description"] for r in scn.crm_query(
        "SELECT Id, Description FROM Event")} == crm_before
    # Reported again until told apart, never created in the meantime.
    plans, _ = scn.sync()
    assert plans[0].counts() == {"skip": 4}

    # The user tells them apart as the report says: the same new subject on both sides.
    second = next(i for i, text in crm_before.items() if text.startswith("Second body"))
    scn.crm_update("Event", second, Subject="Standup (team B)")
    scn.edit("twin-2@t", summary="Standup (team B)")
    plans, report = scn.sync()
    assert plans[0].counts() == {"link": 2}, plans[0].counts()
    assert {uid: scn.records()[uid].description for uid in before} == {
        "twin-1@t": big, "twin-2@t": "Second body"}
    assert len(scn.crm_query("SELECT Id FROM Event")) == 2
    scn.cli("verify", "p", check=0)


@pytest.mark.parametrize("choice", ["crm", "both"])
def test_a_near_look_alike_waits_for_the_users_choice(tmp_path: Path, sides: Sides,
                                                      choice: str):
    """Two calendars that already hold copies of each other meet without a store (a first
    sync of both, or a lost store): "Pricing" was renamed on one side. It is not created
    twice: the plan asks; the user's choice pairs them ("crm") or keeps both."""
    home = tmp_path / "home"
    sides.put("crm", event("a@x", "Kickoff"), "a.ics")
    sides.put("crm", event("b@x", "Pricing (moved)", start=day(2), end=day(2, "10:00")),
              "b.ics")
    sides.put("groupware", event("x@x", "Kickoff"), "x.ics")
    sides.put("groupware", event("y@x", "Pricing", start=day(2), end=day(2, "10:00")),
              "y.ics")
    add_profile(home, sides, "work", "--objects", "calendar")
    path = tmp_path / "plan.json"
    out = json.loads(crmsync(home, "sync", "work", "--plan-out", str(path), "--json").stdout)
    assert out["counts"]["calendar"] == {"conflict": 1, "link": 1}
    assert crmsync(home, "sync", "work", "--yes", check=3).returncode == 3
    assert sides.names("crm", "calendar") == ["a.ics", "b.ics"]  # nothing created

    plan = json.loads(path.read_text())
    [conflict] = [a for s in plan["objects"]["calendar"]["steps"] for a in s["actions"]
                  if a["op"] == "conflict"]
    conflict["choose"] = choice
    path.write_text(json.dumps(plan))
    crmsync(home, "apply", "work", str(path), "--yes")
    summaries = {s: sorted(r.summary for r in sides.records(s, "calendar").values())
                 for s in ("crm", "groupware")}
    want = (["Kickoff", "Pricing (moved)"] if choice == "crm"
            else ["Kickoff", "Pricing", "Pricing (moved)"])
    assert summaries == {"crm": want, "groupware": want}
    found = json.loads(crmsync(home, "verify", "work", "--json").stdout)
    assert found["objects"]["calendar"]["agree"] == len(want)
    quiet = json.loads(crmsync(home, "sync", "work", "--dry-run", "--json").stdout)
    assert quiet["objects"]["calendar"]["counts"] == {}
