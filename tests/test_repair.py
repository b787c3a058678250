"""Issue 9: `crmsync repair NAME` reports and fixes duplicate UIDs, orphan pairs and
groupware items lacking the kept CRM Id. Radicale + the Salesforce sandbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crmsync import formats
from crmsync.model import Event, moment
from scenario import Scenario, sf_time

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)


def _event(uid: str, summary: str, hours: int) -> Event:
    start = T0 + timedelta(hours=hours)
    return Event(uid=uid, summary=summary, start=moment(start),
                 end=moment(start + timedelta(hours=1)))


def _folder(scn: Scenario) -> dict[str, str]:
    """File name -> text of every calendar item Radicale stores."""
    return {p.name: p.read_text(encoding="utf-8")
            for p in sorted(scn._folder("calendar").glob("*.ics"))}


def _repair(scn: Scenario, *args: str, code: int = 0, profile: str = "p") -> dict[str, Any]:
    return json.loads(scn.cli("repair", profile, "--json", *args, check=code).stdout)


def _crm_subjects(scn: Scenario) -> list[str]:
    return sorted(r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event"))


def _verified(scn: Scenario, profile: str = "p") -> tuple[int, int]:
    """`crmsync verify` after a scenario: (pairs, pairs that agree); exits 0 only when
    they all agree."""
    found = json.loads(scn.cli("verify", profile, "--json", check=None).stdout)
    calendar = found["objects"]["calendar"]
    assert calendar["divergent"] == [], calendar
    return calendar["pairs"], calendar["agree"]


def test_duplicate_uids_on_radicale_get_new_uids_and_sync_once(scn: Scenario):
    scn.put(_event("dup@t", "First copy", 0))
    twin = formats.render(formats.ICALENDAR, "calendar", _event("dup@t", "Second copy", 2))
    # Radicale refuses a second UID by HTTP (409 no-uid-conflict); another client or a
    # server-side copy leaves one, so the twin goes straight into its storage folder.
    (scn._folder("calendar") / "twin.ics").write_text(twin, encoding="utf-8")
    before = _folder(scn)

    dry = _repair(scn, "--dry-run")
    assert dry["counts"] == {"duplicate-uid:found": 1}, dry
    assert dry["findings"][0]["item_id"].endswith("twin.ics")  # the first by id keeps it
    assert _folder(scn) == before  # --dry-run changes nothing
    # Radicale refuses to change an item's UID in place: the twin is written anew under a
    # new UID, then the old one is deleted.
    done = _repair(scn)
    assert done["counts"] == {"duplicate-uid:fixed": 1}, done
    after = _folder(scn)
    assert "twin.ics" not in after and len(after) == 2
    assert sorted(r.summary for r in scn.records().values()) == ["First copy", "Second copy"]
    assert scn.records()["dup@t"].summary == "First copy"
    # Stopped before its delete, a repair run again finds the copy it made (the same new
    # UID) and deletes the twin: nothing is written twice.
    (scn._folder("calendar") / "twin.ics").write_text(twin, encoding="utf-8")
    again = _repair(scn)
    assert again["counts"] == {"duplicate-uid:fixed": 1}, again
    assert _folder(scn) == after

    scn.sync()
    assert _crm_subjects(scn) == ["First copy", "Second copy"]
    assert _repair(scn)["counts"] == {"missing-crm-id:fixed": 2}
    assert _repair(scn)["counts"] == {}
    plans, _ = scn.sync()
    assert plans[0].counts() == {}
    assert _crm_subjects(scn) == ["First copy", "Second copy"]
    assert _verified(scn) == (2, 2)


def _vdir_profile(scn: Scenario) -> Path:
    from crmsync.config import Paths
    from crmsync.secrets import SecretStore, credentials_for, save_credentials

    root = scn.home.parent / "vdir"
    scn.cli("profile", "add", "v", "--crm", f"salesforce:{scn.sandbox.url}", "--objects",
            "calendar", "--groupware", f"calendar=vdir:{root}", check=0)
    paths = Paths.resolve(scn.home)
    creds = credentials_for(paths, "p", "crm")
    assert creds is not None
    save_credentials(SecretStore(paths), "v", "crm", creds)
    (root / "calendar").mkdir(parents=True)
    return root / "calendar"


def test_duplicate_uids_get_new_uids_and_sync_once(scn: Scenario):
    folder = _vdir_profile(scn)
    for name, summary, hours in (("a.ics", "First copy", 0), ("b.ics", "Second copy", 2)):
        (folder / name).write_text(formats.render(
            formats.ICALENDAR, "calendar", _event("dup@t", summary, hours)), encoding="utf-8")

    def files() -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.ics"))}

    before = files()
    dry = _repair(scn, "--dry-run", profile="v")
    assert dry["counts"] == {"duplicate-uid:found": 1}, dry
    assert files() == before  # --dry-run changes nothing

    done = _repair(scn, profile="v")
    assert done["counts"] == {"duplicate-uid:fixed": 1}, done
    assert done["findings"][0]["item_id"] == "b.ics"  # the first by id keeps its UID
    after = files()
    assert after.keys() == before.keys() and after["a.ics"] == before["a.ics"]
    uids = {formats.parse(formats.ICALENDAR, "calendar", raw).uid for raw in after.values()}
    assert len(uids) == 2 and "dup@t" in uids
    assert "Second copy" in after["b.ics"]

    sync = json.loads(scn.cli("sync", "v", "--yes", "--json", check=0).stdout)
    assert sync["status"] == "ok", sync
    assert _crm_subjects(scn) == ["First copy", "Second copy"]

    # Both were made from the groupware side: they now get the kept CRM Id.
    again = _repair(scn, profile="v")
    assert again["counts"] == {"missing-crm-id:fixed": 1 + 1}, again
    ids = {r["Subject"]: r["Id"] for r in scn.crm_query("SELECT Id, Subject FROM Event")}
    for raw in files().values():
        record = formats.parse(formats.ICALENDAR, "calendar", raw)
        assert record.crm_id == ids[record.summary]
    assert _repair(scn, profile="v")["findings"] == []
    scn.cli("sync", "v", "--yes", check=0)
    assert _crm_subjects(scn) == ["First copy", "Second copy"]  # no duplicates
    assert _verified(scn, "v") == (2, 2)


def test_pair_gone_on_both_sides_is_forgotten(scn: Scenario):
    scn.put(_event("gone@t", "Gone", 0))
    start = T0 + timedelta(hours=4)
    scn.crm_insert("Event", Subject="Stays", StartDateTime=sf_time(start),
                   EndDateTime=sf_time(start + timedelta(hours=1)))
    scn.sync()
    crm_gone = next(r["Id"] for r in scn.crm_query("SELECT Id, Subject FROM Event")
                    if r["Subject"] == "Gone")
    scn.delete("gone@t")
    scn.crm_delete("Event", crm_gone)
    before = _folder(scn)

    dry = _repair(scn, "--dry-run")
    assert dry["counts"] == {"orphan-pair:found": 1}, dry
    assert _folder(scn) == before
    done = _repair(scn)
    assert done["counts"] == {"orphan-pair:fixed": 1}, done
    syncer = scn.syncer()
    try:
        pairs = syncer.store.pairs(syncer.profile.id, "calendar")
    finally:
        syncer.close()
        syncer.store.close()
    assert len(pairs) == 1 and pairs[0].crm_id != crm_gone
    assert _repair(scn)["findings"] == []
    assert _verified(scn) == (1, 1)


def test_one_side_gone_is_left_to_the_sync(scn: Scenario):
    scn.put(_event("half@t", "Half", 0))
    scn.sync()
    scn.delete("half@t")
    done = _repair(scn)
    assert done["counts"] == {"one-sided-pair:reported": 1}, done
    assert _crm_subjects(scn) == ["Half"]
    plans, _ = scn.sync()
    assert plans[0].counts() == {"delete:crm": 1}
    assert _crm_subjects(scn) == []


def test_paired_calendar_item_gets_the_kept_crm_id(scn: Scenario):
    scn.put(_event("mine@t", "Made here", 0))
    scn.sync()
    assert "X-CRMSYNC-CRM-ID" not in scn.raw("mine@t")
    crm_id = scn.crm_query("SELECT Id FROM Event")[0]["Id"]
    before = _folder(scn)
    assert _repair(scn, "--dry-run")["counts"] == {"missing-crm-id:found": 1}
    assert _folder(scn) == before
    text = scn.cli("repair", "p", check=0).stdout
    assert "missing-crm-id" in text and "1 missing-crm-id:fixed" in text, text
    assert "X-CRMSYNC-CRM-ID:" + crm_id in scn.raw("mine@t")
    assert scn.records()["mine@t"].summary == "Made here"
    plans, _ = scn.sync()
    assert plans[0].counts() == {}  # the stored pair follows the repaired version
    assert _verified(scn) == (1, 1)
    assert scn.cli("repair", "p", check=0).stdout.strip() == "Nothing to repair."
    assert "--dry-run" in scn.cli("repair", "--help", check=0).stdout
