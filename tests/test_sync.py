"""The engine end to end on two real vdir folders: plan, apply, crash, recover."""

from __future__ import annotations

import shutil

import pytest

from crmsync.connectors.vdir import VdirConnector, file_name
from crmsync.model import Attendee, Contact, Occurrence, Task
from crmsync.store import Store
from crmsync.sync import Syncer

from conftest import Sides, day, event, make_syncer, sync


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in crmsync catches it."""


class CrashingVdir(VdirConnector):
    """A real vdir that dies at its k-th write, before or after performing it."""

    def __init__(self, root, side, crash_at: int, after: bool = False) -> None:
        super().__init__(root, side)
        self.left = crash_at
        self.after = after

    def apply(self, kind, writes):
        results = []
        for write in writes:
            self.left -= 1
            if self.left == 0 and not self.after:
                raise Crash()
            results.extend(super().apply(kind, [write]))
            if self.left == 0:
                raise Crash()
        return results


class RangedVdir(VdirConnector):
    """A real vdir whose full listings leave out some items, as a server's time-ranged
    listing does, while reading them by id still works."""

    hidden: set[str] = set()

    def list_changes(self, kind, cursor, **options):
        changes = super().list_changes(kind, None, **options)
        changes.upserts = [u for u in changes.upserts if u[0] not in self.hidden]
        return changes


def test_a_full_listing_that_misses_a_pair_deletes_only_what_is_gone(store: Store,
                                                                     sides: Sides):
    """A complete listing that leaves an item out (outside its range) does not make it
    look deleted; an item that really is gone still is."""
    for uid in ("kept@x", "gone@x"):
        sides.put("groupware", event(uid, uid))
    sync(make_syncer(store, sides, objects=("calendar",)))
    profile = store.profile("p")
    crm = RangedVdir(sides.crm, "crm")
    crm.hidden = {file_name("kept@x", ".ics")}
    (sides.folder("crm", "calendar") / file_name("gone@x", ".ics")).unlink()
    plans, report = sync(Syncer(store, profile, crm=crm))
    assert report.status == "ok"
    assert [a.code for _, a in plans[0].actions()] == ["delete:groupware"]
    assert sorted(sides.records("groupware", "calendar")) == ["kept@x"]


def test_initial_sync_copies_both_ways_and_second_sync_writes_nothing(store: Store,
                                                                      sides: Sides):
    sides.put("crm", event("a@x", "From CRM", attendees=[Attendee("jo@acme.example")]))
    sides.put("groupware", event("b@x", "From calendar", rrule="FREQ=WEEKLY;COUNT=4",
                                 overrides={day(7): Occurrence(
                                     summary="moved", start=day(7, "11:00"),
                                     end=day(7, "12:00"))}))
    sides.put("crm", Contact(uid="c@x", full_name="Jo Acme", emails=["jo@acme.example"]))
    sides.put("groupware", Task(uid="t@x", summary="Call Jo", due=day(1, None)))
    syncer = make_syncer(store, sides)
    _, report = sync(syncer)
    assert report.status == "ok"
    for kind in ("calendar", "contacts", "tasks"):
        assert sides.records("crm", kind) == sides.records("groupware", kind)
    assert set(sides.records("crm", "calendar")) == {"a@x", "b@x"}
    plans, report = sync(syncer)
    assert sum(p.writes for p in plans) == 0
    assert all(not r.counts for r in report.objects.values())


def test_field_level_merge_through_real_files(store: Store, sides: Sides):
    sides.put("crm", event("a@x", "Kickoff", location="Room 1"))
    syncer = make_syncer(store, sides, objects=("calendar",))
    sync(syncer)
    sides.edit("crm", "calendar", "a@x.ics", summary="Kickoff (confirmed)")
    sides.edit("groupware", "calendar", "a@x.ics", location="Room 7")
    _, report = sync(syncer)
    assert report.objects["calendar"].counts == {"update:crm": 1, "update:groupware": 1}
    for side in ("crm", "groupware"):
        rec = sides.records(side, "calendar")["a@x"]
        assert (rec.summary, rec.location) == ("Kickoff (confirmed)", "Room 7")


def test_update_keeps_unmodelled_data_of_the_target(store: Store, sides: Sides):
    sides.put("crm", event("a@x", "Kickoff"))
    syncer = make_syncer(store, sides, objects=("calendar",))
    sync(syncer)
    path = sides.folder("groupware", "calendar") / "a@x.ics"
    raw = path.read_text()
    path.write_text(raw.replace("END:VEVENT", "X-GW-PRIVATE-NOTE:keep me\r\nEND:VEVENT"),
                    newline="")
    sync(syncer)
    sides.edit("crm", "calendar", "a@x.ics", summary="Renamed")
    sync(syncer)
    text = path.read_text()
    assert "X-GW-PRIVATE-NOTE:keep me" in text and "Renamed" in text


def test_deletes_are_mirrored_and_pairs_forgotten(store: Store, sides: Sides):
    sides.put("crm", event("a@x"))
    sides.put("crm", event("b@x"))
    syncer = make_syncer(store, sides, objects=("calendar",))
    sync(syncer)
    (sides.folder("groupware", "calendar") / "a@x.ics").unlink()
    _, report = sync(syncer)
    assert report.objects["calendar"].counts == {"delete:crm": 1}
    assert sides.names("crm", "calendar") == ["b@x.ics"]
    assert store.pair_counts(syncer.profile.id) == {"calendar": 1}


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize("crash_at", [1, 3, 6])
@pytest.mark.parametrize("side", ["crm", "groupware"])
def test_a_crash_at_any_write_then_rerun_converges_without_duplicates(
        sqlite_store: Store, sides: Sides, side: str, crash_at: int, after: bool):
    for i in range(6):
        sides.put("crm", event(f"c{i}@x", f"CRM {i}"))
        sides.put("groupware", event(f"g{i}@x", f"GW {i}"))
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",))
    crashing = CrashingVdir(sides.crm if side == "crm" else sides.gw, side, crash_at, after)
    crashed = Syncer(sqlite_store, syncer.profile, **{side: crashing})
    with pytest.raises(Crash):
        sync(crashed)
    # A new engine resumes from whatever the store and the folders hold now.
    sync(make_syncer(sqlite_store, sides))
    crm, gw = sides.records("crm", "calendar"), sides.records("groupware", "calendar")
    assert crm == gw and len(crm) == 12
    plans, _ = sync(make_syncer(sqlite_store, sides))
    assert sum(p.writes for p in plans) == 0


def test_item_changed_between_plan_and_apply_is_replanned_not_overwritten(
        sqlite_store: Store, sides: Sides):
    sides.put("crm", event("a@x", "v1", location="L1"))
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",))
    sync(syncer)
    sides.edit("crm", "calendar", "a@x.ics", summary="v2 from CRM")
    prepared = syncer.prepare()
    # Someone edits the calendar copy after the plan was made.
    sides.edit("groupware", "calendar", "a@x.ics", location="L2 from calendar")
    report = syncer.run(prepared)
    assert report.status == "ok"
    for side in ("crm", "groupware"):
        rec = sides.records(side, "calendar")["a@x"]
        assert (rec.summary, rec.location) == ("v2 from CRM", "L2 from calendar")


def test_lost_state_store_repairs_without_duplicates(tmp_path, sides: Sides):
    for i in range(5):
        sides.put("crm", event(f"c{i}@x", f"CRM {i}", start=day(i)))
    store = Store.open(f"sqlite:///{tmp_path / 'one.db'}")
    sync(make_syncer(store, sides))
    store.close()
    # An item whose UID the other side does not share still re-pairs by content.
    gw_file = sides.folder("groupware", "calendar") / "c0@x.ics"
    gw_file.write_text(gw_file.read_text().replace("UID:c0@x", "UID:renamed@x"), newline="")
    fresh = Store.open(f"sqlite:///{tmp_path / 'two.db'}")
    plans, report = sync(make_syncer(fresh, sides))
    assert {a.op for p in plans for _, a in p.actions()} == {"link"}
    assert len(sides.names("crm", "calendar")) == len(sides.names("groupware", "calendar")) == 5


def test_a_broken_item_is_reported_and_skipped_and_retried(sqlite_store: Store, sides: Sides):
    sides.put("crm", event("good@x"))
    bad = sides.folder("crm", "calendar") / "bad.ics"
    bad.write_bytes(b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:bad\r\nSUMMARY:\xff\xfe\r\n"
                    b"END:VEVENT\r\nEND:VCALENDAR\r\n")
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",))
    _, report = sync(syncer)
    assert report.status == "partial"
    (failed,) = [i for i in report.objects["calendar"].items if i.outcome == "failed"]
    assert "UTF-8" in failed.reason and failed.crm_id == "bad.ics"
    assert sides.names("groupware", "calendar") == ["good@x.ics"]
    assert bad.exists()
    # Still reported next time although the folder did not change...
    _, report = sync(syncer)
    assert report.objects["calendar"].counts == {"failed": 1}
    # ...and synced once fixed.
    sides.put("crm", event("bad", "Fixed"), name="bad.ics")
    _, report = sync(syncer)
    assert report.objects["calendar"].counts == {"create:groupware": 1}


def test_mass_delete_guard_stops_before_writing(sqlite_store: Store, sides: Sides):
    for i in range(15):
        sides.put("crm", event(f"e{i}@x"))
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",))
    sync(syncer)
    shutil.rmtree(sides.folder("crm", "calendar"))
    (plan,) = [p.plan for p in syncer.prepare()]
    assert plan.guard == {"groupware": (15, 15)}


def test_unlinked_after_prevented_delete(sqlite_store: Store, sides: Sides):
    sides.put("crm", event("a@x"))
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",),
                         settings={"calendar": {"prevent": ["groupware:delete"]}})
    sync(syncer)
    (sides.folder("crm", "calendar") / "a@x.ics").unlink()
    _, report = sync(syncer)
    assert report.objects["calendar"].counts == {"skip": 1}
    sides.edit("groupware", "calendar", "a@x.ics", summary="still here")
    plans, _ = sync(syncer)
    # The survivor is no longer synced: it is not recreated in the CRM.
    assert sum(p.writes for p in plans) == 0
    assert sides.names("crm", "calendar") == []


def test_create_meeting_an_item_with_the_same_uid_pairs_with_it(sqlite_store: Store,
                                                                 sides: Sides):
    sides.put("crm", event("a@x", "From CRM", location="CRM room"))
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",),
                         settings={"calendar": {"conflict": "crm"}})
    prepared = syncer.prepare()
    # The same meeting reaches the calendar by another way between plan and apply.
    sides.put("groupware", event("a@x", "From CRM", location="Calendar room"))
    report = syncer.run(prepared)
    (item,) = report.objects["calendar"].items
    assert item.outcome == "linked" and "same UID" in item.reason
    assert sides.names("groupware", "calendar") == ["a@x.ics"]  # no duplicate
    # The next run merges the two by the conflict rule (here: CRM wins).
    _, report = sync(syncer)
    assert report.objects["calendar"].counts == {"update:groupware": 1}
    assert sides.records("groupware", "calendar")["a@x"].location == "CRM room"
    plans, _ = sync(syncer)
    assert sum(p.writes for p in plans) == 0
