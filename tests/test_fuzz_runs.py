"""Hunting for runs that stop (exit 1) on one bad item (issue 16): hypothesis writes hostile
calendar items into a groupware folder (mutated corpus files, random content lines,
random property values, random component nesting) beside a few good ones, and runs whole
syncs: to a vdir CRM, and (fewer examples) to the Salesforce sandbox.

Each run must end without an exception, with every item synced, reported with a reason,
or left out by the rules (outside the range, excluded); nothing in the groupware is
rewritten or lost, every good item arrives, and a second run creates nothing.

Derandomized: a failure replays as it is. ``CRMSYNC_FUZZ_EXAMPLES=N`` runs N examples
per test (default: a number that takes well under a minute on a loaded machine).
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync import formats, rules
from crmsync.connectors.salesforce import SalesforceConnector
from crmsync.connectors.vdir import VdirConnector
from crmsync.errors import FormatError
from crmsync.formats import contentlines
from crmsync.policy import Policy
from crmsync.store import Store
from crmsync.sync import Syncer
from test_salesforce import api, creds

from sfsandbox import control

CORPUS = Path(__file__).with_name("corpus")
SEEDS = sorted(p.read_bytes() for p in CORPUS.glob("*.ics") if p.stat().st_size < 10_000)
NOW = datetime(2026, 11, 22, tzinfo=UTC)
SETTINGS = {"calendar": {"timezone": "Europe/Berlin"}}
EXAMPLES = int(os.environ.get("CRMSYNC_FUZZ_EXAMPLES", "0"))

PROPS = ["DTSTART", "DTEND", "DURATION", "RRULE", "RDATE", "EXDATE", "RECURRENCE-ID",
         "UID", "SUMMARY", "DESCRIPTION", "LOCATION", "ATTENDEE", "ORGANIZER", "CLASS",
         "CATEGORIES", "TRANSP", "STATUS", "X-CRMSYNC-CRM-ID", "TZID", "BEGIN", "END"]
PARAMS = ["", ";VALUE=DATE", ";TZID=Europe/Berlin", ";TZID=Mars/Base", ";VALUE=PERIOD",
          ";CN=\"a;b\"", ";X-Y=1,2", ";TZID="]
VALUES = ["", "20261210", "20261210T090000", "20261210T090000Z", "2026-12-10",
          "FREQ=WEEKLY", "FREQ=DAILY;COUNT=3", "FREQ=MONTHLY;BYDAY=-1MO", "FREQ=", "FREQ=X",
          "FREQ=WEEKLY;UNTIL=20261201", "FREQ=YEARLY;BYWEEKNO=60", "FREQ=WEEKLY;BYFOO=1",
          "FREQ=DAILY;INTERVAL=0", "FREQ=MONTHLY;BYSETPOS=400", "FREQ=HOURLY;BYHOUR=25",
          "FREQ=WEEKLY;COUNT=-1", "FREQ=DAILY;UNTIL=2026", "PT1H", "-P1D", "P",
          "mailto:a@b.example", "PRIVATE", "DoNotSync", "VEVENT", "VALARM", "VCALENDAR",
          "\\", ";;;", ",", "x" * 300]
COMPONENTS = ["VEVENT", "VALARM", "VTIMEZONE", "STANDARD", "VTODO", "VJOURNAL", "X-A",
              "VCALENDAR"]


def good(n: int) -> str:
    return "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//fuzz//EN", "BEGIN:VEVENT",
        f"UID:good-{n}@fuzz", "DTSTAMP:20261101T000000Z",
        f"DTSTART:202612{10 + n:02}T090000Z", f"DTEND:202612{10 + n:02}T100000Z",
        f"SUMMARY:Good {n}", "END:VEVENT", "END:VCALENDAR", ""])


def wrap(uid: str, body: list[str]) -> str:
    """``body`` inside a VEVENT that would otherwise be a good item."""
    return "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//fuzz//EN", "BEGIN:VEVENT",
        f"UID:{uid}", "DTSTAMP:20261101T000000Z", "DTSTART:20261205T090000Z",
        "DTEND:20261205T100000Z", f"SUMMARY:Hostile {uid}", *body, "END:VEVENT",
        "END:VCALENDAR", ""])


mutated = st.builds(
    lambda seed, cuts: _cut(seed, cuts), st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 40), st.binary(max_size=12)),
             min_size=1, max_size=4))
lines = st.lists(st.builds(lambda p, a, v: f"{p}{a}:{v}", st.sampled_from(PROPS),
                           st.sampled_from(PARAMS), st.sampled_from(VALUES) | st.text(
                               max_size=30)), min_size=1, max_size=6)
raw_lines = st.lists(st.text(max_size=40), min_size=1, max_size=6)
nesting = st.lists(st.tuples(st.booleans(), st.sampled_from(COMPONENTS)), min_size=1,
                   max_size=12)


def _cut(seed: bytes, cuts: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for at, length, insert in cuts:
        at %= len(data) + 1
        data[at:at + length] = insert
    return bytes(data)


@st.composite
def hostile_item(draw: Any, n: int) -> bytes:
    how = draw(st.sampled_from(["mutated", "lines", "raw", "nesting"]))
    if how == "mutated":
        return draw(mutated)
    # Its own UID, or one it shares with another item (hostile or good).
    uid = draw(st.sampled_from([f"hostile-{n}@fuzz", "shared@fuzz", "good-1@fuzz"]))
    if how == "lines":
        return wrap(uid, draw(lines)).encode()
    if how == "raw":
        return wrap(uid, draw(raw_lines)).encode("utf-8", "surrogatepass")
    body = [f"{'BEGIN' if begin else 'END'}:{name}" for begin, name in draw(nesting)]
    return wrap(uid, body).encode()


@st.composite
def folders(draw: Any) -> dict[str, bytes]:
    """A groupware calendar folder: 1-4 hostile items and two good ones."""
    count = draw(st.integers(1, 4))
    files = {f"hostile-{n}.ics": draw(hostile_item(n)) for n in range(count)}
    files.update({f"good-{n}.ics": good(n).encode() for n in range(2)})
    return files


def considered(data: bytes) -> bool:
    """Whether the rules consider this item at all (else it is rightly left out, without
    a report): unreadable items are, and must be reported."""
    try:
        record = formats.parse(formats.ICALENDAR, "calendar", contentlines.decode(data))
    except (UnicodeDecodeError, FormatError):
        return True
    except Exception:  # noqa: BLE001 - a reader's bug: crmsync must report it
        return True
    policy = Policy.of_profile("calendar", SETTINGS["calendar"])
    try:
        return rules.in_range(policy, record, NOW) and rules.exclusion(policy, record) is None
    except Exception:  # noqa: BLE001 - the rule fails on it: crmsync must report it
        return True


def check_run(syncer: Syncer, store: Store, gw: Path, files: dict[str, bytes],
              crm_count: Any) -> None:
    report = syncer.run(syncer.prepare()).to_dict()  # no exception may escape
    assert report["error"] is None and report["status"] in ("ok", "partial"), report
    told = {i["groupware_id"] for o in report["objects"].values() for i in o["items"]}
    paired = {p.gw_id for p in store.pairs(syncer.profile.id, "calendar")}
    for name, data in files.items():
        assert name in paired or name in told or not considered(data), (name, report)
    for n in range(2):
        assert f"good-{n}.ics" in paired, report
    # Nothing in the groupware was rewritten or removed.
    assert {p.name: p.read_bytes() for p in gw.iterdir()} == files
    created = crm_count()
    again = syncer.run(syncer.prepare()).to_dict()
    assert again["error"] is None, again
    assert not any(k.startswith("create") for o in again["objects"].values()
                   for k in o["counts"]), again
    assert crm_count() == created


def examples(default: int) -> int:
    return EXAMPLES or default


@settings(max_examples=examples(25), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=folders())
def test_hostile_items_never_stop_a_vdir_run(files: dict[str, bytes]):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gw = root / "groupware" / "calendar"
        gw.mkdir(parents=True)
        (root / "crm").mkdir()
        for name, data in files.items():
            (gw / name).write_bytes(data)
        store = Store.open(f"sqlite:///{root / 'state.db'}")
        try:
            profile = store.add_profile("fuzz", f"vdir:{root / 'crm'}",
                                        f"vdir:{root / 'groupware'}", ("calendar",),
                                        SETTINGS)
            syncer = Syncer(store, profile, clock=lambda: NOW)
            check_run(syncer, store, gw, files,
                      lambda: len(list((root / "crm" / "calendar").iterdir())))
        finally:
            store.close()


@pytest.fixture(scope="module")
def sandbox():
    from crmsync.sandbox.server import Sandbox

    with Sandbox() as sb:
        yield sb


def test_hostile_items_never_stop_a_salesforce_run(sandbox):
    def events() -> int:
        return len(api(sandbox, "GET", "query?q=SELECT+Id+FROM+Event").json()["records"])

    @settings(max_examples=examples(6), deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(files=folders())
    def run(files: dict[str, bytes]) -> None:
        control(sandbox, "reset", records=True)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            gw = root / "groupware" / "calendar"
            gw.mkdir(parents=True)
            for name, data in files.items():
                (gw / name).write_bytes(data)
            store = Store.open(f"sqlite:///{root / 'state.db'}")
            profile = store.add_profile("fuzz", f"salesforce:{sandbox.url}",
                                        f"vdir:{root / 'groupware'}", ("calendar",),
                                        SETTINGS)
            syncer = Syncer(store, profile,
                            crm=SalesforceConnector(sandbox.url, credentials=creds(sandbox)),
                            groupware=VdirConnector(root / "groupware", "groupware"),
                            clock=lambda: NOW)
            try:
                check_run(syncer, store, gw, files, events)
            finally:
                syncer.close()
                store.close()

    run()
