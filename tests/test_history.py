"""Run reports and history through the command line; retention; progress reports."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmsync.config import Paths, store_url
from crmsync.model import Event
from crmsync.store import Store
from scenario import Scenario
from test_planfile import add_profile

from conftest import Sides, day, event
from test_cli import crmsync


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_history_lists_and_shows_runs_with_skipped_and_failed_reasons(home: Path,
                                                                      sides: Sides):
    sides.put("crm", event("a@x", "Pricing call"))
    sides.put("crm", event("p@x", "Dentist", private=True))
    (sides.folder("crm", "calendar") / "broken.ics").write_text("BEGIN:VCALENDAR\nnonsense\n")
    add_profile(home, sides, "work", "--objects", "calendar")
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json", check=6).stdout)
    assert report["mode"] == "manual" and report["user"] == getpass.getuser()

    runs = json.loads(crmsync(home, "history", "work", "--json").stdout)
    assert len(runs) == 1
    run = runs[0]
    assert run["mode"] == "manual" and run["status"] == "partial"
    assert run["started_by"] == getpass.getuser()
    assert isinstance(run["duration_ms"], int) and run["duration_ms"] >= 0
    assert run["counts"] == {"calendar": {"create:groupware": 1, "failed": 1, "skip": 1}}

    shown = json.loads(crmsync(home, "history", "work", str(run["id"]), "--json").stdout)
    by_outcome = {i["outcome"]: i for i in shown["items"]}
    assert set(by_outcome) == {"applied", "skipped", "failed"}
    assert "private" in by_outcome["skipped"]["reason"]
    assert by_outcome["skipped"]["side"] == "crm"
    assert by_outcome["failed"]["crm_id"] == "broken.ics"
    assert "cannot read" in by_outcome["failed"]["reason"]
    assert by_outcome["applied"]["action"] == "create:groupware"
    assert by_outcome["applied"]["side"] == "groupware"

    listed = crmsync(home, "history", "work").stdout
    assert f"#{run['id']}" in listed and "manual" in listed and "partial" in listed
    text = crmsync(home, "history", "work", str(run["id"])).stdout
    assert "private (setting include_private is off)" in text
    assert "broken.ics" in text and "cannot read" in text
    crmsync(home, "history", "work", "999", check=2)

    status = json.loads(crmsync(home, "status", "work", "--json").stdout)
    assert status["objects"]["calendar"]["last_run"] == shown["finished_at"]
    assert status["objects"]["calendar"]["last_status"] == "partial"


def _old_run(home: Path, days: int) -> int:
    """A finished run started ``days`` ago, recorded through the store API."""
    store = Store.open(store_url(Paths.resolve(home)))
    try:
        profile = store.profile("work")
        at = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        run_id = store.start_run(profile.id, ["calendar"], "auto", "ana", at=at)
        store.finish_run(run_id, "ok", {"calendar": {"create:crm": 1}})
        return run_id
    finally:
        store.close()


def test_runs_older_than_90_days_are_purged_when_a_run_starts(home: Path,
                                                             sides: Sides):
    sides.put("crm", event("a@x", "Call"))
    add_profile(home, sides, "work", "--objects", "calendar")
    ancient, recent = _old_run(home, 91), _old_run(home, 30)
    assert {r["id"] for r in json.loads(
        crmsync(home, "history", "work", "--json").stdout)} == {ancient, recent}
    crmsync(home, "sync", "work", "--dry-run")
    runs = json.loads(crmsync(home, "history", "work", "--json").stdout)
    assert [r["mode"] for r in runs] == ["dry-run", "auto"]
    assert runs[1]["id"] == recent
    gone = crmsync(home, "history", "work", str(ancient), check=2)
    assert f"no run {ancient}" in gone.stderr

    # The retention is a config key; 0 keeps every run.
    config = Paths.resolve(home).config_file
    config.write_text("[history]\nkeep_days = 0\n")
    very_old = _old_run(home, 400)
    crmsync(home, "sync", "work", "--dry-run")
    assert very_old in {r["id"] for r in json.loads(
        crmsync(home, "history", "work", "--json").stdout)}
    config.write_text("[history]\nkeep_days = 7\n")
    crmsync(home, "sync", "work", "--dry-run")
    modes = [r["mode"] for r in json.loads(crmsync(home, "history", "work", "--json").stdout)]
    assert modes == ["dry-run", "dry-run", "dry-run"]  # the 30- and 400-day-old runs went
    config.write_text('[history]\nkeep_days = "forever"\n')
    bad = crmsync(home, "sync", "work", "--dry-run", check=2)
    assert "keep_days" in bad.stderr


def test_no_progress_bar_when_not_a_terminal_or_json(home: Path, sides: Sides):
    for i in range(30):
        sides.put("crm", event(f"e{i}@x", f"Event {i}"))
    add_profile(home, sides, "work", "--objects", "calendar")
    quiet = crmsync(home, "sync", "work", "--yes")
    assert quiet.stderr == ""
    assert "applying" not in quiet.stdout and "fetching" not in quiet.stdout
    sides.edit("crm", "calendar", "e1@x.ics", summary="Changed")
    report = crmsync(home, "sync", "work", "--yes", "--json")
    assert report.stderr == ""
    assert json.loads(report.stdout)["objects"]["calendar"]["counts"] == {"update:groupware": 1}


def test_progress_reports_fetching_and_applying_counts_and_history_keeps_api_use(
        scn: Scenario):
    for i in range(5):
        scn.put(Event(uid=f"p{i}@t", summary=f"Meeting {i}", start=day(i), end=day(i, "10:00")))
    scn.sync()
    for i in range(3):
        scn.edit(f"p{i}@t", summary=f"Moved {i}")
    reports: list[tuple[str, str, int, int]] = []
    syncer = scn.syncer()
    try:
        prepared = syncer.prepare(["calendar"], progress=lambda *r: reports.append(r))
        # An incremental listing names the changed hrefs; the three are then fetched.
        assert [r for r in reports if r[0] == "fetching"] == [("fetching", "calendar", 3, 3)]
        report = syncer.run(prepared, progress=lambda *r: reports.append(r))
    finally:
        syncer.close()
        syncer.store.close()
    assert [r for r in reports if r[0] == "applying"] == [("applying", "calendar", 3, 3)]
    assert report.objects["calendar"].counts == {"update:crm": 3}
    assert sorted(e["Subject"] for e in scn.crm_query("SELECT Subject FROM Event")) == [
        "Meeting 3", "Meeting 4", "Moved 0", "Moved 1", "Moved 2"]

    runs = json.loads(scn.cli("history", "p", "--json", check=0).stdout)
    usage = runs[0]["usage"]
    assert usage["requests"]["groupware"] > 0
    assert usage["api"]["crm"]["api_calls"] >= 1
    text = scn.cli("history", "p", str(runs[0]["id"]), check=0).stdout
    assert "api_calls" in text and "groupware:" in text
