"""The HTML pages through the app (no browser): forms, locks, Sync now with and without
htmx, the review's choices, admin forms. The browser tests (test_server_browser.py) drive
the same pages in chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crmsync.server import service
from serverworld import PASSWORD, World, add_user, make_world, web_app


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def page_client(world: World, email: str) -> tuple[TestClient, str]:
    """A TestClient signed in through the sign-in form; the page's CSRF token."""
    client = TestClient(web_app(world), base_url="https://testserver")
    client.__enter__()
    answer = client.post("/signin", data={"email": email, "password": PASSWORD},
                         follow_redirects=False)
    assert answer.status_code == 303
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text)
    assert token is not None
    return client, token[1]


def test_locked_settings_are_greyed_and_refused_by_the_form(world: World):
    boss = add_user(world, "boss@example.com", is_admin=True)
    ana = add_user(world, "ana@example.com")
    service.set_admin_setting(world.srv, boss, "calendar", "past_days", 7, True)
    service.set_admin_setting(world.srv, boss, "calendar", "exclude_category", "Private",
                              False)
    client, csrf = page_client(world, ana.email)
    form = client.get("/settings/calendar/edit").text
    past = re.search(r'<div class="field locked" data-setting="past_days">(.*?)</div>', form,
                     re.S)
    assert past is not None and " disabled" in past[1] and "Locked" in past[1]
    assert 'value="7"' in past[1]
    future = re.search(r'<div class="field" data-setting="future_days">(.*?)</div>', form,
                       re.S)
    assert future is not None and " disabled" not in future[1]
    # A crafted post of the locked setting is refused, and nothing else is saved with it.
    refused = client.post("/settings/calendar/edit", data={
        "csrf_token": csrf, "past_days": "20", "future_days": "100", "mode": "manual"})
    assert refused.status_code == 403 and "locked by an admin" in refused.text
    view = service.get_settings(world.srv, ana, "calendar")
    assert view.values["past_days"] == 7 and view.values["future_days"] == 365
    # The form as the page sends it (locked fields are disabled, so not sent).
    sent = {"csrf_token": csrf, "mode": "manual", "future_days": "100",
            "exclude_category": "Private", "auto_every": "60", "auto_window": "00:00-24:00",
            "timezone": view.values["timezone"], "auto_days": ["mon", "tue"],
            "selection": "all", "crm_category": "CRM", "smart_address": "crm",
            "match_alternate_emails": "true", "record": "true",
            "exclude_attendee": "DoNotRecord", "conflict": "newest",
            "delete_vs_update": "keep", "mass_delete_share": "0.5", "mass_delete_min": "10"}
    saved = client.post("/settings/calendar/edit", data=sent, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/settings/calendar?saved=1"
    view = service.get_settings(world.srv, ana, "calendar")
    # Only what changed is the user's own: the admin's defaults keep reaching them.
    assert view.own == {"mode": "manual", "future_days": 100, "auto_days": ["mon", "tue"]}
    service.set_admin_setting(world.srv, boss, "calendar", "exclude_category", "Home", False)
    assert service.get_settings(world.srv, ana, "calendar").values["exclude_category"] == "Home"
    # A wrong value comes back in the form, with the reason.
    bad = client.post("/settings/calendar/edit", data=sent | {"auto_every": "5"})
    assert bad.status_code == 400 and "auto_every must be" in bad.text
    assert 'data-setting="auto_every"' in bad.text and 'value="5"' in bad.text
    # The read-only view: values, no inputs, the lock shown.
    view_page = client.get("/settings/calendar").text
    assert "<input" not in view_page.split("<main", 1)[1].replace(
        'name="csrf_token"', "")
    assert re.search(r'class="locked" data-setting="past_days">.*?Locked.*?<dd>7</dd>',
                     view_page, re.S)
    assert "Mon, Tue" in view_page


def test_sync_now_swaps_the_row_with_htmx_and_redirects_without(world: World):
    ana = add_user(world, "ana@example.com")
    client, csrf = page_client(world, ana.email)
    row = client.get("/jobs/calendar/row").text
    assert "Sync now" in row and "hx-trigger" not in row
    swapped = client.post("/jobs/calendar/run",
                          headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert swapped.status_code == 200 and swapped.text.lstrip().startswith("<tr")
    assert 'hx-trigger="every 2s"' in swapped.text and "Queued" in swapped.text
    assert "Sync now" not in swapped.text
    assert world.queue.state(ana.id, "calendar") == "queued"
    plain = client.post("/jobs/contacts/run", data={"csrf_token": csrf},
                        follow_redirects=False)
    assert plain.status_code == 303 and world.queue.state(ana.id, "contacts") == "queued"
    assert client.post("/jobs/tasks/run", headers={"HX-Request": "true"}).status_code == 403
    page = client.get("/").text
    assert page.count("Queued") == 2 and page.count("Sync now") == 1


def test_pages_need_a_session(world: World):
    with TestClient(web_app(world), base_url="https://testserver") as client:
        for path in ("/", "/settings/calendar", "/connections", "/review", "/history",
                     "/admin"):
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 303 and answer.headers["location"] == "/signin"
