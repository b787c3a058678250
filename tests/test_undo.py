"""The journal of a run's writes and `crmsync undo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crmsync.config import Paths, store_url
from crmsync.store import Store
from test_planfile import add_profile

from conftest import Sides, event
from test_cli import crmsync


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _first_sync(home: Path, sides: Sides) -> None:
    for uid, summary in (("a@x", "Pricing call"), ("b@x", "Demo"), ("c@x", "Review")):
        sides.put("crm", event(uid, summary))
    add_profile(home, sides, "work", "--objects", "calendar")
    crmsync(home, "sync", "work", "--yes")


def test_journal_keeps_each_write_with_the_item_before_it(home: Path, sides: Sides):
    _first_sync(home, sides)
    folder = sides.folder("groupware", "calendar")
    before = {p.name: p.read_bytes().decode() for p in folder.iterdir()}
    sides.edit("crm", "calendar", "a@x.ics", summary="Pricing call (moved)")
    (sides.folder("crm", "calendar") / "b@x.ics").unlink()
    sides.put("groupware", event("d@x", "Lunch"))
    report = json.loads(crmsync(home, "sync", "work", "--yes", "--json").stdout)

    store = Store.open(store_url(Paths.resolve(home)))
    entries = {(e.side, e.action): e for e in store.journal(report["run"])}
    assert set(entries) == {("groupware", "update"), ("groupware", "delete"), ("crm", "create")}
    updated, deleted = entries["groupware", "update"], entries["groupware", "delete"]
    assert updated.before is not None and updated.before.raw == before[updated.item_id]
    assert updated.after_version and updated.after_version != updated.before.version
    assert deleted.before is not None and deleted.before.raw == before[deleted.item_id]
    assert deleted.after_version is None
    created = entries["crm", "create"]
    assert created.before is None and created.item_id in sides.names("crm", "calendar")
    assert created.gw_id == "d@x.ics" and created.crm_id is None
    assert {e.outcome for e in entries.values()} == {"ok"}
    # The first run's creates are journaled too.
    assert {e.action for e in store.journal(report["run"] - 1)} == {"create"}
