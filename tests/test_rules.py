"""Sync modes and rules (issue 5), each proven on real sides: Radicale <-> the sandbox.

Times are relative to the real clock (or to a DST change found from it); runs that need
another "now" are planned as of it (Syncer's clock), never by today's date.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from crmsync import rules
from crmsync.model import Attendee, Event, Occurrence, Task, moment
from crmsync.policy import Policy, due
from scenario import Scenario, sf_time

NOW = datetime.now(UTC).replace(microsecond=0)


def at(days: float, hours: float = 1) -> tuple[str, str]:
    """A start and end MOMENT ``days`` from now, ``hours`` long."""
    start = NOW + timedelta(days=days)
    return moment(start), moment(start + timedelta(hours=hours))


def ev(uid: str, summary: str, days: float = 2, **fields) -> Event:
    start, end = at(days)
    return Event(uid=uid, summary=summary, **({"start": start, "end": end} | fields))


def subjects(scn: Scenario) -> set[str]:
    return {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")}


# --- 1. modes -------------------------------------------------------------------------------


def test_mode_off_object_is_not_synced_and_the_run_says_so(scn: Scenario):
    scn.put(ev("a@t", "Quarterly review"))
    assert scn.cli("settings", "p", "calendar", "mode", check=0).stdout.strip() == "manual"
    scn.cli("settings", "p", "calendar", "mode", "off", check=0)
    out = scn.cli("sync", "p", "--yes", check=0).stdout
    assert "Not synced (mode off): calendar" in out
    assert subjects(scn) == set()
    scn.cli("settings", "p", "calendar", "mode", "manual", check=0)
    scn.cli("sync", "p", "--yes", check=0)
    assert subjects(scn) == {"Quarterly review"}


def test_settings_are_validated_with_clear_messages_and_exit_code_2(scn: Scenario):
    bad = {
        ("calendar", "auto_every", "10"): "at least 30",
        ("calendar", "past_days", "31"): "past_days must be a whole number from 0 to 30",
        ("calendar", "future_days", "400"): "from 0 to 365",
        ("calendar", "auto_days", "mon,someday"): "someday",
        ("calendar", "auto_window", "25:00-26:00"): "HH:MM-HH:MM",
        ("calendar", "timezone", "Mars/Olympus"): "IANA",
        ("calendar", "mode", "sometimes"): "not one of off, manual, auto, record",
        ("tasks", "mode", "record"): "calendar only",
        ("calendar", "prevent", "crm:explode"): "unknown prevent switch",
        ("calendar", "include_private", "maybe"): "true or false",
        ("calendar", "colour", "red"): "unknown setting 'colour'",
    }
    for (obj, key, value), message in bad.items():
        result = scn.cli("settings", "p", obj, key, value, check=2)
        assert message in result.stderr, (key, result.stderr)
    good = {"mode": "auto", "auto_every": "45", "auto_days": "mon,tue,wed,thu,fri",
            "auto_window": "22:00-06:00", "timezone": "Australia/Sydney"}
    for key, value in good.items():
        scn.cli("settings", "p", "calendar", key, value, check=0)
    shown = json.loads(scn.cli("settings", "p", "calendar", "--json", check=0).stdout)
    assert shown["mode"] == "auto" and shown["auto_every"] == 45
    assert shown["auto_days"] == ["mon", "tue", "wed", "thu", "fri"]
    assert shown["timezone"] == "Australia/Sydney"
    assert shown["past_days"] == 30 and shown["future_days"] == 365  # untouched defaults
    assert "auto_window" in scn.cli("settings", "p", "calendar", check=0).stdout
    assert "Usage" in scn.cli("settings", "--help", check=0).stdout


def test_due_follows_frequency_weekdays_and_window_in_the_users_zone():
    policy = Policy(mode="auto", auto_every=30, auto_days=("mon", "tue", "wed", "thu", "fri"),
                    auto_window="22:00-06:00", timezone="Australia/Sydney")
    sydney = ZoneInfo("Australia/Sydney")
    # Friday 23:00 and Saturday 01:00 in Sydney: both in Friday's window.
    friday = datetime(2027, 1, 8, 23, 0, tzinfo=sydney)
    assert due(policy, None, friday)
    assert due(policy, None, friday + timedelta(hours=2))
    assert not due(policy, friday - timedelta(minutes=29), friday)  # too soon
    assert due(policy, friday - timedelta(minutes=30), friday)
    assert not due(policy, None, friday - timedelta(hours=2))  # 21:00: outside the window
    assert not due(policy, None, friday + timedelta(days=1))  # Saturday 23:00
    assert not due(Policy(mode="manual", timezone="UTC"), None, friday)
    # The same instant is Friday 13:00 in Berlin: no window there.
    berlin = Policy(mode="auto", auto_window="22:00-06:00", timezone="Europe/Berlin")
    assert not due(berlin, None, friday)


# --- 2. range -------------------------------------------------------------------------------


def test_range_considers_overlapping_items_and_series_by_their_occurrences(scn: Scenario):
    # A first listing may leave out what lies outside the range on the server; items
    # that appear later are listed whatever their dates, and the rule must keep them out.
    scn.put(ev("soon@t", "Next week", days=7))
    scn.put(Task(uid="t-soon@t", summary="Due soon",
                 due=(NOW + timedelta(days=3)).date().isoformat()))
    scn.sync(["calendar", "tasks"])
    scn.put(ev("soon2@t", "Next month", days=30))
    scn.put(ev("old@t", "Long ago", days=-40))
    scn.put(ev("far@t", "Far ahead", days=400))
    scn.put(ev("ongoing@t", "Weekly since two months", days=-60, rrule="FREQ=WEEKLY"))
    scn.put(ev("ended@t", "Weekly, ended", days=-80, rrule="FREQ=WEEKLY;COUNT=3"))
    second = NOW - timedelta(days=89)
    scn.put(ev("moved@t", "Moved into range", days=-90, rrule="FREQ=DAILY;COUNT=2",
               overrides={moment(second): Occurrence(
                   summary="Moved into range", start=at(5)[0], end=at(5)[1])}))
    scn.put(Task(uid="t-old@t", summary="Overdue long ago",
                 due=(NOW - timedelta(days=45)).date().isoformat()))
    scn.put(Task(uid="t-none@t", summary="Someday"))
    plans, report = scn.sync(["calendar", "tasks"])
    assert report.status == "ok"
    # Out-of-range items do not even appear in the plan: no skips flood it.
    assert plans[0].counts() == {"create:crm": 3} and plans[1].counts() == {"create:crm": 1}
    assert subjects(scn) == {"Next week", "Next month", "Weekly since two months",
                             "Moved into range"}
    tasks = {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Task")}
    assert tasks == {"Someday", "Due soon"}


def test_an_item_that_leaves_the_range_is_never_deleted_because_of_it(scn: Scenario):
    scn.put(ev("a@t", "Kick-off", days=2))
    scn.sync()
    assert subjects(scn) == {"Kick-off"}
    later = NOW + timedelta(days=40)  # the meeting is 38 days in the past by then
    scn.delete("a@t")
    plans, _ = scn.sync(now=later)
    assert plans[0].steps == []
    assert subjects(scn) == {"Kick-off"}
    # Changes to it no longer flow either; the user is told why.
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.crm_update("Event", crm_id, Subject="Kick-off (notes)")
    plan = scn.plan(now=later)
    [(_, action)] = list(plan.actions())
    assert action.op == "skip" and "outside the sync range" in action.reason


# --- 3. exclusions --------------------------------------------------------------------------


def test_private_items_are_excluded_on_either_side_unless_included(scn: Scenario):
    scn.put(ev("dentist@t", "Dentist", private=True))
    scn.put(ev("demo@t", "Product demo"))
    start, end = NOW + timedelta(days=3), NOW + timedelta(days=3, hours=1)
    scn.crm_insert("Event", Subject="Private lunch", StartDateTime=sf_time(start),
                   EndDateTime=sf_time(end), IsPrivate=True)
    plans, _ = scn.sync()
    skips = [a.reason for _, a in plans[0].actions() if a.op == "skip"]
    assert len(skips) == 2 and all("private" in r for r in skips)
    assert subjects(scn) == {"Product demo", "Private lunch"}
    assert {e.summary for e in scn.records().values()} == {"Dentist", "Product demo"}
    scn.cli("settings", "p", "calendar", "include_private", "true", check=0)
    scn.sync()
    assert subjects(scn) == {"Product demo", "Private lunch", "Dentist"}
    assert "Private lunch" in {e.summary for e in scn.records().values()}


def test_do_not_sync_category_and_do_not_record_attendee_are_excluded(scn: Scenario):
    scn.put(ev("lunch@t", "Team lunch", categories=["DoNotSync"]))
    scn.put(ev("board@t", "Board prep", attendees=[
        Attendee("ceo@acme.example"), Attendee("DoNotRecord@CRM.example")]))
    scn.put(ev("hr@t", "HR talk", categories=["Confidential"]))
    scn.put(ev("ok@t", "Pricing call", attendees=[Attendee("jo@acme.example")]))
    scn.sync()
    assert subjects(scn) == {"Pricing call", "HR talk"}
    # Configurable: another category, and a whole address.
    scn.cli("settings", "p", "calendar", "exclude_category", "Confidential", check=0)
    scn.cli("settings", "p", "calendar", "exclude_attendee", "jo@acme.example", check=0)
    scn.put(ev("hr2@t", "HR follow-up", categories=["confidential"]))
    scn.put(ev("jo@t", "Jo again", attendees=[Attendee("JO@acme.example")]))
    scn.put(ev("lunch2@t", "Team lunch 2", categories=["DoNotSync"]))
    plans, _ = scn.sync()
    assert subjects(scn) == {"Pricing call", "HR talk", "Team lunch", "Team lunch 2",
                             "Board prep"}


def test_an_excluded_item_synced_before_is_left_alone(scn: Scenario):
    scn.put(ev("a@t", "Call with Jo"))
    scn.sync()
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.edit("a@t", summary="Call with Jo (personal)", private=True)
    plans, _ = scn.sync()
    [(_, action)] = list(plans[0].actions())
    assert action.op == "skip" and "excluded in groupware: private" in action.reason
    assert "left alone" in action.reason
    assert subjects(scn) == {"Call with Jo"}  # not updated
    scn.crm_update("Event", crm_id, Subject="Call with Jo, CRM edit")
    scn.sync()
    assert scn.records()["a@t"].summary == "Call with Jo (personal)"  # not updated either
    assert subjects(scn) == {"Call with Jo, CRM edit"}  # and never deleted


# --- 5. prevent operations ------------------------------------------------------------------


def test_prevent_switches_are_settings_and_override_delete_wins(scn: Scenario):
    scn.put(ev("a@t", "Forecast"))
    scn.sync()
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.cli("settings", "p", "calendar", "delete_vs_update", "delete", check=0)
    scn.cli("settings", "p", "calendar", "prevent", "crm:delete,groupware:create", check=0)
    scn.crm_update("Event", crm_id, Subject="Forecast (CRM)")
    scn.delete("a@t")
    plans, _ = scn.sync()
    reasons = [a.reason for _, a in plans[0].actions()]
    assert any("'do not delete in CRM' is on" in r for r in reasons), reasons
    assert subjects(scn) == {"Forecast (CRM)"}
    # groupware:create keeps CRM items out of the calendar.
    scn.crm_insert("Event", Subject="CRM only", StartDateTime=sf_time(NOW + timedelta(days=4)),
                   EndDateTime=sf_time(NOW + timedelta(days=4, hours=1)))
    scn.sync()
    assert scn.records() == {}


def test_prevent_update_overrides_the_conflict_rule(scn: Scenario):
    scn.put(ev("a@t", "Budget"))
    scn.sync()
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.cli("settings", "p", "calendar", "conflict", "groupware", check=0)
    scn.cli("settings", "p", "calendar", "prevent", "crm:update", check=0)
    scn.crm_update("Event", crm_id, Subject="Budget (CRM)")
    scn.edit("a@t", summary="Budget (calendar)")
    scn.sync()
    assert subjects(scn) == {"Budget (CRM)"}  # the groupware won, but may not update CRM
    scn.cli("settings", "p", "calendar", "prevent", "none", check=0)
    scn.edit("a@t", summary="Budget (calendar, again)")
    scn.sync()
    assert subjects(scn) == {"Budget (calendar, again)"}


# --- 6. conflict and delete-vs-update rules -------------------------------------------------


def test_ask_leaves_a_conflict_with_date_subject_and_choices(scn: Scenario):
    start = datetime(NOW.year, NOW.month, NOW.day, 23, 30, tzinfo=UTC) + timedelta(days=3)
    scn.put(Event(uid="a@t", summary="Renewal", start=moment(start),
                  end=moment(start + timedelta(hours=1))))
    scn.sync()
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.cli("settings", "p", "calendar", "conflict", "ask", check=0)
    scn.cli("settings", "p", "calendar", "timezone", "Australia/Sydney", check=0)
    scn.crm_update("Event", crm_id, Subject="Renewal (CRM)")
    scn.edit("a@t", summary="Renewal (calendar)")
    dry = json.loads(scn.cli("sync", "p", "--dry-run", "--json", check=0).stdout)
    [action] = dry["objects"]["calendar"]["actions"]
    assert action["action"] == "conflict"
    assert action["choices"] == ["crm", "groupware", "both", "skip"]
    local = start.astimezone(ZoneInfo("Australia/Sydney"))  # the next day in Sydney
    assert f"{local:%a %Y-%m-%d %H:%M} Renewal (calendar)" in action["reason"]
    assert action["conflicts"]["summary"] == {"crm": "Renewal (CRM)",
                                              "groupware": "Renewal (calendar)"}
    assert scn.cli("sync", "p", "--yes", check=3).code == 3
    assert subjects(scn) == {"Renewal (CRM)"}
    scn.cli("settings", "p", "calendar", "conflict", "crm", check=0)
    scn.sync()
    assert scn.records()["a@t"].summary == "Renewal (CRM)"


def test_delete_vs_update_rule_is_a_setting(scn: Scenario):
    scn.put(ev("a@t", "Demo"))
    scn.sync()
    [crm_id] = [r["Id"] for r in scn.crm_query("SELECT Id FROM Event")]
    scn.cli("settings", "p", "calendar", "delete_vs_update", "groupware", check=0)
    scn.crm_update("Event", crm_id, Subject="Demo (CRM)")
    scn.delete("a@t")
    scn.sync()
    assert subjects(scn) == set()  # the groupware is master: its deletion wins


# --- 7. shared calendars --------------------------------------------------------------------


def test_shared_calendar_syncs_everything_not_private(scn: Scenario):
    scn.cli("settings", "p", "calendar", "include_private", "true", check=0)
    scn.cli("settings", "p", "calendar", "shared", "true", check=0)
    scn.put(ev("team@t", "Team offsite"))
    scn.put(ev("boss@t", "Boss: doctor", private=True))
    plans, _ = scn.sync()
    assert subjects(scn) == {"Team offsite"}
    assert any("shared calendar" in a.reason for _, a in plans[0].actions())
    policy = Policy.of_profile("calendar", {"shared": True})
    assert rules.shared_overrides_selection(policy)
    assert not rules.shared_overrides_selection(Policy.of_profile("calendar", {}))


# --- 8. time zones --------------------------------------------------------------------------


def next_dst_change(zone: ZoneInfo, after: datetime) -> date:
    """The first day after ``after`` whose UTC offset differs from the day before's."""
    day = after.date()
    for _ in range(400):
        day += timedelta(days=1)
        if datetime.combine(day, datetime.min.time(), zone).utcoffset() != datetime.combine(
                day + timedelta(days=1), datetime.min.time(), zone).utcoffset():
            return day + timedelta(days=1)
    raise AssertionError(f"no DST change in {zone}")


@pytest.mark.parametrize("zone_name", ["Europe/Berlin", "Australia/Sydney"])
def test_dst_changes_and_all_day_events_never_shift(scn: Scenario, zone_name: str):
    zone = ZoneInfo(zone_name)
    change = next_dst_change(zone, NOW + timedelta(days=8))
    scn.cli("settings", "p", "calendar", "timezone", zone_name, check=0)
    # A weekly 10:00 series from a week before the change to a week after, an all-day
    # event on the day of the change, and a single meeting on it.
    first = datetime.combine(change - timedelta(days=7), datetime.min.time(), zone).replace(
        hour=10)
    scn.put(Event(uid="weekly@t", summary="Weekly", start=moment(first),
                  end=moment(first + timedelta(hours=1)), tz=zone_name,
                  rrule="FREQ=WEEKLY;COUNT=3"))
    scn.put(Event(uid="day@t", summary="Fair", start=change.isoformat(),
                  end=(change + timedelta(days=1)).isoformat()))
    single = datetime.combine(change, datetime.min.time(), zone).replace(hour=15)
    scn.put(Event(uid="single@t", summary="Call", start=moment(single),
                  end=moment(single + timedelta(hours=1)), tz=zone_name))
    scn.sync()
    rows = scn.crm_query("SELECT Subject, StartDateTime, IsAllDayEvent, ActivityDate "
                         "FROM Event")
    weekly = sorted(r["StartDateTime"] for r in rows if r["Subject"] == "Weekly")
    local = [datetime.fromisoformat(s.replace(".000+0000", "+00:00")).astimezone(zone)
             for s in weekly]
    assert [t.hour for t in local] == [10] * len(local) and len(local) >= 2
    assert len({t.utcoffset() for t in local}) == 2  # the series does cross the change
    [fair] = [r for r in rows if r["Subject"] == "Fair"]
    assert fair["IsAllDayEvent"] and fair["ActivityDate"] == change.isoformat()
    # Back from the CRM: edits there come home without moving anything.
    for row in rows:
        if row["Subject"] in ("Fair", "Call"):
            [crm_id] = [r["Id"] for r in scn.crm_query(
                f"SELECT Id FROM Event WHERE Subject = '{row['Subject']}'")]
            scn.crm_update("Event", crm_id, Subject=row["Subject"] + " (CRM)")
    scn.sync()
    home = scn.records()
    assert home["day@t"].summary == "Fair (CRM)"
    assert (home["day@t"].start, home["day@t"].end) == (
        change.isoformat(), (change + timedelta(days=1)).isoformat())
    assert home["single@t"].summary == "Call (CRM)" and home["single@t"].start == moment(single)
    assert "TZID=" + zone_name in scn.raw("single@t")


@pytest.mark.parametrize(("zone_name", "considered"), [
    ("Australia/Sydney", False), ("Europe/Berlin", True)])
def test_range_days_are_the_users_days(scn: Scenario, zone_name: str, considered: bool):
    # 20:00 UTC on the day of a DST change in Sydney: already the next day there, still
    # that day in Berlin. With past_days 0, an all-day event on that day is over in
    # Sydney and still running in Berlin.
    day = next_dst_change(ZoneInfo("Australia/Sydney"), NOW)
    now = datetime.combine(day, datetime.min.time(), UTC).replace(hour=20)
    scn.cli("settings", "p", "calendar", "timezone", zone_name, check=0)
    scn.cli("settings", "p", "calendar", "past_days", "0", check=0)
    scn.put(Event(uid="fair@t", summary="Fair", start=day.isoformat(),
                  end=(day + timedelta(days=1)).isoformat()))
    plans, _ = scn.sync(now=now)
    assert (subjects(scn) == {"Fair"}) is considered


# --- rules the range check cannot expand (issue 16) -------------------------------------------


@pytest.mark.parametrize("rule", [
    "FREQ=WEEKLY;UNTL=20270101T000000Z",  # misspelt UNTIL
    "RSCALE=CHINESE;FREQ=YEARLY",  # RFC 7529
    "RSCALE=GREGORIAN;FREQ=MONTHLY;BYMONTHDAY=31;SKIP=FORWARD",
])
def test_a_rule_dateutil_cannot_expand_counts_from_its_first_start(rule: str):
    """Such a series may repeat into the range: it is considered from its first start on,
    and the range check never raises."""
    policy = Policy(timezone="Europe/Berlin")
    now = datetime(2026, 11, 22, tzinfo=UTC)
    started = {"start": "2025-01-06T09:00:00Z", "end": "2025-01-06T10:00:00Z"}
    assert rules.in_range(policy, Event(uid="u", rrule=rule, **started), now)
    later = {"start": "2028-01-06T09:00:00Z", "end": "2028-01-06T10:00:00Z"}
    assert not rules.in_range(policy, Event(uid="u", rrule=rule, **later), now)


def test_an_unexpandable_rule_that_ended_before_the_range_is_out_of_it():
    policy = Policy(timezone="Europe/Berlin")
    now = datetime(2026, 11, 22, tzinfo=UTC)
    ended = Event(uid="u", start="2025-01-06T09:00:00Z", end="2025-01-06T10:00:00Z",
                  rrule="RSCALE=GREGORIAN;FREQ=WEEKLY;UNTIL=20250301T000000Z;SKIP=BACKWARD")
    assert not rules.in_range(policy, ended, now)
    day = Event(uid="u", start="2025-01-06", end="2025-01-07",
                rrule="RSCALE=GREGORIAN;FREQ=DAILY;UNTIL=20261024;SKIP=OMIT")
    assert rules.in_range(policy, day, now)  # its last day, Oct 24, is in the 30 days back


def test_an_until_in_utc_is_an_instant_for_a_zoned_series():
    """The last 10:30 in Paris (09:30Z, the UNTIL) is still an occurrence of the series."""
    policy = Policy(timezone="Europe/Paris", past_days=0, future_days=30)
    series = Event(uid="u", start="2026-11-30T09:30:00Z", end="2026-11-30T10:00:00Z",
                   tz="Europe/Paris", rrule="FREQ=WEEKLY;UNTIL=20261221T093000Z")
    assert rules.in_range(policy, series, datetime(2026, 12, 21, 9, 0, tzinfo=UTC))


def test_a_repeating_task_counts_by_its_due_dates():
    """A weekly task first due years ago is due again this week: in range."""
    policy = Policy(timezone="Europe/Berlin")
    now = datetime(2026, 11, 22, tzinfo=UTC)
    weekly = Task(uid="t", summary="Report", due="2019-03-04", rrule="FREQ=WEEKLY")
    assert rules.in_range(policy, weekly, now)
    ended = Task(uid="t", summary="Report", due="2019-03-04", rrule="FREQ=WEEKLY;COUNT=3")
    assert not rules.in_range(policy, ended, now)
