"""Shared fixtures: temporary vdir sides, state stores (SQLite, PostgreSQL), item builders.

Tests that need a service (PostgreSQL) skip with a reason when it is absent; CI sets
CRMSYNC_REQUIRE_SERVICES=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmsync import formats
from crmsync.connectors.base import Item
from crmsync.connectors.vdir import EXTENSION, FORMAT, VdirConnector, file_name
from crmsync.errors import ConfigError
from crmsync.model import Event, ObjectKind, Record
from crmsync.store import Store
from crmsync.sync import Syncer

pytest_plugins = ["davservers", "sfsandbox", "scenario", "graphsandbox"]

POSTGRES_URL = os.environ.get(
    "CRMSYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run the slow profile (10,000 "
                     "state-machine examples, big kill -9 runs)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--slow"):
        os.environ["CRMSYNC_SLOW"] = "1"


def require_service(name: str, reason: str) -> None:
    """Skip, or fail when CI requires every service, because ``name`` is not reachable."""
    message = f"{name} not available: {reason}"
    if os.environ.get("CRMSYNC_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (CRMSYNC_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    store.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"crmsync_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        require_service("PostgreSQL", str(exc).splitlines()[0])
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The state store on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = Store.open(url)
    yield s
    if request.param == "postgres":
        from crmsync.store.schema import metadata

        with s.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    s.close()


class Sides:
    """Two vdir folders, "crm" and "groupware", and helpers to touch their items."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.crm = root / "crm"
        self.gw = root / "groupware"
        for side in (self.crm, self.gw):
            side.mkdir(parents=True, exist_ok=True)

    def folder(self, side: str, kind: ObjectKind) -> Path:
        path = (self.crm if side == "crm" else self.gw) / kind
        path.mkdir(exist_ok=True)
        return path

    def put(self, side: str, record: Record, name: str | None = None) -> Path:
        kind = record.kind
        path = self.folder(side, kind) / (name or file_name(record.uid, EXTENSION[kind]))
        path.write_text(formats.render(FORMAT[kind], kind, record), encoding="utf-8",
                        newline="")
        return path

    def edit(self, side: str, kind: ObjectKind, name: str, **changes) -> None:
        path = self.folder(side, kind) / name
        raw = path.read_text(encoding="utf-8")
        record = formats.parse(FORMAT[kind], kind, raw)
        for key, value in changes.items():
            setattr(record, key, value)
        path.write_text(formats.render(FORMAT[kind], kind, record, raw), encoding="utf-8",
                        newline="")

    def records(self, side: str, kind: ObjectKind, twins: bool = False) -> dict[str, Record]:
        """UID -> record for every item on a side; two items with one UID fail the test,
        unless ``twins`` allows them (the first file in name order is taken)."""
        out: dict[str, Record] = {}
        for path in sorted(self.folder(side, kind).glob("*" + EXTENSION[kind])):
            record = formats.parse(FORMAT[kind], kind, path.read_text(encoding="utf-8"))
            assert twins or record.uid not in out, f"duplicate UID {record.uid} on {side}"
            out.setdefault(record.uid, record)
        return out

    def names(self, side: str, kind: ObjectKind) -> list[str]:
        return sorted(p.name for p in self.folder(side, kind).glob("*" + EXTENSION[kind]))

    def endpoints(self) -> tuple[str, str]:
        return f"vdir:{self.crm}", f"vdir:{self.gw}"


@pytest.fixture
def sides(tmp_path: Path) -> Sides:
    return Sides(tmp_path / "sides")


def make_syncer(store: Store, sides: Sides, name: str = "p",
                objects: tuple[str, ...] = ("calendar", "contacts", "tasks"),
                settings: dict | None = None) -> Syncer:
    try:
        profile = store.profile(name)
    except ConfigError:
        crm, gw = sides.endpoints()
        profile = store.add_profile(name, crm, gw, objects, settings or {})
    return Syncer(store, profile)


def sync(syncer: Syncer, kinds=None):
    """Plan and apply everything; returns (plans, report)."""
    prepared = syncer.prepare(kinds)
    plans = [p.plan for p in prepared]
    return plans, syncer.run(prepared)


# Test items lie a little ahead of today, inside the sync range whenever the tests run.
BASE = datetime.now(UTC).date() + timedelta(days=10)


def day(n: int = 0, at: str | None = "09:00") -> str:
    """The MOMENT ``n`` days after BASE at ``at`` (UTC); the date alone when ``at`` is None."""
    when = (BASE + timedelta(days=n)).isoformat()
    return when if at is None else f"{when}T{at}:00Z"


def event(uid: str, summary: str = "Meeting", start: str = day(0),
          end: str = day(0, "10:00"), **fields) -> Event:
    return Event(uid=uid, summary=summary, start=start, end=end, **fields)


def item(record: Record, item_id: str | None = None, version: str = "v1",
         modified: str | None = None) -> Item:
    kind = record.kind
    raw = formats.render(FORMAT[kind], kind, record)
    return Item(item_id or record.uid, version, raw, FORMAT[kind], kind, modified=modified)


def vdir(path: Path, side: str) -> VdirConnector:
    return VdirConnector(path, side)  # type: ignore[arg-type]
