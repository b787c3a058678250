"""The web UI in a real browser: Playwright drives Debian's chromium against the real
server (uvicorn thread, embedded queue with its worker threads), the real Radicale and the
Salesforce sandbox (OAuth through the browser: the sandbox's authorize address approves at
once and sends the browser back).

Screenshots of the main pages go to ``artifacts/screenshots/`` at the repository root.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from crmsync.model import Event, moment
from crmsync.server import service
from liveserver import Live, live_server
from scenario import Scenario, sf_time
from serverworld import PASSWORD, add_user, make_world

from conftest import require_service

playwright = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
START = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)
WAIT = 30_000  # ms: a queued job runs within a few seconds


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        require_service("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Browser, live: Live) -> Page:
    # The sandbox's TLS certificate comes from its own CA: the browser is told to accept it.
    context = browser.new_context(base_url=live.url, ignore_https_errors=True,
                                  viewport={"width": 1280, "height": 900})
    return context.new_page()


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    return path


def sign_in(page: Page, email: str, screenshot: str | None = None) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    if screenshot:
        shot(page, screenshot)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")  # the keyboard submits the form
    expect(page.get_by_role("heading", name="My Settings")).to_be_visible()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def job_row(page: Page, kind: str):
    return page.locator(f"#job-{kind}")


def edit_settings(page: Page, kind: str, **choices: str) -> None:
    """Open the object's settings form from My Settings and save these choices
    (radio labels, or field label -> text)."""
    page.goto("/")
    job_row(page, kind).get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name=f"{kind.capitalize()} sync settings")).to_be_visible()
    for label, value in choices.items():
        if value == "check":
            page.get_by_label(label.replace("_", " "), exact=True).check()
        else:
            page.get_by_label(label.replace("_", " "), exact=True).fill(value)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status").filter(has_text="Saved.")).to_be_visible()


def _event(scn: Scenario, uid: str, summary: str, hours: int = 1) -> None:
    scn.put(Event(uid=uid, summary=summary, start=moment(START),
                  end=moment(START + timedelta(hours=hours))))


def test_a_user_connects_reviews_applies_enables_auto_and_reconnects(
        scn: Scenario, browser: Browser, tmp_path: Path):
    world = make_world(tmp_path, scn.sandbox)
    ana = add_user(world, "ana@example.com")
    _event(scn, "gw@t", "From the calendar")
    _event(scn, "skip@t", "Not this one", hours=2)
    scn.crm_insert("Event", Subject="From the CRM", StartDateTime=sf_time(START),
                   EndDateTime=sf_time(START + timedelta(hours=1)))
    with live_server(world) as live:
        page = new_page(browser, live)
        sign_in(page, ana.email, screenshot="01-sign-in")
        expect(job_row(page, "calendar")).to_contain_text("Never run")

        # Connections: a wrong address fails its test and nothing is saved; then the
        # calendar works; Salesforce through OAuth in the browser.
        nav(page, "Connections")
        page.get_by_label("Calendar URL (CalDAV)").fill(scn.radicale.url)
        page.get_by_role("button", name="Test connection and save").click()
        expect(page.get_by_role("alert")).to_contain_text("The connection test failed")
        assert service.connections(world.srv, ana) == []
        page.get_by_label("Calendar URL (CalDAV)").fill(scn.collections["calendar"])
        page.get_by_role("button", name="Test connection and save").click()
        expect(page.get_by_role("status")).to_contain_text("works and is saved")
        page.get_by_role("button", name="Connect Salesforce").click()
        expect(page).to_have_url(re.compile(r"/\?connected=crm$"))
        expect(page.get_by_text("Salesforce is connected.")).to_be_visible()
        nav(page, "Connections")
        expect(page.get_by_text(f"Connected to {scn.sandbox.url}")).to_be_visible()
        shot(page, "04-connections")
        html = page.content()
        creds = world.srv.vault.get(ana.id, "crm")
        assert creds is not None and creds.refresh_token not in html

        # Manual mode: enabling runs at once; the row follows the job (htmx polling) and
        # offers the plan for review.
        edit_settings(page, "calendar", **{"Sync after I review each run (manual)": "check"})
        page.goto("/")
        review = job_row(page, "calendar").get_by_role("link", name="A plan waits for your "
                                                        "review")
        expect(review).to_be_visible(timeout=WAIT)
        review.click()
        expect(page.get_by_role("heading", name="Review: Calendar")).to_be_visible()
        rows = page.locator("table.plan tbody tr")
        expect(rows).to_have_count(3)
        summary = page.locator("#summary")
        expect(summary).to_contain_text("2 creates in CRM, 1 create in groupware")
        rows.filter(has_text="Not this one").get_by_role("checkbox").check()
        page.get_by_role("button", name="Exclude", exact=True).click()
        expect(summary).to_contain_text("1 create in CRM, 1 create in groupware; 1 excluded")
        expect(rows.filter(has_text="Not this one").get_by_role("combobox")).to_have_value(
            "exclude")
        shot(page, "05-review")
        assert len(scn.crm_query("SELECT Id FROM Event")) == 1  # nothing written yet
        page.get_by_role("button", name="Confirm and apply…").click()
        dialog = page.get_by_role("alertdialog")
        expect(dialog).to_contain_text("Apply these changes?")
        expect(dialog).to_contain_text("1 create in CRM, 1 create in groupware; 1 excluded")
        dialog.get_by_role("button", name="Yes, apply").click()
        report_link = page.get_by_role("link", name="See the run's report")
        expect(report_link).to_be_visible(timeout=WAIT)  # the page follows the job
        assert {r["Subject"] for r in scn.crm_query("SELECT Subject FROM Event")} == {
            "From the calendar", "From the CRM"}
        assert {e.summary for e in scn.records().values()} == {
            "From the calendar", "Not this one", "From the CRM"}
        report_link.click()
        expect(page.get_by_role("heading", name="Run report")).to_be_visible()
        expect(page.locator("dl")).to_contain_text("calendar: 1 create in CRM, 1 create in "
                                                   "groupware")
        shot(page, "06-run-report")

        # Auto sync every 45 minutes; Sync now shows the queued/running state and then
        # the last run.
        edit_settings(page, "calendar", **{"Sync automatically on a schedule": "check",
                                           "Sync every (minutes)": "45"})
        expect(page.locator('[data-setting="auto_every"] dd')).to_have_text("45")
        page.goto("/")
        row = job_row(page, "calendar")
        expect(row).to_contain_text("Every 45 min, every day, all day")
        expect(row.get_by_role("checkbox")).to_be_checked()
        scn.crm_insert("Event", Subject="Later from the CRM", StartDateTime=sf_time(START),
                       EndDateTime=sf_time(START + timedelta(hours=1)))
        runs_before = len(service.list_runs(world.srv, ana))
        row.get_by_role("button", name="Sync calendar now").click()
        expect(row.get_by_role("status")).to_have_text(re.compile(r"(Queued|Running)…"))
        expect(row.get_by_role("button", name="Sync calendar now")).to_be_visible(timeout=WAIT)
        expect(row).to_contain_text("ok")
        last = service.list_runs(world.srv, ana)[0]
        assert len(service.list_runs(world.srv, ana)) > runs_before
        assert last["status"] == "ok" and last["mode"] == "auto"
        expect(row.get_by_role("link", name=re.compile(r"\d{4}-\d\d-\d\d"))).to_have_attribute(
            "href", f"/history/{last['id']}")
        assert "Later from the CRM" in {e.summary for e in scn.records().values()}
        shot(page, "02-my-settings")
        nav(page, "History")
        expect(page.locator("#runs tbody tr")).to_have_count(
            len(service.list_runs(world.srv, ana)))
        shot(page, "07-history")

        # Salesforce stops accepting the token: a clear page asks to reconnect.
        httpx.post(scn.sandbox.login_url + "/services/oauth2/revoke",
                   data={"token": world.srv.vault.get(ana.id, "crm").refresh_token},
                   verify=scn.sandbox.ssl_context())
        page.goto("/")
        row = job_row(page, "calendar")
        row.get_by_role("button", name="Sync calendar now").click()
        expect(row.get_by_role("status")).to_be_visible()
        expect(row.locator(".status")).to_have_text("failed", timeout=WAIT)
        page.reload()
        alert = page.get_by_role("alert").filter(has_text="Salesforce refused crmsync")
        expect(alert).to_be_visible()
        alert.get_by_role("link", name="Reconnect").click()
        expect(page.get_by_role("heading", name="Reconnect Salesforce")).to_be_visible()
        shot(page, "08-reconnect")
        page.get_by_role("button", name="Reconnect Salesforce").click()
        expect(page.get_by_text("Salesforce is connected.")).to_be_visible()
        expect(page.get_by_role("alert")).to_have_count(0)
        crm = next(c for c in service.connections(world.srv, ana) if c.name == "crm")
        assert not crm.needs_reconnect


def test_an_admin_locks_a_setting_the_user_sees_greyed_and_cannot_change(
        browser: Browser, tmp_path: Path):
    world = make_world(tmp_path)
    boss = add_user(world, "boss@example.com", is_admin=True)
    ana = add_user(world, "ana@example.com")
    with live_server(world) as live:
        admin = new_page(browser, live)
        sign_in(admin, boss.email)
        nav(admin, "Admin")
        admin.get_by_role("link", name="Calendar defaults").click()
        row = admin.locator('tr[data-setting="past_days"]')
        row.get_by_role("textbox").fill("7")
        row.get_by_role("checkbox", name="Lock Days in the past").check()
        admin.locator('tr[data-setting="exclude_category"]').get_by_role("textbox").fill(
            "Private")
        admin.get_by_role("button", name="Save defaults and locks").click()
        expect(admin.get_by_role("status")).to_have_text("Saved.")
        shot(admin, "09-admin-defaults")
        view = service.admin_defaults(world.srv, boss, "calendar")
        assert (view["past_days"].value, view["past_days"].locked) == (7, True)
        assert (view["exclude_category"].value, view["exclude_category"].locked) == (
            "Private", False)

        user = new_page(browser, live)
        sign_in(user, ana.email)
        job_row(user, "calendar").get_by_role("link", name="Edit").click()
        past = user.get_by_label("Days in the past")
        expect(past).to_be_disabled()
        expect(past).to_have_value("7")
        expect(user.locator('[data-setting="past_days"]')).to_contain_text(
            "Set by your admin; you cannot change it.")
        assert float(user.locator('[data-setting="past_days"]').evaluate(
            "e => getComputedStyle(e).opacity")) < 1  # greyed out
        expect(user.get_by_label("Never sync items with this category")).to_have_value(
            "Private")
        expect(user.get_by_label("Days in the future")).to_be_enabled()
        shot(user, "03-settings-form-locked")
        # The API refuses the locked setting too, with the user's own session.
        csrf = user.locator('input[name="csrf_token"]').first.get_attribute("value")
        refused = user.request.patch("/api/settings/calendar",
                                     data={"values": {"past_days": 20}},
                                     headers={"X-CSRF-Token": csrf or ""})
        assert refused.status == 403 and refused.json()["setting"] == "past_days"
        # Enabling runs at once; not connected yet, the run fails and says why.
        user.get_by_label("Sync after I review each run (manual)").check()
        user.get_by_label("Days in the future").fill("90")
        user.get_by_role("button", name="Save").click()
        expect(user.get_by_role("status").filter(has_text="Saved.")).to_be_visible()
        settings = service.get_settings(world.srv, ana, "calendar")
        assert settings.values["past_days"] == 7 and settings.own == {"mode": "manual",
                                                                      "future_days": 90}
        user.goto("/")
        expect(job_row(user, "calendar")).to_contain_text("not connected", timeout=WAIT)

        # The admin's users list shows the run and its error; pausing reaches the user.
        nav(admin, "Admin")
        ana_row = admin.locator('#users tr[data-email="ana@example.com"]')
        expect(ana_row).to_contain_text("failed")
        expect(ana_row).to_contain_text("not connected")
        admin.get_by_role("button", name="Pause all sync").click()
        expect(admin.get_by_role("status").filter(has_text="All sync is paused.")).to_be_visible()
        expect(admin.get_by_role("button", name="Resume all sync")).to_be_visible()
        shot(admin, "10-admin")
        assert service.paused(world.store)
        user.reload()
        expect(user.get_by_text("An admin has paused all sync")).to_be_visible()
        # Unlocked again, the user may change it.
        admin.goto("/admin/settings/calendar")
        admin.locator('tr[data-setting="past_days"]').get_by_role("checkbox").uncheck()
        admin.get_by_role("button", name="Save defaults and locks").click()
        expect(admin.get_by_role("status")).to_have_text("Saved.")
        user.goto("/settings/calendar/edit")
        expect(user.get_by_label("Days in the past")).to_be_enabled()
