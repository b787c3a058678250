"""The Microsoft Graph connector against the Graph sandbox, over HTTPS, tokens from MSAL.

Outlook's side of each test (a user creating or changing things) goes through the
sandbox's Graph API as that user (``outlook``); faults through its /_sandbox/ API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crmsync import formats
from crmsync.connectors import connect
from crmsync.connectors.base import Create, Credentials, Delete, Item, Update
from crmsync.connectors.msgraph import GraphConnector, Settings
from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.graphsandbox.server import GraphSandbox
from crmsync.model import Attendee, Contact, Event, Occurrence, Phone, Task
from graphsandbox import (
    GraphUser,
    application,
    delegated,
    gcontrol,
    graph_stats,
    sent_mail,
)

Factory = Callable[..., GraphConnector]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(graph: GraphSandbox, outlook: GraphUser, sleeps: list[float]) -> Iterator[Factory]:
    made: list[GraphConnector] = []

    def factory(user: str = "me", credentials: Credentials | None = None,
                **settings: object) -> GraphConnector:
        connector = GraphConnector(
            user, credentials=credentials or delegated(graph),
            settings=Settings(graph_url=graph.url, **settings),  # type: ignore[arg-type]
            sleep=sleeps.append)
        made.append(connector)
        return connector

    yield factory
    for connector in made:
        connector.close()


def when(days: int, hour: int = 9) -> str:
    day = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def date_in(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


def ical(record: Event | Task) -> Item:
    return Item("src.ics", "1", formats.render(formats.ICALENDAR, record.kind, record),
                formats.ICALENDAR, record.kind)


def vcard(contact: Contact) -> Item:
    return Item("src.vcf", "1", formats.render(formats.VCARD, "contacts", contact),
                formats.VCARD, "contacts")


def outlook_event(subject: str, start: str, end: str, **extra: object) -> dict[str, object]:
    return {"subject": subject, "start": {"dateTime": start, "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": end, "timeZone": "W. Europe Standard Time"}, **extra}


# --- events ------------------------------------------------------------------------------


def test_events_are_created_read_updated_and_deleted(make: Factory, graph: GraphSandbox) -> None:
    gw = make()
    event = Event(summary="Pricing call", start=when(3), end=when(3, 10), tz="Europe/Berlin",
                  location="Room 4", description="Agenda:\n- prices\n- dates", private=True,
                  show_as="free", categories=["Customer"], reminders=[15])
    [result] = gw.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    assert result.item is not None
    stored = result.item.record()
    assert isinstance(stored, Event)
    assert (stored.summary, stored.start, stored.end, stored.tz) == (
        "Pricing call", when(3), when(3, 10), "Europe/Berlin")
    assert (stored.location, stored.private, stored.show_as, stored.categories,
            stored.reminders) == ("Room 4", True, "free", ["Customer"], [15])
    # Exchange keeps the body as HTML; it reads back as the text that was written.
    raw = json.loads(result.item.raw)["event"]
    assert raw["body"]["contentType"] == "html"
    assert stored.description == "Agenda:\n- prices\n- dates"
    assert raw["start"]["timeZone"] == "UTC" and raw["originalStartTimeZone"] == \
        "W. Europe Standard Time"

    [updated] = gw.apply("calendar", [Update(result.item.id, result.item.version,
                                             {"summary": "Pricing call (moved)",
                                              "start": when(4), "end": when(4, 11)})])
    assert updated.status == "ok", updated.error
    assert updated.item is not None and updated.item.version != result.item.version
    again = gw.fetch("calendar", [result.item.id])[result.item.id].record()
    assert isinstance(again, Event)
    assert (again.summary, again.start, again.end) == ("Pricing call (moved)", when(4),
                                                      when(4, 11))
    assert again.description == "Agenda:\n- prices\n- dates"

    [gone] = gw.apply("calendar", [Delete(result.item.id, updated.item.version)])
    assert gone.status == "ok"
    assert gw.fetch("calendar", [result.item.id]) == {}


def test_all_day_events_keep_their_dates(make: Factory) -> None:
    gw = make()
    event = Event(summary="Trade fair", start=date_in(5), end=date_in(7))
    [result] = gw.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    stored = result.item.record()  # type: ignore[union-attr]
    assert (stored.start, stored.end, stored.all_day) == (date_in(5), date_in(7), True)  # type: ignore[attr-defined]


def test_an_update_planned_from_an_old_version_is_changed(make: Factory,
                                                          outlook: GraphUser) -> None:
    gw = make()
    [result] = gw.apply("calendar", [Create(ical(Event(summary="Call", start=when(2),
                                                       end=when(2, 10))))])
    assert result.item is not None
    outlook("PATCH", f"/me/events/{result.item.id}", {"subject": "Call (edited in Outlook)"})
    [update] = gw.apply("calendar", [Update(result.item.id, result.item.version,
                                            {"summary": "Call from the CRM"})])
    assert update.status == "changed"
    [delete] = gw.apply("calendar", [Delete(result.item.id, result.item.version)])
    assert delete.status == "changed"
    assert outlook("GET", f"/me/events/{result.item.id}")["subject"] == "Call (edited in Outlook)"


def test_a_412_from_graph_is_changed(make: Factory, graph: GraphSandbox) -> None:
    gw = make()
    [result] = gw.apply("calendar", [Create(ical(Event(summary="Race", start=when(2),
                                                       end=when(2, 10))))])
    assert result.item is not None
    # Outlook's edit lands between crmsync's version check and its write.
    gcontrol(graph, "faults", path_regex="/events/", method="PATCH", status=412, times=1,
             body={"error": {"code": "ErrorIrresolvableConflict", "message": "changed"}})
    [update] = gw.apply("calendar", [Update(result.item.id, result.item.version,
                                            {"summary": "Race 2"})])
    assert update.status == "changed"


def test_incremental_delta_reports_changes_and_deletions(make: Factory,
                                                         outlook: GraphUser) -> None:
    gw = make()
    first = outlook("POST", "/me/events", outlook_event("One", when(1)[:19], when(1, 10)[:19]))
    second = outlook("POST", "/me/events", outlook_event("Two", when(2)[:19], when(2, 10)[:19]))
    listing = gw.list_changes("calendar", None)
    assert listing.complete
    assert {u[0] for u in listing.upserts} == {first["id"], second["id"]}
    quiet = gw.list_changes("calendar", listing.cursor)
    assert quiet.upserts == [] and quiet.deleted == [] and not quiet.complete

    outlook("PATCH", f"/me/events/{first['id']}", {"subject": "One (renamed)"})
    outlook("DELETE", f"/me/events/{second['id']}")
    changes = gw.list_changes("calendar", quiet.cursor)
    assert [(u[0], u[2].record().summary) for u in changes.upserts] == [  # type: ignore[union-attr]
        (first["id"], "One (renamed)")]
    assert changes.deleted == [second["id"]]


def test_an_expired_delta_token_starts_a_full_round(make: Factory, graph: GraphSandbox,
                                                    outlook: GraphUser) -> None:
    gw = make()
    made = outlook("POST", "/me/events", outlook_event("Kept", when(1)[:19], when(1, 10)[:19]))
    cursor = gw.list_changes("calendar", None).cursor
    gcontrol(graph, "expire-deltas")
    again = gw.list_changes("calendar", cursor)
    assert again.complete
    assert [u[0] for u in again.upserts] == [made["id"]]


def test_delta_pages_are_followed(make: Factory, outlook: GraphUser) -> None:
    gw = make(page_size=2)
    for n in range(5):
        outlook("POST", "/me/events", outlook_event(f"E{n}", when(n + 1)[:19],
                                                    when(n + 1, 10)[:19]))
    listing = gw.list_changes("calendar", None)
    assert sorted(u[2].record().summary for u in listing.upserts) == [  # type: ignore[union-attr]
        "E0", "E1", "E2", "E3", "E4"]


def test_events_outside_the_window_are_not_listed(make: Factory, outlook: GraphUser) -> None:
    gw = make(past_days=1, future_days=10)
    outlook("POST", "/me/events", outlook_event("Far", when(40)[:19], when(40, 10)[:19]))
    near = outlook("POST", "/me/events", outlook_event("Near", when(2)[:19], when(2, 10)[:19]))
    assert [u[0] for u in gw.list_changes("calendar", None).upserts] == [near["id"]]


def test_another_calendar_by_name(make: Factory, outlook: GraphUser) -> None:
    gw = make(calendar="Work")
    [result] = gw.apply("calendar", [Create(ical(Event(summary="Work thing", start=when(1),
                                                       end=when(1, 10))))])
    assert result.status == "ok", result.error
    default = outlook("GET", "/me/calendarView/delta?startDateTime=2000-01-01T00:00:00Z"
                             "&endDateTime=2100-01-01T00:00:00Z")
    assert default["value"] == []
    with pytest.raises(ConfigError, match="no calendar 'Nope'"):
        make(calendar="Nope").list_changes("calendar", None)


# --- recurring series --------------------------------------------------------------------


def test_a_series_with_a_moved_and_a_cancelled_occurrence(make: Factory,
                                                          outlook: GraphUser) -> None:
    gw = make()
    slots = [when(7 + 7 * n) for n in range(4)]
    moved = (when(15, 14), when(15, 15))
    event = Event(summary="Standup", start=slots[0], end=when(7, 10), tz="Europe/Berlin",
                  rrule="FREQ=WEEKLY;COUNT=4", exdates=[slots[2]],
                  overrides={slots[1]: Occurrence(summary="Standup (moved)", start=moved[0],
                                                  end=moved[1])})
    [result] = gw.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    stored = result.item.record()  # type: ignore[union-attr]
    assert isinstance(stored, Event)
    assert stored.rrule == "FREQ=WEEKLY;COUNT=4"
    assert stored.exdates == [slots[2]]
    assert list(stored.overrides) == [slots[1]]
    assert (stored.overrides[slots[1]].summary, stored.overrides[slots[1]].start) == (
        "Standup (moved)", moved[0])

    # Outlook cancels the last occurrence: the series is listed with a new EXDATE.
    cursor = gw.list_changes("calendar", None).cursor
    master = result.item.id  # type: ignore[union-attr]
    instances = outlook("GET", f"/me/events/{master}/instances?startDateTime={slots[3]}"
                               f"&endDateTime={when(29, 11)}")["value"]
    outlook("DELETE", f"/me/events/{instances[0]['id']}")
    changes = gw.list_changes("calendar", cursor)
    listed = {u[0]: u[2] for u in changes.upserts}
    assert list(listed) == [master] and changes.deleted == []
    again = listed[master].record()
    assert again.exdates == [slots[2], slots[3]]  # type: ignore[attr-defined]

    # Renaming the series keeps its exceptions.
    [renamed] = gw.apply("calendar", [Update(master, listed[master].version,  # type: ignore[union-attr]
                                             {"summary": "Daily standup"})])
    assert renamed.status == "ok", renamed.error
    now = renamed.item.record()  # type: ignore[union-attr]
    assert now.summary == "Daily standup"  # type: ignore[attr-defined]
    assert now.exdates == [slots[2], slots[3]]  # type: ignore[attr-defined]
    assert now.overrides[slots[1]].summary == "Standup (moved)"  # type: ignore[attr-defined]

    [gone] = gw.apply("calendar", [Delete(master, renamed.item.version)])  # type: ignore[union-attr]
    assert gone.status == "ok"
    deleted = gw.list_changes("calendar", changes.cursor)
    assert deleted.deleted == [master]


def test_an_occurrence_cancelled_in_the_crm_is_cancelled_in_outlook(
        make: Factory, outlook: GraphUser) -> None:
    gw = make()
    slots = [when(5 + n) for n in range(3)]
    event = Event(summary="Daily", start=slots[0], end=when(5, 10), rrule="FREQ=DAILY;COUNT=3")
    [made] = gw.apply("calendar", [Create(ical(event))])
    assert made.status == "ok", made.error
    item = made.item
    assert item is not None
    [cancel] = gw.apply("calendar", [Update(item.id, item.version, {"exdates": [slots[1]]})])
    assert cancel.status == "ok", cancel.error
    assert cancel.item.record().exdates == [slots[1]]  # type: ignore[union-attr, attr-defined]
    shown = outlook("GET", f"/me/events/{item.id}/instances?startDateTime={slots[0]}"
                           f"&endDateTime={when(9)}")["value"]
    assert [i["originalStart"] for i in shown] == [slots[0], slots[2]]


def test_outlook_patterns_read_as_rrules(make: Factory, outlook: GraphUser) -> None:
    gw = make()
    start = datetime.now(UTC).date() + timedelta(days=3)
    outlook("POST", "/me/events", outlook_event(
        "Board", f"{start}T10:00:00", f"{start}T11:00:00", recurrence={
            "pattern": {"type": "relativeMonthly", "interval": 1, "index": "last",
                        "daysOfWeek": ["friday"]},
            "range": {"type": "endDate", "startDate": str(start),
                      "endDate": str(start + timedelta(days=200))}}))
    [(_, _, item)] = gw.list_changes("calendar", None).upserts
    record = item.record()  # type: ignore[union-attr]
    assert record.rrule.startswith("FREQ=MONTHLY;UNTIL=")  # type: ignore[attr-defined]
    assert record.rrule.endswith(";BYDAY=-1FR")  # type: ignore[attr-defined]
    assert record.tz == "Europe/Berlin"  # type: ignore[attr-defined]


# --- no mail to attendees ----------------------------------------------------------------


def test_events_from_the_crm_never_mail_their_attendees(make: Factory, graph: GraphSandbox,
                                                        outlook: GraphUser) -> None:
    gw = make()
    event = Event(summary="Review", start=when(2), end=when(2, 10),
                  attendees=[Attendee("buyer@example.com", "Buyer", "accepted")])
    [result] = gw.apply("calendar", [Create(ical(event))])
    assert result.status == "ok", result.error
    stored = result.item.record()  # type: ignore[union-attr]
    assert [a.email for a in stored.attendees] == ["buyer@example.com"]  # type: ignore[attr-defined]
    assert outlook("GET", f"/me/events/{result.item.id}")["attendees"] == []  # type: ignore[union-attr]
    [upd] = gw.apply("calendar", [Update(result.item.id, result.item.version, {  # type: ignore[union-attr]
        "attendees": [{"email": "buyer@example.com", "name": "Buyer", "status": "accepted",
                       "role": "req-participant"},
                      {"email": "boss@example.com", "name": "", "status": "needs-action",
                       "role": "req-participant"}], "start": when(3), "end": when(3, 10)})])
    assert upd.status == "ok", upd.error
    assert len(upd.item.record().attendees) == 2  # type: ignore[union-attr, attr-defined]
    [gone] = gw.apply("calendar", [Delete(upd.item.id, upd.item.version)])  # type: ignore[union-attr]
    assert gone.status == "ok"
    assert sent_mail(graph) == []


def test_meetings_are_written_only_where_no_mail_follows(make: Factory, graph: GraphSandbox,
                                                         outlook: GraphUser) -> None:
    gw = make()
    meeting = outlook("POST", "/me/events", outlook_event(
        "Kick-off", when(2)[:19], when(2, 10)[:19],
        attendees=[{"emailAddress": {"address": "client@example.com", "name": "Client"},
                    "type": "required"}]))
    assert [m["kind"] for m in sent_mail(graph)] == ["invitation"]  # Outlook's own
    gcontrol(graph, "reset", items=False)
    before = len(sent_mail(graph))
    [item] = gw.fetch("calendar", [meeting["id"]]).values()
    [moved] = gw.apply("calendar", [Update(item.id, item.version, {"start": when(5),
                                                                   "end": when(5, 10)})])
    assert moved.status == "failed"
    assert "would send mail to the attendees" in (moved.error or "")
    [tagged] = gw.apply("calendar", [Update(item.id, item.version, {"categories": ["CRM"]})])
    assert tagged.status == "ok", tagged.error
    [deleted] = gw.apply("calendar", [Delete(item.id, tagged.item.version)])  # type: ignore[union-attr]
    assert deleted.status == "failed" and "cancellations" in (deleted.error or "")
    assert len(sent_mail(graph)) == before
    assert outlook("GET", f"/me/events/{meeting['id']}")["categories"] == ["CRM"]


def test_an_invitation_from_someone_else_may_be_deleted(make: Factory, graph: GraphSandbox,
                                                        outlook: GraphUser) -> None:
    gw = make()
    seeded = gcontrol(graph, f"seed/{graph.user}/events", **outlook_event(
        "Their meeting", when(2)[:19], when(2, 10)[:19], isOrganizer=False,
        organizer={"emailAddress": {"address": "them@example.com"}},
        attendees=[{"emailAddress": {"address": graph.user}, "type": "required"}]))
    [item] = gw.fetch("calendar", [seeded["id"]]).values()
    [gone] = gw.apply("calendar", [Delete(item.id, item.version)])
    assert gone.status == "ok", gone.error
    assert sent_mail(graph) == []


# --- contacts and tasks ------------------------------------------------------------------


def test_contacts_are_created_listed_updated_and_deleted(make: Factory,
                                                         outlook: GraphUser) -> None:
    gw = make()
    contact = Contact(full_name="Ana Lima", given_name="Ana", family_name="Lima",
                      emails=["ana@example.com"], phones=[Phone("+1 555 0100", "work"),
                                                          Phone("+1 555 0101", "cell")],
                      company="Acme", title="Buyer", birthday="1985-04-12", note="Met at fair")
    [result] = gw.apply("contacts", [Create(vcard(contact))])
    assert result.status == "ok", result.error
    stored = result.item.record()  # type: ignore[union-attr]
    assert stored.fields() == {**contact.fields()}
    listing = gw.list_changes("contacts", None)
    assert [u[0] for u in listing.upserts] == [result.item.id]  # type: ignore[union-attr]
    [upd] = gw.apply("contacts", [Update(result.item.id, result.item.version,  # type: ignore[union-attr]
                                         {"title": "Head of buying"})])
    assert upd.status == "ok", upd.error
    outlook("DELETE", f"/me/contacts/{result.item.id}")  # type: ignore[union-attr]
    changes = gw.list_changes("contacts", listing.cursor)
    assert changes.deleted == [result.item.id]  # type: ignore[union-attr]


def test_tasks_are_created_listed_updated_and_deleted(make: Factory,
                                                      outlook: GraphUser) -> None:
    gw = make(tasklist="CRM follow-ups")
    task = Task(summary="Send quote", description="Quote for 40 seats", due=date_in(4),
                priority=1)
    [result] = gw.apply("tasks", [Create(ical(task))])
    assert result.status == "ok", result.error
    stored = result.item.record()  # type: ignore[union-attr]
    assert (stored.summary, stored.due, stored.priority, stored.status) == (  # type: ignore[attr-defined]
        "Send quote", date_in(4), 1, "needs-action")
    cursor = gw.list_changes("tasks", None).cursor
    [done] = gw.apply("tasks", [Update(result.item.id, result.item.version,  # type: ignore[union-attr]
                                       {"status": "completed"})])
    assert done.status == "ok", done.error
    assert done.item.record().status == "completed"  # type: ignore[union-attr, attr-defined]
    changes = gw.list_changes("tasks", cursor)
    assert [u[0] for u in changes.upserts] == [result.item.id]  # type: ignore[union-attr]
    [gone] = gw.apply("tasks", [Delete(result.item.id, done.item.version)])  # type: ignore[union-attr]
    assert gone.status == "ok"
    assert gw.list_changes("tasks", changes.cursor).deleted == [result.item.id]  # type: ignore[union-attr]


# --- throttling and batches --------------------------------------------------------------


def test_throttled_calls_wait_as_asked(make: Factory, graph: GraphSandbox,
                                       sleeps: list[float]) -> None:
    gw = make()
    gcontrol(graph, "faults", path_regex="calendarView/delta", status=429, times=2,
             headers={"Retry-After": "3"})
    gw.list_changes("calendar", None)
    assert sleeps == [3.0, 3.0]


def test_writes_go_in_batches_of_20_and_throttled_ones_go_again(
        make: Factory, graph: GraphSandbox, sleeps: list[float]) -> None:
    gw = make()
    events = [Event(summary=f"Batch {n}", start=when(1 + n % 20), end=when(1 + n % 20, 10))
              for n in range(25)]
    gcontrol(graph, "faults", path_regex="/events$", method="POST", status=429, times=3,
             headers={"Retry-After": "2"})
    results = gw.apply("calendar", [Create(ical(e)) for e in events])
    assert [r.status for r in results] == ["ok"] * 25
    assert len({r.item.id for r in results}) == 25  # type: ignore[union-attr]
    assert sleeps == [2.0]
    stats = graph_stats(graph)
    assert stats["throttled"] == 3
    # 25 creates: 2 batches, and the 3 throttled ones in a third.
    assert stats["batches"] == 3
    assert gw.stats()["throttled"] == 3


def test_a_create_sent_twice_is_one_event(make: Factory, graph: GraphSandbox) -> None:
    gw = make()
    source = ical(Event(summary="Once", start=when(2), end=when(2, 10)))
    # The create is done but its answer lost: crmsync sends it again, safely.
    gcontrol(graph, "faults", path_regex=r"/\$batch|/events$", method="POST", status=503,
             times=1, after=True)
    [first] = gw.apply("calendar", [Create(source)])
    assert first.status == "ok", first.error
    [second] = gw.apply("calendar", [Create(source)])
    assert second.item.id == first.item.id  # type: ignore[union-attr]
    assert len(gw.list_changes("calendar", None).upserts) == 1


def test_a_contact_create_whose_answer_is_lost_is_not_resent(make: Factory,
                                                             graph: GraphSandbox) -> None:
    gw = make()
    gcontrol(graph, "faults", path_regex="/contacts$", method="POST", status=503, times=1,
             after=True)
    with pytest.raises(ConnectionFailed, match="not sent again"):
        gw.apply("contacts", [Create(vcard(Contact(full_name="Lost Answer",
                                                   family_name="Answer")))])
    assert len(gw.list_changes("contacts", None).upserts) == 1


# --- authentication ----------------------------------------------------------------------


def test_the_server_edition_uses_client_credentials_and_a_mailbox(make: Factory,
                                                                 graph: GraphSandbox) -> None:
    gw = make(user=graph.user, credentials=application(graph))
    [result] = gw.apply("calendar", [Create(ical(Event(summary="App-made", start=when(1),
                                                       end=when(1, 10))))])
    assert result.status == "ok", result.error
    with pytest.raises(Exception, match="delegated"):
        make(credentials=application(graph)).list_changes("calendar", None)


def test_an_expired_token_is_renewed(make: Factory, graph: GraphSandbox) -> None:
    gw = make()
    gw.list_changes("contacts", None)
    gcontrol(graph, "expire-tokens")
    assert gw.list_changes("contacts", None).complete


def test_refused_credentials_say_so_without_secrets(make: Factory, graph: GraphSandbox) -> None:
    secret = "not-the-secret-" + "x" * 10
    gw = make(user=graph.user, credentials=Credentials(
        client_id=graph.client_id, client_secret=secret, login_url=graph.authority,
        ca_bundle=graph.ca_path))
    with pytest.raises(ConnectionFailed, match="invalid_client") as info:
        gw.list_changes("calendar", None)
    assert secret not in str(info.value)


def test_the_endpoint_scheme_and_settings(graph: GraphSandbox) -> None:
    connector = connect(f"msgraph:me?calendar=Work&graph_url={graph.url}", "groupware",
                        delegated(graph))
    assert isinstance(connector, GraphConnector)
    assert connector.settings.calendar == "Work" and connector.user == "me"
    connector.close()
    with pytest.raises(ConfigError, match="unknown Microsoft Graph setting"):
        connect("msgraph:me?colour=blue", "groupware")


# --- the command line --------------------------------------------------------------------


def test_login_by_device_code_stores_a_refresh_token(graph: GraphSandbox, outlook: GraphUser,
                                                     tmp_path) -> None:
    import threading
    import time

    from typer.testing import CliRunner

    from crmsync.cli import app
    from crmsync.config import Paths
    from crmsync.secrets import credentials_for

    home = str(tmp_path / "home")
    runner = CliRunner()
    added = runner.invoke(app, ["--home", home, "profile", "add", "p", "--crm",
                                f"vdir:{tmp_path / 'crm'}", "--groupware",
                                f"msgraph:me?graph_url={graph.url}", "--objects", "contacts"])
    assert added.exit_code == 0, added.output

    def approve() -> None:
        # The user opens the page and types the code the command printed.
        for _ in range(200):
            with graph.identity.lock:
                codes = [entry[0] for entry in graph.identity.devices.values()]
            if codes:
                gcontrol(graph, "device/approve", user_code=codes[0])
                return
            time.sleep(0.05)

    helper = threading.Thread(target=approve)
    helper.start()
    result = runner.invoke(app, ["--home", home, "login", "p", "--client-id", graph.client_id,
                                 "--login-url", graph.authority, "--ca-bundle", graph.ca_path])
    helper.join()
    assert result.exit_code == 0, result.output
    assert "enter the code" in result.output and "device code" in result.output
    creds = credentials_for(Paths.resolve(tmp_path / "home"), "p", "groupware")
    assert creds is not None and creds.refresh_token
    assert creds.refresh_token not in result.output
    connector = GraphConnector("me", credentials=creds,
                               settings=Settings(graph_url=graph.url))
    try:
        assert connector.list_changes("contacts", None).complete
    finally:
        connector.close()


def test_login_with_client_credentials_checks_them(graph: GraphSandbox, tmp_path) -> None:
    from typer.testing import CliRunner

    from crmsync.cli import app

    home = str(tmp_path / "home")
    runner = CliRunner()
    runner.invoke(app, ["--home", home, "profile", "add", "p", "--crm", f"vdir:{tmp_path}",
                        "--groupware", f"msgraph:{graph.user}?graph_url={graph.url}"])
    ok = runner.invoke(app, ["--home", home, "login", "p", "--client-id", graph.client_id,
                             "--login-url", graph.authority, "--ca-bundle", graph.ca_path,
                             "--client-secret-stdin"], input=graph.client_secret + "\n")
    assert ok.exit_code == 0, ok.output
    assert "client credentials" in ok.output and graph.client_secret not in ok.output
    bad = runner.invoke(app, ["--home", home, "login", "p", "--client-id", graph.client_id,
                              "--login-url", graph.authority, "--ca-bundle", graph.ca_path,
                              "--client-secret-stdin"], input="wrong\n")
    assert bad.exit_code != 0


# --- the codec ---------------------------------------------------------------------------


def test_html_bodies_read_as_the_text_outlook_shows() -> None:
    from crmsync.formats.msgraph import html_to_text, text_to_html

    exchange = ('<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html">'
                '<style>p {color: red}</style>\r\n</head>\r\n<body>\r\n<p>Bring the\r\n'
                '<b>deck</b> &amp; notes</p><p>Room&nbsp;&nbsp;4<br>2nd floor</p>'
                '<script>alert(1)</script></body>\r\n</html>')
    assert html_to_text(exchange) == "Bring the deck & notes\n\nRoom  4\n2nd floor"
    for text in ("plain", "two  spaces", "a < b & c > d", "line 1\nline 2\n\npara 2"):
        assert html_to_text(text_to_html(text)) == text


def test_windows_time_zones_map_to_iana_and_back() -> None:
    from crmsync.formats.msgraph import iana_zone, windows_zone

    assert iana_zone("W. Europe Standard Time") == "Europe/Berlin"
    assert iana_zone("Pacific Standard Time") == "America/Los_Angeles"
    assert iana_zone("Europe/Lisbon") == "Europe/Lisbon"
    assert iana_zone("UTC") is None and iana_zone("No Such Standard Time") is None
    assert windows_zone("Europe/Berlin") == "W. Europe Standard Time"
    assert windows_zone("Europe/Lisbon") == "Europe/Lisbon"  # no Windows name of its own
    assert windows_zone(None) == "UTC"


@pytest.mark.parametrize("rrule", [
    "FREQ=DAILY;INTERVAL=2", "FREQ=DAILY;COUNT=10", "FREQ=WEEKLY;BYDAY=MO,WE,FR",
    "FREQ=WEEKLY;INTERVAL=2;WKST=SU", "FREQ=MONTHLY;BYDAY=2TU", "FREQ=MONTHLY;BYDAY=-1FR",
    "FREQ=MONTHLY;BYMONTHDAY=20", "FREQ=YEARLY;COUNT=3", "FREQ=YEARLY;BYDAY=1MO;BYMONTH=9",
    "FREQ=WEEKLY;UNTIL=20270131T225959Z",
])
def test_rrules_round_trip_through_outlook_patterns(rrule: str) -> None:
    from zoneinfo import ZoneInfo

    from crmsync.formats.msgraph import pattern_to_rrule, rrule_to_pattern

    first = datetime(2026, 12, 1).date()  # a Tuesday
    zone = ZoneInfo("Europe/Berlin")
    pattern = rrule_to_pattern(rrule, first, zone, "W. Europe Standard Time")
    assert pattern_to_rrule(pattern, first, False, zone) == rrule


def test_rules_outlook_cannot_hold_are_refused() -> None:
    from zoneinfo import ZoneInfo

    from crmsync.errors import FormatError
    from crmsync.formats.msgraph import rrule_to_pattern

    for rule in ("FREQ=HOURLY", "FREQ=MONTHLY;BYDAY=MO"):
        with pytest.raises(FormatError):
            rrule_to_pattern(rule, datetime(2026, 12, 1).date(), ZoneInfo("UTC"), "UTC")


def test_a_round_is_reopened_when_the_range_moves_on(make: Factory, graph: GraphSandbox,
                                                     outlook: GraphUser) -> None:
    early = make(future_days=10)
    cursor = early.list_changes("calendar", None).cursor
    later = make(future_days=30)
    made = outlook("POST", "/me/events", outlook_event("Later", when(20)[:19],
                                                       when(20, 10)[:19]))
    again = later.list_changes("calendar", cursor)
    assert again.complete and [u[0] for u in again.upserts] == [made["id"]]
    assert json.loads(again.cursor or "{}")["window"][1] > json.loads(cursor or "{}")["window"][1]


def test_a_subject_exchange_would_cut_is_a_skip_with_its_reason(
        make: Factory, outlook: GraphUser, sqlite_store, tmp_path) -> None:
    """Exchange keeps 255 characters of a subject and cuts the rest: a longer one is not
    synced but planned as a skip with the reason (SPEC 5), never sent."""
    from crmsync.connectors.vdir import VdirConnector
    from crmsync.sync import Syncer

    from conftest import Sides, sync

    sides = Sides(tmp_path / "sides")
    sides.put("crm", Event(uid="long@t", summary="L" * 256, start=when(3), end=when(3, 10)))
    sides.put("crm", Event(uid="full@t", summary="F" * 255, start=when(4), end=when(4, 10)))
    profile = sqlite_store.add_profile("g", f"vdir:{sides.crm}", "msgraph:me", ("calendar",),
                                       {})
    syncer = Syncer(sqlite_store, profile, crm=VdirConnector(sides.crm, "crm"),
                    groupware=make())
    plans, report = sync(syncer)
    assert plans[0].counts() == {"create:groupware": 1, "skip": 1}
    [skip] = [a for _, a in plans[0].actions() if a.op == "skip"]
    assert skip.reason.startswith("not synced to groupware: the subject is 256 characters")
    assert report.status == "ok"
    listed = outlook("GET", "/me/calendarView/delta?startDateTime=2000-01-01T00:00:00Z"
                            "&endDateTime=2100-01-01T00:00:00Z")["value"]
    assert [e.get("subject") for e in listed] == ["F" * 255]
    again, report = sync(syncer)
    assert report.status == "ok" and not again[0].writes
