"""``crmsync demo``: a real calendar server and a Salesforce sandbox, with sample data.

The demo starts an embedded Radicale (the groupware: a calendar and an address book) and
the Salesforce-compatible sandbox (the CRM) on free loopback ports, fills both with a few
weeks of realistic sample data, and creates the profile ``demo`` joining them in a
crmsync home of its own. The command line then runs a manual sync on it: the review
first, nothing written before it is confirmed. The servers stop when the demo ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from crmsync import formats
from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.model import Attendee, Contact, Event, Occurrence, Person, Task, moment

# A file that marks a folder as the demo's own, so that a new demo may clear it.
MARKER = ".crmsync-demo"
PROFILE = "demo"
API = "/services/data/v62.0"


@dataclass
class Demo:
    home: Path
    profile: str
    radicale_url: str
    sandbox_url: str


def groupware_samples(now: datetime) -> dict[str, list[Any]]:
    """A salesperson's calendar, address book and tasks, relative to ``now``."""
    day = now.replace(hour=9, minute=0, second=0, microsecond=0)
    rep = Person("ana.sales@example.com", "Ana Sales")

    def at(days: int, hours: float = 0) -> str:
        return moment(day + timedelta(days=days, hours=hours))

    weekly = day + timedelta(days=1)
    moved, cancelled = moment(weekly + timedelta(days=7)), moment(weekly + timedelta(days=14))
    return {
        "calendar": [
            Event(uid="weekly-pipeline@demo", summary="Weekly pipeline review",
                  start=moment(weekly), end=moment(weekly + timedelta(hours=1)),
                  tz="Europe/Berlin", rrule="FREQ=WEEKLY;COUNT=6", organizer=rep,
                  exdates=[cancelled], reminders=[15],
                  overrides={moved: Occurrence(
                      summary="Weekly pipeline review (moved)",
                      start=moment(weekly + timedelta(days=7, hours=2)),
                      end=moment(weekly + timedelta(days=7, hours=3)))}),
            Event(uid="trade-fair@demo", summary="Trade fair",
                  start=(day + timedelta(days=10)).date().isoformat(),
                  end=(day + timedelta(days=12)).date().isoformat(), show_as="free"),
            Event(uid="acme-demo@demo", summary="Product demo for Acme", start=at(4, 5),
                  end=at(4, 6), location="Video call", organizer=rep,
                  attendees=[Attendee("jo@acme.example", "Jo Acme", "accepted")]),
            Event(uid="dentist@demo", summary="Dentist", start=at(6, 8), end=at(6, 9),
                  private=True),
            Event(uid="team-lunch@demo", summary="Team lunch", start=at(3, 3),
                  end=at(3, 4), categories=["DoNotSync"]),
        ],
        "contacts": [
            Contact(uid="sam@demo", full_name="Sam Initech", given_name="Sam",
                    family_name="Initech", emails=["sam@initech.example"],
                    company="Initech", title="CTO"),
            Contact(uid="pat@demo", full_name="Pat Newman", given_name="Pat",
                    family_name="Newman", emails=["pat@newco.example"], title="Founder"),
        ],
        "tasks": [
            Task(uid="travel@demo", summary="Book travel to the trade fair", due=at(7),
                 status="in-process"),
        ],
    }


def crm_samples(now: datetime) -> dict[str, list[dict[str, Any]]]:
    """The CRM's records, as Salesforce field values."""
    day = now.replace(hour=9, minute=0, second=0, microsecond=0)

    def at(days: int, hours: float = 0) -> str:
        return (day + timedelta(days=days, hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    return {
        "Contact": [
            {"FirstName": "Jo", "LastName": "Acme", "Email": "jo@acme.example",
             "Title": "Buyer", "Phone": "+49 30 1234567"},
            {"FirstName": "Sam", "LastName": "Initech", "Email": "sam@initech.example",
             "Title": "CTO"},
        ],
        "Lead": [
            {"FirstName": "Lee", "LastName": "Prospect", "Email": "lee@prospect.example",
             "Company": "Prospect Ltd"},
        ],
        "Event": [
            {"Subject": "Pricing call with Acme", "StartDateTime": at(2),
             "EndDateTime": at(2, 1), "Location": "Acme HQ", "Type": "Meeting"},
            {"Subject": "Contract review: Globex", "StartDateTime": at(5, 4),
             "EndDateTime": at(5, 5)},
        ],
        "Task": [
            {"Subject": "Send Acme the revised quote", "ActivityDate": at(3)[:10],
             "Priority": "High", "Status": "Not Started"},
        ],
    }


def _prepare(root: Path) -> None:
    """A fresh demo folder: created, or cleared when an earlier demo made it."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise ConfigError(f"{root} exists and is not a crmsync demo folder; "
                              "pick another with --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by crmsync demo; cleared by the next one\n")


def _seed_groupware(radicale: Any, now: datetime) -> dict[str, str]:
    """Create the collections, fill them; the profile's groupware endpoints."""
    calendar = radicale.make_collection("demo", "calendar", "calendar")
    book = radicale.make_collection("demo", "contacts", "addressbook")
    for kind, records in groupware_samples(now).items():
        fmt = formats.VCARD if kind == "contacts" else formats.ICALENDAR
        folder = book if kind == "contacts" else calendar
        for record in records:
            ext = ".vcf" if kind == "contacts" else ".ics"
            radicale.put(f"{folder}{record.uid}{ext}", formats.render(fmt, kind, record))
    return {"calendar": f"caldav:{calendar}", "tasks": f"caldav:{calendar}",
            "contacts": f"carddav:{book}"}


def _seed_crm(sandbox: Any, now: datetime) -> None:
    """Enter the CRM's records through the sandbox's REST API, as a CRM user would."""
    with sandbox.client() as http:
        ids: dict[str, list[str]] = {}
        for obj, rows in crm_samples(now).items():
            answer = http.post(f"{API}/composite/sobjects", json={"allOrNone": True, "records": [
                {"attributes": {"type": obj}, **row} for row in rows]})
            _check(answer, f"creating sample {obj} records")
            ids[obj] = [r["id"] for r in answer.json()]
        # Jo Acme is invited to the pricing call.
        relation = {"attributes": {"type": "EventRelation"}, "EventId": ids["Event"][0],
                    "RelationId": ids["Contact"][0], "IsInvitee": True, "Status": "Accepted"}
        _check(http.post(f"{API}/composite/sobjects",
                         json={"allOrNone": True, "records": [relation]}), "inviting")


def _check(response: httpx.Response, what: str) -> None:
    ok = response.is_success and not (isinstance(response.json(), list) and any(
        not r.get("success", True) for r in response.json()))
    if not ok:
        raise ConnectionFailed(f"the sandbox refused {what}: {response.text[:300]}")


@contextmanager
def running_demo(root: Path, now: datetime | None = None) -> Iterator[Demo]:
    """Start both servers with sample data and a ``demo`` profile; stop them after."""
    from crmsync.config import Paths, store_url
    from crmsync.connectors.base import Credentials
    from crmsync.embedded import Radicale
    from crmsync.sandbox.server import Sandbox
    from crmsync.secrets import SecretStore, save_credentials
    from crmsync.store import Store, join_endpoints

    now = now or datetime.now(UTC)
    root = root.resolve()
    _prepare(root)
    home = root / "home"
    with Radicale(root / "radicale") as radicale, \
            Sandbox(db_path=root / "sandbox.db") as sandbox:
        groupware = _seed_groupware(radicale, now)
        _seed_crm(sandbox, now)
        paths = Paths.resolve(home)
        store = Store.open(store_url(paths))
        try:
            store.add_profile(PROFILE, f"salesforce:{sandbox.url}", join_endpoints(groupware),
                              ["calendar", "contacts", "tasks"], {})
        finally:
            store.close()
        save_credentials(SecretStore(paths), PROFILE, "crm", Credentials(
            client_id=sandbox.client_id, client_secret=sandbox.client_secret,
            refresh_token=sandbox.refresh_token, ca_bundle=str(sandbox.ca_path)))
        yield Demo(home, PROFILE, radicale.url, sandbox.url)
