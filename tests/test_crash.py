"""Crash injection on real connectors: ``crmsync sync`` (a real process) is killed with
SIGKILL at each write point of a run, then re-run until it plans nothing; the two sides
must converge with every item once, as expected, and one pair per item.

The world (:func:`world`): Radicale behind a :class:`FaultProxy` and the Salesforce
sandbox, calendar and contacts synced once, then changed on both sides so that the run
under test makes 6 creates, 3 updates and 2 deletes (5 CRM writes, 6 groupware writes).

A write point is the k-th write request to one side (PUT/DELETE to Radicale; POST, PATCH
or DELETE on a Salesforce record, also inside a composite call), at two moments:
"before" (the server never sees it) and "after" (the server did it, the answer is held:
the client cannot know). The store commits sit between the writes, so killing at write k
"before" also covers a kill right after the commit that follows write k-1; killing
"after" covers the kill between a write and its commit.

By default every other write point is tried; CRMSYNC_CRASH_FULL=1 tries every one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from crmsync.model import Contact, Event, moment
from scenario import Scenario, Servers, sf_time

from davservers import FaultProxy
from sfsandbox import clock_on, control

KINDS = ("calendar", "contacts")
FULL = os.environ.get("CRMSYNC_CRASH_FULL") == "1"
MOMENTS = ("before", "after")
EVENTS = ["GW edited", "CRM edited", "GW new 1", "GW new 2", "CRM new"]
CONTACTS = ["Coleman", "Newman", "Newton", "Nash"]
runs: list[dict[str, dict[str, int]]] = []  # the last re-runs' counts, for the report
FIGURES: dict[str, int] = {"runs killed": 0, "write points": 0, "violations": 0}


@pytest.fixture(scope="module")
def proxy(servers: Servers) -> Iterator[FaultProxy]:
    with FaultProxy(servers.radicale.url) as running:
        yield running
    print(f"\ncrash figures: {FIGURES}")


def world(servers: Servers, proxy: FaultProxy, home: Path) -> Scenario:
    """Synced once, then changed: the next run has 11 writes (see the module's text)."""
    control(servers.sandbox, "reset", records=True)
    clock_on(servers.sandbox)
    proxy.release()
    scn = Scenario(servers, home, KINDS, via=proxy.translate)
    start = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=3)

    def gw_event(uid: str, summary: str, days: int = 0) -> None:
        at = start + timedelta(days=days)
        scn.put(Event(uid=uid, summary=summary, start=moment(at),
                      end=moment(at + timedelta(hours=1))))

    def crm_event(subject: str, days: int = 0) -> str:
        at = start + timedelta(days=days)
        return scn.crm_insert("Event", Subject=subject, StartDateTime=sf_time(at),
                              EndDateTime=sf_time(at + timedelta(hours=1)))

    def crm_contact(last: str) -> str:
        return scn.crm_insert("Contact", FirstName="Ann", LastName=last,
                              Email=f"{last.lower()}@example.com")

    gw_event("keep@t", "GW keep")
    gw_event("gone@t", "GW gone", 1)
    crm_ev = crm_event("CRM ev", 2)
    cole = crm_contact("Cole")
    gone = crm_contact("Gone")
    # Salesforce lists deletions by the whole minute: the CRM deletion below must fall in
    # the minute of the cursor this sync leaves (its listing's time less 5 s), or the run
    # under test sees it only once the clock has passed the next minute.
    while not 6 <= time.time() % 60 <= 45:
        time.sleep(0.5)
    synced = time.time() - 5
    scn.sync(KINDS)
    assert len(scn.records("calendar")) == 3 and len(scn.records("contacts")) == 2

    gw_event("new1@t", "GW new 1", 3)
    gw_event("new2@t", "GW new 2", 4)
    scn.put(Contact(uid="newman@t", full_name="Ann Newman", given_name="Ann",
                    family_name="Newman", emails=["newman@example.com"]))
    crm_event("CRM new", 5)
    crm_contact("Newton")
    crm_contact("Nash")
    scn.edit("keep@t", summary="GW edited")
    scn.crm_update("Event", crm_ev, Subject="CRM edited")
    scn.crm_update("Contact", cole, LastName="Coleman")
    scn.delete("gone@t")
    scn.crm_delete("Contact", gone)
    assert time.time() // 60 == synced // 60, "set-up too slow: the deletion is a minute on"
    # Deletions are listed up to the sandbox's last whole minute: move its clock on so that
    # this one is listed now rather than in a minute.
    clock_on(servers.sandbox, 2)
    return scn


def crmsync(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "crmsync", "--home", str(home), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def killed_run(scn: Scenario, proxy: FaultProxy, side: str, k: int, moment_: str) -> bool:
    """Run ``crmsync sync`` and SIGKILL it when the k-th write to ``side`` is held; False
    when the run ended first (it has fewer writes)."""
    after = moment_ == "after"
    if side == "groupware":
        proxy.hold(k - 1, {"PUT", "DELETE"}, after_forward=after)
    else:
        control(scn.sandbox, "faults", path_regex=r"/sobjects(/|$)",
                method="POST,PATCH,DELETE", status=503, after=after, hold=True, skip=k - 1)
    proc = crmsync(scn.home, "sync", "p", "--yes", "--json")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = (proxy.holding if side == "groupware"
                    else httpx.get(f"{scn.sandbox.url}/_sandbox/stats",
                                   verify=scn.sandbox.ssl_context()).json()["holding"])
            if held:
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate()
                return True
            if proc.poll() is not None:
                out, err = proc.communicate()
                assert proc.returncode == 0, out + err
                return False
            time.sleep(0.02)
        raise AssertionError(f"no hold and no end of the run at {side} write {k}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        proxy.release()
        control(scn.sandbox, "release")
        control(scn.sandbox, "reset")  # the faults, and the clock with them
        clock_on(scn.sandbox)


def converge(scn: Scenario) -> list[str]:
    """Re-run ``crmsync sync`` until a run writes nothing (at most 3 runs); problems.

    The re-runs are in this process (a new store connection and connectors, as a new
    process has), which saves an interpreter start each."""
    for _ in range(3):
        result = scn.cli("sync", "p", "--yes", "--json")
        if result.code != 0:
            return [f"re-run exit {result.code}: {result.stdout[-2000:]}{result.stderr}"]
        objects = json.loads(result.stdout)["objects"]
        runs.append({kind: o["counts"] for kind, o in objects.items()})
        if not any(n for o in objects.values() for n in o["counts"].values()):
            return []
    return ["still writing after 3 re-runs"]


def check(scn: Scenario) -> list[str]:
    """Every expected item once on both sides, one pair per item."""
    problems = []
    try:
        seen = {"groupware calendar": [e.summary for e in scn.records("calendar").values()],
                "groupware contacts": [c.family_name for c in scn.records("contacts").values()]}
    except AssertionError as exc:  # a duplicate UID
        return [str(exc)]
    seen["crm calendar"] = [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")]
    seen["crm contacts"] = [r["LastName"] for r in scn.crm_query("SELECT LastName FROM Contact")]
    for where, found in seen.items():
        expected = EVENTS if where.endswith("calendar") else CONTACTS
        if sorted(found) != sorted(expected):
            problems.append(f"{where}: {sorted(found)} != {sorted(expected)}")
    syncer = scn.syncer()
    try:
        pairs = syncer.store.pair_counts(syncer.profile.id)
        # The killed run is marked aborted by the run after it; none is left "running".
        statuses = [r["status"] for r in syncer.store.runs(syncer.profile.id)]
    finally:
        syncer.close()
        syncer.store.close()
    if pairs != {"calendar": len(EVENTS), "contacts": len(CONTACTS)}:
        problems.append(f"pairs: {pairs}")
    if "running" in statuses or "aborted" not in statuses:
        problems.append(f"run statuses: {statuses}")
    return problems


@pytest.mark.parametrize("moment_", MOMENTS)
@pytest.mark.parametrize("side", ["crm", "groupware"])
def test_kill_at_each_write_converges(servers: Servers, proxy: FaultProxy, tmp_path: Path,
                                      side: str, moment_: str):
    violations: dict[int, list[str]] = {}
    k = 1 if FULL or moment_ == "before" else 2
    while True:
        scn = world(servers, proxy, tmp_path / f"home-{k}")
        try:
            if not killed_run(scn, proxy, side, k, moment_):
                break
            FIGURES["runs killed"] += 1
            FIGURES["write points"] += 1
            problems = converge(scn) or check(scn)
            if problems:
                violations[k] = [*problems, f"re-runs: {runs}"]
                FIGURES["violations"] += 1
        finally:
            scn.close()
        k += 1 if FULL else 2
    assert k > 2, "the run never reached a write point"
    assert not violations, violations
