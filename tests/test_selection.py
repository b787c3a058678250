"""The selection rules and settings as pure functions (scenarios: test_selection_scenarios)."""

from __future__ import annotations

import pytest

from crmsync import selection
from crmsync.errors import ConfigError
from crmsync.model import Attendee, Person, Task
from crmsync.policy import Policy

from conftest import Sides, event, make_syncer

MATCHED = Policy(selection="matched")
DESIGNATED = Policy(selection="designated")


def test_emails_of_an_event_are_its_organizer_and_attendees_lower_cased():
    e = event("u", organizer=Person("Boss@Firm.example"),
              attendees=[Attendee("Ann@Client.example"), Attendee(" ")])
    assert selection.emails_of(e) == {"boss@firm.example", "ann@client.example"}
    assert selection.candidate_emails([e, Task(uid="t")]) == selection.emails_of(e)


def test_matched_needs_a_known_organizer_or_attendee():
    e = event("u", organizer=Person("lead@x.example"))
    assert selection.excluded(e, MATCHED, frozenset({"lead@x.example"})) is None
    assert "no organizer or attendee" in selection.excluded(e, MATCHED, frozenset())
    assert selection.excluded(e, MATCHED, None) is not None  # nothing known: nothing matches
    assert selection.excluded(e, Policy(), frozenset()) is None  # selection "all"


def test_designated_by_category_or_smart_address():
    assert selection.excluded(event("u", categories=["cRm"]), DESIGNATED, None) is None
    by_address = Policy(selection="designated", smart_address="rec@crm.example")
    assert selection.excluded(event("u", attendees=[Attendee("REC@crm.example")]),
                              by_address, None) is None
    assert selection.excluded(event("u", attendees=[Attendee("rec@other.example")]),
                              by_address, None) is not None
    assert selection.excluded(Task(uid="t"), DESIGNATED, None) is None  # calendar only


def test_a_shared_calendar_overrides_selection_and_marking():
    shared = Policy(selection="designated", shared=True)
    assert selection.excluded(event("u"), shared, None) is None
    assert selection.mark(event("u"), shared) is None
    assert selection.excluded(event("u"), Policy(selection="matched", shared=True),
                              frozenset()) is None


def test_mark_adds_the_crm_category_once():
    assert selection.mark(event("u", categories=["Work"]), DESIGNATED) == ["CRM", "Work"]
    assert selection.mark(event("u", categories=["crm"]), DESIGNATED) is None
    assert selection.mark(event("u"), MATCHED) is None


@pytest.mark.parametrize("key,value,message", [
    ("selection", "some", "selection 'some' is not one of all, matched, designated"),
    ("crm_category", "", "crm_category must be a non-empty name"),
    ("smart_address", "a b", "smart_address must be an address or its local part"),
    ("match_alternate_emails", "maybe", "match_alternate_emails must be true or false"),
])
def test_selection_settings_are_validated_with_clear_messages(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Policy.of_profile("calendar", None).with_setting(key, value)
    with pytest.raises(ConfigError):
        Policy.from_dict({key: 3})


def test_selection_settings_round_trip_through_the_stored_form():
    policy = Policy.of_profile("calendar", None).with_setting("selection", "designated") \
        .with_setting("record", "false").with_setting("smart_address", "rec@crm.example")
    again = Policy.of_profile("calendar", policy.to_dict())
    assert (again.selection, again.record, again.smart_address) == (
        "designated", False, "rec@crm.example")


def test_matched_selection_needs_a_crm_that_can_look_people_up(sqlite_store, sides: Sides):
    sides.put("groupware", event("u1", attendees=[Attendee("ann@client.example")]))
    syncer = make_syncer(sqlite_store, sides, objects=("calendar",),
                         settings={"calendar": {"selection": "matched"}})
    with pytest.raises(ConfigError, match="cannot look people up by email"):
        syncer.prepare(["calendar"])
