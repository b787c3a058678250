"""Scenario tests on real sides: an embedded Radicale (groupware) <-> the Salesforce sandbox.

conftest.py loads this module as a plugin; a test asks for ``scn``::

    def test_private_items_stay_home(scn: Scenario):
        scn.put(Event(uid="a@t", summary="Dentist", start=..., end=..., private=True))
        plans, report = scn.sync()
        assert scn.crm_query("SELECT Id FROM Event") == []

Both servers run once per test module (``servers``); every test gets a fresh calendar,
task list and address book in Radicale, an empty CRM (the sandbox's records are wiped),
a crmsync home of its own and the profile ``p`` made through the command line
(``crmsync profile add``), with the CRM's credentials stored as ``crmsync login`` would.

Helpers: :meth:`Scenario.cli` runs the command line in-process (typer's CliRunner) and
returns the exit code a user would see; :meth:`Scenario.sync` plans and applies a run
(optionally as of another ``now``); ``put``/``edit``/``delete``/``records`` touch the
groupware over CalDAV/CardDAV; ``crm_*`` query and write CRM records through the
sandbox's REST API, as a CRM user would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from crmsync import formats
from crmsync.cli import app
from crmsync.connectors.base import Credentials
from crmsync.embedded import Radicale
from crmsync.errors import CrmsyncError
from crmsync.model import ObjectKind, Record
from crmsync.plan import Plan
from crmsync.sandbox.server import Sandbox
from crmsync.sync import Report, Syncer

from sfsandbox import API, control

PROFILE = "p"
USER = "ana"


@dataclass
class Servers:
    radicale: Radicale
    sandbox: Sandbox


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with Radicale(tmp_path_factory.mktemp("radicale")) as radicale, Sandbox() as sandbox:
        yield Servers(radicale, sandbox)


@pytest.fixture
def scn(servers: Servers, tmp_path: Path) -> Iterator[Scenario]:
    control(servers.sandbox, "reset", records=True)
    scenario = Scenario(servers, tmp_path / "home")
    try:
        yield scenario
    finally:
        scenario.close()


class Scenario:
    """One test's world: fresh collections, an empty CRM, a home with the profile ``p``."""

    def __init__(self, servers: Servers, home: Path,
                 objects: Sequence[ObjectKind] = ("calendar", "contacts", "tasks"), *,
                 via: Callable[[str], str] | None = None, crm_url: str | None = None,
                 groupware: str | None = None) -> None:
        """``via`` maps the groupware collections' URLs and ``crm_url`` replaces the
        CRM's for the profile (e.g. to go through a FaultProxy); tests still reach both
        sides directly. ``groupware`` (e.g. ``msgraph:me?graph_url=...``) replaces the
        Radicale collections in the profile."""
        self.servers = servers
        self.home = home
        self.radicale = servers.radicale
        self.sandbox = servers.sandbox
        tag = uuid.uuid4().hex[:8]
        self.collections: dict[ObjectKind, str] = {
            "calendar": self.radicale.make_collection(USER, f"cal-{tag}", "calendar"),
            "contacts": self.radicale.make_collection(USER, f"book-{tag}", "addressbook"),
        }
        self.collections["tasks"] = self.collections["calendar"]
        self._http = httpx.Client(timeout=10.0)
        self._crm: httpx.Client | None = None
        args = ["profile", "add", PROFILE, "--crm", f"salesforce:{crm_url or self.sandbox.url}",
                "--objects", ",".join(objects)]
        for kind in objects if groupware is None else ():
            scheme = "carddav" if kind == "contacts" else "caldav"
            url = self.collections[kind] if via is None else via(self.collections[kind])
            args += ["--groupware", f"{kind}={scheme}:{url}"]
        if groupware is not None:
            args += ["--groupware", groupware]
        # What made the profile: a test that loses the store makes it again.
        self.profile_args = tuple(args)
        self.cli(*args, check=0)
        from crmsync.config import Paths
        from crmsync.secrets import SecretStore, save_credentials

        save_credentials(SecretStore(Paths.resolve(home)), PROFILE, "crm", Credentials(
            client_id=self.sandbox.client_id, client_secret=self.sandbox.client_secret,
            refresh_token=self.sandbox.refresh_token, ca_bundle=str(self.sandbox.ca_path)))

    def close(self) -> None:
        self._http.close()
        if self._crm is not None:
            self._crm.close()

    # --- the command line and runs -------------------------------------------------------

    def cli(self, *args: str, check: int | None = None) -> CliResult:
        """``crmsync --home HOME ARGS`` in-process; a typed error gives its exit code and
        message on stderr, as crmsync.cli.main does."""
        result = CliRunner().invoke(app, ["--home", str(self.home), *args])
        code, stderr = result.exit_code, result.stderr
        if isinstance(result.exception, CrmsyncError):
            code, stderr = result.exception.exit_code, stderr + f"error: {result.exception}\n"
        elif result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if check is not None:
            assert code == check, result.stdout + stderr
        return CliResult(code, result.stdout, stderr)

    def syncer(self, now: datetime | None = None) -> Syncer:
        from crmsync.config import Paths, store_url
        from crmsync.secrets import credentials_for
        from crmsync.store import Store

        paths = Paths.resolve(self.home)
        store = Store.open(store_url(paths))
        return Syncer(store, store.profile(PROFILE),
                      credentials=lambda side: credentials_for(paths, PROFILE, side),
                      clock=(lambda: now) if now is not None else None)

    def plan(self, kinds: Sequence[ObjectKind] = ("calendar",),
             now: datetime | None = None) -> Plan:
        """One object's plan, nothing applied."""
        syncer = self.syncer(now)
        try:
            return syncer.prepare(list(kinds))[0].plan
        finally:
            syncer.close()
            syncer.store.close()

    def sync(self, kinds: Sequence[ObjectKind] = ("calendar",),
             now: datetime | None = None) -> tuple[list[Plan], Report]:
        """Plan and apply a run (as the CLI does with --yes); the plans and the report."""
        syncer = self.syncer(now)
        try:
            prepared = syncer.prepare(list(kinds))
            return [p.plan for p in prepared], syncer.run(prepared)
        finally:
            syncer.close()
            syncer.store.close()

    # --- the groupware -------------------------------------------------------------------

    def _folder(self, kind: ObjectKind) -> Path:
        url = self.collections[kind]
        path = url.removeprefix(self.radicale.url).strip("/")
        return self.radicale.folder / "collections" / "collection-root" / path

    def put(self, record: Record) -> str:
        """Create (or overwrite) an item in the groupware; its URL."""
        kind = record.kind
        fmt = formats.VCARD if kind == "contacts" else formats.ICALENDAR
        ext = ".vcf" if kind == "contacts" else ".ics"
        url = f"{self.collections[kind]}{record.uid}{ext}"
        self.radicale.put(url, formats.render(fmt, kind, record))
        return url

    def _files(self, kind: ObjectKind) -> dict[str, tuple[str, Record]]:
        """UID -> (file name, record) for the items of ``kind`` in the groupware."""
        fmt = formats.VCARD if kind == "contacts" else formats.ICALENDAR
        ext = ".vcf" if kind == "contacts" else ".ics"
        out: dict[str, tuple[str, Record]] = {}
        for path in sorted(self._folder(kind).glob("*" + ext)):
            raw = path.read_text(encoding="utf-8")
            if kind != "contacts" and ("BEGIN:VTODO" in raw) != (kind == "tasks"):
                continue
            record = formats.parse(fmt, kind, raw)
            assert record.uid not in out, f"duplicate UID {record.uid} in the groupware"
            out[record.uid] = (path.name, record)
        return out

    def records(self, kind: ObjectKind = "calendar") -> dict[str, Record]:
        """UID -> record for every groupware item of ``kind``."""
        return {uid: record for uid, (_, record) in self._files(kind).items()}

    def raw(self, uid: str, kind: ObjectKind = "calendar") -> str:
        name, _ = self._files(kind)[uid]
        return (self._folder(kind) / name).read_text(encoding="utf-8")

    def edit(self, uid: str, kind: ObjectKind = "calendar", **changes: Any) -> None:
        """Change fields of a groupware item, keeping the rest of its text."""
        fmt = formats.VCARD if kind == "contacts" else formats.ICALENDAR
        name, record = self._files(kind)[uid]
        raw = (self._folder(kind) / name).read_text(encoding="utf-8")
        for key, value in changes.items():
            setattr(record, key, value)
        self.radicale.put(self.collections[kind] + name, formats.render(fmt, kind, record, raw))

    def delete(self, uid: str, kind: ObjectKind = "calendar") -> None:
        name, _ = self._files(kind)[uid]
        self._http.delete(self.collections[kind] + name).raise_for_status()

    # --- the CRM -------------------------------------------------------------------------

    @property
    def crm(self) -> httpx.Client:
        """An httpx client logged in to the sandbox as its user."""
        if self._crm is None:
            self._crm = self.sandbox.client(timeout=10)
        return self._crm

    def crm_query(self, soql: str) -> list[dict[str, Any]]:
        answer = self.crm.get(f"{API}/query", params={"q": soql})
        answer.raise_for_status()
        return [{k: v for k, v in r.items() if k != "attributes"}
                for r in answer.json()["records"]]

    def crm_insert(self, obj: str, **fields: Any) -> str:
        answer = self.crm.post(f"{API}/sobjects/{obj}", json=fields)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def crm_update(self, obj: str, record_id: str, **fields: Any) -> None:
        answer = self.crm.patch(f"{API}/sobjects/{obj}/{record_id}", json=fields)
        assert answer.status_code == 204, answer.text

    def crm_delete(self, obj: str, record_id: str) -> None:
        answer = self.crm.delete(f"{API}/sobjects/{obj}/{record_id}")
        assert answer.status_code == 204, answer.text


def sf_time(when: datetime) -> str:
    """A datetime as a Salesforce dateTime value (UTC)."""
    from datetime import UTC

    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
