"""The Salesforce JSON codec: what parse reads, what render writes, the description blocks
and the field limits. Pure: no server."""

from __future__ import annotations

import json
import re

import pytest

from crmsync import formats
from crmsync.errors import FormatError, ItemError
from crmsync.formats import salesforce as sf
from crmsync.model import Address, Attendee, Contact, Event, Occurrence, Phone, Task

EVENT = {
    "Event": {
        "Id": "00U000000000001AAA", "SystemModstamp": "2026-11-22T10:00:00.000+0000",
        "Subject": "Pricing call", "StartDateTime": "2026-11-24T09:00:00.000+0000",
        "EndDateTime": "2026-11-24T10:00:00.000+0000", "IsAllDayEvent": False,
        "Location": "Room 4", "Description": "Agenda", "IsPrivate": False, "ShowAs": "Busy",
        "Type": "Meeting", "WhatId": "001000000000001AAA", "IsReminderSet": True,
        "ReminderDateTime": "2026-11-24T08:45:00.000+0000",
        "Owner": {"Email": "owner@example.com"},
    },
    "Invitees": [{"Id": "0RE000000000001AAA", "RelationId": "003000000000001AAA",
                  "Email": "ana@example.com", "Name": "Ana Silva", "Status": "Accepted"}],
}


def test_an_event_parses_to_the_canonical_record() -> None:
    event = sf.parse_event(json.dumps(EVENT))
    assert (event.summary, event.start, event.end) == (
        "Pricing call", "2026-11-24T09:00:00Z", "2026-11-24T10:00:00Z")
    assert event.location == "Room 4" and event.description == "Agenda"
    assert event.reminders == [15]
    assert event.organizer is not None and event.organizer.email == "owner@example.com"
    assert event.attendees == [Attendee("ana@example.com", "Ana Silva", "accepted")]
    assert event.rrule is None and event.show_as == "busy"


def test_the_registry_knows_the_format_without_a_connector() -> None:
    raw = json.dumps(EVENT)
    assert formats.parse(sf.FORMAT, "calendar", raw) == sf.parse_event(raw)
    task = formats.parse(sf.FORMAT, "tasks", json.dumps({"Task": {"Subject": "Call back"}}))
    assert isinstance(task, Task) and task.summary == "Call back"


def test_render_writes_the_record_and_keeps_what_it_does_not_model() -> None:
    raw = json.dumps(EVENT)
    event = sf.parse_event(raw)
    event.summary = "Pricing call (moved)"
    event.start, event.end = "2026-11-25T09:00:00Z", "2026-11-25T10:30:00Z"
    event.show_as = "free"
    doc = json.loads(sf.render_event(event, raw))
    ev = doc["Event"]
    assert ev["Subject"] == "Pricing call (moved)"
    assert ev["StartDateTime"] == "2026-11-25T09:00:00.000+0000"
    assert ev["EndDateTime"] == "2026-11-25T10:30:00.000+0000"
    assert ev["ShowAs"] == "Free"
    # Kept: the CRM's own fields.
    assert ev["Type"] == "Meeting" and ev["WhatId"] == "001000000000001AAA"
    assert ev["Id"] == "00U000000000001AAA"
    assert sf.parse_event(sf.render_event(event, raw)) == event


def test_out_of_office_stays_when_the_record_only_says_busy() -> None:
    doc = json.loads(json.dumps(EVENT))
    doc["Event"]["ShowAs"] = "OutOfOffice"
    raw = json.dumps(doc)
    event = sf.parse_event(raw)
    assert event.show_as == "busy"
    assert json.loads(sf.render_event(event, raw))["Event"]["ShowAs"] == "OutOfOffice"


def test_all_day_events_have_an_inclusive_end_date_in_salesforce() -> None:
    event = Event(summary="Offsite", start="2026-12-01", end="2026-12-03")
    ev = json.loads(sf.render_event(event))["Event"]
    assert (ev["IsAllDayEvent"], ev["ActivityDate"], ev["EndDate"]) == (
        True, "2026-12-01", "2026-12-02")
    back = sf.parse_event(sf.render_event(event))
    assert (back.start, back.end) == ("2026-12-01", "2026-12-03")


def test_the_default_event_type_applies_only_where_none_is_set() -> None:
    event = Event(summary="x", start="2026-12-01T09:00:00Z", end="2026-12-01T10:00:00Z")
    assert sf.event_fields(event, event_type="Call")["Type"] == "Call"
    assert "Type" not in sf.event_fields(event)
    assert sf.event_fields(event, event_type="Call", template={"Type": "Email"})["Type"] == \
        "Email"


def test_the_invitee_block_is_written_and_taken_out_again() -> None:
    event = Event(summary="Kickoff", start="2026-12-01T09:00:00Z", end="2026-12-01T10:00:00Z",
                  description="Bring the numbers.",
                  attendees=[Attendee("bob@example.com", "Bob", "declined"),
                             Attendee("zed@example.org")])
    raw = sf.render_event(event, invitees_in_description=True, attachments=["deck.pdf"])
    text = json.loads(raw)["Event"]["Description"]
    assert text.startswith("Bring the numbers.\n\n" + sf.INVITEES_BEGIN)
    assert "Bob <bob@example.com> (declined)" in text and "- deck.pdf" in text
    back = sf.parse_event(raw)
    # The user's text comes back without either block; the attendees from the list.
    assert back.description == "Bring the numbers."
    assert back.attendees == event.attendees
    assert sf.split_description(text)[2] == ["deck.pdf"]


def test_description_text_that_only_looks_like_a_block_is_kept() -> None:
    text = "Notes\n--- Invitees (crmsync) ---\nno end marker"
    assert sf.split_description(text)[0] == text


def test_a_subject_over_the_limit_is_an_error_other_fields_are_cut() -> None:
    values = {"Subject": "s" * 256, "Location": "l" * 300}
    with pytest.raises(ItemError, match="Subject is 256 characters.*at most 255"):
        sf.fit("Event", values, sf.DEFAULT_LENGTHS["Event"])
    values = {"Subject": "ok", "Location": "l" * 300, "Description": "d" * 40000}
    cut = sf.fit("Event", values, sf.DEFAULT_LENGTHS["Event"])
    assert sorted(cut) == ["Description", "Location"]
    assert len(values["Location"]) == 255 and len(values["Description"]) == 32000
    assert values["Description"].endswith("[...]")


def test_a_body_over_the_limit_fails_when_truncation_is_off() -> None:
    with pytest.raises(ItemError, match="Description"):
        sf.fit("Task", {"Description": "d" * 32001}, sf.DEFAULT_LENGTHS["Task"],
               truncate_body=False)


def series_doc(cancelled: str | None, moved: tuple[str, str] | None) -> str:
    """A weekly series of four on Mondays 09:00 UTC, as Salesforce keeps it."""
    head = {"Id": "00U00000000000SAAA", "Subject": "Standup", "IsRecurrence2": True,
            "Recurrence2PatternText": "RRULE:FREQ=WEEKLY;COUNT=4",
            "Recurrence2PatternTimeZone": "UTC",
            "StartDateTime": "2026-11-02T09:00:00.000+0000",
            "EndDateTime": "2026-11-02T09:30:00.000+0000", "ActivityRecurrence2Id": "828S"}
    occurrences = []
    for n, day in enumerate(("02", "09", "16", "23")):
        start = f"2026-11-{day}T09:00:00.000+0000"
        if cancelled == day:
            continue
        record = {"Id": f"00U00000000000{n}AAA", "Subject": "Standup",
                  "StartDateTime": start, "EndDateTime": start.replace("09:00", "09:30"),
                  "IsRecurrence2": True, "ActivityRecurrence2Id": "828S"}
        if moved and moved[0] == day:
            record.update(StartDateTime=moved[1], EndDateTime=moved[1].replace("T11", "T12"),
                          IsRecurrence2Exception=True)
        occurrences.append(record)
    return json.dumps({"Event": head, "Invitees": [], "Occurrences": occurrences})


def test_a_series_with_a_moved_and_a_cancelled_occurrence() -> None:
    raw = series_doc(cancelled="16", moved=("09", "2026-11-10T11:00:00.000+0000"))
    event = sf.parse_event(raw)
    assert event.rrule == "FREQ=WEEKLY;COUNT=4"
    assert event.exdates == ["2026-11-16T09:00:00Z"]
    assert list(event.overrides) == ["2026-11-09T09:00:00Z"]
    moved = event.overrides["2026-11-09T09:00:00Z"]
    assert (moved.start, moved.end) == ("2026-11-10T11:00:00Z", "2026-11-10T12:00:00Z")
    index = sf.occurrence_index(raw)
    assert index["2026-11-09T09:00:00Z"]["Id"] == "00U000000000001AAA"
    assert "2026-11-16T09:00:00Z" not in index


def test_an_untouched_series_has_no_exceptions() -> None:
    event = sf.parse_event(series_doc(None, None))
    assert event.exdates == [] and event.overrides == {}


def test_series_render_sets_the_pattern() -> None:
    event = Event(summary="Weekly", start="2026-11-02T09:00:00Z", end="2026-11-02T10:00:00Z",
                  tz="Europe/Berlin", rrule="FREQ=WEEKLY;COUNT=3",
                  overrides={"2026-11-09T09:00:00Z": Occurrence(summary="x")})
    ev = json.loads(sf.render_event(event))["Event"]
    assert ev["IsRecurrence2"] is True
    assert ev["Recurrence2PatternText"] == "RRULE:FREQ=WEEKLY;COUNT=3"
    assert ev["Recurrence2PatternTimeZone"] == "Europe/Berlin"


def test_slots_follow_the_zone_across_daylight_saving() -> None:
    # 10:00 Berlin is 09:00Z in summer time and 09:00Z+1h in winter time.
    event = Event(start="2026-10-19T08:00:00Z", end="2026-10-19T09:00:00Z",
                  tz="Europe/Berlin", rrule="FREQ=WEEKLY;COUNT=3")
    assert sf.slots(event) == ["2026-10-19T08:00:00Z", "2026-10-26T09:00:00Z",
                               "2026-11-02T09:00:00Z"]


def test_task_status_and_priority_map_both_ways() -> None:
    raw = json.dumps({"Task": {"Subject": "Send quote", "ActivityDate": "2026-12-01",
                               "Status": "Waiting on someone else", "Priority": "High",
                               "Description": "v2", "WhoId": "003X"}})
    task = sf.parse_task(raw)
    assert (task.status, task.priority, task.due) == ("needs-action", 1, "2026-12-01")
    # Unchanged meanings keep Salesforce's finer values; changed ones are mapped.
    assert json.loads(sf.render_task(task, raw))["Task"]["Status"] == "Waiting on someone else"
    task.status, task.priority = "completed", 9
    out = json.loads(sf.render_task(task, raw))["Task"]
    assert (out["Status"], out["Priority"], out["WhoId"]) == ("Completed", "Low", "003X")


def test_a_contact_maps_phones_addresses_and_account() -> None:
    raw = json.dumps({"Contact": {
        "Id": "003A", "FirstName": "Ana", "LastName": "Silva", "Email": "ana@example.com",
        "Phone": "+1 555 0100", "MobilePhone": "+1 555 0199", "Title": "CFO",
        "MailingCity": "Lisbon", "MailingCountry": "Portugal", "Birthdate": "1980-05-01",
        "Description": "Met at the fair", "Account": {"Name": "Acme"}, "Department": "Fin"}})
    contact = sf.parse_contact(raw)
    assert contact == Contact(
        full_name="Ana Silva", given_name="Ana", family_name="Silva",
        emails=["ana@example.com"],
        phones=[Phone("+1 555 0100", "work"), Phone("+1 555 0199", "cell")],
        company="Acme", title="CFO",
        addresses=[Address(type="work", city="Lisbon", country="Portugal")],
        birthday="1980-05-01", note="Met at the fair")
    contact.phones = [Phone("+1 555 0111", "home")]
    out = json.loads(sf.render_contact(contact, raw))["Contact"]
    assert (out["HomePhone"], out["Phone"], out["Department"]) == ("+1 555 0111", None, "Fin")


def test_a_contact_with_only_a_full_name_gets_a_last_name() -> None:
    out = sf.contact_fields(Contact(full_name="Madonna"))
    assert out["LastName"] == "Madonna"


def test_broken_documents_are_format_errors() -> None:
    with pytest.raises(FormatError):
        sf.parse_event("{not json")
    with pytest.raises(FormatError):
        sf.parse_contact(json.dumps({"Event": {}}))


def test_salesforce_datetimes_become_utc_moments() -> None:
    assert sf.sf_datetime("2026-11-22T10:00:00.000+0100") == "2026-11-22T09:00:00Z"
    assert sf.sf_datetime("2026-11-22T10:00:00Z") == "2026-11-22T10:00:00Z"
    assert sf.to_sf_datetime("2026-11-22T09:00:00Z") == "2026-11-22T09:00:00.000+0000"


# --- what Salesforce cannot hold is an error for the item (issue 16) --------------------------


@pytest.mark.parametrize(("start", "end", "words"), [
    ("2026-12-30", "2026-12-31T00:00:00Z", "the start is a date (all day) but the end a date "
                                           "and time"),
    ("2026-12-30T09:00:00Z", "2026-12-31", "the start is a date and time but the end a date"),
])
def test_a_start_and_end_of_different_kinds_is_an_item_error(start: str, end: str,
                                                              words: str) -> None:
    with pytest.raises(ItemError, match=re.escape(words)):
        sf.render_event(Event(summary="Mixed", start=start, end=end))


def test_extra_dates_are_an_item_error_not_dropped() -> None:
    event = Event(summary="Extra", start="2026-12-01T09:00:00Z", end="2026-12-01T10:00:00Z",
                  rrule="FREQ=WEEKLY;COUNT=3",
                  rdates=["2026-12-02T09:00:00Z", "2026-12-03T09:00:00Z"])
    with pytest.raises(ItemError, match=r"2 extra dates \(RDATE\) cannot be held by Salesforce"):
        sf.render_event(event)


@pytest.mark.parametrize(("rule", "parts"), [
    ("FREQ=WEEKLY;UNTL=20270101T000000Z", "part UNTL"),
    ("RSCALE=HEBREW;FREQ=YEARLY;BYMONTH=5L;SKIP=FORWARD", "parts RSCALE, SKIP"),
])
def test_a_rule_salesforce_cannot_hold_is_an_item_error(rule: str, parts: str) -> None:
    event = Event(summary="Rule", start="2026-12-01T09:00:00Z", end="2026-12-01T10:00:00Z",
                  rrule=rule)
    with pytest.raises(ItemError, match=f"repeat rule's {parts} cannot be held"):
        sf.render_event(event)
    # a plain RFC 5545 rule is written as the pattern
    event.rrule = "FREQ=WEEKLY;UNTIL=20270101T000000Z;BYDAY=TU,TH;WKST=MO"
    assert json.loads(sf.render_event(event))["Event"]["Recurrence2PatternText"] == \
        "RRULE:" + event.rrule


def test_a_series_whose_start_is_off_its_rule_is_an_item_error() -> None:
    """RFC 5545 counts the start as the first occurrence even where the rule does not
    give it; Salesforce's series would lose it."""
    event = Event(summary="Second Monday", start="2026-12-07T12:00:00Z",
                  end="2026-12-07T12:30:00Z", tz="Europe/Paris",
                  rrule="FREQ=MONTHLY;INTERVAL=2;BYDAY=2MO")  # Dec 7 is the first Monday
    with pytest.raises(ItemError, match="the first start is not a day the repeat rule gives"):
        sf.render_event(event)
    # without that start (an EXDATE), the series is the rule's occurrences alone
    event.exdates = ["2026-12-07T12:00:00Z"]
    assert json.loads(sf.render_event(event))["Event"]["IsRecurrence2"] is True


def test_the_start_of_a_series_is_its_first_slot_even_off_the_rule() -> None:
    """Read back, a start off the rule without an occurrence record is an EXDATE (as it
    was written), not dropped."""
    event = Event(summary="Second Monday", start="2026-12-07T12:00:00Z",
                  end="2026-12-07T12:30:00Z", tz="Europe/Paris",
                  rrule="FREQ=MONTHLY;INTERVAL=2;COUNT=2;BYDAY=2MO")
    assert sf.slots(event) == ["2026-12-07T12:00:00Z", "2026-12-14T12:00:00Z",
                               "2027-02-08T12:00:00Z"]


def test_a_repeating_task_is_an_item_error_not_a_single_task() -> None:
    """The task's repetition is read (iCalendar keeps it) and Salesforce says it cannot
    hold it, rather than writing the first due date alone."""
    raw = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\nUID:t-1\r\n"
           "SUMMARY:Water the plants\r\nDUE;VALUE=DATE:20261214\r\n"
           "RRULE:FREQ=WEEKLY;COUNT=4\r\nEND:VTODO\r\nEND:VCALENDAR\r\n")
    task = formats.parse(formats.ICALENDAR, "tasks", raw)
    assert isinstance(task, Task) and task.rrule == "FREQ=WEEKLY;COUNT=4"
    with pytest.raises(ItemError, match=r"a repeating task \(RRULE\) cannot be held"):
        sf.render_task(task)
    task.rrule = None
    assert json.loads(sf.render_task(task))["Task"]["ActivityDate"] == "2026-12-14"


def test_an_override_off_the_rule_is_an_item_error_not_dropped() -> None:
    """A day series changed at RECURRENCE-ID 20261221T000000Z (a time, not the day):
    no occurrence of the series is that, and the change would vanish in Salesforce."""
    event = Event(summary="Base", start="2026-12-07", end="2026-12-08", rrule="FREQ=WEEKLY",
                  overrides={"2026-12-14": Occurrence(summary="one", start="2026-12-14",
                                                      end="2026-12-15"),
                             "2026-12-21T00:00:00Z": Occurrence(summary="two",
                                                                start="2026-12-21",
                                                                end="2026-12-22")})
    with pytest.raises(ItemError, match="the changed occurrence 2026-12-21T00:00:00Z "
                                        r"\(RECURRENCE-ID\) is not one the repeat rule gives"):
        sf.render_event(event)
    del event.overrides["2026-12-21T00:00:00Z"]
    assert json.loads(sf.render_event(event))["Event"]["IsRecurrence2"] is True


def test_an_until_in_utc_ends_the_slots_at_that_instant_not_at_that_wall_time() -> None:
    """10:30 in Paris is 09:30Z in winter: UNTIL=...T093000Z keeps the last 10:30, which
    read as a wall time (09:30) fell off, and its occurrence record became a stranger."""
    event = Event(start="2026-12-07T09:30:00Z", end="2026-12-07T11:00:00Z", tz="Europe/Paris",
                  rrule="FREQ=WEEKLY;UNTIL=20261221T093000Z")
    assert sf.slots(event) == ["2026-12-07T09:30:00Z", "2026-12-14T09:30:00Z",
                               "2026-12-21T09:30:00Z"]


def test_changed_occurrences_shared_without_their_series_are_an_item_error() -> None:
    """An invitation to two instances (no master, no rule): Salesforce would keep the
    first alone; one instance alone is a plain event."""
    two = {"2026-12-07T14:00:00Z": Occurrence(summary="x", start="2026-12-07T16:00:00Z",
                                              end="2026-12-07T16:40:00Z"),
           "2026-12-14T14:00:00Z": Occurrence(summary="x", start="2026-12-14T14:30:00Z",
                                              end="2026-12-14T15:15:00Z")}
    event = Event(summary="x", start="2026-12-07T16:00:00Z", end="2026-12-07T16:40:00Z",
                  overrides=two)
    with pytest.raises(ItemError, match="2 occurrences of a series without its rule"):
        sf.render_event(event)
    event.overrides = {"2026-12-07T14:00:00Z": two["2026-12-07T14:00:00Z"]}
    assert json.loads(sf.render_event(event))["Event"]["StartDateTime"].startswith(
        "2026-12-07T16:00:00")


def test_two_occurrences_moved_to_the_same_time_are_both_kept() -> None:
    """The 16th moved onto the 9th's time: two records start at once, and each keeps a
    slot (keyed by start, one of them vanished and its slot read as an EXDATE)."""
    doc = json.loads(series_doc(cancelled=None, moved=("16", "2026-11-09T09:00:00.000+0000")))
    doc["Occurrences"][2]["EndDateTime"] = "2026-11-09T09:30:00.000+0000"
    event = sf.parse_event(json.dumps(doc))
    assert event.exdates == []
    assert {k: o.start for k, o in event.overrides.items()} == {
        "2026-11-16T09:00:00Z": "2026-11-09T09:00:00Z"}


def test_a_floating_start_with_a_zoned_end_is_an_item_error() -> None:
    """Which zone the floating time means cannot be told (RFC 5545 leaves it open); pinned
    to the user's zone it came back an hour off the reading other calendars make."""
    for start, end, words in (("2026-12-07T09:00:00", "2026-12-07T10:00:00Z", "no time zone"),
                              ("2026-12-07T09:00:00Z", "2026-12-07T10:00:00", "a time zone")):
        with pytest.raises(ItemError, match=f"the start has {words}"):
            sf.render_event(Event(summary="Mixed", start=start, end=end))
    assert json.loads(sf.render_event(Event(summary="Both floating", start="2026-12-07T09:00:00",
                                            end="2026-12-07T10:00:00")))


def test_occurrences_moved_onto_each_other_are_an_item_error() -> None:
    """The 23rd moved to the 24th and the 27th to the 24th too: read back by time, which
    record was which occurrence cannot be told, and two of them swapped silently."""
    def moved(day: str) -> Occurrence:
        return Occurrence(summary="event", start=f"2026-12-{day}T12:00:00Z",
                          end=f"2026-12-{day}T13:00:00Z")
    event = Event(summary="event", start="2026-12-23T12:00:00Z", end="2026-12-23T13:00:00Z",
                  rrule="FREQ=DAILY;UNTIL=20261228T120000Z",
                  overrides={"2026-12-23T12:00:00Z": moved("24"),
                             "2026-12-27T12:00:00Z": moved("24")})
    with pytest.raises(ItemError, match="moved onto each other's times"):
        sf.render_event(event)
    # Onto another occurrence's time: as ambiguous.
    event.overrides = {"2026-12-25T12:00:00Z": moved("26")}
    with pytest.raises(ItemError, match="moved onto each other's times"):
        sf.render_event(event)
    # Moved to a time of its own: read back as it was.
    event.overrides = {"2026-12-25T12:00:00Z": Occurrence(
        summary="event", start="2026-12-25T15:00:00Z", end="2026-12-25T16:00:00Z")}
    assert json.loads(sf.render_event(event))["Event"]["IsRecurrence2"] is True
