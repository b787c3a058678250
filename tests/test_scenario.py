"""The scenario fixture itself: both sides reachable, a round trip through the CLI profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crmsync.model import Event, moment
from scenario import Scenario, sf_time


def test_scenario_round_trip_both_ways(scn: Scenario):
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    scn.put(Event(uid="gw@t", summary="From the calendar", start=moment(start),
                  end=moment(start + timedelta(hours=1))))
    scn.crm_insert("Event", Subject="From the CRM", StartDateTime=sf_time(start),
                   EndDateTime=sf_time(start + timedelta(hours=1)))
    plans, report = scn.sync()
    assert plans[0].counts() == {"create:crm": 1, "create:groupware": 1}
    assert report.status == "ok"
    assert {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")} == {
        "From the calendar", "From the CRM"}
    assert {e.summary for e in scn.records().values()} == {"From the calendar", "From the CRM"}

    scn.edit("gw@t", summary="Edited in the calendar")
    scn.sync()
    assert "Edited in the calendar" in {
        r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")}
    scn.delete("gw@t")
    scn.sync()
    assert [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")] == [
        "From the CRM"]
    shown = scn.cli("profile", "show", "p", "--json", check=0)
    assert '"calendar"' in shown.stdout
