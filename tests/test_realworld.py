"""The real-world corpus (tests/realworld.py) through three real syncs.

Each leg syncs the corpus from a vdir folder A to another side and back to an empty vdir
folder B with crmsync's own Syncer, then accounts for every item of A:

ok
    it reached B with the same occurrences over the sync range (recurring_ical_events on
    both): start and end instants, summary, location and description;
with reason
    a run report names it, skipped or failed, with a reason (the report is how a user
    learns what did not sync);
out of range
    it has no occurrence in the sync range (every one an EXDATE, say) and is not in B:
    not synced, rightly (SPEC 3), and no report lists such items;
lost
    none of these: it vanished or changed meaning silently;
duplicated
    it reached B more than once, or B holds an item that came from nowhere.

No run may raise; none may be duplicated; a second run of every profile writes nothing;
no file of A changes. None may be lost but the losses the corpus found and that are not
fixed yet (RADICALE_KNOWN, SALESFORCE_KNOWN: the leg xfails naming each, and fails on
any other loss, or once a known one is fixed and still listed). The counts per leg, the
seconds per run and the corpus composition are printed, and written to the file that
$CRMSYNC_REALWORLD_OUT names (`bench/realworld.json` keeps the latest figures:
`CRMSYNC_REALWORLD_OUT=bench/realworld.json pytest tests/test_realworld.py`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from crmsync.connectors.base import Connector, Credentials
from crmsync.connectors.dav import DavConnector
from crmsync.connectors.salesforce import SalesforceConnector
from crmsync.connectors.vdir import VdirConnector
from crmsync.store import Store
from crmsync.sync import Syncer
from test_salesforce import creds

from conftest import require_service
from davservers import DEBIAN_VARIANTS, DavServer, DavServerPool
from realworld import Corpus, build, occurrences, sources
from sfsandbox import control

ZONE = "Europe/Berlin"
KINDS = ("calendar", "tasks")
SETTINGS = {kind: {"timezone": ZONE} for kind in KINDS}
# Every run's "now" (Syncer's clock), and the corpus is shifted next to it: a fixed day,
# so that the items land in the same season (DST) whenever the test runs.
NOW = datetime(2026, 11, 22, tzinfo=UTC)
LO, HI = NOW - timedelta(days=30), NOW + timedelta(days=365)
# A test run leaves the checkout as it was: the figures are written only when asked for.
SUMMARY = os.environ.get("CRMSYNC_REALWORLD_OUT")
RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    found, missing = sources()
    if missing:
        require_service("the real-world corpus", "; ".join(missing))
    return build(NOW, found)


@pytest.fixture(scope="module")
def reference(corpus: Corpus) -> dict[str, list[Any] | None]:
    """Each item's occurrences, or None where recurring_ical_events cannot expand it."""
    out: dict[str, list[Any] | None] = {}
    for kind, items in corpus.items.items():
        for name, data in items.items():
            try:
                out[name] = expand(data, kind)
            except Exception:
                out[name] = None
    return out


def expand(data: bytes, kind: str) -> list[Any]:
    """The occurrences of an item over the sync range: as it is; else without properties
    that have no value (an empty EXDATE), which icalendar refuses and crmsync reads as
    absent. Raises when neither can be expanded."""
    try:
        return occurrences(data, kind, LO, HI, ZoneInfo(ZONE))
    except Exception:
        return occurrences(_EMPTY.sub(b"", data), kind, LO, HI, ZoneInfo(ZONE))


_EMPTY = re.compile(rb"^[A-Za-z-]+(?:;[^:\r\n]*)?:[ \t]*\r?\n", re.MULTILINE)


@pytest.fixture(scope="module", autouse=True)
def summary(corpus: Corpus) -> Iterator[None]:
    RESULTS.clear()
    print("\ncorpus:", json.dumps(corpus.composition()))
    yield
    if SUMMARY:
        Path(SUMMARY).write_text(json.dumps({"corpus": corpus.composition(), "legs": RESULTS},
                                           indent=1, sort_keys=True) + "\n")


# --- one profile, run twice -----------------------------------------------------------------


class Hop:
    """One profile between two sides; the pairs it made and the reasons it gave."""

    def __init__(self, tmp: Path, name: str, crm: Connector, groupware: Connector) -> None:
        self.store = Store.open(f"sqlite:///{tmp / f'{name}.db'}")
        profile = self.store.add_profile(name, "vdir:/unused/crm", "vdir:/unused/gw", KINDS,
                                         SETTINGS)
        self.syncer = Syncer(self.store, profile, crm=crm, groupware=groupware,
                             clock=lambda: NOW)
        self.reasons: dict[tuple[str, str], str] = {}  # (side, id) -> reason

    def run(self) -> dict[str, Any]:
        report = self.syncer.run(self.syncer.prepare()).to_dict()
        assert report["error"] is None and report["status"] in ("ok", "partial"), report
        for kind in report["objects"].values():
            for i in kind["items"]:
                # (a warning: written, with what the side did not keep)
                if i["outcome"] in ("failed", "skipped", "warning") and i["reason"]:
                    for side, key in (("crm", "crm_id"), ("groupware", "groupware_id")):
                        if i[key]:
                            self.reasons[(side, i[key])] = i["reason"]
        return report

    def pairs(self, kind: str) -> list[tuple[str | None, str | None]]:
        return [(p.crm_id, p.gw_id) for p in self.store.pairs(self.syncer.profile.id, kind)]

    def close(self) -> None:
        self.syncer.close()
        self.store.close()


def writes(report: dict[str, Any]) -> dict[str, int]:
    return {k: n for o in report["objects"].values() for k, n in o["counts"].items()
            if n and k.split(":")[0] in ("create", "update", "delete")}


def fill(folder: Path, corpus: Corpus) -> dict[str, bytes]:
    for kind, items in corpus.items.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for name, data in items.items():
            (folder / kind / name).write_bytes(data)
    return {p.name: p.read_bytes() for p in folder.rglob("*.ics")}


# --- accounting ---------------------------------------------------------------------------


View = Callable[[str, list[Any]], list[Any]]


def whole(kind: str, occurrences: list[Any]) -> list[Any]:
    return occurrences


def salesforce_view(kind: str, occurrences: list[Any]) -> list[Any]:
    """What a Salesforce Task holds (SPEC 5: subject, due date, description; no start, no
    time of day): tasks compare by those, in the user's zone; events as they are."""
    if kind != "tasks":
        return occurrences
    return [(_day(due), summary, description)
            for _, due, summary, _, description in occurrences]


def _day(value: str) -> str:
    if "T" not in value:
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(
        ZoneInfo(ZONE)).date().isoformat()


def account(corpus: Corpus, reference: dict[str, list[Any] | None], b: Path,
            chain: Callable[[str, str], tuple[list[str], str | None]],
            view: View = whole) -> dict[str, Any]:
    """Every item of A: ok, with reason, lost or duplicated. ``chain(kind, name)`` gives
    the names in B the item became and a reason a report gave for it; ``view`` what of
    the occurrences the other side can hold."""
    outcome: dict[str, str] = {}
    detail: dict[str, str] = {}
    reached: Counter[str] = Counter()
    for kind, items in corpus.items.items():
        for name, data in items.items():
            names, reason = chain(kind, name)
            reached.update((kind, n) for n in names)  # type: ignore[arg-type]
            if len(names) > 1:
                outcome[name] = "duplicated"
            elif names and _same(reference[name], data, (b / kind / names[0]).read_bytes(),
                                 kind, view):
                outcome[name] = "ok"
            elif reason:
                outcome[name], detail[name] = "with reason", reason
            elif not names and reference[name] == []:
                # No occurrence in the range (all of them EXDATEs, say): not synced, rightly.
                outcome[name] = "out of range"
            else:
                outcome[name] = "lost"
                detail[name] = _difference(reference[name], data,
                                           (b / kind / names[0]).read_bytes(), kind, view) \
                    if names else "not in B, no reason given"
    strays = [f"{kind}/{p.name}" for kind in KINDS for p in (b / kind).glob("*.ics")
              if reached[(kind, p.name)] == 0]  # type: ignore[index]
    counts = Counter(outcome.values())
    reasons = Counter(_gist(r) for r in detail.values() if not r.startswith(("differs", "not ")))
    return {"counts": {k: counts.get(k, 0) for k in ("ok", "with reason", "out of range",
                                                      "lost", "duplicated")},
            "strays in B": strays,
            "lost": {n: detail[n] for n, o in outcome.items() if o == "lost"},
            "duplicated": sorted(n for n, o in outcome.items() if o == "duplicated"),
            "reasons": dict(reasons.most_common()),
            # our own hostile files, one by one: what became of each
            "own": {n: (f"{o}: {detail[n]}" if n in detail else o)[:160]
                    for n, o in sorted(outcome.items()) if n.startswith("own-")}}


def merged(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"counts": Counter(), "strays in B": [], "lost": {},
                           "duplicated": [], "reasons": Counter(), "own": {}}
    for one in results:
        out["counts"].update(one["counts"])
        out["strays in B"] += one["strays in B"]
        out["lost"].update(one["lost"])
        out["duplicated"] += one["duplicated"]
        out["reasons"].update(one["reasons"])
        out["own"].update(one["own"])
    out["counts"] = dict(out["counts"])
    out["reasons"] = dict(out["reasons"].most_common())
    return out


def _difference(expected: list[Any] | None, source: bytes, result: bytes, kind: str,
                view: View) -> str:
    """The first occurrence that differs, for the assertion message."""
    if expected is None:
        return "differs in B (not expandable: not a verbatim copy)"
    try:
        got = view(kind, expand(result, kind))
    except Exception as exc:
        return f"differs in B: cannot expand the copy ({exc})"
    expected = view(kind, expected)
    wrong = next((i for i, (e, g) in enumerate(zip(expected, got, strict=False)) if e != g),
                 min(len(expected), len(got)))
    return (f"differs in B: {len(expected)} occurrences, {len(got)} in B; #{wrong}: "
            f"{expected[wrong:wrong + 1]} -> {got[wrong:wrong + 1]}")[:400]


def _same(expected: list[Any] | None, source: bytes, result: bytes, kind: str,
          view: View) -> bool:
    if expected is None:  # not expandable by the reference: only a verbatim copy is the same
        return _lines(source) == _lines(result)
    try:
        return view(kind, expand(result, kind)) == \
            view(kind, expected)
    except Exception:
        return False


def _lines(data: bytes) -> list[bytes]:
    """An item's content lines, unfolded and in order, but for the kept CRM id that the
    copy gains (X-CRMSYNC-CRM-ID) and the order of a component's properties, which a
    server may change (Xandikos, DAViCal), nor a CLASS:PUBLIC a server adds (SOGo), which
    RFC 5545 makes the default: a verbatim copy, as far as meaning goes."""
    unfolded = re.sub(rb"\r?\n[ \t]", b"", data.replace(b"\r\n", b"\n"))
    return sorted(line for line in unfolded.split(b"\n")
                  if line and line.upper() != b"CLASS:PUBLIC"
                  and not line.upper().startswith(b"X-CRMSYNC-CRM-ID"))


def _gist(reason: str) -> str:
    """A reason without the item's own details, to count reasons by kind."""
    if reason.startswith("cannot read item "):
        reason = reason.split(": ", 1)[-1]
    return re.sub(r"'[^']*'|\d+", "_", reason)[:90]


def record(leg: str, result: dict[str, Any], seconds: dict[str, float]) -> None:
    result["seconds"] = seconds
    RESULTS[leg] = result
    print(f"\n{leg}: {json.dumps(result['counts'])}; seconds {json.dumps(seconds)}; "
          f"reasons {json.dumps(result['reasons'])}")


def check(leg: str, result: dict[str, Any], known: dict[str, str] | None = None) -> None:
    """No item duplicated; none lost but the ``known`` losses, which are failures
    recorded (xfail, with their cause) until fixed: then they must leave the list."""
    message = json.dumps(result, indent=1)[:6000]
    assert result["counts"]["duplicated"] == 0 and not result["strays in B"], message
    lost = set(result["lost"])
    known = known or {}
    assert not lost - known.keys(), message
    assert not known.keys() - lost, f"no longer lost, take them off the list: " \
        f"{sorted(known.keys() - lost)}"
    if lost:
        pytest.xfail(f"{leg}: {len(lost)} items lost, known: " + "; ".join(
            f"{name}: {known[name]}" for name in sorted(lost)))


# Losses found by the corpus and not fixed yet: item -> cause. Each fails the leg
# (xfail) until fixed; a fixed one must be taken off (the leg fails until it is).
RADICALE_KNOWN: dict[str, str] = {}  # none left
SALESFORCE_KNOWN: dict[str, str] = {}  # none left


def through(first: Hop, second: Hop | None, mid_side: str
            ) -> Callable[[str, str], tuple[list[str], str | None]]:
    """A's item -> B's items via the pairs of both hops (A is the groupware of
    ``first``; B the groupware of ``second``, or the CRM of ``first`` alone)."""
    cache: dict[str, Any] = {}

    def chain(kind: str, name: str) -> tuple[list[str], str | None]:
        if kind not in cache:
            one = first.pairs(kind)
            two = second.pairs(kind) if second else []
            cache[kind] = (one, two)
        one, two = cache[kind]
        middle = [c for c, g in one if g == name and c]
        reason = first.reasons.get(("groupware", name))
        if second is None:
            return middle, reason
        ids = [g for c, g in two if c in middle and g]
        for m in middle:
            reason = reason or second.reasons.get(("crm", m)) \
                or first.reasons.get(("crm", m))
        return ids, reason

    return chain


def legs(a: Path, hops: list[Hop]) -> tuple[dict[str, float], dict[str, bytes]]:
    """Run every hop, then every hop again: the second runs write nothing. The seconds
    each run took, and A's files afterwards."""
    seconds = {}
    for again in (False, True):
        for hop in hops:
            started = time.monotonic()
            report = hop.run()
            name = hop.syncer.profile.name + (" again" if again else "")
            seconds[name] = round(time.monotonic() - started, 1)
            if again:
                assert writes(report) == {}, (name, writes(report))
    return seconds, {p.name: p.read_bytes() for p in a.rglob("*.ics")}


# --- the legs ----------------------------------------------------------------------------


def test_vdir_to_vdir(corpus: Corpus, reference: dict[str, Any], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for kind in KINDS:
        (b / kind).mkdir(parents=True)
    before = fill(a, corpus)
    hop = Hop(tmp_path, "vdir", VdirConnector(b, "crm"), VdirConnector(a, "groupware"))
    try:
        seconds, after = legs(a, [hop])
        result = account(corpus, reference, b, through(hop, None, "crm"))
    finally:
        hop.close()
    record("vdir -> vdir", result, seconds)
    assert after == before
    check("vdir -> vdir", result)


# Radicale checks a new item's UID against every item of its collection, so one PUT costs
# time in proportion to the collection: the corpus goes through in shards, one collection
# (and one pair of profiles) each, as a user with several calendars would have it.
SHARDS = 8


def test_vdir_to_radicale_to_vdir(corpus: Corpus, reference: dict[str, Any],
                                  radicale_server: DavServer, tmp_path: Path) -> None:
    through_dav(corpus, reference, radicale_server, tmp_path, "Radicale", RADICALE_KNOWN)


# The other servers (Xandikos from PyPI; Cyrus, DAViCal and SOGo from Debian's packages,
# see tests/servers/): every OTHER_SERVERS_EVERY-th item of the corpus by default, to keep
# the suite's time; CRMSYNC_REALWORLD_ALL=1 takes every item.
OTHER_SERVERS_EVERY = 1 if os.environ.get("CRMSYNC_REALWORLD_ALL") == "1" else 6


@pytest.mark.parametrize("name", ["xandikos", *DEBIAN_VARIANTS])
def test_vdir_to_each_dav_server_to_vdir(corpus: Corpus, reference: dict[str, Any],
                                         dav_server_pool: DavServerPool, name: str,
                                         tmp_path: Path) -> None:
    server = dav_server_pool.get(name)
    through_dav(corpus.sample(OTHER_SERVERS_EVERY), reference, server, tmp_path, name)


def through_dav(corpus: Corpus, reference: dict[str, Any], server: DavServer,
                tmp_path: Path, leg_name: str, known: dict[str, str] | None = None) -> None:
    results, seconds = [], {}
    for n, shard in enumerate(corpus.shards(SHARDS)):
        a, b = tmp_path / f"a{n}", tmp_path / f"b{n}"
        for kind in KINDS:
            (b / kind).mkdir(parents=True)
        before = fill(a, shard)
        url = server.make_collection("calendar")
        creds = Credentials(server.username, server.password) if server.username else None
        first = Hop(tmp_path, f"to-dav-{n}", DavConnector(url, "crm", protocol="caldav",
                                                          credentials=creds),
                    VdirConnector(a, "groupware"))
        second = Hop(tmp_path, f"from-dav-{n}", DavConnector(url, "crm", protocol="caldav",
                                                             credentials=creds),
                     VdirConnector(b, "groupware"))
        try:
            took, after = legs(a, [first, second])
            results.append(account(shard, reference, b, through(first, second, "crm")))
        finally:
            first.close()
            second.close()
        assert after == before
        for name, t in took.items():
            key = name.replace(f"-{n}", "")
            seconds[key] = round(seconds.get(key, 0) + t, 1)
    result = merged(results)
    record(f"vdir -> {leg_name} -> vdir", result, seconds)
    check(f"vdir -> {leg_name} -> vdir", result, known)


@pytest.fixture(scope="module")
def sandbox():
    from crmsync.sandbox.server import Sandbox

    with Sandbox() as sb:
        yield sb


def test_vdir_to_salesforce_to_vdir(corpus: Corpus, reference: dict[str, Any], sandbox,
                                    tmp_path: Path) -> None:
    control(sandbox, "reset", records=True)
    a, b = tmp_path / "a", tmp_path / "b"
    for kind in KINDS:
        (b / kind).mkdir(parents=True)
    before = fill(a, corpus)
    first = Hop(tmp_path, "to-sf", SalesforceConnector(sandbox.url, credentials=creds(sandbox)),
                VdirConnector(a, "groupware"))
    second = Hop(tmp_path, "from-sf",
                 SalesforceConnector(sandbox.url, credentials=creds(sandbox)),
                 VdirConnector(b, "groupware"))
    try:
        seconds, after = legs(a, [first, second])
        result = account(corpus, reference, b, through(first, second, "crm"),
                         salesforce_view)
    finally:
        first.close()
        second.close()
    record("vdir -> Salesforce -> vdir", result, seconds)
    assert after == before
    check("vdir -> Salesforce -> vdir", result, SALESFORCE_KNOWN)
