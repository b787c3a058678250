"""The Salesforce connector against the sandbox (a Salesforce-compatible server over HTTPS).

Faults, limits, the clock and validation rules are set through the sandbox's /_sandbox/
control API; requests are counted by a transport that passes everything through to the
real TLS transport.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from crmsync import formats
from crmsync.connectors import connect
from crmsync.connectors.base import Create, Credentials, Delete, Item, Update
from crmsync.connectors.salesforce import SalesforceConnector, Settings, attachment_names
from crmsync.connectors.sfapi import authorize_url, exchange_code
from crmsync.errors import ApiLimitReached, ConfigError, ConnectionFailed
from crmsync.formats import salesforce as sf
from crmsync.model import Attendee, Contact, Event, Occurrence, Phone, Task, moment
from crmsync.sandbox.server import Sandbox
from scenario import Scenario

from sfsandbox import API, clock_at, clock_on, control


class Counting(httpx.BaseTransport):
    """The real transport, with a tally of (method, path) sent."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.inner = httpx.HTTPTransport(verify=sandbox.ssl_context())
        self.sent: list[tuple[str, str]] = []
        self.urls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        self.urls.append(str(request.url))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def count(self, method: str, path_suffix: str) -> int:
        return sum(1 for m, p in self.sent if m == method and p.endswith(path_suffix))


def creds(sandbox: Sandbox, **overrides: object) -> Credentials:
    values: dict[str, object] = dict(
        username=sandbox.username, ca_bundle=sandbox.ca_path, client_id=sandbox.client_id,
        client_secret=sandbox.client_secret, refresh_token=sandbox.refresh_token)
    values.update(overrides)
    return Credentials(**values)  # type: ignore[arg-type]


Factory = Callable[..., SalesforceConnector]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(sandbox: Sandbox, sleeps: list[float]) -> Iterator[Factory]:
    control(sandbox, "reset")
    # The org's clock never goes back: its SystemModstamps never do.
    clock_on(sandbox)
    made: list[SalesforceConnector] = []

    def factory(counting: Counting | None = None, credentials: Credentials | None = None,
                **settings: object) -> SalesforceConnector:
        connector = SalesforceConnector(
            sandbox.url, credentials=credentials or creds(sandbox),
            settings=Settings(**settings),  # type: ignore[arg-type]
            transport=counting, sleep=sleeps.append)
        made.append(connector)
        return connector

    yield factory
    for connector in made:
        connector.close()


def ical(record: Event | Task, extra: str = "") -> Item:
    raw = formats.render(formats.ICALENDAR, record.kind, record)
    if extra:
        raw = raw.replace("END:VEVENT", extra + "\r\nEND:VEVENT")
    return Item("src.ics", "1", raw, formats.ICALENDAR, record.kind)


def vcard(contact: Contact) -> Item:
    return Item("src.vcf", "1", formats.render(formats.VCARD, "contacts", contact),
                formats.VCARD, "contacts")


def unique(word: str) -> str:
    unique.n = getattr(unique, "n", 0) + 1  # type: ignore[attr-defined]
    return f"{word} {unique.n}"  # type: ignore[attr-defined]


def when(days: int, hour: int = 9) -> str:
    day = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def api(sandbox: Sandbox, method: str, path: str, body: object = None) -> httpx.Response:
    with sandbox.client() as http:
        return http.request(method, API + "/" + path, json=body)


def create_contact(sandbox: Sandbox, email: str, last: str = "Person") -> str:
    response = api(sandbox, "POST", "sobjects/Contact",
                   {"LastName": last, "FirstName": "Known", "Email": email})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def pass_a_minute(sandbox: Sandbox) -> None:
    """Move the sandbox's clock on by two minutes."""
    clock_on(sandbox, 2)


def api_calls(sandbox: Sandbox) -> int:
    return httpx.get(sandbox.url + "/_sandbox/stats", verify=sandbox.ssl_context()).json()[
        "api_calls"]


# --- events ----------------------------------------------------------------------------


def test_events_are_created_read_updated_and_deleted(sandbox: Sandbox, make: Factory) -> None:
    known = unique("known") .replace(" ", "") + "@example.com"
    create_contact(sandbox, known)
    sf_side = make()
    summary = unique("Pricing call")
    event = Event(summary=summary, start=when(2), end=when(2, 10), location="Room 4",
                  description="Agenda", reminders=[15],
                  attendees=[Attendee(known, "Known Person", "accepted"),
                             Attendee("stranger@example.org")])
    [result] = sf_side.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    item = result.item
    assert item is not None and item.id.startswith("00U")
    stored = item.record()
    assert isinstance(stored, Event)
    assert (stored.summary, stored.start, stored.end, stored.location, stored.reminders) == (
        summary, event.start, event.end, "Room 4", [15])
    # Only the attendee Salesforce knows becomes an invitee (an EventRelation).
    assert [a.email for a in stored.attendees] == [known]
    relations = api(sandbox, "GET", "query?q=" + f"SELECT RelationId, Status FROM "
                    f"EventRelation WHERE EventId = '{item.id}'").json()["records"]
    assert [r["Status"] for r in relations] == ["Accepted"]

    fetched = sf_side.fetch("calendar", [item.id])
    assert fetched[item.id].version == item.version

    [updated] = sf_side.apply("calendar", [Update(item.id, item.version, {
        "summary": summary + " (moved)", "attendees": []}, planned=item)])
    assert updated.status == "ok", updated.error
    assert updated.item is not None and updated.item.version != item.version
    record = updated.item.record()
    assert isinstance(record, Event)
    assert record.summary == summary + " (moved)" and record.attendees == []

    [deleted] = sf_side.apply("calendar", [Delete(item.id, updated.item.version)])
    assert deleted.status == "ok"
    assert sf_side.fetch("calendar", [item.id]) == {}
    # Deleting again is a no-op.
    assert sf_side.apply("calendar", [Delete(item.id, updated.item.version)])[0].status == "ok"


def test_an_update_planned_from_an_old_version_is_changed(sandbox: Sandbox,
                                                          make: Factory) -> None:
    sf_side = make()
    event = Event(summary=unique("Review"), start=when(3), end=when(3, 10))
    [created] = sf_side.apply("calendar", [Create(ical(event))])
    assert created.item is not None
    api(sandbox, "PATCH", f"sobjects/Event/{created.item.id}", {"Location": "elsewhere"})
    update = Update(created.item.id, created.item.version, {"summary": "mine"},
                    planned=created.item)
    delete = Delete(created.item.id, created.item.version)
    results = sf_side.apply("calendar", [update])
    assert results[0].status == "changed"
    assert sf_side.apply("calendar", [delete])[0].status == "changed"
    # Nothing was written over the other change.
    assert sf_side.fetch("calendar", [created.item.id])[created.item.id].record().location == \
        "elsewhere"  # type: ignore[attr-defined]


def test_invitee_list_and_attachments_in_the_description(sandbox: Sandbox,
                                                         make: Factory) -> None:
    sf_side = make(invitees_in_description=True, event_type="Meeting")
    event = Event(summary=unique("Kickoff"), start=when(4), end=when(4, 10),
                  description="Bring the numbers.",
                  attendees=[Attendee("outsider@example.org", "Out Sider")])
    source = ical(event, "ATTACH;FILENAME=deck.pdf:https://files.example.com/x/deck.pdf")
    assert attachment_names(source.raw) == ["deck.pdf"]
    [result] = sf_side.apply("calendar", [Create(source)])
    assert result.status == "ok" and result.item is not None
    stored = json.loads(result.item.raw)["Event"]
    assert "Out Sider <outsider@example.org> (needs-action)" in stored["Description"]
    assert "- deck.pdf" in stored["Description"]
    assert stored["Type"] == "Meeting"
    record = result.item.record()
    assert isinstance(record, Event)
    # The blocks do not come back as text; the listed invitee comes back as an attendee.
    assert record.description == "Bring the numbers."
    assert [a.email for a in record.attendees] == ["outsider@example.org"]


def test_field_limits_cut_text_and_refuse_long_subjects(sandbox: Sandbox,
                                                        make: Factory) -> None:
    sf_side = make()
    calls = api_calls(sandbox)
    too_long = Event(summary="S" * 256, start=when(5), end=when(5, 10))
    long_text = Event(summary=unique("Long"), start=when(5), end=when(5, 10),
                      location="L" * 300, description="D" * 40000)
    results = sf_side.apply("calendar", [Create(ical(too_long)), Create(ical(long_text))])
    assert results[0].status == "failed"
    assert "Subject is 256 characters" in (results[0].error or "")
    assert results[1].status == "ok", results[1].error
    assert results[1].item is not None
    stored = json.loads(results[1].item.raw)["Event"]
    assert len(stored["Location"]) == 255 and len(stored["Description"]) == 32000
    assert api_calls(sandbox) > calls

    strict = make(truncate_body=False)
    [refused] = strict.apply("calendar", [Create(ical(long_text))])
    assert refused.status == "failed" and "Description" in (refused.error or "")


# --- recurrence ----------------------------------------------------------------------------


def test_a_series_with_a_moved_and_a_cancelled_occurrence(sandbox: Sandbox,
                                                          make: Factory) -> None:
    sf_side = make()
    first = when(7)
    slots = [when(7 + 7 * n) for n in range(4)]
    moved_to = (when(15, 14), when(15, 15))
    event = Event(summary=unique("Standup"), start=first, end=when(7, 10), tz="UTC",
                  rrule="FREQ=WEEKLY;COUNT=4", exdates=[slots[2]],
                  overrides={slots[1]: Occurrence(summary="Standup (moved)",
                                                  start=moved_to[0], end=moved_to[1])})
    [result] = sf_side.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    item = result.item
    assert item is not None and item.id.startswith("828")
    stored = item.record()
    assert isinstance(stored, Event)
    assert stored.rrule == "FREQ=WEEKLY;COUNT=4"
    assert stored.exdates == [slots[2]]
    assert list(stored.overrides) == [slots[1]]
    override = stored.overrides[slots[1]]
    assert (override.summary, override.start, override.end) == ("Standup (moved)", *moved_to)

    # Another occurrence cancelled in Salesforce shows as a new EXDATE.
    cursor = sf_side.list_changes("calendar", None).cursor
    index = sf.occurrence_index(item.raw)
    assert api(sandbox, "DELETE", f"sobjects/Event/{index[slots[3]]['Id']}").status_code == 204
    pass_a_minute(sandbox)
    changes = sf_side.list_changes("calendar", cursor)
    listed = {u[0]: u[2] for u in changes.upserts}
    assert item.id in listed and item.id not in changes.deleted
    again = listed[item.id]
    assert again is not None
    assert again.record().exdates == [slots[2], slots[3]]  # type: ignore[attr-defined]

    # Renaming the series keeps its exceptions.
    [renamed] = sf_side.apply("calendar", [Update(item.id, again.version,
                                                  {"summary": "Daily standup"}, planned=again)])
    assert renamed.status == "ok", renamed.error
    assert renamed.item is not None
    now = renamed.item.record()
    assert isinstance(now, Event)
    assert now.summary == "Daily standup" and now.exdates == [slots[2], slots[3]]
    assert now.overrides[slots[1]].summary == "Standup (moved)"

    [gone] = sf_side.apply("calendar", [Delete(item.id, renamed.item.version)])
    assert gone.status == "ok"
    assert sf_side.fetch("calendar", [item.id]) == {}


def test_a_moved_occurrence_of_an_all_day_series_moves(sandbox: Sandbox,
                                                         make: Factory) -> None:
    """An all-day occurrence moves by its dates (ActivityDate, EndDate): its times alone
    left it where it was (issue 16)."""
    sf_side = make()
    days = [when(7 + 7 * n)[:10] for n in range(3)]
    summary = unique("Bin day")
    event = Event(summary=summary, start=days[0], end=when(8)[:10],
                  rrule="FREQ=WEEKLY;COUNT=3",  # the second one a day early
                  overrides={days[1]: Occurrence(summary=summary, start=when(13)[:10],
                                                 end=when(14)[:10])})
    [result] = sf_side.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    assert result.item is not None
    stored = result.item.record()
    assert isinstance(stored, Event)
    assert {k: (o.start, o.end) for k, o in stored.overrides.items()} == {
        days[1]: (when(13)[:10], when(14)[:10])}


def test_without_recurrence2_a_series_is_written_as_single_events(sandbox: Sandbox,
                                                                  make: Factory) -> None:
    start = datetime.now(UTC) - timedelta(days=1)
    sf_side = SalesforceConnector(sandbox.url, credentials=creds(sandbox),
                                  settings=Settings(recurrence="expand"),
                                  time_range=(start, start + timedelta(days=20)))
    try:
        cursor = sf_side.list_changes("calendar", None).cursor
        summary = unique("Expanded")
        event = Event(summary=summary, start=when(1), end=when(1, 10), tz="UTC",
                      rrule="FREQ=WEEKLY", exdates=[when(8)])
        [result] = sf_side.apply("calendar", [Create(ical(event))])
        assert result.status == "ok", result.error
        assert result.item is not None
        found = api(sandbox, "GET", "query?q=" + f"SELECT Id, StartDateTime FROM Event WHERE "
                    f"Subject = '{summary}'").json()["records"]
        # Inside 20 days: days 1, 8 (excluded) and 15.
        assert sorted(sf.sf_datetime(r["StartDateTime"]) for r in found) == [when(1), when(15)]
        # Read back as one item (the first occurrence's), never as strangers.
        changes = sf_side.list_changes("calendar", sf_side.cursor("calendar", cursor))
        mine = [u for u in changes.upserts if u[2] and u[2].record().summary == summary]
        assert [u[0] for u in mine] == [result.item.id]
        assert sf_side.apply("calendar", [Delete(result.item.id, mine[0][1])])[0].status == "ok"
        assert api(sandbox, "GET", "query?q=" + f"SELECT Id FROM Event WHERE Subject = "
                   f"'{summary}'").json()["records"] == []
    finally:
        sf_side.close()


# --- tasks and contacts ------------------------------------------------------------------


def test_tasks_are_created_updated_and_deleted(make: Factory) -> None:
    sf_side = make()
    task = Task(summary=unique("Send quote"), due="2026-12-01", priority=1,
                description="v2")
    [created] = sf_side.apply("tasks", [Create(ical(task))])
    assert created.status == "ok", created.error
    assert created.item is not None and created.item.id.startswith("00T")
    stored = created.item.record()
    assert (stored.summary, stored.due, stored.priority, stored.status) == (  # type: ignore[attr-defined]
        task.summary, "2026-12-01", 1, "needs-action")
    [done] = sf_side.apply("tasks", [Update(created.item.id, created.item.version,
                                            {"status": "completed"}, planned=created.item)])
    assert done.status == "ok" and done.item is not None
    assert json.loads(done.item.raw)["Task"]["IsClosed"] is True
    assert sf_side.apply("tasks", [Delete(done.item.id, done.item.version)])[0].status == "ok"


def test_contacts_are_written_with_their_account(sandbox: Sandbox, make: Factory) -> None:
    company = unique("Acme")
    assert api(sandbox, "POST", "sobjects/Account", {"Name": company}).status_code == 201
    sf_side = make()
    contact = Contact(given_name="Ana", family_name=unique("Silva"),
                      emails=["ana.silva@example.com"], company=company, title="CFO",
                      phones=[Phone("+1 555 0100", "work"), Phone("+1 555 0199", "cell")],
                      birthday="1980-05-01", note="Met at the fair")
    [created] = sf_side.apply("contacts", [Create(vcard(contact))])
    assert created.status == "ok", created.error
    assert created.item is not None
    stored = created.item.record()
    assert isinstance(stored, Contact)
    assert (stored.company, stored.title, stored.birthday, stored.note) == (
        company, "CFO", "1980-05-01", "Met at the fair")
    assert {(p.type, p.value) for p in stored.phones} == {("work", "+1 555 0100"),
                                                          ("cell", "+1 555 0199")}
    [moved] = sf_side.apply("contacts", [Update(created.item.id, created.item.version,
                                                {"title": "CEO"}, planned=created.item)])
    assert moved.status == "ok" and moved.item is not None
    assert moved.item.record().title == "CEO"  # type: ignore[attr-defined]


def test_people_are_found_by_email(sandbox: Sandbox, make: Factory) -> None:
    email = unique("match").replace(" ", "") + "@example.com"
    contact_id = create_contact(sandbox, email)
    found = make().find_people([email.upper(), "nobody@example.net"])
    assert [p["Id"] for p in found[email]] == [contact_id]
    assert "nobody@example.net" not in found


def test_people_lookups_are_cached_for_the_run_and_batched(sandbox: Sandbox,
                                                           make: Factory) -> None:
    email = unique("cached").replace(" ", "") + "@example.com"
    contact_id = create_contact(sandbox, email)
    counting = Counting(sandbox)
    sf_side = make(counting)
    emails = [email, *(f"nobody{n}@example.net" for n in range(250))]
    found = sf_side.find_people(emails, alternates=True)
    asked = counting.count("GET", "/composite") + counting.count("POST", "/composite")
    assert [p["Id"] for p in found[email]] == [contact_id]
    # One composite call for Contacts and Leads (two chunks each); one describe each.
    assert asked == 1 and counting.count("GET", "/describe") == 2
    again = sf_side.find_people([email.upper(), "nobody7@example.net"], alternates=True)
    assert again == {email: found[email]}
    assert len(counting.sent) == 1 + 2 + 1  # + the token; nothing asked again
    sf_side.list_changes("calendar", None)  # a new run looks people up afresh
    before = len(counting.sent)
    sf_side.find_people([email], alternates=True)
    assert len(counting.sent) == before + 1


# --- listing -------------------------------------------------------------------------------


@pytest.mark.parametrize("second", [59.9, 59.5, 0.2])
def test_incremental_listing_reports_changes_and_deletions(sandbox: Sandbox, make: Factory,
                                                           second: float) -> None:
    # Around a minute's turn (seen once under load: created at :59.909, the next listing
    # at :00), whatever the connector's estimate of the org's clock.
    clock_at(sandbox, second)
    sf_side = make()
    full = sf_side.list_changes("tasks", None)
    assert full.complete
    [a, b] = [r.item for r in sf_side.apply("tasks", [
        Create(ical(Task(summary=unique("A")))), Create(ical(Task(summary=unique("B"))))])]
    assert a is not None and b is not None
    first = sf_side.list_changes("tasks", full.cursor)
    listed = {u[0]: u[1] for u in first.upserts}
    assert listed[a.id] == a.version and listed[b.id] == b.version
    api(sandbox, "PATCH", f"sobjects/Task/{a.id}", {"Subject": "A changed"})
    api(sandbox, "DELETE", f"sobjects/Task/{b.id}")
    # Salesforce reports deletions up to the last whole minute: let one pass. The next
    # run's connector learns the org's clock as it signs in.
    pass_a_minute(sandbox)
    second = make().list_changes("tasks", first.cursor)
    assert not second.complete
    changed = {u[0]: u[2] for u in second.upserts}
    assert changed[a.id] is not None
    assert changed[a.id].record().summary == "A changed"  # type: ignore[union-attr]
    assert b.id in second.deleted


def test_an_invitee_change_lists_its_event(sandbox: Sandbox, make: Factory) -> None:
    email = unique("inv").replace(" ", "") + "@example.com"
    contact_id = create_contact(sandbox, email)
    sf_side = make()
    [created] = sf_side.apply("calendar", [Create(ical(Event(
        summary=unique("Invite"), start=when(2), end=when(2, 10))))])
    assert created.item is not None
    cursor = sf_side.list_changes("calendar", None).cursor
    sf_side.list_changes("calendar", cursor)
    assert api(sandbox, "POST", "sobjects/EventRelation", {
        "EventId": created.item.id, "RelationId": contact_id,
        "IsInvitee": True}).status_code == 201
    changes = sf_side.list_changes("calendar", cursor)
    item = {u[0]: u[2] for u in changes.upserts}[created.item.id]
    assert item is not None
    assert [a.email for a in item.record().attendees] == [email]  # type: ignore[attr-defined]


def test_nothing_changed_costs_at_most_two_calls_per_object(sandbox: Sandbox,
                                                            make: Factory) -> None:
    sf_side = make()
    cursors = {kind: sf_side.list_changes(kind, None).cursor
               for kind in ("calendar", "tasks", "contacts")}
    pass_a_minute(sandbox)
    cursors = {kind: sf_side.list_changes(kind, c).cursor for kind, c in cursors.items()}
    for kind, cursor in cursors.items():
        counting = Counting(sandbox)
        fresh = make(counting)  # a new run: only what the cursor holds
        before = api_calls(sandbox)
        changes = fresh.list_changes(kind, cursor)
        used = api_calls(sandbox) - before
        assert not changes.upserts and not changes.deleted
        # The refresh-token login is no API call.
        assert fresh.stats()["api_calls"] == used
        assert used <= 2, (kind, used, counting.urls)


def test_creates_go_in_collections_of_200(sandbox: Sandbox, make: Factory) -> None:
    counting = Counting(sandbox)
    sf_side = make(counting)
    tasks = [Create(ical(Task(summary=unique("Bulk")))) for _ in range(201)]
    results = sf_side.apply("tasks", tasks)
    assert [r.status for r in results] == ["ok"] * 201
    assert counting.count("POST", "/composite/sobjects") == math.ceil(201 / 200)
    assert len({r.item.id for r in results if r.item}) == 201
    ids = [r.item.id for r in results if r.item]
    versions = {r.item.id: r.item.version for r in results if r.item}
    before = counting.count("DELETE", "/composite/sobjects")
    deleted = sf_side.apply("tasks", [Delete(i, versions[i]) for i in ids])
    assert [r.status for r in deleted] == ["ok"] * 201
    assert counting.count("DELETE", "/composite/sobjects") - before == 2


def _series(n: int) -> list[Event]:
    out = []
    for k in range(n):
        slots = [when(3 + 7 * w, 8 + k % 8) for w in range(5)]
        out.append(Event(summary=unique("Weekly"), start=slots[0], end=when(3, 9 + k % 8),
                         tz="UTC", rrule="FREQ=WEEKLY;COUNT=5", exdates=[slots[2]],
                         overrides={slots[1]: Occurrence(summary="Moved", start=when(11, 17),
                                                         end=when(11, 18))}))
    return out


def test_series_writes_cost_the_same_calls_for_3_or_30_series(sandbox: Sandbox,
                                                              make: Factory) -> None:
    """Series with exceptions are written in batches across series: the calls a write
    costs do not grow with the number of series (each used to cost six or more)."""
    used = {}
    for n in (3, 30):
        sf_side = make()
        before = api_calls(sandbox)
        created = sf_side.apply("calendar", [Create(ical(e)) for e in _series(n)])
        assert [r.status for r in created] == ["ok"] * n, [r.error for r in created]
        made = api_calls(sandbox) - before
        for result in created:
            stored = result.item.record()  # type: ignore[union-attr]
            assert len(stored.exdates) == 1 and list(stored.overrides.values())[0].summary \
                == "Moved"
        before = api_calls(sandbox)
        updates = []
        for result in created:
            item = result.item
            assert item is not None
            stored = item.record()
            stored.summary += " (renamed)"
            stored.exdates = sorted([*stored.exdates, stored.start])  # cancel the first one
            updates.append(Update(item.id, item.version, {"summary": stored.summary,
                                                           "exdates": stored.exdates},
                                  planned=item))
        updated = sf_side.apply("calendar", updates)
        assert [r.status for r in updated] == ["ok"] * n, [r.error for r in updated]
        for result in updated:
            stored = result.item.record()  # type: ignore[union-attr]
            assert stored.summary.endswith("(renamed)") and len(stored.exdates) == 2
        used[n] = (made, api_calls(sandbox) - before)
    assert used[30] == used[3], used
    # Create: describe, the records, their series Ids, the series' occurrences, the
    # exceptions (one PATCH, one DELETE), the read-back. Update: the version check, the
    # PATCH, the DELETE, the read-back.
    assert used[30] == (7, 4), used


def test_listing_the_series_just_written_reads_them_once(sandbox: Sandbox,
                                                         make: Factory) -> None:
    """The run after one that wrote series lists them as changed; all their records are
    in the listing, so it reads nothing more: one call, and the same items."""
    control(sandbox, "reset", records=True)  # nothing but what this test writes
    sf_side = make()
    cursor = sf_side.list_changes("calendar", None).cursor
    pass_a_minute(sandbox)
    created = sf_side.apply("calendar", [Create(ical(e)) for e in _series(4)])
    assert [r.status for r in created] == ["ok"] * 4
    state = sf_side.cursor("calendar", cursor)
    before = api_calls(sandbox)
    changes = make().list_changes("calendar", state)
    assert api_calls(sandbox) - before == 1
    listed = {i: v for i, v, _ in changes.upserts}
    assert listed == {r.item.id: r.item.version for r in created if r.item}


# --- errors ------------------------------------------------------------------------------


def test_locked_rows_are_retried_with_jitter(sandbox: Sandbox, make: Factory,
                                             sleeps: list[float]) -> None:
    control(sandbox, "faults", record_error={"errorCode": "UNABLE_TO_LOCK_ROW", "times": 2})
    [result] = make().apply("tasks", [Create(ical(Task(summary=unique("Locked"))))])
    assert result.status == "ok", result.error
    assert len(sleeps) == 2 and all(s > 0 for s in sleeps)


@pytest.mark.parametrize("code", ["STRING_TOO_LONG", "ENTITY_IS_DELETED"])
def test_record_errors_fail_only_their_item(sandbox: Sandbox, make: Factory, code: str) -> None:
    sf_side = make()
    [task] = sf_side.apply("tasks", [Create(ical(Task(summary=unique("Victim"))))])
    assert task.item is not None
    control(sandbox, "faults", record_error={"errorCode": code, "times": 1,
                                             "message": f"{code} from the server"})
    results = sf_side.apply("tasks", [
        Update(task.item.id, task.item.version, {"summary": "new"}, planned=task.item)])
    assert results[0].status == "failed"
    assert code in (results[0].error or "") and "from the server" in (results[0].error or "")


def test_a_validation_rule_fails_the_item_with_its_message(sandbox: Sandbox,
                                                           make: Factory) -> None:
    control(sandbox, "validation", object="Task", field="Subject", contains="FORBIDDEN",
            message="Subjects may not say FORBIDDEN")
    results = make().apply("tasks", [Create(ical(Task(summary="FORBIDDEN word"))),
                                     Create(ical(Task(summary=unique("Allowed"))))])
    assert results[0].status == "failed"
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in (results[0].error or "")
    assert "Subjects may not say FORBIDDEN" in (results[0].error or "")
    assert results[1].status == "ok"


def test_a_locked_row_on_a_single_call_is_retried(sandbox: Sandbox, make: Factory,
                                                sleeps: list[float]) -> None:
    sf_side = make()
    sf_side.list_changes("contacts", None)
    control(sandbox, "faults", path_regex="/query$", method="GET", status=400, times=1,
            body=[{"errorCode": "UNABLE_TO_LOCK_ROW",
                   "message": "unable to obtain exclusive access to this record"}])
    assert sf_side.list_changes("contacts", None).complete
    assert len(sleeps) == 1


def test_unavailable_and_throttled_answers_are_retried(sandbox: Sandbox, make: Factory,
                                                      sleeps: list[float]) -> None:
    sf_side = make()
    sf_side.list_changes("tasks", None)
    control(sandbox, "faults", path_regex="/query$", status=503, times=1)
    control(sandbox, "faults", path_regex="/query$", status=429, times=1,
            headers={"Retry-After": "2"})
    assert sf_side.list_changes("tasks", None).complete
    assert len(sleeps) == 2 and 2.0 in sleeps
    control(sandbox, "faults", path_regex="/query$", status=503, times=10)
    with pytest.raises(ConnectionFailed, match="503"):
        sf_side.list_changes("tasks", None)


def test_an_exhausted_org_stops_the_run(sandbox: Sandbox, make: Factory) -> None:
    sf_side = make()
    sf_side.list_changes("tasks", None)
    control(sandbox, "limits", daily=100, used=100)
    with pytest.raises(ApiLimitReached, match="no API calls left"):
        sf_side.apply("tasks", [Create(ical(Task(summary=unique("Late"))))])


def test_the_budget_share_stops_before_exceeding_it(sandbox: Sandbox, make: Factory) -> None:
    control(sandbox, "limits", daily=100, used=40)
    sf_side = make(api_share=0.5)
    with pytest.raises(ApiLimitReached, match="50%"):
        for _ in range(20):
            sf_side.list_changes("tasks", None)
    stats = sf_side.stats()
    assert stats["api_limit"] == 100 and stats["api_usage"] == 50
    assert api(sandbox, "GET", "limits").headers["Sforce-Limit-Info"].startswith(
        "api-usage=51/")


def test_an_expired_session_is_renewed_once(sandbox: Sandbox, make: Factory) -> None:
    counting = Counting(sandbox)
    sf_side = make(counting)
    sf_side.list_changes("tasks", None)
    control(sandbox, "expire-tokens")
    sf_side.list_changes("tasks", None)
    assert counting.count("POST", "/services/oauth2/token") == 2
    # A bare access token cannot be renewed: the run stops with a clear error.
    bare = make(credentials=Credentials(token="expired", ca_bundle=sandbox.ca_path))
    with pytest.raises(ConnectionFailed, match="INVALID_SESSION_ID"):
        bare.list_changes("tasks", None)


def test_jwt_bearer_login(sandbox: Sandbox, make: Factory) -> None:
    with open(sandbox.jwt_private_key_path) as fh:
        key = fh.read()
    for private_key in (sandbox.jwt_private_key_path, key):
        sf_side = make(credentials=Credentials(
            username=sandbox.username, client_id=sandbox.client_id, private_key=private_key,
            ca_bundle=sandbox.ca_path))
        assert sf_side.list_changes("tasks", None).complete


def test_refused_credentials_say_so_without_secrets(sandbox: Sandbox, make: Factory) -> None:
    bad = creds(sandbox, refresh_token="not-a-token")
    with pytest.raises(ConnectionFailed, match="invalid_grant") as caught:
        make(credentials=bad).list_changes("tasks", None)
    assert "not-a-token" not in str(caught.value)
    worse = creds(sandbox, client_secret="s3cret-value")
    with pytest.raises(ConnectionFailed, match="invalid_client") as caught:
        make(credentials=worse).list_changes("tasks", None)
    assert "s3cret" not in str(caught.value)
    assert "not-a-token" not in repr(bad) and "s3cret" not in repr(worse)
    assert sandbox.client_secret not in repr(make(credentials=worse))


def test_web_server_flow(sandbox: Sandbox) -> None:
    url = authorize_url(sandbox.client_id, "http://localhost:8765/cb", login_url=sandbox.url,
                        state="xyz")
    response = httpx.get(url, verify=sandbox.ssl_context())
    assert response.status_code == 302
    back = parse_qs(urlsplit(response.headers["Location"]).query)
    assert back["state"] == ["xyz"]
    token = exchange_code(back["code"][0], client_id=sandbox.client_id,
                          client_secret=sandbox.client_secret,
                          redirect_uri="http://localhost:8765/cb", login_url=sandbox.url,
                          credentials=Credentials(ca_bundle=sandbox.ca_path))
    assert token.refresh_token and token.access_token and token.user_id
    assert token.access_token not in repr(token)


def test_tls_is_verified(sandbox: Sandbox, make: Factory) -> None:
    sf_side = make(credentials=creds(sandbox, ca_bundle=None))
    with pytest.raises(ConnectionFailed):
        sf_side.list_changes("tasks", None)


def test_endpoint_settings_come_from_the_query_string(sandbox: Sandbox) -> None:
    connector = connect(f"salesforce:{sandbox.url}?event_type=Meeting&invitees_in_description=1"
                        "&api_share=0.25", "crm", creds(sandbox))
    try:
        assert isinstance(connector, SalesforceConnector)
        assert connector.settings == Settings(event_type="Meeting",
                                              invitees_in_description=True, api_share=0.25)
        assert connector.capabilities.batch_size == 200
        assert connector.capabilities.keeps_uid is False
        assert "tz" not in connector.capabilities.fields["calendar"]
    finally:
        connector.close()
    for bad in ("api_share=2", "colour=blue", "invitees=maybe"):
        with pytest.raises(ConfigError):
            connect(f"salesforce:{sandbox.url}?{bad}", "crm")
    with pytest.raises(ConfigError, match="https"):
        connect("salesforce:http://example.my.salesforce.com", "crm")


def test_stats_report_calls_and_usage(sandbox: Sandbox, make: Factory) -> None:
    control(sandbox, "limits", daily=15000, used=0)
    sf_side = make()
    sf_side.list_changes("contacts", None)
    stats = sf_side.stats()
    assert stats["api_calls"] >= 1 and stats["requests"] == stats["api_calls"] + 1
    assert stats["api_limit"] == 15000 and stats["api_usage"] >= stats["api_calls"]
    assert re.fullmatch(r"\d+", str(stats["requests"]))
    assert Counter(stats)  # every value a number


def test_a_sync_run_with_the_core(sandbox: Sandbox, make: Factory, sqlite_store,
                                  tmp_path) -> None:
    """Groupware folder -> Salesforce, an edit back, and a second run writing nothing."""
    from crmsync.connectors.vdir import VdirConnector, file_name
    from crmsync.sync import Syncer

    from conftest import Sides, event, sync

    sides = Sides(tmp_path / "sides")
    uid = unique("core").replace(" ", "-")
    sides.put("groupware", event(uid, unique("Core sync"), start=when(3), end=when(3, 10)))
    sides.put("groupware", Task(uid=uid + "-t", summary=unique("Core task")))
    profile = sqlite_store.add_profile("sf", f"salesforce:{sandbox.url}", f"vdir:{sides.gw}",
                                       ("calendar", "tasks"), {})
    counting = Counting(sandbox)
    crm = make(counting)
    syncer = Syncer(sqlite_store, profile, crm=crm,
                    groupware=VdirConnector(sides.gw, "groupware"))
    plans, report = sync(syncer)
    assert report.status == "ok", report.to_dict()
    # The run report shows the calls used and the org's allowance.
    api_report = report.to_dict()["api"]["crm"]
    assert api_report["api_calls"] > 0 and api_report["api_limit"] > 0
    # Ours go to Salesforce; what earlier tests left there comes to the groupware.
    assert [p.counts().get("create:crm") for p in plans] == [1, 1]
    assert not any("failed" in p.counts() for p in plans)
    [pair] = [p for p in sqlite_store.pairs(profile.id, "calendar")
              if p.id_on("groupware") == file_name(uid, ".ics")]
    crm_id = pair.id_on("crm")
    assert crm_id is not None and crm_id.startswith("00U")

    # Edited in Salesforce: the change reaches the groupware.
    api(sandbox, "PATCH", f"sobjects/Event/{crm_id}", {"Location": "Board room"})
    pass_a_minute(sandbox)
    plans, report = sync(syncer)
    assert report.status == "ok", report.to_dict()
    assert sides.records("groupware", "calendar")[uid].location == "Board room"

    # Nothing changed: no writes, at most 2 calls per object.
    pass_a_minute(sandbox)
    sync(syncer)
    before = crm.stats()["api_calls"]
    sent = len(counting.urls)
    plans, report = sync(syncer)
    assert all(not p.steps for p in plans)
    assert crm.stats()["api_calls"] - before <= 2 * 2, counting.urls[sent:]


def test_a_create_whose_answer_is_lost_is_not_written_twice(sandbox: Sandbox, make: Factory,
                                                            sqlite_store, tmp_path) -> None:
    """Salesforce inserts the records but its answer is lost (a 503 after the work): an
    insert is not sent again, the run stops, and the next run pairs the records made
    with their groupware events by content: one of each on both sides."""
    from crmsync.connectors.vdir import VdirConnector
    from crmsync.sync import Syncer

    from conftest import Sides, event, sync

    control(sandbox, "reset", records=True)
    sides = Sides(tmp_path / "sides")
    names = [unique("Lost answer") for _ in range(2)]
    for n, name in enumerate(names):
        sides.put("groupware", event(f"lost-{n}", name, start=when(2 + n), end=when(2 + n, 10)))
    profile = sqlite_store.add_profile("sf", f"salesforce:{sandbox.url}", f"vdir:{sides.gw}",
                                       ("calendar",), {})
    syncer = Syncer(sqlite_store, profile, crm=make(),
                    groupware=VdirConnector(sides.gw, "groupware"))
    control(sandbox, "faults", path_regex="/composite/sobjects$", method="POST", status=503,
            times=1, after=True)
    with pytest.raises(ConnectionFailed, match="may have been done"):
        sync(syncer)
    assert len(api(sandbox, "GET", "query?q=SELECT+Id+FROM+Event").json()["records"]) == 2

    pass_a_minute(sandbox)
    _, report = sync(syncer)
    assert report.status == "ok", report.to_dict()
    subjects = [r["Subject"] for r in api(sandbox, "GET", "query?q=SELECT+Subject+FROM+Event"
                                          ).json()["records"]]
    assert sorted(subjects) == sorted(names)
    assert sorted(r.summary for r in sides.records("groupware", "calendar").values()) == \
        sorted(names)
    assert len(sqlite_store.pairs(profile.id, "calendar")) == 2


def test_what_salesforce_would_refuse_is_a_skip_with_its_reason(scn: Scenario) -> None:
    """SPEC 5: a subject over Salesforce's limit is not synced and reported. Known before
    writing (the connector's field lengths, from describe; LastName is required): the dry
    run shows a skip with the reason, apply never sends it, and no run fails over it."""
    at = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=2)
    span = {"start": moment(at), "end": moment(at + timedelta(hours=1))}
    scn.put(Event(uid="long@t", summary="S" * 300, **span))  # type: ignore[arg-type]
    scn.put(Event(uid="fine@t", summary="Fine", **span))  # type: ignore[arg-type]
    scn.put(Contact(uid="nameless@t", emails=["nobody@example.com"]))
    scn.put(Contact(uid="named@t", full_name="Ann Named", emails=["ann@example.com"]))

    dry = json.loads(scn.cli("sync", "p", "--dry-run", "--json", check=0).stdout)["objects"]
    skips = {a["groupware"]["id"].rpartition("/")[2]: a["reason"]
             for kind in ("calendar", "contacts") for a in dry[kind]["actions"]
             if a["action"] == "skip"}
    assert "Subject is 300 characters, Salesforce takes at most 255" in skips["long@t.ics"]
    assert "last name" in skips["nameless@t.vcf"]
    assert dry["calendar"]["counts"] == {"create:crm": 1, "skip": 1}
    assert dry["contacts"]["counts"] == {"create:crm": 1, "skip": 1}

    run = scn.cli("sync", "p", "--yes", "--json", check=0)  # a skip is not a failure
    report = json.loads(run.stdout)
    assert report["status"] == "ok"
    skipped = [i for o in report["objects"].values() for i in o["items"]
               if i["outcome"] == "skipped"]
    assert sorted(i["groupware_id"].rpartition("/")[2] for i in skipped) == \
        ["long@t.ics", "nameless@t.vcf"]
    assert all(i["reason"].startswith("not synced to CRM: ") for i in skipped)
    # Never sent: only the others reached Salesforce.
    assert [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")] == ["Fine"]
    assert [r["LastName"] for r in scn.crm_query("SELECT LastName FROM Contact")] == ["Named"]
    text = scn.cli("sync", "p", "--yes", check=0)  # the next run: nothing fails
    assert "failed" not in text.stdout

    # Shortened, it syncs.
    scn.edit("long@t", summary="Shorter")
    again = json.loads(scn.cli("sync", "p", "--yes", "--json", check=0).stdout)
    assert again["objects"]["calendar"]["counts"] == {"create:crm": 1}
    assert sorted(r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")) == \
        ["Fine", "Shorter"]


# Last: moving the clock 16 days on purges the org's delete log for the tests after it.
def test_a_cursor_older_than_15_days_reconciles_in_full(sandbox: Sandbox,
                                                        make: Factory) -> None:
    sf_side = make()
    [task] = sf_side.apply("tasks", [Create(ical(Task(summary=unique("Old"))))])
    assert task.item is not None
    cursor = sf_side.list_changes("tasks", None).cursor
    cursor = sf_side.list_changes("tasks", cursor).cursor
    assert not sf_side.list_changes("tasks", cursor).complete
    control(sandbox, "clock", offset_days=16)
    later = make()
    changes = later.list_changes("tasks", cursor)
    assert changes.complete
    assert task.item.id in {u[0] for u in changes.upserts}



def test_a_first_listing_finds_a_series_that_began_years_before_the_range(make: Factory
                                                                           ) -> None:
    """Salesforce keeps occurrence records for a bounded span after a series' start: a
    monthly meeting set up years ago has none in the sync range, yet repeats into it. A
    new profile's first listing (by time range) missed it, so that calendar never got it."""
    writer = make()
    years_ago = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) \
        - timedelta(days=5 * 365)
    start = years_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (years_ago + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    series = Event(uid="", summary=unique("Monthly review"), start=start, end=end,
                   rrule=f"FREQ=MONTHLY;BYMONTHDAY={years_ago.day}")
    [made] = writer.apply("calendar", [Create(ical(series))])
    assert made.status == "ok" and made.item is not None
    listed = make().list_changes("calendar", None)  # another profile, its first listing
    ids = [item_id for item_id, _, _ in listed.upserts]
    assert made.item.id in ids
    record = next(it for i, _, it in listed.upserts if i == made.item.id).record()
    assert record.rrule.startswith("FREQ=MONTHLY") and record.summary == series.summary
