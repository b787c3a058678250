"""``crmsync demo``: two local folders with sample data, synced both ways.

The "CRM" folder stands in for a CRM (a later connector replaces it with the Salesforce
sandbox); the "groupware" folder is a calendar and address book in the vdir layout.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from crmsync import formats
from crmsync.errors import ConfigError
from crmsync.model import Attendee, Contact, Event, Occurrence, Person, Phone, Task, moment


def sample_items(now: datetime) -> dict[str, dict[str, list]]:
    """Sample records per side and object, relative to ``now``."""
    day = now.replace(hour=9, minute=0, second=0, microsecond=0)
    rep = Person("ana.sales@example.com", "Ana Sales")

    def at(days: int, hours: int = 0) -> str:
        return moment(day + timedelta(days=days, hours=hours))

    weekly_start = day + timedelta(days=1)
    moved = moment(weekly_start + timedelta(days=7))
    return {
        "crm": {
            "calendar": [
                Event(uid="crm-ev-1@demo", summary="Pricing call with Acme", start=at(2),
                      end=at(2, 1), tz="Europe/Berlin", organizer=rep,
                      attendees=[Attendee("jo@acme.example", "Jo Acme", "accepted")]),
                Event(uid="crm-ev-2@demo", summary="Contract review: Globex", start=at(5, 4),
                      end=at(5, 5), location="Globex HQ", categories=["CRM"]),
            ],
            "contacts": [
                Contact(uid="crm-c-1@demo", full_name="Jo Acme", given_name="Jo",
                        family_name="Acme", emails=["jo@acme.example"], company="Acme",
                        title="Buyer", phones=[Phone("+49 30 1234567", "work")]),
            ],
            "tasks": [
                Task(uid="crm-t-1@demo", summary="Send Acme the revised quote",
                     due=at(3), priority=1),
            ],
        },
        "groupware": {
            "calendar": [
                Event(uid="gw-ev-1@demo", summary="Weekly pipeline review",
                      start=moment(weekly_start), end=moment(weekly_start + timedelta(hours=1)),
                      tz="Europe/Berlin", rrule="FREQ=WEEKLY;COUNT=8",
                      overrides={moved: Occurrence(
                          summary="Weekly pipeline review (moved)",
                          start=moment(weekly_start + timedelta(days=7, hours=2)),
                          end=moment(weekly_start + timedelta(days=7, hours=3)))},
                      reminders=[15]),
                Event(uid="gw-ev-2@demo", summary="Trade fair", start=(day + timedelta(days=10))
                      .date().isoformat(), end=(day + timedelta(days=12)).date().isoformat(),
                      show_as="free"),
            ],
            "contacts": [
                Contact(uid="gw-c-1@demo", full_name="Sam Initech", given_name="Sam",
                        family_name="Initech", emails=["sam@initech.example",
                                                       "s.initech@mail.example"],
                        company="Initech"),
            ],
            "tasks": [
                Task(uid="gw-t-1@demo", summary="Book travel to the trade fair",
                     due=at(7), status="in-process"),
            ],
        },
    }


def write_samples(root: Path, now: datetime | None = None) -> dict[str, Path]:
    """Create ``root/crm`` and ``root/groupware`` vdirs holding the sample items."""
    from crmsync.connectors.vdir import EXTENSION, FORMAT, file_name

    sides = {}
    for side, objects in sample_items(now or datetime.now(UTC)).items():
        base = root / side
        sides[side] = base
        for kind, records in objects.items():
            folder = base / kind
            folder.mkdir(parents=True, exist_ok=True)
            for record in records:
                path = folder / file_name(record.uid, EXTENSION[kind])  # type: ignore[index]
                path.write_text(formats.render(FORMAT[kind], kind, record),  # type: ignore[index]
                                encoding="utf-8", newline="")
    return sides


def run_demo(root: Path, console) -> int:
    from crmsync.store import Store
    from crmsync.sync import Syncer

    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        console.print(f"{root} exists already; using it as it is.")
        sides = {"crm": root / "crm", "groupware": root / "groupware"}
    else:
        sides = write_samples(root)
    store = Store.open(f"sqlite:///{root / 'state.db'}")
    try:
        try:
            profile = store.profile("demo")
        except ConfigError:  # the first run: create it
            profile = store.add_profile(
                "demo", f"vdir:{sides['crm']}", f"vdir:{sides['groupware']}",
                ["calendar", "contacts", "tasks"], {})
        syncer = Syncer(store, profile)
        from crmsync import show

        prepared = syncer.prepare()
        for prep in prepared:
            if prep.plan.steps:
                console.print(show.plan_table(prep.plan))
        report = syncer.run(prepared, mode="demo")
        console.print(show.report_table(report))
    finally:
        store.close()
    console.print(
        f"\nThe CRM folder is {sides['crm']}, the calendar folder {sides['groupware']}.\n"
        f"Edit or delete a file on either side, then sync again with:\n"
        f"  crmsync --home {root} sync demo   (the demo keeps its state in {root})"
    )
    return 0
