"""`crmsync verify`: both sides of every pair compared through the mapping (issue 16)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from crmsync.config import Paths
from crmsync.connectors.vdir import VdirConnector
from crmsync.model import Event
from scenario import Scenario
from test_planfile import add_profile

from conftest import Sides, day, event
from test_cli import crmsync


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _synced(home: Path, sides: Sides) -> None:
    for i, summary in enumerate(("Pricing call", "Demo", "Review")):
        sides.put("crm", event(f"{i}@x", summary, start=day(i), end=day(i, "10:00")))
    add_profile(home, sides, "work", "--objects", "calendar")
    crmsync(home, "sync", "work", "--yes")


def test_pairs_that_agree_exit_0(home: Path, sides: Sides):
    _synced(home, sides)
    out = crmsync(home, "verify", "work").stdout
    assert "calendar: 3 pairs, 3 agree, 0 differ" in out
    found = json.loads(crmsync(home, "verify", "work", "--json").stdout)
    assert found["divergent"] == 0
    assert found["objects"]["calendar"]["pairs"] == found["objects"]["calendar"]["agree"] == 3


def test_a_pair_changed_where_the_planner_cannot_see_it_is_listed(home: Path, sides: Sides):
    """The groupware item is edited and the store made to believe it was synced that way
    (as a store restored from elsewhere, or a server that kept an item's version across
    an edit): no sync will ever plan it; verify finds it."""
    _synced(home, sides)
    sides.edit("groupware", "calendar", "1@x.ics", summary="Demo (behind our back)",
               location="Room 9")
    seen = VdirConnector(f"{sides.gw}", "groupware").fetch("calendar", ["1@x.ics"])["1@x.ics"]
    with sqlite3.connect(Paths.resolve(home).data_dir / "state.db") as db:
        changed = db.execute("UPDATE pairs SET gw_version = ?, gw_raw = ? WHERE gw_id = ?",
                             (seen.version, seen.raw, "1@x.ics")).rowcount
    assert changed == 1
    plan = json.loads(crmsync(home, "sync", "work", "--dry-run", "--json").stdout)
    assert plan["objects"]["calendar"]["counts"] == {}  # the planner cannot see it

    result = crmsync(home, "verify", "work", "--json", check=6)
    found = json.loads(result.stdout)
    assert found["divergent"] == 1
    [pair] = found["objects"]["calendar"]["divergent"]
    assert pair["gw_id"] == "1@x.ics"
    assert pair["fields"] == {
        "summary": {"crm": "Demo", "groupware": "Demo (behind our back)"},
        "location": {"crm": "", "groupware": "Room 9"}}
    text = crmsync(home, "verify", "work", check=6).stdout
    assert "1 differ" in text and "summary: CRM 'Demo' | groupware 'Demo (behind our back)'" \
        in text
    # verify wrote nothing: the CRM item is as it was.
    assert sides.records("crm", "calendar")["1@x"].summary == "Demo"


def test_a_cut_salesforce_copy_agrees_with_its_full_original(scn: Scenario):
    """Radicale <-> the Salesforce sandbox: the CRM keeps 32,000 characters of a body and
    255 of a location; verify compares through that, so the pair agrees. A real edit
    behind crmsync's back in the cut part is still found."""
    body, place = "Notes. " * 6000, "Hall 3, " * 50
    scn.put(Event(uid="long@t", summary="Long one", start=day(3), end=day(3, "10:00"),
                  description=body.strip(), location=place.strip()))
    scn.cli("sync", "p", "--yes", check=0)
    [row] = scn.crm_query("SELECT Id, Description, Location FROM Event")
    assert len(row["Description"]) == 32_000 and len(row["Location"]) == 255
    found = json.loads(scn.cli("verify", "p", "--json", check=0).stdout)
    assert found["objects"]["calendar"]["agree"] == 1

    scn.crm_update("Event", row["Id"], Location="Hall 4")
    found = json.loads(scn.cli("verify", "p", "--json", check=6).stdout)
    [pair] = found["objects"]["calendar"]["divergent"]
    assert list(pair["fields"]) == ["location"]
