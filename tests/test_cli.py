"""The scripted interface, driven as a user's script would: as a separate process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crmsync.model import Contact

from conftest import Sides, day, event


def crmsync(home: Path, *args: str, input: str | None = None, check: int | None = 0):
    env = os.environ | {"CRMSYNC_HOME": str(home), "COLUMNS": "200"}
    # Never a terminal on stdin, however pytest was started: scripts are what this tests.
    proc = subprocess.run([sys.executable, "-m", "crmsync", *args], capture_output=True,
                          text=True, env=env, input=input, timeout=120,
                          stdin=subprocess.DEVNULL if input is None else None)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def add_profile(home: Path, sides: Sides, *extra: str) -> None:
    crm, gw = sides.endpoints()
    crmsync(home, "profile", "add", "work", "--crm", crm, "--groupware", gw, *extra)


def test_help_on_every_command_and_exit_codes_documented(home: Path):
    out = crmsync(home, "--help").stdout
    assert "Exit codes" in out and "mass-delete" in out
    for cmd in (["sync"], ["apply"], ["status"], ["history"], ["demo"], ["profile"],
                ["profile", "add"],
                ["profile", "list"], ["profile", "show"], ["profile", "remove"]):
        assert "Usage" in crmsync(home, *cmd, "--help").stdout


def test_profile_add_sync_dry_run_then_yes(home: Path, sides: Sides):
    sides.put("crm", event("a@x", "Pricing call"))
    sides.put("groupware", Contact(uid="c@x", full_name="Jo Acme", emails=["jo@acme.example"]))
    add_profile(home, sides, "--objects", "calendar,contacts")
    profiles = json.loads(crmsync(home, "profile", "list", "--json").stdout)
    assert profiles[0]["settings"]["contacts"]["prevent"] == ["crm:delete"]

    plan = json.loads(crmsync(home, "sync", "work", "--dry-run", "--json").stdout)
    cal = plan["objects"]["calendar"]
    assert cal["counts"] == {"create:groupware": 1}
    assert cal["actions"][0]["crm"]["label"].endswith("Pricing call")
    assert plan["objects"]["contacts"]["counts"] == {"create:crm": 1}
    assert sides.names("groupware", "calendar") == []  # dry run wrote nothing

    # Not a terminal and no --yes: refuse rather than write unasked.
    refused = crmsync(home, "sync", "work", check=2)
    assert "--yes" in refused.stderr

    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)
    assert report["status"] == "ok"
    assert report["objects"]["calendar"]["counts"] == {"create:groupware": 1}
    assert sides.names("groupware", "calendar") == ["a@x.ics"]

    status = json.loads(crmsync(home, "status", "work", "--json").stdout)
    assert status["objects"]["calendar"]["paired"] == 1
    assert status["objects"]["calendar"]["last_status"] == "ok"
    runs = json.loads(crmsync(home, "history", "work", "--json").stdout)
    # The dry run keeps its report too; the status shows the last run that wrote.
    assert [r["mode"] for r in runs] == ["manual", "dry-run"]
    run = json.loads(crmsync(home, "history", "work", str(runs[0]["id"]), "--json").stdout)
    assert {i["action"] for i in run["items"]} == {"create:groupware", "create:crm"}
    assert "work" in crmsync(home, "status", "work").stdout


def test_exit_codes_for_conflicts_mass_delete_and_bad_profile(home: Path, sides: Sides):
    for i in range(12):
        sides.put("crm", event(f"e{i}@x", f"Event {i}"))
    add_profile(home, sides, "--objects", "calendar", "--conflict", "ask")
    crmsync(home, "sync", "work", "--yes")
    sides.edit("crm", "calendar", "e0@x.ics", summary="CRM says")
    sides.edit("groupware", "calendar", "e0@x.ics", summary="Calendar says")
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json", check=3).stdout)
    assert report["objects"]["calendar"]["counts"] == {"conflict": 1}
    for path in sides.folder("groupware", "calendar").glob("*.ics"):
        path.unlink()
    out = crmsync(home, "sync", "work", "--yes", check=4)
    assert "Nothing was written" in out.stderr
    assert len(sides.names("crm", "calendar")) == 12
    crmsync(home, "sync", "nope", "--yes", check=2)
    bad = crmsync(home, "profile", "add", "x", "--crm", "ftp:/x", "--groupware", "vdir:/y",
                  check=2)
    assert "unknown endpoint scheme" in bad.stderr


def _kill_during_sync(home: Path, delay: float) -> None:
    env = os.environ | {"CRMSYNC_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "sync", "work", "--yes",
                             "--json"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_at_various_moments_then_rerun_converges(home: Path, sides: Sides):
    n = int(os.environ.get("CRMSYNC_KILL_ITEMS", "1500"))
    for i in range(n):
        side = "crm" if i % 3 else "groupware"
        sides.put(side, event(f"e{i:05}@x", f"Event {i}",
                              start=day(i % 28), end=day(i % 28, "10:00")))
    add_profile(home, sides, "--objects", "calendar")
    for delay in (0.4, 0.8, 1.2, 1.6, 2.4):
        _kill_during_sync(home, delay)
        # Edits between the killed runs must survive too.
        sides.edit("crm", "calendar", "e00001@x.ics", summary=f"edited at {delay}")
    crmsync(home, "sync", "work", "--yes")
    crm, gw = sides.records("crm", "calendar"), sides.records("groupware", "calendar")
    assert len(crm) == n and crm == gw  # records() asserts there are no duplicate UIDs
    assert gw["e00001@x"].summary == "edited at 2.4"
    again = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)
    assert again["objects"]["calendar"]["counts"] == {}
