"""One bad item never stops a run (issue 16): whatever goes wrong with a single item, at
any stage (reading, rules, selection, planning, mapping into a side's format, writing,
store bookkeeping), becomes that item's outcome, with a reason naming it, and the run goes
on to the other items and ends "partial" (exit code 6).

Each test drives a real run (vdir folders, the Salesforce sandbox) with an item that
reaches a code path that fails for it; no function of crmsync is replaced.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crmsync.connectors.base import Create, Item
from crmsync.connectors.salesforce import SalesforceConnector
from crmsync.connectors.vdir import VdirConnector
from crmsync.plan import Action, Plan, Step
from crmsync.store import Store
from crmsync.sync import Prepared, Syncer
from test_salesforce import api, creds

from conftest import Sides, day, event
from sfsandbox import control
from test_cli import crmsync

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def ics(uid: str | None, *lines: str, start: str = "DTSTART:20261210T090000Z",
        end: str = "DTEND:20261210T100000Z", summary: str = "Isolated") -> str:
    """One VEVENT in a VCALENDAR; ``lines`` go into the VEVENT."""
    body = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//isolation//EN", "BEGIN:VEVENT"]
    body += [f"UID:{uid}"] if uid is not None else []
    body += ["DTSTAMP:20261101T000000Z", start, end, f"SUMMARY:{summary}", *lines,
             "END:VEVENT", "END:VCALENDAR", ""]
    return "\r\n".join(body)


def stamp(moment: str) -> str:
    """A MOMENT (2026-12-10T09:00:00Z) as an iCalendar date-time (20261210T090000Z)."""
    return moment.replace("-", "").replace(":", "")


def put(folder: Path, name: str, text: str | bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (folder / name).write_bytes(data)


def vdir_syncer(store: Store, root: Path, name: str = "p") -> Syncer:
    (root / "crm").mkdir(parents=True, exist_ok=True)
    (root / "groupware").mkdir(parents=True, exist_ok=True)
    profile = store.add_profile(name, f"vdir:{root / 'crm'}", f"vdir:{root / 'groupware'}",
                                ("calendar",), {"calendar": {"timezone": "Europe/Berlin"}})
    return Syncer(store, profile, clock=lambda: NOW)


def outcomes(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """groupware id (else CRM id) -> (outcome, reason) of every item not simply applied."""
    return {(i["groupware_id"] or i["crm_id"]): (i["outcome"], i["reason"])
            for o in report["objects"].values() for i in o["items"]}


def uids(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.glob("*.ics")):
        for line in path.read_text().splitlines():
            if line.startswith("UID:"):
                out.append(line[4:])
    return sorted(out)


# --- the crashes seen on real calendars ---------------------------------------------------


def test_an_rrule_the_rules_cannot_expand_passes_through_verbatim(sqlite_store: Store,
                                                                  tmp_path: Path):
    """An RRULE part the reader lets through but the range rule's expansion refuses
    (rules._occurs) made every run exit 1. Between iCalendar sides it is now copied as it
    is (the range counts from its first start), and the runs stay quiet after that."""
    gw = tmp_path / "groupware" / "calendar"
    put(gw, "weird.ics", ics("weird@x", "RRULE:FREQ=WEEKLY;BYFOO=1", summary="Weird rule"))
    put(gw, "fine.ics", ics("fine@x", summary="Fine"))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "ok" and report["error"] is None, report
    assert uids(tmp_path / "crm" / "calendar") == ["fine@x", "weird@x"]
    assert "RRULE:FREQ=WEEKLY;BYFOO=1" in (tmp_path / "crm" / "calendar" / "weird@x.ics"
                                           ).read_text()
    again = syncer.run(syncer.prepare()).to_dict()
    assert not any(k.startswith(("create", "update")) for o in again["objects"].values()
                   for k in o["counts"]), again


def test_duplicate_uids_in_the_groupware_never_crash_and_one_twin_syncs(sqlite_store: Store,
                                                                        tmp_path: Path):
    """Two files with one UID made two pairs for one CRM item: the store refused them
    after the writes were made, and every run after that did the same."""
    gw = tmp_path / "groupware" / "calendar"
    put(gw, "a.ics", ics("twin@x", summary="Twin one"))
    put(gw, "b.ics", ics("twin@x", summary="Twin two"))
    put(gw, "c.ics", ics("other@x", summary="Other"))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "partial" and report["error"] is None
    outcome, reason = outcomes(report)["b.ics"]
    assert outcome == "failed" and "same UID as a.ics" in reason and "repair" in reason
    assert uids(tmp_path / "crm" / "calendar") == ["other@x", "twin@x"]
    crm_twin = (tmp_path / "crm" / "calendar" / "twin@x.ics").read_text()
    assert "Twin one" in crm_twin
    # Again: the twin is reported again, nothing is written twice, nothing crashes.
    again = syncer.run(syncer.prepare()).to_dict()
    assert outcomes(again)["b.ics"][0] == "failed"
    assert not any(k.startswith(("create", "update")) for o in again["objects"].values()
                   for k in o["counts"]), again
    assert uids(tmp_path / "crm" / "calendar") == ["other@x", "twin@x"]
    assert "Twin two" in (gw / "b.ics").read_text()  # the twin itself is left as it was


def test_duplicate_uids_in_the_crm_never_make_two_pairs_for_one_item(sqlite_store: Store,
                                                                     tmp_path: Path):
    """The other way round: two CRM items with one UID, copied to the groupware."""
    crm = tmp_path / "crm" / "calendar"
    put(crm, "x1.ics", ics("twin@x", summary="CRM one"))
    put(crm, "x2.ics", ics("twin@x", summary="CRM two"))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "partial"
    assert outcomes(report)["x2.ics"][0] == "failed"
    assert uids(tmp_path / "groupware" / "calendar") == ["twin@x"]
    pairs = sqlite_store.pairs(syncer.profile.id, "calendar")
    assert [(p.crm_id, p.gw_id) for p in pairs] == [("x1.ics", "twin@x.ics")]


def test_store_bookkeeping_never_fails_after_writes(sqlite_store: Store, tmp_path: Path):
    """Two steps of one chunk whose creates end in the same item (the second create finds
    the first's copy by its UID): only one pair may hold it. The store is never asked to
    keep both (it would refuse the whole chunk after its writes were made); the second
    step is that item's failure and the journal says what was written."""
    syncer = vdir_syncer(sqlite_store, tmp_path)
    items = [Item(f"s{n}.ics", f"v{n}", ics("same@x", summary=f"Source {n}"),
                  "text/calendar", "calendar") for n in (1, 2)]
    steps = [Step("calendar", None, None, i, [Action("create", "crm")]) for i in items]
    report = syncer.run([Prepared.unlisted(Plan("calendar", steps))]).to_dict()
    assert report["status"] == "partial" and report["error"] is None
    outcome, reason = outcomes(report)["s2.ics"]
    assert outcome == "failed" and "same@x.ics" in reason, reason
    pairs = sqlite_store.pairs(syncer.profile.id, "calendar")
    assert [(p.crm_id, p.gw_id) for p in pairs] == [("same@x.ics", "s1.ics")]
    journal = sqlite_store.journal(report["run"])
    assert [(e.action, e.item_id, e.outcome) for e in journal] == [
        ("create", "same@x.ics", "ok"), ("create", "same@x.ics", "exists")]


@pytest.fixture(scope="module")
def sandbox():
    from crmsync.sandbox.server import Sandbox

    with Sandbox() as sb:
        yield sb


def sf_syncer(sandbox, store: Store, gw: Path) -> Syncer:
    control(sandbox, "reset", records=True)
    (gw / "calendar").mkdir(parents=True, exist_ok=True)
    profile = store.add_profile("sf", f"salesforce:{sandbox.url}", f"vdir:{gw}",
                                ("calendar",), {"calendar": {"timezone": "Europe/Berlin"}})
    crm = SalesforceConnector(sandbox.url, credentials=creds(sandbox))
    return Syncer(store, profile, crm=crm, groupware=VdirConnector(gw, "groupware"),
                  clock=lambda: NOW)


def crm_subjects(sandbox) -> list[str]:
    rows = api(sandbox, "GET", "query?q=SELECT+Subject+FROM+Event").json()["records"]
    return sorted(r["Subject"] for r in rows)


def test_an_event_salesforce_mapping_fails_on_is_that_items_failure(sandbox,
                                                                     sqlite_store: Store,
                                                                     tmp_path: Path):
    """An all-day start with a timed end crashed the mapping into Salesforce's fields
    (formats.salesforce._day_before) in the middle of a batch of creates."""
    gw = tmp_path / "groupware"
    put(gw / "calendar", "mixed.ics", ics("mixed@x", start="DTSTART;VALUE=DATE:20261210",
                                          end="DTEND:20261211T100000Z", summary="Mixed"))
    put(gw / "calendar", "fine.ics", ics("fine@x", summary="Fine one"))
    put(gw / "calendar", "fine2.ics", ics("fine2@x", summary="Fine two"))
    syncer = sf_syncer(sandbox, sqlite_store, gw)
    try:
        report = syncer.run(syncer.prepare()).to_dict()
        assert report["error"] is None
        subjects = crm_subjects(sandbox)
        assert {"Fine one", "Fine two"} <= set(subjects)
        # Not a shape Salesforce holds: a skip with the reason when planned, not a crash.
        assert "Mixed" not in subjects
        outcome, reason = outcomes(report)["mixed.ics"]
        assert outcome == "skipped" and "make both dates or both times" in reason, reason
        again = syncer.run(syncer.prepare()).to_dict()
        assert again["error"] is None
        assert sorted(crm_subjects(sandbox)) == subjects  # nothing created twice
    finally:
        syncer.close()


def test_duplicate_uids_against_salesforce(sandbox, sqlite_store: Store, tmp_path: Path):
    gw = tmp_path / "groupware"
    put(gw / "calendar", "a.ics", ics("twin@x", summary="Twin one"))
    put(gw / "calendar", "b.ics", ics("twin@x", summary="Twin two"))
    syncer = sf_syncer(sandbox, sqlite_store, gw)
    try:
        for _ in range(2):
            report = syncer.run(syncer.prepare()).to_dict()
            assert report["status"] == "partial" and report["error"] is None
            assert "same UID as a.ics" in outcomes(report)["b.ics"][1]
            assert crm_subjects(sandbox) == ["Twin one"]
    finally:
        syncer.close()


def test_the_cli_exits_6_not_1_on_a_bad_item(tmp_path: Path, sides: Sides):
    home = tmp_path / "home"
    # Two starts: which one is meant cannot be told, so the item cannot be synced.
    put(sides.folder("groupware", "calendar"), "weird.ics",
        ics("weird@x", f"DTSTART:{stamp(day(1))}", start=f"DTSTART:{stamp(day(0))}",
            end=f"DTEND:{stamp(day(0, '10:00'))}"))
    sides.put("groupware", event("fine@x", "Fine"))
    crm, gw = sides.endpoints()
    crmsync(home, "profile", "add", "work", "--crm", crm, "--groupware", gw,
            "--objects", "calendar")
    out = crmsync(home, "sync", "work", "--yes", "--json", check=6)
    report = json.loads(out.stdout)
    outcome, reason = outcomes(report)["weird.ics"]
    assert outcome == "failed" and "DTSTART is given 2 times" in reason, reason
    assert sorted(sides.records("crm", "calendar")) == ["fine@x"]


def test_vdir_item_that_cannot_be_opened_is_reported(sqlite_store: Store, tmp_path: Path):
    """A folder named like an item (or a file we may not read) is that item's failure."""
    gw = tmp_path / "groupware" / "calendar"
    (gw / "folder.ics").mkdir(parents=True)
    put(gw, "fine.ics", ics("fine@x", summary="Fine"))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "partial"
    outcome, reason = outcomes(report)["folder.ics"]
    assert outcome == "failed" and "folder.ics" in reason
    assert uids(tmp_path / "crm" / "calendar") == ["fine@x"]



# --- hostile items too big to keep in tests/corpus ------------------------------------------


def hostile() -> dict[str, str]:
    """Generated hostile items, by file name (all in the sync range of NOW)."""
    head = ["DTSTART:20261211T090000Z", "DTEND:20261211T100000Z"]
    return {
        "huge-description.ics": ics("huge-desc@x", "DESCRIPTION:" + "x" * 5_000_000,
                                    summary="Five megabytes"),
        "many-attendees.ics": ics("many@x", *[f"ATTENDEE;CN=P{i}:mailto:p{i}@big.example"
                                              for i in range(10_000)],
                                  summary="Ten thousand attendees"),
        "deep.ics": ics("deep@x", *["BEGIN:VALARM"] * 5000, *["END:VALARM"] * 5000,
                        summary="Deeply nested"),
        "deep-outside.ics": "\r\n".join(["BEGIN:VCALENDAR", *["BEGIN:X-NEST"] * 5000,
                                         *["END:X-NEST"] * 5000, "BEGIN:VEVENT",
                                         "UID:deep-out@x", *head, "SUMMARY:Nested outside",
                                         "END:VEVENT", "END:VCALENDAR", ""]),
        "no-uid.ics": ics(None, summary="Without a UID", start=head[0], end=head[1]),
        "fine.ics": ics("fine@x", summary="Fine", start=head[0], end=head[1]),
    }


def test_hostile_generated_items_vdir_to_vdir(sqlite_store: Store, tmp_path: Path):
    """Each is copied as it is (a faithful copy needs no parse); a later update that has
    to be written over a deeply nested item fails that item only."""
    gw = tmp_path / "groupware" / "calendar"
    for name, text in hostile().items():
        put(gw, name, text)
    before = {p.name: p.read_bytes() for p in gw.iterdir()}
    syncer = vdir_syncer(sqlite_store, tmp_path)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "ok" and report["error"] is None, report
    crm = tmp_path / "crm" / "calendar"
    copies = {p.read_bytes().decode().split("SUMMARY:")[1].split("\r\n")[0]: p
              for p in crm.iterdir()}
    assert sorted(copies) == ["Deeply nested", "Fine", "Five megabytes", "Nested outside",
                              "Ten thousand attendees", "Without a UID"]
    given = copies.pop("Without a UID").read_bytes()  # given a UID, else as it was
    assert b"\r\nUID:crmsync-" in given
    assert {p.read_bytes() for p in copies.values()} == set(before.values()) - {
        before["no-uid.ics"]}
    # The groupware is left as it was; a second run writes nothing.
    assert {p.name: p.read_bytes() for p in gw.iterdir()} == before
    quiet = syncer.run(syncer.prepare()).to_dict()
    assert quiet["status"] == "ok" and not quiet["objects"]["calendar"]["counts"], quiet
    # Renamed in the CRM: the update of the deeply nested item cannot be rendered over
    # it; the other renamed item is written.
    for subject in ("Deeply nested", "Fine"):
        path = copies[subject]
        path.write_bytes(path.read_bytes().replace(f"SUMMARY:{subject}".encode(),
                                                   f"SUMMARY:{subject} (renamed)".encode()))
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "partial" and report["error"] is None
    failed = {k: r for k, (o, r) in outcomes(report).items() if o == "failed"}
    assert list(failed) == ["deep.ics"] and "recursion" in failed["deep.ics"], failed
    assert "SUMMARY:Fine (renamed)" in (gw / "fine.ics").read_text()
    assert (gw / "deep.ics").read_bytes() == before["deep.ics"]  # left as it was


def test_hostile_generated_items_to_salesforce(sandbox, sqlite_store: Store, tmp_path: Path):
    gw = tmp_path / "groupware"
    for name, text in hostile().items():
        put(gw / "calendar", name, text)
    syncer = sf_syncer(sandbox, sqlite_store, gw)
    try:
        report = syncer.run(syncer.prepare()).to_dict()
        assert report["status"] == "ok" and report["error"] is None, outcomes(report)
        rows = api(sandbox, "GET", "query?q=SELECT+Subject,Description+FROM+Event"
                   ).json()["records"]
        by_subject = {r["Subject"]: r for r in rows}
        assert sorted(by_subject) == ["Deeply nested", "Fine", "Five megabytes",
                                      "Nested outside", "Ten thousand attendees",
                                      "Without a UID"]
        assert len(by_subject["Five megabytes"]["Description"]) == 32_000  # cut to fit
        again = syncer.run(syncer.prepare()).to_dict()
        assert not any(k.startswith(("create", "update", "delete"))
                       for o in again["objects"].values() for k in o["counts"]), again
    finally:
        syncer.close()



def test_many_twins_stay_out_run_after_run(sqlite_store: Store, tmp_path: Path):
    """Sixty files each with a twin: the twins are kept out on every run (the paired
    twin is found in the store however many new items ask)."""
    gw = tmp_path / "groupware" / "calendar"
    for n in range(60):
        put(gw, f"a{n:02}.ics", ics(f"t{n}@x", summary=f"First {n}"))
        put(gw, f"b{n:02}.ics", ics(f"t{n}@x", summary=f"Second {n}"))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    for _ in range(2):
        report = syncer.run(syncer.prepare()).to_dict()
        failed = {k: r for k, (o, r) in outcomes(report).items() if o == "failed"}
        assert sorted(failed) == [f"b{n:02}.ics" for n in range(60)]
        assert all(f"same UID as a{k[1:3]}.ics" in r for k, r in failed.items()), failed
        assert uids(tmp_path / "crm" / "calendar") == sorted(f"t{n}@x" for n in range(60))


class BuggyVdir(VdirConnector):
    """A real vdir whose apply() raises an unexpected error on a batch holding an item
    whose subject says BOOM (a bug in a connector, past the writes when ``after``)."""

    def __init__(self, root: Path, side: str, after: bool = False,
                 keeps_uid: bool = True) -> None:
        super().__init__(root, side)  # type: ignore[arg-type]
        self.after = after
        self.capabilities = dataclasses.replace(self.capabilities, keeps_uid=keeps_uid)

    def apply(self, kind, writes):
        boom = any(isinstance(w, Create) and "BOOM" in w.source.raw for w in writes)
        if boom and not self.after:
            raise RuntimeError("connector bug before writing")
        results = super().apply(kind, writes)
        if boom:
            raise RuntimeError("connector bug after writing")
        return results


@pytest.mark.parametrize("after", [False, True])
def test_a_connector_failing_on_a_batch_fails_only_its_item(sqlite_store: Store,
                                                            tmp_path: Path, after: bool):
    """The batch is sent again write by write (a side keeping UIDs finds a create made
    already), so that only the item the bug concerns fails."""
    gw = tmp_path / "groupware" / "calendar"
    for name in ("a", "boom", "c"):
        put(gw, f"{name}.ics", ics(f"{name}@x", summary=name.upper()))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    syncer._given["crm"] = BuggyVdir(tmp_path / "crm", "crm", after=after)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "partial" and report["error"] is None
    failed = {k: r for k, (o, r) in outcomes(report).items() if o == "failed"}
    assert list(failed) == ["boom.ics"] and "RuntimeError: connector bug" in failed["boom.ics"]
    expected = ["a@x", "boom@x", "c@x"] if after else ["a@x", "c@x"]
    assert uids(tmp_path / "crm" / "calendar") == expected
    # Fixed: the next run settles it, nothing twice.
    fixed = Syncer(sqlite_store, syncer.profile, clock=lambda: NOW)
    again = fixed.run(fixed.prepare()).to_dict()
    assert again["status"] == "ok", again
    assert uids(tmp_path / "crm" / "calendar") == ["a@x", "boom@x", "c@x"]


def test_a_failed_batch_on_a_side_without_uids_is_settled_by_the_next_run(
        sqlite_store: Store, tmp_path: Path):
    """On a side that does not keep UIDs a create cannot be sent again safely (it may
    have been made): the batch's creates fail, their journal entries stay open, and the
    next run pairs each source with the copy made (here by its UID; on a side without
    UIDs by the content the journal says was sent), creating nothing twice."""
    gw = tmp_path / "groupware" / "calendar"
    for name in ("a", "boom", "c"):
        put(gw, f"{name}.ics", ics(f"{name}@x", summary=name.upper()))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    syncer._given["crm"] = BuggyVdir(tmp_path / "crm", "crm", after=True, keeps_uid=False)
    report = syncer.run(syncer.prepare()).to_dict()
    assert report["status"] == "partial" and report["error"] is None
    assert sorted(k for k, (o, _) in outcomes(report).items() if o == "failed") == [
        "a.ics", "boom.ics", "c.ics"]
    assert [e.outcome for e in sqlite_store.journal(report["run"])] == [None, None, None]
    assert len(uids(tmp_path / "crm" / "calendar")) == 3  # made, though not heard of
    fixed = Syncer(sqlite_store, syncer.profile, clock=lambda: NOW)
    again = fixed.run(fixed.prepare()).to_dict()
    assert again["status"] == "ok", again
    assert uids(tmp_path / "crm" / "calendar") == ["a@x", "boom@x", "c@x"]
    assert len(sqlite_store.pairs(syncer.profile.id, "calendar")) == 3


def test_a_file_name_that_is_not_utf8_is_reported_not_fatal(sqlite_store: Store,
                                                            tmp_path: Path):
    """No id can name it (the store, the report and JSON hold text): it used to stop the
    run when its journal entry was stored."""
    gw = tmp_path / "groupware" / "calendar"
    put(gw, "fine.ics", ics("fine@x", summary="Fine"))
    with open(bytes(gw) + b"/bad\xff.ics", "wb") as fh:
        fh.write(ics("bad@x", summary="Bad name").encode())
    syncer = vdir_syncer(sqlite_store, tmp_path)
    for _ in range(2):
        report = syncer.run(syncer.prepare()).to_dict()
        assert report["status"] == "partial" and report["error"] is None
        outcome, reason = outcomes(report)["bad\\xff.ics"]
        assert outcome == "failed" and "bad\\xff.ics' is not valid UTF-8" in reason, reason
        assert uids(tmp_path / "crm" / "calendar") == ["fine@x"]
    json.dumps(report, ensure_ascii=False).encode()  # the report is printable as it is


def test_an_item_without_a_uid_is_copied_with_a_stable_derived_one(sqlite_store: Store,
                                                                    tmp_path: Path):
    """A side keeping UIDs needs one (CalDAV servers refuse an item without): the copy
    gets a UID derived from where the item comes from, the same on every run and after
    the state store is lost; what the model does not know is kept."""
    gw = tmp_path / "groupware" / "calendar"
    put(gw, "nouid.ics", ics(None, "X-KEEP-ME:yes", summary="No UID"))
    syncer = vdir_syncer(sqlite_store, tmp_path)
    assert syncer.run(syncer.prepare()).to_dict()["status"] == "ok"
    (copy,) = (tmp_path / "crm" / "calendar").iterdir()
    text = copy.read_text()
    assert "X-KEEP-ME:yes" in text and "SUMMARY:No UID" in text
    (uid,) = uids(tmp_path / "crm" / "calendar")
    assert uid.startswith("crmsync-")
    assert (gw / "nouid.ics").read_bytes() == ics(None, "X-KEEP-ME:yes", summary="No UID").encode()
    quiet = syncer.run(syncer.prepare()).to_dict()
    assert not quiet["objects"]["calendar"]["counts"], quiet
    # The same UID from a fresh start elsewhere (a new store, an empty CRM folder).
    other_root = tmp_path / "again"
    put(other_root / "groupware" / "calendar", "nouid.ics",
        (gw / "nouid.ics").read_bytes())
    fresh_store = Store.open(f"sqlite:///{tmp_path / 'again.db'}")
    try:
        fresh = vdir_syncer(fresh_store, other_root)
        fresh.run(fresh.prepare())
    finally:
        fresh_store.close()
    assert uids(other_root / "crm" / "calendar") == [uid]


def test_an_item_the_store_cannot_keep_fails_alone(store: Store, tmp_path: Path):
    """A NUL byte is valid UTF-8, but PostgreSQL keeps no text with one: on PostgreSQL the
    item's journal entry and state are refused, which is that item's failure (its write
    is not made unjournaled); on SQLite it syncs. Either way the run goes on."""
    gw = tmp_path / "groupware" / "calendar"
    put(gw, "fine.ics", ics("fine@x", summary="Fine"))
    put(gw, "nul.ics", ics("nul@x", summary="Has a \x00 in it"))
    syncer = vdir_syncer(store, tmp_path)
    for _ in range(2):
        report = syncer.run(syncer.prepare()).to_dict()
        assert report["error"] is None
        told = outcomes(report)
        if "nul.ics" in told:
            outcome, reason = told["nul.ics"]
            assert outcome == "failed" and "NUL" in reason and "\x00" not in reason, reason
            assert uids(tmp_path / "crm" / "calendar") == ["fine@x"]
        else:
            assert uids(tmp_path / "crm" / "calendar") == ["fine@x", "nul@x"]
    assert store.engine.dialect.name == "sqlite" or "nul.ics" in told


def test_what_salesforce_cuts_is_said_in_the_plan_and_the_report(sandbox,
                                                                 sqlite_store: Store,
                                                                 tmp_path: Path):
    """A 40,000-character body and a 400-character location reach Salesforce cut to its
    field lengths: the plan (dry run, review) and the run report say so, item by item,
    and the groupware original keeps every character."""
    gw = tmp_path / "groupware"
    body, place = "x" * 40_000, "Room " + "y" * 395
    put(gw / "calendar", "long.ics", ics("long@x", f"DESCRIPTION:{body}", f"LOCATION:{place}",
                                         summary="Long one"))
    put(gw / "calendar", "short.ics", ics("short@x", summary="Short one"))
    syncer = sf_syncer(sandbox, sqlite_store, gw)
    try:
        [prepared] = syncer.prepare()
        planned = {a.code: a.lossy for s, a in prepared.plan.actions()
                   if s.gw is not None and s.gw.id == "long.ics"}
        assert planned == {"create:crm": [
            "Event.Location cut to 255 characters (Salesforce keeps no more)",
            "Event.Description cut to 32,000 characters (Salesforce keeps no more)"]}
        assert all(not a.lossy for s, a in prepared.plan.actions()
                   if s.gw is not None and s.gw.id == "short.ics")
        report = syncer.run([prepared]).to_dict()
        assert report["status"] == "ok"
        outcome, reason = outcomes(report)["long.ics"]
        assert outcome == "warning" and "Description cut to 32,000" in reason \
            and "Location cut to 255" in reason
        assert "short.ics" not in outcomes(report)
        assert body in (gw / "calendar" / "long.ics").read_text().replace("\r\n ", "")
    finally:
        syncer.close()
