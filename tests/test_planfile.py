"""Plan files through the command line: ``sync --plan-out``, edit, ``apply``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crmsync.model import Contact

from conftest import Sides, event
from test_cli import crmsync


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def add_profile(home: Path, sides: Sides, name: str = "work", *extra: str) -> None:
    crm, gw = sides.endpoints()
    crmsync(home, "profile", "add", name, "--crm", crm, "--groupware", gw, *extra)


def steps(plan: dict, kind: str) -> list[dict]:
    return plan["objects"][kind]["steps"]


def test_apply_of_an_edited_plan_writes_exactly_the_kept_steps(home: Path, sides: Sides,
                                                              tmp_path: Path):
    for uid in ("a@x", "b@x", "c@x"):
        sides.put("crm", event(uid, f"Call {uid[0]}"))
    sides.put("groupware", Contact(uid="c1@x", full_name="Jo Acme", emails=["jo@acme.example"]))
    add_profile(home, sides, "work", "--objects", "calendar,contacts")
    path = tmp_path / "plan.json"
    out = json.loads(crmsync(home, "sync", "work", "--plan-out", str(path), "--json").stdout)
    assert out["counts"]["calendar"] == {"create:groupware": 3}
    assert sides.names("groupware", "calendar") == []  # saving a plan writes nothing

    plan = json.loads(path.read_text())
    assert plan["format"] == "crmsync-plan" and plan["version"] == 1
    assert plan["profile"] == "work"
    cal = steps(plan, "calendar")
    assert [s["crm"]["id"] for s in cal] == ["a@x.ics", "b@x.ics", "c@x.ics"]
    assert all(s["crm"]["version"] and s["groupware"] is None for s in cal)
    assert cal[0]["actions"] == [{"op": "create", "side": "groupware"}]
    # The user keeps a and c, and drops the contact's create (its step stays, empty).
    plan["objects"]["calendar"]["steps"] = [s for s in cal if s["crm"]["id"] != "b@x.ics"]
    steps(plan, "contacts")[0]["actions"] = []
    path.write_text(json.dumps(plan))

    report = json.loads(crmsync(home, "apply", "work", str(path), "--json").stdout)
    assert report["status"] == "ok" and report["replanned"] == {}
    assert report["objects"]["calendar"]["counts"] == {"create:groupware": 2}
    assert sides.names("groupware", "calendar") == ["a@x.ics", "c@x.ics"]
    assert sides.names("crm", "contacts") == []
    # What the file left out is not lost: the next run plans it again.
    again = json.loads(crmsync(home, "sync", "work", "--dry-run", "--json").stdout)
    assert again["objects"]["calendar"]["counts"] == {"create:groupware": 1}
    assert again["objects"]["calendar"]["actions"][0]["crm"]["id"] == "b@x.ics"
    assert again["objects"]["contacts"]["counts"] == {"create:crm": 1}
    # Applying the same file again writes nothing twice.
    report = json.loads(crmsync(home, "apply", "work", str(path), "--json").stdout)
    assert report["objects"]["calendar"]["counts"] == {}
    assert sides.names("groupware", "calendar") == ["a@x.ics", "c@x.ics"]


def test_a_plan_whose_item_changed_is_replanned_not_forced(home: Path, sides: Sides,
                                                           tmp_path: Path):
    sides.put("crm", event("a@x", "First"))
    sides.put("crm", event("b@x", "Other"))
    add_profile(home, sides, "work", "--objects", "calendar")
    crmsync(home, "sync", "work", "--yes")
    sides.edit("crm", "calendar", "a@x.ics", summary="Second")
    sides.edit("crm", "calendar", "b@x.ics", summary="Other, moved")
    path = tmp_path / "plan.json"
    crmsync(home, "sync", "work", "--plan-out", str(path))
    plan = json.loads(path.read_text())
    update = next(s for s in steps(plan, "calendar") if s["crm"]["id"] == "a@x.ics")
    assert update["actions"][0]["changes"]["summary"] == "Second"
    # The item changes again after the plan was made.
    sides.edit("crm", "calendar", "a@x.ics", summary="Third")

    report = json.loads(crmsync(home, "apply", "work", str(path), "--json").stdout)
    assert list(report["replanned"]) == [update["key"]]
    assert "changed in crm" in report["replanned"][update["key"]]
    # Not forced: without --yes the re-planned step is held, the unchanged one applied.
    assert update["key"] in report["held"]
    records = sides.records("groupware", "calendar")
    assert records["a@x"].summary == "First"
    assert records["b@x"].summary == "Other, moved"

    report = json.loads(crmsync(home, "apply", "work", str(path), "--yes", "--json").stdout)
    assert update["key"] in report["replanned"]
    # Planned again from the current item: "Third", never the file's "Second".
    assert sides.records("groupware", "calendar")["a@x"].summary == "Third"
    sides.edit("crm", "calendar", "a@x.ics", summary="Fourth")
    text = crmsync(home, "apply", "work", str(path)).stdout
    assert f"re-planned {update['key']}: changed in crm" in text
    assert "Not applied: 1 re-planned step(s)" in text
    assert sides.records("groupware", "calendar")["a@x"].summary == "Third"


def conflict_plan(home: Path, sides: Sides, tmp_path: Path) -> tuple[Path, dict]:
    """A synced event changed on both sides (rule "ask"), and the plan file saved for it."""
    sides.put("crm", event("a@x", "Start"))
    add_profile(home, sides, "work", "--objects", "calendar", "--conflict", "ask")
    crmsync(home, "sync", "work", "--yes")
    sides.edit("crm", "calendar", "a@x.ics", summary="CRM says")
    sides.edit("groupware", "calendar", "a@x.ics", summary="Calendar says")
    path = tmp_path / "plan.json"
    crmsync(home, "sync", "work", "--plan-out", str(path))
    return path, json.loads(path.read_text())


def test_a_conflict_is_resolved_by_the_winner_chosen_in_the_file(home: Path, sides: Sides,
                                                                tmp_path: Path):
    path, plan = conflict_plan(home, sides, tmp_path)
    conflict = steps(plan, "calendar")[0]["actions"][0]
    assert conflict["op"] == "conflict" and conflict["choose"] is None
    assert conflict["conflicts"]["summary"] == {"crm": "CRM says", "groupware": "Calendar says"}
    conflict["choose"] = "nobody"
    path.write_text(json.dumps(plan))
    bad = crmsync(home, "apply", "work", str(path), check=2)
    assert '"choose" must be one of crm, groupware, both, skip' in bad.stderr

    conflict["choose"] = "groupware"
    path.write_text(json.dumps(plan))
    report = json.loads(crmsync(home, "apply", "work", str(path), "--json").stdout)
    assert report["objects"]["calendar"]["counts"] == {"update:crm": 1}
    assert sides.records("crm", "calendar")["a@x"].summary == "Calendar says"
    assert sides.records("groupware", "calendar")["a@x"].summary == "Calendar says"


def test_keep_both_in_a_file_copies_each_version_with_a_uid_of_its_own(
        home: Path, sides: Sides, tmp_path: Path):
    path, plan = conflict_plan(home, sides, tmp_path)
    steps(plan, "calendar")[0]["actions"][0]["choose"] = "both"
    path.write_text(json.dumps(plan))
    report = json.loads(crmsync(home, "apply", "work", str(path), "--json").stdout)
    assert report["objects"]["calendar"]["counts"] == {"create:crm": 1, "create:groupware": 1}
    for side in ("crm", "groupware"):
        records = sides.records(side, "calendar")
        # Both sides keep a@x as it was and hold the other's version under a new UID.
        assert records["a@x"].summary == ("CRM says" if side == "crm" else "Calendar says")
        assert sorted(r.summary for r in records.values()) == ["CRM says", "Calendar says"]
    again = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)
    assert again["objects"]["calendar"]["counts"] == {}


def test_a_plan_for_another_profile_or_a_bad_file_is_refused(home: Path, sides: Sides,
                                                             tmp_path: Path):
    sides.put("crm", event("a@x", "Call"))
    add_profile(home, sides, "work", "--objects", "calendar")
    add_profile(home, sides, "other", "--objects", "calendar")
    path = tmp_path / "plan.json"
    crmsync(home, "sync", "work", "--plan-out", str(path))

    refused = crmsync(home, "apply", "other", str(path), check=2)
    assert "made for work" in refused.stderr and "refusing" in refused.stderr
    assert sides.names("groupware", "calendar") == []
    # A profile removed and made again under the same name is another profile too.
    crmsync(home, "profile", "remove", "work", "--yes")
    add_profile(home, sides, "work", "--objects", "calendar")
    refused = crmsync(home, "apply", "work", str(path), check=2)
    assert "earlier profile named 'work'" in refused.stderr
    assert sides.names("groupware", "calendar") == []

    plan = json.loads(path.read_text())
    for content, message in [
        ("not json", "not JSON"),
        (json.dumps({"objects": {}}), "not a crmsync plan file"),
        (json.dumps(plan | {"version": 99}), "version 99 is not supported"),
        (json.dumps(plan | {"objects": {"notes": {"steps": []}}}), "unknown object 'notes'"),
        (json.dumps(plan | {"objects": {"calendar": {"steps": [{"actions": []}]}}}),
         "\"key\" is missing"),
    ]:
        path.write_text(content)
        bad = crmsync(home, "apply", "work", str(path), check=2)
        assert message in bad.stderr, bad.stderr
    missing = crmsync(home, "apply", "work", str(tmp_path / "nope.json"), check=2)
    assert "cannot read the plan file" in missing.stderr
    assert sides.names("groupware", "calendar") == []
