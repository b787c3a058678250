"""Selection, ignore and record (issue 5, parts 4, 6, 7) on real sides: Radicale <-> the
Salesforce sandbox, through the profile the command line made (see tests/scenario.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from crmsync.model import Attendee, Event, Person, moment
from scenario import Scenario, sf_time

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)


def settings(scn: Scenario, **values: Any) -> None:
    """Set calendar settings through the command line, as a user would."""
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        scn.cli("settings", "p", "calendar", key, text, check=0)


def meeting(uid: str, summary: str, hours: int = 0, **fields: Any) -> Event:
    start = START + timedelta(hours=hours)
    return Event(uid=uid, summary=summary, start=moment(start),
                 end=moment(start + timedelta(hours=1)), **fields)


def crm_events(scn: Scenario) -> dict[str, dict[str, Any]]:
    return {r["Subject"]: r for r in scn.crm_query(
        "SELECT Id, Subject, WhoId, WhatId, Type FROM Event")}


def relations(scn: Scenario, event_id: str) -> dict[str, dict[str, Any]]:
    return {r["RelationId"]: r for r in scn.crm_query(
        "SELECT RelationId, IsInvitee, IsParent FROM EventRelation "
        f"WHERE EventId = '{event_id}'")}


# --- selection ---------------------------------------------------------------------------


def test_selection_matched_syncs_only_events_with_a_crm_contact_or_lead(scn: Scenario):
    ann = scn.crm_insert("Contact", LastName="Ann", Email="ann@client.example")
    lead = scn.crm_insert("Lead", LastName="Lee", Company="Lee Ltd", Email="lee@lead.example")
    settings(scn, selection="matched")
    scn.put(meeting("ann@t", "With Ann", attendees=[Attendee("ANN@client.example"),
                                                    Attendee("lee@lead.example")]))
    scn.put(meeting("lead@t", "Lead only", 6, attendees=[Attendee("lee@lead.example")]))
    scn.put(meeting("lee@t", "Lee organizes", 2, organizer=Person("lee@lead.example"),
                    attendees=[Attendee("me@home.example")]))
    scn.put(meeting("str@t", "With a stranger", 4, attendees=[Attendee("x@else.example")]))
    scn.crm_insert("Event", Subject="Made in the CRM", StartDateTime=sf_time(START),
                   EndDateTime=sf_time(START + timedelta(hours=1)))
    plans, report = scn.sync()
    assert report.status == "ok"
    assert plans[0].counts() == {"create:crm": 3, "create:groupware": 1, "skip": 1}
    events = crm_events(scn)
    assert set(events) == {"With Ann", "Lee organizes", "Lead only", "Made in the CRM"}
    # CRM items always reach the groupware, whatever the selection.
    assert {e.summary for e in scn.records().values()} == {
        "With Ann", "Lee organizes", "Lead only", "With a stranger", "Made in the CRM"}
    # The matched people are related to the event (invitee and who): Contacts, or one
    # Lead when no Contact is invited (Shared Activities relates no more).
    with_ann = relations(scn, events["With Ann"]["Id"])
    assert (with_ann[ann]["IsParent"], with_ann[lead]["IsParent"]) == (True, False)
    assert events["With Ann"]["WhoId"] == ann
    assert events["Lead only"]["WhoId"] == lead
    assert lead not in relations(scn, events["Lee organizes"]["Id"])  # organizer: no invite

    # A synced pair that stops matching is left synced, never deleted.
    scn.edit("ann@t", attendees=[], summary="Ann left")
    _, report = scn.sync()
    assert "Ann left" in crm_events(scn) and report.status == "ok"


def test_selection_designated_syncs_tagged_or_addressed_events_and_tags_them(scn: Scenario):
    settings(scn, selection="designated", smart_address="record")
    scn.put(meeting("cat@t", "Tagged", categories=["crm"]))
    scn.put(meeting("addr@t", "Addressed", 2, attendees=[
        Attendee("Record@bcc.example"), Attendee("bob@client.example")]))
    scn.put(meeting("none@t", "Not designated", 4, categories=["Private stuff"]))
    scn.crm_insert("Event", Subject="Made in the CRM", StartDateTime=sf_time(START),
                   EndDateTime=sf_time(START + timedelta(hours=1)))
    plans, _ = scn.sync()
    assert set(crm_events(scn)) == {"Tagged", "Addressed", "Made in the CRM"}
    groupware = scn.records()
    assert groupware["addr@t"].categories == ["CRM"]  # marked in the groupware
    assert groupware["cat@t"].categories == ["crm"]  # had it already
    assert groupware["none@t"].categories == ["Private stuff"]
    assert "Made in the CRM" in {e.summary for e in groupware.values()}
    # The marking was recorded as the base: the next run has nothing to do.
    plans, _ = scn.sync()
    assert plans[0].writes == 0


# --- ignore -------------------------------------------------------------------------------


def _gw_id(scn: Scenario, uid: str) -> str:
    return next(s.gw.id for s in scn.plan().steps if s.gw and s.gw.uid == uid)


def test_ignore_until_change_skips_the_difference_until_the_next_change(scn: Scenario):
    scn.put(meeting("ig@t", "Planning"))
    scn.sync()
    scn.edit("ig@t", summary="Planning (moved room)")
    gw_id = _gw_id(scn, "ig@t")
    scn.cli("ignore", "p", "calendar", gw_id, "--until-change", check=0)
    listed = json.loads(scn.cli("ignore", "p", "--list", "--json", check=0).stdout)
    assert [(r["item_id"], r["mode"]) for r in listed] == [(gw_id, "until-change")]
    plans, _ = scn.sync()
    assert plans[0].counts() == {"skip": 1}
    assert set(crm_events(scn)) == {"Planning"}
    scn.edit("ig@t", summary="Planning (final)")
    plans, _ = scn.sync()
    assert set(crm_events(scn)) == {"Planning (final)"}
    assert json.loads(scn.cli("ignore", "p", "--list", "--json", check=0).stdout) == []


def test_ignore_forever_keeps_an_item_out_until_lifted(scn: Scenario):
    crm_id = scn.crm_insert("Event", Subject="CRM only", StartDateTime=sf_time(START),
                            EndDateTime=sf_time(START + timedelta(hours=1)))
    assert scn.cli("ignore", "p", "calendar", crm_id, "--forever", check=2).stderr
    scn.cli("ignore", "p", "calendar", crm_id, "--forever", "--side", "crm", check=0)
    scn.crm_update("Event", crm_id, Subject="CRM only, edited")
    plans, _ = scn.sync()
    assert plans[0].counts() == {"skip": 1} and scn.records() == {}
    scn.cli("ignore", "p", "calendar", crm_id, "--lift", check=0)  # = unignore
    assert scn.cli("unignore", "p", "calendar", crm_id).code == 2  # nothing left to lift
    scn.sync()
    assert [e.summary for e in scn.records().values()] == ["CRM only, edited"]


# --- record --------------------------------------------------------------------------------


def test_record_one_event_one_way_with_relations_and_fields(scn: Scenario):
    ann = scn.crm_insert("Contact", LastName="Ann", Email="ann@client.example")
    account = scn.crm_insert("Account", Name="Client Ltd")
    settings(scn, selection="designated")  # nothing else would go to the CRM
    scn.put(meeting("rec@t", "Pitch", attendees=[Attendee("bob@client.example")]))
    scn.put(meeting("other@t", "Other", 2))
    done = scn.cli("record", "p", "rec@t", "--relate", "ANN@client.example", "--relate",
                   account, "--field", "Type=Meeting", "--json", check=0)
    result = json.loads(done.stdout)
    assert result["status"] == "recorded" and result["related"] == [ann, account]
    event = crm_events(scn)["Pitch"]
    assert (event["WhoId"], event["WhatId"], event["Type"]) == (ann, account, "Meeting")
    assert relations(scn, event["Id"])[ann]["IsInvitee"] is False

    again = json.loads(scn.cli("record", "p", "rec@t", "--json", check=0).stdout)
    assert again["status"] == "already-recorded" and again["crm_id"] == event["Id"]
    scn.sync()
    assert set(crm_events(scn)) == {"Pitch"}  # neither duplicated nor "Other" selected

    scn.edit("rec@t", summary="Pitch v2")
    scn.sync()
    assert set(crm_events(scn)) == {"Pitch v2"}
    scn.crm_update("Event", event["Id"], Subject="Renamed in the CRM", Location="HQ")
    plans, _ = scn.sync()
    assert [e.summary for e in scn.records().values() if e.uid == "rec@t"] == ["Pitch v2"]
    assert scn.records()["rec@t"].location == ""
    assert [a.code for _, a in plans[0].actions()] == ["skip"]


def test_a_recorded_event_deleted_on_either_side_is_kept_on_the_other(scn: Scenario):
    scn.put(meeting("gone@t", "Kept in the CRM"))
    scn.put(meeting("stay@t", "Kept in the calendar", 2))
    scn.cli("record", "p", "gone@t", check=0)
    scn.cli("record", "p", "stay@t", check=0)
    scn.delete("gone@t")
    scn.crm_delete("Event", crm_events(scn)["Kept in the calendar"]["Id"])
    plans, report = scn.sync()
    assert report.status == "ok" and plans[0].writes == 0
    assert set(crm_events(scn)) == {"Kept in the CRM"}
    assert [e.summary for e in scn.records().values()] == ["Kept in the calendar"]


def test_record_refuses_what_it_cannot_do_with_clear_messages(scn: Scenario):
    scn.put(meeting("r@t", "Call"))
    assert "no event" in scn.cli("record", "p", "nope@t", check=2).stderr
    assert "no CRM Contact or Lead" in scn.cli(
        "record", "p", "r@t", "--relate", "who@nowhere.example", check=2).stderr
    failed = scn.cli("record", "p", "r@t", "--field", "NoSuchField__c=1")
    assert failed.code == 6 and "NoSuchField__c" in failed.stderr
    settings(scn, record=False)
    assert "turned off" in scn.cli("record", "p", "r@t", check=2).stderr
    assert crm_events(scn) == {}


def test_record_mode_syncs_only_recorded_events_and_auto_mode_refuses_record(scn: Scenario):
    settings(scn, mode="off")
    scn.put(meeting("one@t", "Recorded"))
    scn.put(meeting("two@t", "Not recorded", 2))
    scn.cli("record", "p", "one@t", check=0)  # record works with the calendar off too
    scn.edit("one@t", location="Room 4")
    again = json.loads(scn.cli("record", "p", "one@t", "--json", check=0).stdout)
    assert again["status"] == "updated"  # recording again sends the changes since
    assert scn.crm_query("SELECT Location FROM Event") == [{"Location": "Room 4"}]
    assert json.loads(scn.cli("record", "p", "one@t", "--json", check=0).stdout)[
        "status"] == "already-recorded"
    settings(scn, mode="record")
    scn.crm_insert("Event", Subject="Made in the CRM", StartDateTime=sf_time(START),
                   EndDateTime=sf_time(START + timedelta(hours=1)))
    scn.edit("one@t", summary="Recorded, edited")
    plans, _ = scn.sync()
    assert plans[0].counts() == {"update:crm": 1}
    assert set(crm_events(scn)) == {"Recorded, edited", "Made in the CRM"}
    assert len(scn.records()) == 2  # nothing came back from the CRM

    settings(scn, mode="auto")
    refused = scn.cli("record", "p", "two@t")
    assert refused.code == 2 and "auto sync is on" in refused.stderr
    assert "Not recorded" not in crm_events(scn)
