"""The HTML pages through the app (no browser): forms, locks, Sync now with and without
htmx, the review's choices, admin forms. The browser tests (test_server_browser.py) drive
the same pages in chromium."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crmsync.model import Event, moment
from crmsync.server import service
from scenario import Scenario
from serverworld import PASSWORD, World, add_user, make_world, run_queued, web_app
from test_server_web import signin_token


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def page_client(world: World, email: str) -> tuple[TestClient, str]:
    """A TestClient signed in through the sign-in form; the page's CSRF token."""
    client = TestClient(web_app(world), base_url="https://testserver")
    client.__enter__()
    answer = client.post("/signin", data={"email": email, "password": PASSWORD,
                                          "csrf_token": signin_token(client)},
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


def test_admin_pages_refuse_users_and_save_defaults_and_locks(world: World):
    boss = add_user(world, "boss@example.com", is_admin=True)
    ana = add_user(world, "ana@example.com")
    client, csrf = page_client(world, ana.email)
    page = client.get("/admin")
    assert page.status_code == 403 and "only an admin" in page.text
    assert 'href="/admin"' not in client.get("/").text  # no Admin link for users
    assert client.post("/admin/pause", data={"csrf_token": csrf,
                                             "paused": "true"}).status_code == 403
    assert client.post("/admin/settings/calendar", data={
        "csrf_token": csrf, "value:past_days": "3", "lock:past_days": "true"}).status_code == 403
    assert not service.paused(world.store)
    assert service.admin_defaults(world.srv, boss, "calendar") == {}

    admin, token = page_client(world, boss.email)
    assert 'href="/admin"' in admin.get("/").text
    form = admin.get("/admin/settings/calendar").text
    names = set(re.findall(r'name="value:(\w+)"', form))
    assert names == set(service.settings.NAMES)
    sent = {"csrf_token": token, "value:past_days": "3", "lock:past_days": "true",
            "value:prevent": "crm:delete, groupware:delete", "value:include_private": "",
            "value:mode": "manual"}
    saved = admin.post("/admin/settings/calendar", data=sent, follow_redirects=False)
    assert saved.status_code == 303
    rows = service.admin_defaults(world.srv, boss, "calendar")
    assert (rows["past_days"].value, rows["past_days"].locked) == (3, True)
    assert rows["prevent"].value == ["crm:delete", "groupware:delete"]
    assert rows["mode"].value == "manual" and "include_private" not in rows
    # Existing users get the defaults; locked ones show greyed on their form.
    assert service.get_settings(world.srv, ana, "calendar").values["mode"] == "manual"
    # A blank, unlocked row removes the default; a bad value comes back with the reason.
    admin.post("/admin/settings/calendar", data=sent | {"value:mode": ""})
    assert "mode" not in service.admin_defaults(world.srv, boss, "calendar")
    bad = admin.post("/admin/settings/calendar", data=sent | {"value:past_days": "99"})
    assert bad.status_code == 400 and "past_days must be" in bad.text
    assert 'name="value:past_days" value="99"' in bad.text
    assert service.admin_defaults(world.srv, boss, "calendar")["past_days"].value == 3
    # Users list and pause.
    listed = admin.get("/admin").text
    assert "ana@example.com" in listed and "1 locked: past_days" in listed
    admin.post("/admin/pause", data={"csrf_token": token, "paused": "true"})
    assert service.paused(world.store) and "All sync is paused" in admin.get("/admin").text
    assert "An admin has paused all sync" in client.get("/").text


def test_a_failed_salesforce_callback_is_a_page_for_browsers(world: World):
    ana = add_user(world, "ana@example.com")
    client, _ = page_client(world, ana.email)
    query = {"state": "1.x.y", "code": "nope"}
    json_answer = client.get("/api/connections/crm/callback", params=query)
    assert json_answer.status_code == 400 and "detail" in json_answer.json()
    page = client.get("/api/connections/crm/callback", params=query,
                      headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    assert "Salesforce was not connected" in page.text and "<h1>Connections</h1>" in page.text


class _Controls(HTMLParser):
    """The form controls of a page and the labels that name them."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.open_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self.open_labels += 1
            if a.get("for"):
                self.label_for.add(str(a["for"]))
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append(a | {"_in_label": "1" if self.open_labels else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.open_labels -= 1

    def unlabelled(self) -> list[dict[str, str | None]]:
        return [c for c in self.controls if not (
            c["_in_label"] or c.get("aria-label") or c.get("id") in self.label_for)]


def test_every_form_control_of_the_main_pages_has_a_label(world: World):
    boss = add_user(world, "boss@example.com", is_admin=True)
    client, _ = page_client(world, boss.email)
    with TestClient(web_app(world), base_url="https://testserver") as anonymous:
        pages = {"/signin": anonymous.get("/signin").text}
    for path in ("/", "/settings/calendar/edit", "/connections", "/review", "/history",
                 "/admin", "/admin/settings/calendar", "/connections/crm/reconnect"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        pages[path] = answer.text
    for path, html in pages.items():
        parser = _Controls()
        parser.feed(html)
        assert parser.controls or path in ("/history", "/review",
                                           "/connections/crm/reconnect"), path
        assert parser.unlabelled() == [], path
        assert html.count("<h1") == 1, path


START = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)


def test_review_choices_by_row_and_by_ticked_rows_then_confirm(scn: Scenario,
                                                               tmp_path: Path):
    world = make_world(tmp_path, scn.sandbox)
    ana = add_user(world, "ana@example.com", sandbox=scn.sandbox)
    client, csrf = page_client(world, ana.email)
    password = "dav-secret-" + tmp_path.name[-5:]
    connected = client.post("/connections/groupware", data={
        "csrf_token": csrf, "calendar_url": scn.collections["calendar"], "username": "ana",
        "password": password, "verify_tls": "true"}, follow_redirects=False)
    assert connected.status_code == 303, connected.text
    for n, summary in enumerate(("One", "Two", "Three")):
        scn.put(Event(uid=f"e{n}@t", summary=summary, start=moment(START),
                      end=moment(START + timedelta(hours=n + 1))))
    service.update_settings(world.srv, ana, "calendar", {"mode": "manual"})
    assert [o for _, _, o in run_queued(world)] == ["review"]
    [listed] = service.list_plans(world.srv, ana)
    url = f"/review/{listed.id}"
    page = client.get(url).text
    assert "3 creates in CRM" in page and page.count('name="keys"') == 3
    keys = {s["groupware"]["label"].split(" UTC ")[-1]: s["key"]
            for s in service.get_plan(world.srv, ana, listed.id).steps}
    # A conflict's winner does not apply to a create: the page says so.
    wrong = client.post(f"{url}/choose", data={"csrf_token": csrf, "choice": "crm",
                                               "keys": [keys["One"]]})
    assert wrong.status_code == 400 and "has no conflict" in wrong.text
    # Ticked rows at once, then one row by its own choice.
    client.post(f"{url}/choose", data={"csrf_token": csrf, "choice": "exclude",
                                       "keys": [keys["One"], keys["Two"]]})
    rows = {f"row:{k}": "exclude" for k in (keys["One"], keys["Two"])}
    rows[f"row:{keys['Three']}"] = "ignore-forever"
    rows[f"row:{keys['Two']}"] = "include"
    client.post(f"{url}/choose", data={"csrf_token": csrf, "choice": "rows", **rows})
    chosen = {s["key"]: s["choice"] for s in service.get_plan(world.srv, ana, listed.id).steps}
    assert chosen == {keys["One"]: "exclude", keys["Two"]: "include",
                      keys["Three"]: "ignore-forever"}
    filtered = client.get(f"{url}?show=delete").text
    assert 'name="keys"' not in filtered and "No rows with this action" in filtered
    confirm = client.post(f"{url}/choose", data={"csrf_token": csrf, "choice": "confirm",
                                                 **rows}, follow_redirects=False)
    assert confirm.headers["location"] == f"{url}/confirm#confirm-h"
    asked = client.get(f"{url}/confirm").text
    assert "Apply these changes?" in asked
    assert "1 create in CRM; 1 excluded, 1 ignored forever" in asked
    assert not scn.crm_query("SELECT Id FROM Event")
    client.post(f"{url}/confirm", data={"csrf_token": csrf})
    assert "Confirmed." in client.get(url).text
    assert [o for _, _, o in run_queued(world)] == ["applied"]
    done = client.get(url).text
    assert "Applied." in done and 'name="keys"' not in done
    assert [r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")] == ["Two"]
    # The ignored item is listed and can be let go.
    review = client.get("/review").text
    assert "Ignored items" in review and "forever" in review
    # No page carries the DAV password or the Salesforce token.
    creds = world.srv.vault.get(ana.id, "crm")
    assert creds is not None and creds.refresh_token
    for path in ("/", "/connections", "/connections/groupware/reconnect", url, "/review",
                 "/history"):
        body = client.get(path).text
        assert password not in body and creds.refresh_token not in body, path
    assert 'value="ana"' in client.get("/connections").text  # the user name is no secret
