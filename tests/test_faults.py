"""Fault injection: seeded random runs with faults on both sides must end converged.

Each run is a world of its own (a fresh Radicale calendar and address book, or Outlook's
emptied mailbox in the Graph sandbox; an empty sandbox CRM) reached through two chaos
:class:`FaultProxy` instances: one in front of the groupware (for Graph listening with TLS
on the sandbox's certificate, as the connector speaks https only; its login goes direct),
one in front of the Salesforce sandbox (TLS upstream; the token answer's instance_url
points at the proxy). Users on both sides create, edit and delete events and
contacts between syncs, and sometimes between a run's plan and its apply. Runs may fail
or be partial; none may crash. Then the faults stop, the profile syncs until quiet and the
invariants must hold: every item on each side has exactly one counterpart with the same
content, no side has duplicates, nothing a user did not delete is lost, and a last plan
does nothing.

``CRMSYNC_FAULT_SEED=N`` replays one seed; ``CRMSYNC_FAULT_RUNS=N`` runs N seeds
(default a few); ``python bench/faults.py`` prints a JSON summary of many.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from crmsync.config import Paths
from crmsync.connectors import dav
from crmsync.errors import CrmsyncError
from crmsync.graphsandbox.server import GraphSandbox
from crmsync.model import Contact, Event, moment
from crmsync.secrets import SecretStore, save_credentials
from graphsandbox import GraphUser, delegated, gcontrol, server_tls
from scenario import PROFILE, Scenario, Servers, sf_time

from davservers import FaultProxy
from sfsandbox import clock_on

KINDS = ("calendar", "contacts")
SYNCS = 4  # faulty syncs per run
QUIET = 3  # syncs without faults allowed to converge


def _seeds(default: int = 3) -> list[int]:
    if "CRMSYNC_FAULT_SEED" in os.environ:
        return [int(os.environ["CRMSYNC_FAULT_SEED"])]
    return list(range(1, int(os.environ.get("CRMSYNC_FAULT_RUNS", str(default))) + 1))


Row = tuple[str, str, tuple[str, ...]]  # (the side's id, token, content)


class RadicaleSide:
    """The groupware side in Radicale, through the scenario's collections."""

    def __init__(self, scn: Scenario) -> None:
        self.scn = scn

    def rows(self, kind: str) -> list[Row]:
        return [(uid, _token(kind, r), _gw_content(kind, r))
                for uid, r in self.scn.records(kind).items()]  # type: ignore[arg-type]

    def create(self, kind: str, token: str, version: str,
               when: tuple[datetime, datetime]) -> None:
        if kind == "calendar":
            self.scn.put(Event(uid=f"{token}@gw", summary=f"{token} {version}",
                               start=moment(when[0]), end=moment(when[1])))
        else:
            self.scn.put(Contact(uid=f"{token}@gw", full_name=f"{version} {token}",
                                 given_name=version, family_name=token,
                                 emails=[f"{token}.{version}@example.test"]))

    def update(self, kind: str, uid: str, token: str, version: str,
               when: tuple[datetime, datetime]) -> None:
        if kind == "calendar":
            self.scn.edit(uid, kind, summary=f"{token} {version}", start=moment(when[0]),
                          end=moment(when[1]))
        else:
            self.scn.edit(uid, kind, given_name=version, full_name=f"{version} {token}",
                          emails=[f"{token}.{version}@example.test"])

    def delete(self, kind: str, uid: str) -> None:
        self.scn.delete(uid, kind)

    def close(self) -> None:
        pass


class GraphSide:
    """The groupware side in Outlook (the Graph sandbox), changed as its user would."""

    def __init__(self, graph: GraphSandbox, start: datetime) -> None:
        self.user = GraphUser(graph)
        self.window = {"startDateTime": (start - timedelta(days=1)).isoformat(),
                       "endDateTime": (start + timedelta(days=30)).isoformat()}

    @staticmethod
    def _path(kind: str) -> str:
        return "/me/events" if kind == "calendar" else "/me/contacts"

    @staticmethod
    def _body(kind: str, token: str, version: str,
              when: tuple[datetime, datetime]) -> dict[str, Any]:
        if kind == "calendar":
            return {"subject": f"{token} {version}",
                    "start": {"dateTime": when[0].strftime("%Y-%m-%dT%H:%M:%S"),
                              "timeZone": "UTC"},
                    "end": {"dateTime": when[1].strftime("%Y-%m-%dT%H:%M:%S"),
                            "timeZone": "UTC"}}
        return {"givenName": version, "surname": token, "displayName": f"{version} {token}",
                "emailAddresses": [{"address": f"{token}.{version}@example.test"}]}

    def rows(self, kind: str) -> list[Row]:
        out: list[Row] = []
        # A fresh delta round lists every item (the sandbox has no plain list).
        path = (f"/me/calendarView/delta?{urlencode(self.window)}" if kind == "calendar"
                else "/me/contacts/delta")
        page = self.user("GET", path)
        while True:
            for item in page["value"]:
                if "@removed" in item:
                    continue
                if kind == "calendar":
                    out.append((item["id"], item["subject"].split()[0], (
                        item["subject"], _graph_instant(item["start"]),
                        _graph_instant(item["end"]))))
                else:
                    emails = ",".join(e["address"] for e in item.get("emailAddresses") or [])
                    out.append((item["id"], item["surname"],
                                (item.get("givenName") or "", item["surname"], emails)))
            if not page.get("@odata.nextLink"):
                return out
            page = self.user("GET", page["@odata.nextLink"])

    def create(self, kind: str, token: str, version: str,
               when: tuple[datetime, datetime]) -> None:
        self.user("POST", self._path(kind), self._body(kind, token, version, when))

    def update(self, kind: str, item_id: str, token: str, version: str,
               when: tuple[datetime, datetime]) -> None:
        self.user("PATCH", f"{self._path(kind)}/{item_id}",
                  self._body(kind, token, version, when))

    def delete(self, kind: str, item_id: str) -> None:
        self.user("DELETE", f"{self._path(kind)}/{item_id}")

    def close(self) -> None:
        self.user.close()


def _graph_instant(value: dict[str, str]) -> str:
    assert value["timeZone"] == "UTC", value
    return datetime.fromisoformat(value["dateTime"][:19]).replace(tzinfo=UTC).isoformat()


@dataclass
class Outcome:
    seed: int
    requests: int = 0
    injected: Counter[str] = field(default_factory=Counter)  # "side:fault" -> how many
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


class World:
    """One seeded run: the scenario behind two chaos proxies and the users' bookkeeping."""

    def __init__(self, servers: Servers, home: Path, seed: int, rate: float,
                 graph: GraphSandbox | None = None) -> None:
        """The groupware is Radicale, or with ``graph`` Outlook (the Graph sandbox: its
        API through the proxy, its login direct)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.crm_proxy = FaultProxy(servers.sandbox.url, chaos=random.Random(seed * 7 + 2),
                                    rate=rate, upstream_tls=servers.sandbox.ssl_context())
        self.start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        self.gw: RadicaleSide | GraphSide
        if graph is None:
            self.gw_proxy = FaultProxy(servers.radicale.url,
                                       chaos=random.Random(seed * 7 + 1), rate=rate)
            self.scn = Scenario(servers, home, KINDS, via=self.gw_proxy.translate,
                                crm_url=self.crm_proxy.origin)
            self.gw = RadicaleSide(self.scn)
        else:  # Outlook: only Graph's API goes through the proxy, its login is direct
            self.gw_proxy = FaultProxy(graph.url, chaos=random.Random(seed * 7 + 1),
                                       rate=rate, upstream_tls=graph.ssl_context(),
                                       server_tls=server_tls(graph))
            self.scn = Scenario(servers, home, KINDS, crm_url=self.crm_proxy.origin,
                                groupware=f"msgraph:me?graph_url={self.gw_proxy.origin}")
            save_credentials(SecretStore(Paths.resolve(home)), PROFILE, "groupware",
                             delegated(graph))
            self.gw = GraphSide(graph, self.start)
        self.next_token = 0
        self.deleted: set[str] = set()  # tokens a user deleted on some side
        self.created: set[str] = set()
        self.outcome = Outcome(seed)

    def close(self) -> None:
        self.gw.close()
        self.scn.close()
        self.gw_proxy.close()
        self.crm_proxy.close()

    # --- users ------------------------------------------------------------------------

    def _token(self, kind: str) -> str:
        self.next_token += 1
        token = f"{'e' if kind == 'calendar' else 'c'}{self.seed}x{self.next_token}"
        self.created.add(token)
        return token

    def _when(self) -> tuple[datetime, datetime]:
        begin = self.start + timedelta(days=self.rng.randint(1, 20),
                                       hours=self.rng.randint(0, 10))
        return begin, begin + timedelta(minutes=30 * self.rng.randint(1, 4))

    def gw_items(self, kind: str) -> dict[str, str]:
        """token -> id of the groupware's items of ``kind``."""
        return {token: item_id for item_id, token, _ in self.gw.rows(kind)}

    def crm_items(self, kind: str) -> dict[str, str]:
        """token -> Id of the CRM's records of ``kind``."""
        if kind == "calendar":
            rows = self.scn.crm_query("SELECT Id, Subject FROM Event")
            return {r["Subject"].split()[0]: r["Id"] for r in rows}
        rows = self.scn.crm_query("SELECT Id, LastName FROM Contact")
        return {r["LastName"]: r["Id"] for r in rows}

    def gw_edit(self) -> None:
        kind = self.rng.choice(KINDS)
        items = self.gw_items(kind)
        action = self.rng.choice(["create", "update", "delete"] if items else ["create"])
        version = f"v{self.rng.randint(1, 999)}"
        if action == "create":
            self.gw.create(kind, self._token(kind), version, self._when())
            return
        token = self.rng.choice(sorted(items))
        if action == "delete":
            self.deleted.add(token)
            self.gw.delete(kind, items[token])
        else:
            self.gw.update(kind, items[token], token, version, self._when())

    def crm_edit(self) -> None:
        kind = self.rng.choice(KINDS)
        items = self.crm_items(kind)
        action = self.rng.choice(["create", "update", "delete"] if items else ["create"])
        version = f"v{self.rng.randint(1, 999)}"
        obj = "Event" if kind == "calendar" else "Contact"
        if action == "delete":
            token = self.rng.choice(sorted(items))
            self.deleted.add(token)
            self.scn.crm_delete(obj, items[token])
            return
        if kind == "calendar":
            begin, end = self._when()
            token = self._token(kind) if action == "create" else self.rng.choice(sorted(items))
            fields = {"Subject": f"{token} {version}", "StartDateTime": sf_time(begin),
                      "EndDateTime": sf_time(end)}
        else:
            token = self._token(kind) if action == "create" else self.rng.choice(sorted(items))
            fields = {"FirstName": version, "LastName": token,
                      "Email": f"{token}.{version}@example.test"}
        if action == "create":
            self.scn.crm_insert(obj, **fields)
        else:
            self.scn.crm_update(obj, items[token], **fields)

    def edits(self, count: int) -> None:
        for _ in range(count):
            (self.gw_edit if self.rng.random() < 0.5 else self.crm_edit)()

    # --- syncing ----------------------------------------------------------------------

    def sync(self, edit_between: bool) -> dict[str, int] | None:
        """One run (plan, maybe user edits, apply); the plan's counts, None if it failed."""
        syncer = self.scn.syncer()
        try:
            prepared = syncer.prepare(list(KINDS))
            counts: dict[str, int] = Counter()
            for p in prepared:
                counts.update(p.plan.counts())
            if edit_between:
                self.edits(self.rng.randint(1, 3))
            report = syncer.run(prepared)
            if report.status != "ok":
                self.outcome.errors.append(f"{report.status}: {report.error}")
            return dict(counts)
        except CrmsyncError as exc:
            self.outcome.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            syncer.close()
            syncer.store.close()

    def run(self, syncs: int = SYNCS) -> Outcome:
        self.edits(self.rng.randint(3, 8))
        for _ in range(syncs):
            self.sync(edit_between=self.rng.random() < 0.4)
            self.edits(self.rng.randint(0, 4))
        self.outcome.injected = Counter(
            {f"{side}:{name}": n for side, proxy in (("groupware", self.gw_proxy),
                                                     ("crm", self.crm_proxy))
             for name, n in proxy.injected.items()})
        self.outcome.requests = len(self.gw_proxy.requests) + len(self.crm_proxy.requests)
        self.gw_proxy.rate = self.crm_proxy.rate = 0.0
        # Salesforce lists deletions up to its last whole minute: move the sandbox's clock
        # past it, so that the quiet syncs see every deletion the users made.
        clock_on(self.scn.sandbox, 2)
        last: dict[str, int] | None = None
        for _ in range(QUIET):
            last = self.sync(edit_between=False)
            if last is not None and not _writes(last):
                break
        final = self.sync(edit_between=False)
        if final is None or _writes(final):
            self.outcome.violations.append(f"the last plan is not empty: {final}")
        self.check()
        return self.outcome

    # --- invariants -------------------------------------------------------------------

    def check(self) -> None:
        bad = self.outcome.violations
        for kind in KINDS:
            rows = self.gw.rows(kind)
            gw = Counter(token for _, token, _ in rows)
            gw_content = {token: content for _, token, content in rows}
            crm_rows = _crm_rows(self.scn, kind)
            crm = Counter(token for token, _ in crm_rows)
            crm_content = dict(crm_rows)
            for side, seen in (("groupware", gw), ("crm", crm)):
                bad += [f"{kind}: {token} is {n} times in the {side}"
                        for token, n in seen.items() if n > 1]
            # A delete may stay one-sided by the profile's policy (e.g. contacts deleted in
            # the groupware are kept in the CRM), so only other one-sided items count.
            for token in sorted((set(gw) ^ set(crm)) - self.deleted):
                where = "groupware" if token in gw else "crm"
                bad.append(f"{kind}: {token} is only in the {where}")
            for token in sorted(set(gw) & set(crm)):
                if gw_content[token] != crm_content[token]:
                    bad.append(f"{kind}: {token} differs: groupware {gw_content[token]} "
                               f"crm {crm_content[token]}")
            mine = {t for t in self.created if t.startswith("e" if kind == "calendar" else "c")}
            for token in sorted(mine - self.deleted - set(gw) - set(crm)):
                bad.append(f"{kind}: {token} was lost (no user deleted it)")


def _writes(counts: dict[str, int]) -> int:
    return sum(n for code, n in counts.items() if code not in ("unchanged", "skip"))


def _token(kind: str, record: Event | Contact) -> str:
    if isinstance(record, Event):
        return record.summary.split()[0]
    return record.family_name


def _instant(value: str | None) -> str:
    assert value is not None
    return datetime.fromisoformat(value).astimezone(UTC).isoformat()


def _gw_content(kind: str, record: Event | Contact) -> tuple[str, ...]:
    if isinstance(record, Event):
        return record.summary, _instant(record.start), _instant(record.end)
    return record.given_name, record.family_name, ",".join(record.emails)


def _crm_rows(scn: Scenario, kind: str) -> list[tuple[str, tuple[str, ...]]]:
    if kind == "calendar":
        rows = scn.crm_query("SELECT Subject, StartDateTime, EndDateTime FROM Event")
        return [(r["Subject"].split()[0], (r["Subject"], _instant(r["StartDateTime"]),
                                           _instant(r["EndDateTime"]))) for r in rows]
    rows = scn.crm_query("SELECT FirstName, LastName, Email FROM Contact")
    return [(r["LastName"], (r["FirstName"] or "", r["LastName"], r["Email"] or ""))
            for r in rows]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real backoff waits seconds per retry; the faults are what is tested, not the waits.
    monkeypatch.setattr(dav, "FIRST_WAIT", 0.01)


def run_world(servers: Servers, home: Path, seed: int, rate: float = 0.2,
              graph: GraphSandbox | None = None) -> Outcome:
    from sfsandbox import control

    control(servers.sandbox, "reset", records=True)
    clock_on(servers.sandbox, 0)  # the reset set it back
    if graph is not None:
        gcontrol(graph, "reset", items=True)
    public = servers.sandbox.state.url
    world = World(servers, home, seed, rate, graph)
    servers.sandbox.state.url = world.crm_proxy.origin  # the token answer's instance_url
    try:
        return world.run()
    finally:
        servers.sandbox.state.url = public
        world.close()


@pytest.mark.parametrize("seed", _seeds())
def test_random_faults_converge(servers: Servers, tmp_path: Path, fast_retries: None,
                                seed: int) -> None:
    outcome = run_world(servers, tmp_path / "home", seed)
    assert outcome.violations == [], (
        f"seed {seed} (replay: CRMSYNC_FAULT_SEED={seed}): {outcome.violations}; "
        f"injected {dict(outcome.injected)}; errors {outcome.errors}")


@pytest.mark.parametrize("seed", _seeds(2))
def test_random_faults_converge_graph(servers: Servers, graph: GraphSandbox, tmp_path: Path,
                                      fast_retries: None, seed: int) -> None:
    outcome = run_world(servers, tmp_path / "home", seed, graph=graph)
    assert outcome.violations == [], (
        f"seed {seed} (replay: CRMSYNC_FAULT_SEED={seed}): {outcome.violations}; "
        f"injected {dict(outcome.injected)}; errors {outcome.errors}")


def test_fault_proxy_listens_with_tls(graph: GraphSandbox) -> None:
    import httpx

    with FaultProxy(graph.url, upstream_tls=graph.ssl_context(),
                    server_tls=server_tls(graph)) as proxy:
        assert proxy.origin.startswith("https://")
        url = proxy.origin + "/_sandbox/stats"
        assert httpx.get(url, verify=graph.ssl_context()).status_code == 200
        proxy.truncate()
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url, verify=graph.ssl_context())
        with pytest.raises(httpx.ConnectError):  # a client not trusting the CA
            httpx.get(url)


def test_fault_proxy_truncates_and_counts_chaos(servers: Servers) -> None:
    import httpx

    with FaultProxy(servers.sandbox.url, upstream_tls=servers.sandbox.ssl_context()) as proxy:
        url = proxy.origin + "/services/oauth2/token"
        proxy.truncate()
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(url, data={"grant_type": "refresh_token"})
        assert httpx.post(url, data={"grant_type": "refresh_token"}).status_code == 400
    with FaultProxy(servers.radicale.url, chaos=random.Random(1), rate=1.0) as proxy:
        for _ in range(6):
            try:
                httpx.get(proxy.url, timeout=5)
            except httpx.HTTPError:
                pass
        assert sum(proxy.injected.values()) == 6


def iter_outcomes(servers: Servers, root: Path, seeds: list[int]) -> Iterator[Outcome]:
    for seed in seeds:
        yield run_world(servers, root / f"home-{seed}", seed)


def test_lost_create_answer_then_source_edited_makes_no_duplicate(
        servers: Servers, tmp_path: Path, fast_retries: None) -> None:
    from sfsandbox import control

    control(servers.sandbox, "reset", records=True)
    clock_on(servers.sandbox, 0)  # the reset set it back
    public = servers.sandbox.state.url
    world = World(servers, tmp_path / "home", 0, 0.0)
    servers.sandbox.state.url = world.crm_proxy.origin
    try:
        scn = world.scn
        begin = world.start + timedelta(days=2)
        scn.put(Event(uid="lost@gw", summary="lost v1", start=moment(begin),
                      end=moment(begin + timedelta(hours=1))))
        syncer = scn.syncer()
        try:
            prepared = syncer.prepare(["calendar"])
            scn.edit("lost@gw", summary="lost v2")  # the user, between plan and apply
            world.crm_proxy.truncate(methods={"POST"})  # the create is done, its answer lost
            with pytest.raises(CrmsyncError):
                syncer.run(prepared)
        finally:
            syncer.close()
            syncer.store.close()
        assert [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")] == ["lost v1"]
        scn.sync()
        scn.sync()
        assert [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")] == ["lost v2"]
        assert [e.summary for e in scn.records().values()] == ["lost v2"]
    finally:
        servers.sandbox.state.url = public
        world.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["truncate", "drop-after-forward"])
def test_graph_create_answer_lost_makes_no_duplicate(
        servers: Servers, graph: GraphSandbox, tmp_path: Path, fast_retries: None,
        fault: str, kind: str) -> None:
    from sfsandbox import control

    control(servers.sandbox, "reset", records=True)
    clock_on(servers.sandbox, 0)  # the reset set it back
    gcontrol(graph, "reset", items=True)
    world = World(servers, tmp_path / "home", 0, 0.0, graph)
    try:
        begin = world.start + timedelta(days=2)
        if kind == "calendar":
            world.scn.crm_insert("Event", Subject="lost v1", StartDateTime=sf_time(begin),
                                 EndDateTime=sf_time(begin + timedelta(hours=1)))
        else:
            world.scn.crm_insert("Contact", FirstName="v1", LastName="lost",
                                 Email="lost@example.test")
        # Outlook creates it, but the answer to the create is lost.
        if fault == "truncate":
            world.gw_proxy.truncate(methods={"POST"})
        else:
            world.gw_proxy.drop(methods={"POST"}, after_forward=True)
        world.sync(edit_between=False)
        assert world.gw_proxy.pending_faults == 0
        for _ in range(2):
            world.sync(edit_between=False)
        assert [token for _, token, _ in world.gw.rows(kind)] == ["lost"]
        world.check()
        assert world.outcome.violations == []
    finally:
        world.close()
