"""The server's service end to end on real sides: Radicale and the Salesforce sandbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.model import Event, moment
from crmsync.server import service
from crmsync.server.service import Forbidden, NotFound
from crmsync.server.settings import LockedSetting
from scenario import Scenario, sf_time
from serverworld import REDIRECT, World, add_user, authorize, make_world, run_queued

START = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)


@pytest.fixture
def world(scn: Scenario, tmp_path: Path) -> World:
    return make_world(tmp_path, scn.sandbox)


def _both_sides(scn: Scenario) -> None:
    scn.put(Event(uid="gw@t", summary="From the calendar", start=moment(START),
                  end=moment(START + timedelta(hours=1))))
    scn.crm_insert("Event", Subject="From the CRM", StartDateTime=sf_time(START),
                   EndDateTime=sf_time(START + timedelta(hours=1)))


def test_enabling_auto_runs_at_once_and_syncs_both_sides(scn: Scenario, world: World):
    user = add_user(world, "ana@example.com", {"calendar": scn.collections["calendar"]},
                    scn.sandbox)
    [conn_gw, conn_crm] = service.connections(world.srv, user)
    assert (conn_gw.name, conn_crm.name) == ("groupware", "crm")
    assert conn_crm.endpoints["calendar"] == scn.sandbox.url and not conn_crm.needs_reconnect
    jobs = {j.kind: j for j in service.jobs_overview(world.srv, user)}
    assert not jobs["calendar"].enabled and jobs["calendar"].last_run is None
    assert jobs["calendar"].connected and not jobs["contacts"].connected
    _both_sides(scn)
    service.update_settings(world.srv, user, "calendar", {"mode": "auto", "auto_every": 45})
    jobs = {j.kind: j for j in service.jobs_overview(world.srv, user)}
    assert jobs["calendar"].state == "queued" and jobs["calendar"].frequency == 45
    assert service.sync_now(world.srv, user, "calendar") == "queued"  # still one job
    assert run_queued(world) == [(user.id, "calendar", "synced")]
    assert {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")} == {
        "From the calendar", "From the CRM"}
    assert {e.summary for e in scn.records().values()} == {"From the calendar",
                                                           "From the CRM"}
    [run] = service.list_runs(world.srv, user)
    assert run["status"] == "ok" and run["mode"] == "auto" and run["started_by"] == user.email
    report = service.get_run(world.srv, user, run["id"])
    assert report["counts"]["calendar"] == {"create:crm": 1, "create:groupware": 1}
    [due] = service.scheduled(world.store)
    assert (due.user_id, due.kind, due.policy.auto_every) == (user.id, "calendar", 45)
    assert due.last_run is not None
    admin = add_user(world, "boss@example.com", is_admin=True)
    service.set_paused(world.srv, admin, True)
    assert service.scheduled(world.store) == []
    service.sync_now(world.srv, user, "calendar")
    assert run_queued(world) == [(user.id, "calendar", "paused")]
    assert service.list_runs(world.srv, user)[0]["error"] == "sync is paused by an admin"


def test_manual_mode_plans_for_review_and_applies_what_was_confirmed(scn: Scenario,
                                                                     world: World):
    user = add_user(world, "ana@example.com", {"calendar": scn.collections["calendar"]},
                    scn.sandbox)
    _both_sides(scn)
    scn.put(Event(uid="skip@t", summary="Not this one", start=moment(START),
                  end=moment(START + timedelta(hours=2))))
    service.update_settings(world.srv, user, "calendar", {"mode": "manual"})
    assert run_queued(world) == [(user.id, "calendar", "review")]
    assert len(scn.crm_query("SELECT Id FROM Event")) == 1  # nothing written
    [listed] = service.list_plans(world.srv, user)
    plan = service.get_plan(world.srv, user, listed.id)
    assert plan.status == "review" and plan.counts == {"create:crm": 2, "create:groupware": 1}
    by_label = {(s["crm"] or s["groupware"])["label"].split(" UTC ")[1]: s for s in plan.steps}
    skip_key = by_label["Not this one"]["key"]
    crm_key = by_label["From the CRM"]["key"]
    assert by_label["Not this one"]["choices"] == ["include", "exclude",
                                                   "ignore-until-change", "ignore-forever"]
    with pytest.raises(ConfigError, match="no conflict"):
        service.choose(world.srv, user, plan.id, [skip_key], "crm")
    # Multi-select: both excluded, then one taken back.
    service.choose(world.srv, user, plan.id, [skip_key, crm_key], "exclude")
    plan = service.choose(world.srv, user, plan.id, [crm_key], "include")
    assert {s["key"]: s["choice"] for s in plan.steps}[skip_key] == "exclude"
    assert service.jobs_overview(world.srv, user)[0].review_plan == plan.id
    service.confirm_plan(world.srv, user, plan.id)
    assert run_queued(world) == [(user.id, "calendar", "applied")]
    assert {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")} == {
        "From the calendar", "From the CRM"}
    assert {e.summary for e in scn.records().values()} == {
        "From the calendar", "From the CRM", "Not this one"}
    applied = service.get_plan(world.srv, user, plan.id)
    assert applied.status == "applied" and applied.run_id is not None
    with pytest.raises(ConfigError, match="applied"):
        service.confirm_plan(world.srv, user, plan.id)
    # The excluded item comes back in the next review.
    service.sync_now(world.srv, user, "calendar")
    assert run_queued(world) == [(user.id, "calendar", "review")]
    newest = service.get_plan(world.srv, user, service.list_plans(world.srv, user)[0].id)
    assert [s["groupware"]["label"].endswith("Not this one") for s in newest.steps] == [True]
    service.choose(world.srv, user, newest.id, [newest.steps[0]["key"]], "ignore-forever")
    service.confirm_plan(world.srv, user, newest.id)
    assert run_queued(world) == [(user.id, "calendar", "applied")]
    [ignore] = service.list_ignores(world.srv, user)
    assert ignore["mode"] == "forever"
    service.remove_ignore(world.srv, user, "calendar", ignore["side"], ignore["item_id"])
    assert service.list_ignores(world.srv, user) == []


def test_locks_defaults_and_admin_only(scn: Scenario, world: World):
    admin = add_user(world, "boss@example.com", is_admin=True)
    user = add_user(world, "ana@example.com")
    with pytest.raises(Forbidden):
        service.set_admin_setting(world.srv, user, "calendar", "past_days", 5, True)
    service.set_admin_setting(world.srv, admin, "calendar", "past_days", 5, True)
    service.set_admin_setting(world.srv, admin, "calendar", "future_days", 100, False)
    view = service.get_settings(world.srv, user, "calendar")
    assert view.values["past_days"] == 5 and view.locked == ["past_days"]
    assert view.values["future_days"] == 100
    with pytest.raises(LockedSetting):
        service.update_settings(world.srv, user, "calendar", {"past_days": 7})
    view = service.update_settings(world.srv, user, "calendar", {"future_days": 30})
    assert view.values["future_days"] == 30 and view.own == {"future_days": 30}
    # An existing user's value wins over a later default, a lock over both.
    service.set_admin_setting(world.srv, admin, "calendar", "future_days", 200, True)
    assert service.get_settings(world.srv, user, "calendar").values["future_days"] == 200
    service.clear_admin_setting(world.srv, admin, "calendar", "future_days")
    assert service.get_settings(world.srv, user, "calendar").values["future_days"] == 30
    with pytest.raises(ConfigError):
        service.set_admin_setting(world.srv, admin, "calendar", "future_days", 9999, False)
    [u, a] = service.users_overview(world.srv, admin)
    assert (a.email, u.email, u.last_run) == ("boss@example.com", "ana@example.com", None)
    service.make_admin(world.srv, admin, user.id, True)
    with pytest.raises(NotFound):
        service.make_admin(world.srv, admin, 9999, True)


def test_a_bad_collection_is_refused_before_saving(scn: Scenario, world: World):
    user = add_user(world, "ana@example.com")
    with pytest.raises(ConfigError, match="not a calendar"):
        service.add_dav(world.srv, user, {"calendar": scn.radicale.url}, None, None)
    with pytest.raises(ConnectionFailed):
        service.add_dav(world.srv, user, {"calendar": "http://127.0.0.1:9/cal/"}, None, None)
    assert service.connections(world.srv, user) == []


def test_oauth_state_is_bound_to_the_session(scn: Scenario, world: World):
    user = add_user(world, "ana@example.com")
    url = service.salesforce_start(world.srv, user, "session-one", REDIRECT)
    query = authorize(scn.sandbox, url)
    with pytest.raises(ConfigError, match="state mismatch"):
        service.salesforce_callback(world.srv, user, "session-two", state=query["state"],
                                    code=query["code"], error=None, redirect_uri=REDIRECT)
    assert service.connections(world.srv, user) == []


def test_a_revoked_token_asks_the_user_to_reconnect(scn: Scenario, world: World):
    user = add_user(world, "ana@example.com", {"calendar": scn.collections["calendar"]},
                    scn.sandbox)
    service.update_settings(world.srv, user, "calendar", {"mode": "auto"})
    creds = world.srv.vault.get(user.id, "crm")
    assert creds is not None and creds.refresh_token
    httpx.post(scn.sandbox.login_url + "/services/oauth2/revoke",
               data={"token": creds.refresh_token}, verify=scn.sandbox.ssl_context())
    [(_, _, outcome)] = run_queued(world)
    assert outcome.startswith("ConnectionFailed")
    crm = next(c for c in service.connections(world.srv, user) if c.name == "crm")
    assert crm.needs_reconnect and crm.error
    jobs = {j.kind: j for j in service.jobs_overview(world.srv, user)}
    assert jobs["calendar"].reconnect == ["crm"] and jobs["calendar"].last_run["status"] == \
        "failed"
    assert creds.refresh_token not in crm.error
    [run] = service.list_runs(world.srv, user)
    assert run["status"] == "failed" and run["error"] == crm.error
    # Connecting again clears it.
    from serverworld import connect_salesforce

    connect_salesforce(world, user, scn.sandbox)
    crm = next(c for c in service.connections(world.srv, user) if c.name == "crm")
    assert not crm.needs_reconnect
    assert service.jobs_overview(world.srv, user)[0].reconnect == []


def test_a_provisioned_user_runs_as_a_queue_engine_calls_the_job(scn: Scenario, world: World):
    """make_user (scripted set-up, the scale benchmark) and run_job(store, user, kind) with
    the vault registered for the store, as both queue engines call it."""
    sandbox = scn.sandbox
    user = service.make_user(world.store, 7, {"url": scn.collections["calendar"]}, {
        "instance_url": sandbox.url, "login_url": sandbox.login_url,
        "ca_path": str(sandbox.ca_path), "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret, "refresh_token": sandbox.refresh_token},
        vault=world.srv.vault)
    _both_sides(scn)
    [due] = service.scheduled(world.store)
    assert (due.user_id, due.kind, due.last_run) == (user.id, "calendar", None)
    service.use_vault(world.store, world.srv.vault)
    assert service.run_job(world.store, user.id, "calendar") == "synced"
    assert {e.summary for e in scn.records().values()} == {"From the calendar",
                                                           "From the CRM"}
    assert service.scheduled(world.store)[0].last_run is not None


def conflict_in_review(scn: Scenario, world: World):
    """A user whose calendar event changed on both sides (rule "ask"), and the manual
    sync's plan that waits for the review: (user, plan, its one step)."""
    user = add_user(world, "ana@example.com", {"calendar": scn.collections["calendar"]},
                    scn.sandbox)
    scn.put(Event(uid="both@t", summary="Planning", start=moment(START),
                  end=moment(START + timedelta(hours=1))))
    service.update_settings(world.srv, user, "calendar", {"mode": "auto", "conflict": "ask"})
    assert run_queued(world) == [(user.id, "calendar", "synced")]
    [crm] = scn.crm_query("SELECT Id FROM Event")
    scn.crm_update("Event", crm["Id"], Subject="Planning (CRM)")
    scn.edit("both@t", summary="Planning (calendar)")
    service.update_settings(world.srv, user, "calendar", {"mode": "manual"})
    service.sync_now(world.srv, user, "calendar")
    assert run_queued(world) == [(user.id, "calendar", "review")]
    plan = service.get_plan(world.srv, user, service.list_plans(world.srv, user)[0].id)
    [step] = plan.steps
    return user, plan, step


def test_a_conflict_is_decided_in_the_review(scn: Scenario, world: World):
    user, plan, step = conflict_in_review(scn, world)
    assert plan.counts == {"conflict": 1}
    [conflict] = step["actions"]
    assert conflict["conflicts"]["summary"] == {"crm": "Planning (CRM)",
                                                "groupware": "Planning (calendar)"}
    assert step["choices"][-3:] == ["crm", "groupware", "both"]
    service.choose(world.srv, user, plan.id, [step["key"]], "groupware")
    service.confirm_plan(world.srv, user, plan.id)
    assert run_queued(world) == [(user.id, "calendar", "applied")]
    assert [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")] == [
        "Planning (calendar)"]
    assert [e.summary for e in scn.records().values()] == ["Planning (calendar)"]
    assert service.get_run(world.srv, user, service.get_plan(
        world.srv, user, plan.id).run_id)["status"] == "ok"


def test_keep_both_in_the_review_copies_each_version_to_the_other_side(scn: Scenario,
                                                                       world: World):
    user, plan, step = conflict_in_review(scn, world)
    service.choose(world.srv, user, plan.id, [step["key"]], "both")
    service.confirm_plan(world.srv, user, plan.id)
    assert run_queued(world) == [(user.id, "calendar", "applied")]
    both = ["Planning (CRM)", "Planning (calendar)"]
    assert sorted(r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")) == both
    assert sorted(e.summary for e in scn.records().values()) == both
