"""The journal of a run's writes and `crmsync undo`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from crmsync.config import Paths, store_url
from crmsync.connectors.base import Item
from crmsync.model import Event
from crmsync.store import JournalEntry, Store
from scenario import Scenario
from test_planfile import add_profile

from conftest import Sides, day, event
from sfsandbox import clock_on
from test_cli import crmsync


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _first_sync(home: Path, sides: Sides) -> None:
    for uid, summary in (("a@x", "Pricing call"), ("b@x", "Demo"), ("c@x", "Review")):
        sides.put("crm", event(uid, summary))
    add_profile(home, sides, "work", "--objects", "calendar")
    crmsync(home, "sync", "work", "--yes")


def test_journal_keeps_each_write_with_the_item_before_it(home: Path, sides: Sides):
    _first_sync(home, sides)
    folder = sides.folder("groupware", "calendar")
    before = {p.name: p.read_bytes().decode() for p in folder.iterdir()}
    sides.edit("crm", "calendar", "a@x.ics", summary="Pricing call (moved)")
    (sides.folder("crm", "calendar") / "b@x.ics").unlink()
    sides.put("groupware", event("d@x", "Lunch"))
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)

    store = Store.open(store_url(Paths.resolve(home)))
    entries = {(e.side, e.action): e for e in store.journal(report["run"])}
    assert set(entries) == {("groupware", "update"), ("groupware", "delete"), ("crm", "create")}
    updated, deleted = entries["groupware", "update"], entries["groupware", "delete"]
    assert updated.before is not None and updated.before.raw == before[updated.item_id]
    assert updated.after_version and updated.after_version != updated.before.version
    assert deleted.before is not None and deleted.before.raw == before[deleted.item_id]
    assert deleted.after_version is None
    created = entries["crm", "create"]
    # A create keeps the item it copies, as sent (by which a lost answer is found again).
    assert created.before is not None and created.before.id == "d@x.ics"
    assert created.before.raw == (folder / "d@x.ics").read_bytes().decode()
    assert created.item_id in sides.names("crm", "calendar")
    assert created.gw_id == "d@x.ics" and created.crm_id is None
    assert {e.outcome for e in entries.values()} == {"ok"}
    # The first run's creates are journaled too.
    assert {e.action for e in store.journal(report["run"] - 1)} == {"create"}


def test_undo_reverts_a_run_on_both_sides_and_the_next_sync_settles_what_differs(
        home: Path, sides: Sides):
    _first_sync(home, sides)
    sides.put("crm", event("e@x", "Kick-off"))
    sides.put("groupware", event("d@x", "Lunch"))
    sides.edit("crm", "calendar", "a@x.ics", summary="Pricing call (moved)")
    sides.edit("groupware", "calendar", "c@x.ics", summary="Review (new room)")
    (sides.folder("crm", "calendar") / "b@x.ics").unlink()
    before = {s: _records(sides, s) for s in ("crm", "groupware")}
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)
    assert report["objects"]["calendar"]["counts"] == {
        "create:crm": 1, "create:groupware": 1, "update:crm": 1, "update:groupware": 1,
        "delete:groupware": 1}

    shown = crmsync(home, "undo", "work", str(report["run"]), "--dry-run").stdout
    assert shown.count("would revert") == 5
    assert _records(sides, "groupware") != before["groupware"]
    undone = json.loads(crmsync(home, "undo", "work", str(report["run"]), "--yes",
                                "--json").stdout)
    assert undone["mode"] == "undo" and undone["status"] == "ok"
    for side in ("crm", "groupware"):
        assert _records(sides, side) == before[side], side

    # Two pairs differ now (a: moved in the CRM, reverted in the groupware; c: the other
    # way round). Never silently: verify lists them and the next plan settles them.
    _settles_after_undo(lambda *a, check: crmsync(home, *a, check=check).stdout,
                        {"Pricing call", "Review"})
    runs = json.loads(crmsync(home, "history", "work", "--json").stdout)
    assert [r["mode"] for r in runs][:4] == ["manual", "manual", "dry-run", "undo"]


def _settles_after_undo(cli: Callable[..., str], labels: set[str], name: str = "work"
                        ) -> None:
    """After an undo left pairs different: verify lists them, a dry run plans one update
    for each (the undo is the newest change), the sync makes them agree, then all quiet.
    ``cli(*args, check=code)`` runs crmsync and returns its output."""
    found = json.loads(cli("verify", name, "--json", check=6))
    divergent = found["objects"]["calendar"]["divergent"]
    assert len(divergent) == len(labels) == found["divergent"], divergent
    assert all(list(d["fields"]) == ["summary"] for d in divergent), divergent
    assert {d["fields"]["summary"]["crm"] for d in divergent} \
        | {d["fields"]["summary"]["groupware"] for d in divergent} >= labels
    plan = json.loads(cli("sync", name, "--dry-run", "--json", check=0))
    counts = plan["objects"]["calendar"]["counts"]
    assert sum(n for k, n in counts.items() if k.startswith("update")) == len(labels), counts
    assert not any(k.startswith(("create", "delete")) for k in counts), counts
    cli("sync", name, "--yes", check=0)
    assert json.loads(cli("verify", name, "--json", check=0))["divergent"] == 0
    quiet = json.loads(cli("sync", name, "--yes", "--json", check=0))
    assert not any(k.startswith(("create", "update", "delete"))
                   for k in quiet["objects"]["calendar"]["counts"]), quiet


def test_undo_leaves_items_changed_since_the_run_alone(home: Path, sides: Sides):
    _first_sync(home, sides)
    sides.edit("crm", "calendar", "a@x.ics", summary="Pricing call (moved)")
    sides.edit("crm", "calendar", "b@x.ics", summary="Demo (moved)")
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)
    sides.edit("groupware", "calendar", "a@x.ics", summary="Pricing call (user's own)")
    out = crmsync(home, "undo", "work", str(report["run"]), "--yes", check=6).stdout
    assert out.count("changed since the run, left alone") == 1 and "reverted" in out
    records = sides.records("groupware", "calendar")
    assert records["a@x"].summary == "Pricing call (user's own)"
    assert records["b@x"].summary == "Demo"


def test_undo_of_an_unknown_run_or_a_dry_run_is_refused(home: Path, sides: Sides):
    _first_sync(home, sides)
    sides.edit("crm", "calendar", "a@x.ics", summary="Pricing call (moved)")
    crmsync(home, "sync", "work", "--dry-run")
    dry = json.loads(crmsync(home, "history", "work", "--json").stdout)[0]
    assert dry["dry_run"]
    assert "dry run" in crmsync(home, "undo", "work", str(dry["id"]), "--yes",
                                check=2).stderr
    assert "no run 999" in crmsync(home, "undo", "work", "999", "--yes", check=2).stderr


def test_undo_on_radicale_and_salesforce_reverts_creates_updates_and_deletes(scn: Scenario):
    for i in range(3):
        scn.put(Event(uid=f"u{i}@t", summary=f"Meeting {i}", start=day(i),
                      end=day(i, "10:00")))
    scn.cli("sync", "p", "--yes", check=0)
    crm_ids = {r["Subject"]: r["Id"] for r in scn.crm_query("SELECT Id, Subject FROM Event")}
    scn.put(Event(uid="new@t", summary="Kick-off", start=day(5), end=day(5, "10:00")))
    scn.edit("u0@t", summary="Meeting 0 (moved)")
    scn.delete("u1@t")
    scn.crm_insert("Event", Subject="Call", StartDateTime=day(6),
                   EndDateTime=day(6, "10:00"))
    scn.crm_update("Event", crm_ids["Meeting 2"], Subject="Meeting 2 (CRM)")
    before_gw = {u: r.summary for u, r in scn.records().items()}
    before_crm = sorted(r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event"))
    report = json.loads(scn.cli("sync", "p", "--yes", "--json", check=0).stdout)
    assert sum(report["objects"]["calendar"]["counts"].values()) == 5, report

    scn.cli("undo", "p", str(report["run"]), "--yes", check=0)
    assert {u: r.summary for u, r in scn.records().items()} == before_gw
    assert sorted(r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")) \
        == before_crm
    # Meeting 0 (moved in the groupware, reverted in the CRM) and Meeting 2 (the other
    # way round) differ now: listed by verify, settled by the next sync.
    _settles_after_undo(lambda *a, check: scn.cli(*a, check=check).stdout,
                        {"Meeting 0", "Meeting 2"}, "p")


def test_undo_restores_a_mass_deletion_on_the_calendar(scn: Scenario):
    for i in range(10):
        scn.put(Event(uid=f"m{i}@t", summary=f"Meeting {i}", start=day(i),
                      end=day(i, "10:00")))
    scn.cli("sync", "p", "--yes", check=0)
    for row in scn.crm_query("SELECT Id FROM Event"):
        scn.crm_delete("Event", row["Id"])
    # Salesforce reports deletions up to the last whole minute: let ten pass.
    clock_on(scn.sandbox, 10)
    report = json.loads(scn.cli("sync", "p", "--yes", "--allow-mass-delete", "--json",
                                check=0).stdout)
    assert report["objects"]["calendar"]["counts"] == {"delete:groupware": 10}
    assert scn.records() == {}
    scn.cli("undo", "p", str(report["run"]), "--yes", check=0)
    assert sorted(r.summary for r in scn.records().values()) \
        == sorted(f"Meeting {i}" for i in range(10))
    quiet = json.loads(scn.cli("sync", "p", "--yes", "--json", check=0).stdout)
    assert not any(k.startswith(("create", "update", "delete"))
                   for k in quiet["objects"]["calendar"]["counts"]), quiet
    # The restored items are unpaired (their CRM copies are gone), not divergent pairs.
    found = json.loads(scn.cli("verify", "p", "--json", check=0).stdout)
    assert found["objects"]["calendar"]["unpaired"]["groupware"] == 10


def test_journal_intents_are_completed_with_the_pairs_on_both_databases(store: Store):
    profile = store.add_profile("work", "vdir:/a", "vdir:/b", ["calendar"], {})
    run_id = store.start_run(profile.id, ["calendar"], "manual", "ana")
    before = Item("a.ics", "v1", "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "icalendar",
                  "calendar")
    store.journal_intents(run_id, [
        JournalEntry("calendar", 1, "groupware", "update", "a.ics", before,
                     crm_id="A", gw_id="a.ics"),
        JournalEntry("calendar", 2, "crm", "create", gw_id="b.ics")])
    intents = store.journal(run_id)
    assert [(e.outcome, e.after_version) for e in intents] == [(None, None), (None, None)]
    done = dataclasses.replace(intents[0], after_version="v2", outcome="ok")
    store.save_pairs(profile.id, "calendar", [], [], run_id, (), [done])
    updated, created = store.journal(run_id)
    assert (updated.outcome, updated.after_version) == ("ok", "v2")
    assert updated.before is not None and updated.before.raw == before.raw
    assert updated.before.version == "v1" and updated.before.fmt == "icalendar"
    # The create's outcome stays unknown: it may or may not have happened.
    assert created.outcome is None and created.item_id is None
    assert store.purge_runs(profile.id, "9999") == 1 and store.journal(run_id) == []


def test_an_undo_can_be_undone(home: Path, sides: Sides):
    _first_sync(home, sides)
    sides.edit("crm", "calendar", "a@x.ics", summary="Pricing call (moved)")
    (sides.folder("crm", "calendar") / "b@x.ics").unlink()
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)
    after_run = _records(sides, "groupware")
    undone = json.loads(crmsync(home, "undo", "work", str(report["run"]), "--yes",
                                "--json").stdout)
    assert _records(sides, "groupware") != after_run
    crmsync(home, "undo", "work", str(undone["run"]), "--yes")
    assert _records(sides, "groupware") == after_run


def _records(sides: Sides, side: str) -> dict[str, tuple[str, str]]:
    return {uid: (r.summary, r.start) for uid, r in sides.records(side, "calendar").items()}

