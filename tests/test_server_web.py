"""The web app: sign-in, session cookies, CSRF, rate limits, locks through the API, pages,
and secrets that never come back (responses, pages, logs)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from crmsync.model import Event, moment
from crmsync.server import accounts
from crmsync.server.web import COOKIE
from scenario import Scenario, sf_time
from serverworld import (
    PASSWORD,
    REDIRECT,
    World,
    add_user,
    authorize,
    make_world,
    run_queued,
    sign_in,
    web_app,
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def _flat(routes) -> list[APIRoute]:
    # FastAPI keeps an included router as one entry holding the router's own routes.
    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out += _flat(route.original_router.routes)
    return out


def api_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the JSON API, from the app's routes themselves."""
    return sorted((m, r.path) for r in _flat(app.routes) if r.path.startswith("/api/")
                  for m in r.methods)


def page_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the pages (the routes outside /api/)."""
    return sorted((m, r.path) for r in _flat(app.routes) if not r.path.startswith("/api/")
                  for m in r.methods if m != "HEAD")


def concrete(path: str) -> str:
    values = {"kind": "calendar", "plan_id": "1", "run_id": "1", "user_id": "1",
              "name": "groupware"}
    return re.sub(r"{(\w+)}", lambda m: values[m[1]], path)


def test_sign_in_sets_a_secure_http_only_cookie_and_sign_out_ends_it(world: World):
    add_user(world, "ana@example.com")
    with TestClient(web_app(world), base_url="https://testserver") as client:
        answer = client.post("/api/session", json={"email": "Ana@Example.com",
                                                   "password": PASSWORD})
        assert answer.status_code == 200
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=lax" in cookie
        token = client.cookies[COOKIE]
        assert answer.json()["user"]["email"] == "ana@example.com"
        assert token not in answer.text
        csrf = answer.json()["csrf_token"]
        assert client.get("/api/session").json()["csrf_token"] == csrf
        assert client.delete("/api/session", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert accounts.session_of(world.store, token) is None
        assert client.get("/api/jobs").status_code == 401


def test_anonymous_calls_get_401_json_on_every_route(world: World):
    app = web_app(world)
    with TestClient(app, base_url="https://testserver") as client:
        routes = api_routes(app)
        assert len(routes) > 20
        for method, path in routes:
            if (method, path) == ("POST", "/api/session"):
                continue
            answer = client.request(method, concrete(path), json={})
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["detail"] == "sign in first"
        assert client.get("/").status_code == 200  # redirected to the sign-in page
        assert "Sign in" in client.get("/").text


def test_csrf_missing_or_wrong_is_refused_on_every_unsafe_route(world: World):
    add_user(world, "ana@example.com", is_admin=True)
    app = web_app(world)
    with TestClient(app, base_url="https://testserver") as client:
        csrf = sign_in(client, "ana@example.com")
        del client.headers["X-CSRF-Token"]
        unsafe = [(m, p) for m, p in api_routes(app)
                  if m not in ("GET", "HEAD") and (m, p) != ("POST", "/api/session")]
        assert len(unsafe) > 10
        for method, path in unsafe:
            for headers in ({}, {"X-CSRF-Token": csrf[:-1] + "x"}):
                answer = client.request(method, concrete(path), json={}, headers=headers)
                assert answer.status_code == 403, (method, path, answer.text)
                assert "X-CSRF-Token" in answer.json()["detail"]
        # The page forms: the field is required too.
        assert client.post("/jobs/calendar/run", data={}).status_code == 403
        assert client.post("/jobs/calendar/run", data={"csrf_token": "nope"}).status_code == 403
        assert world.queue.state(1, "calendar") is None
        answer = client.post("/jobs/calendar/run", data={"csrf_token": csrf},
                             follow_redirects=False)
        assert answer.status_code == 303 and world.queue.state(1, "calendar") == "queued"


def test_failed_sign_ins_are_limited_with_retry_after(world: World):
    add_user(world, "ana@example.com")
    with TestClient(web_app(world), base_url="https://testserver") as client:
        for _ in range(accounts.MAX_FAILURES_PER_EMAIL):
            answer = client.post("/api/session", json={"email": "ana@example.com",
                                                       "password": "wrong password"})
            assert answer.status_code == 401
        answer = client.post("/api/session", json={"email": "ana@example.com",
                                                   "password": PASSWORD})
        assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
        page = client.post("/signin", data={"email": "ana@example.com", "password": PASSWORD,
                                            "csrf_token": signin_token(client)})
        assert page.status_code == 429 and "too many" in page.text


def test_settings_through_the_api_with_locks(world: World):
    admin = add_user(world, "boss@example.com", is_admin=True)
    add_user(world, "ana@example.com")
    app = web_app(world)
    with TestClient(app, base_url="https://testserver") as boss, \
            TestClient(app, base_url="https://testserver") as ana:
        sign_in(boss, admin.email)
        sign_in(ana, "ana@example.com")
        assert ana.put("/api/admin/settings/calendar/past_days",
                       json={"value": 3, "locked": True}).status_code == 403
        answer = boss.put("/api/admin/settings/calendar/past_days",
                          json={"value": 3, "locked": True})
        assert answer.status_code == 200 and answer.json()["past_days"] == {"value": 3,
                                                                           "locked": True}
        assert boss.put("/api/admin/settings/calendar/past_days",
                        json={"value": 99, "locked": True}).status_code == 400
        view = ana.get("/api/settings/calendar").json()
        assert view["values"]["past_days"] == 3 and view["locked"] == ["past_days"]
        assert {f["name"] for f in view["fields"]} == set(view["values"])
        refused = ana.patch("/api/settings/calendar", json={"values": {"past_days": 4}})
        assert refused.status_code == 403 and refused.json()["setting"] == "past_days"
        assert ana.get("/api/settings/calendar").json()["values"]["past_days"] == 3
        bad = ana.patch("/api/settings/calendar", json={"values": {"auto_every": 5}})
        assert bad.status_code == 400 and "auto_every" in bad.json()["detail"]
        ok = ana.patch("/api/settings/calendar", json={"values": {"mode": "auto"}})
        assert ok.status_code == 200 and ok.json()["values"]["mode"] == "auto"
        jobs = {j["kind"]: j for j in ana.get("/api/jobs").json()}
        assert jobs["calendar"]["enabled"] and jobs["calendar"]["state"] == "queued"
        assert ana.post("/api/jobs/contacts/run").json() == {"state": "queued"}
        # Unlocked: the user may change it again.
        assert boss.put("/api/admin/settings/calendar/past_days",
                        json={"value": 3, "locked": False}).status_code == 200
        assert ana.patch("/api/settings/calendar",
                         json={"values": {"past_days": 4}}).status_code == 200
        users = boss.get("/api/admin/users").json()
        assert [u["email"] for u in users] == ["ana@example.com", "boss@example.com"]
        assert boss.put("/api/admin/pause", json={"paused": True}).json() == {"paused": True}
        assert boss.get("/api/admin/pause").json() == {"paused": True}
        made = boss.post("/api/admin/users", json={"email": "Cy@example.com",
                                                   "password": PASSWORD})
        assert made.status_code == 201 and made.json()["email"] == "cy@example.com"
        assert boss.patch(f"/api/admin/users/{made.json()['id']}",
                          json={"is_admin": True}).json()["is_admin"]


def test_my_settings_page_shows_the_sync_jobs(world: World):
    add_user(world, "ana@example.com")
    with TestClient(web_app(world), base_url="https://testserver") as client:
        # Without the sign-in form's own token (another site's form): refused.
        forged = client.post("/signin", data={"email": "ana@example.com",
                                              "password": PASSWORD, "csrf_token": "x"})
        assert forged.status_code == 403 and COOKIE not in client.cookies
        wrong = client.post("/signin", data={"email": "ana@example.com", "password": "nope",
                                             "csrf_token": signin_token(client)})
        assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
        signed = client.post("/signin", data={"email": "ana@example.com",
                                              "password": PASSWORD,
                                              "csrf_token": signin_token(client)},
                             follow_redirects=False)
        assert signed.status_code == 303 and "Secure" in signed.headers["set-cookie"]
        page = client.get("/")
        assert page.status_code == 200 and "Sync Jobs" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert client.get("/api/jobs").headers["x-content-type-options"] == "nosniff"
        assert page.text.count("Never run") == 3 and page.text.count("Sync now") == 3


def signin_token(client: TestClient) -> str:
    """The sign-in form's CSRF token (its page sets the matching cookie)."""
    page = client.get("/signin")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]


START = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)


def test_secrets_never_leave_the_server(scn: Scenario, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture):
    """Connect through the API (a DAV password, Salesforce OAuth), sync, review: no page,
    API answer or log line carries a secret."""
    caplog.set_level(logging.DEBUG)
    world = make_world(tmp_path, scn.sandbox)
    add_user(world, "ana@example.com")
    app = web_app(world, public_url="https://crmsync.test")
    password = "dav-pass-" + tmp_path.name[-6:] + "Zq9"
    with TestClient(app, base_url="https://testserver") as client:
        csrf = sign_in(client, "ana@example.com")
        found = client.post("/api/connections/groupware/discover", json={
            "url": scn.radicale.url + "ana/", "username": "ana", "password": password})
        assert found.status_code == 200, found.text
        assert scn.collections["calendar"] in {c["url"] for c in found.json()["calendars"]}
        assert scn.collections["contacts"] in {c["url"] for c in found.json()["addressbooks"]}
        answer = client.put("/api/connections/groupware", json={
            "calendar_url": scn.collections["calendar"], "username": "ana",
            "password": password})
        assert answer.status_code == 200, answer.text
        bad = client.put("/api/connections/groupware", json={
            "calendar_url": scn.radicale.url, "password": password})
        assert bad.status_code == 400 and "not a calendar" in bad.json()["detail"]
        start = client.post("/api/connections/crm/authorize").json()["authorize_url"]
        query = authorize(scn.sandbox, start)
        assert urlsplit(REDIRECT).path == "/api/connections/crm/callback"
        back = client.get("/api/connections/crm/callback", params=query,
                          follow_redirects=False)
        assert back.status_code == 303, back.text
        again = client.get("/api/connections/crm/callback", params=query | {"state": "x.y.z"},
                           follow_redirects=False)
        assert again.status_code == 400
        scn.put(Event(uid="gw@t", summary="Secretless", start=moment(START),
                      end=moment(START + timedelta(hours=1))))
        scn.crm_insert("Event", Subject="From CRM", StartDateTime=sf_time(START),
                       EndDateTime=sf_time(START + timedelta(hours=1)))
        client.patch("/api/settings/calendar", json={"values": {"mode": "manual"}})
        assert [o for _, _, o in run_queued(world)] == ["review"]
        [plan] = client.get("/api/plans").json()
        client.post(f"/api/plans/{plan['id']}/confirm")
        assert [o for _, _, o in run_queued(world)] == ["applied"]
        creds = world.srv.vault.get(1, "crm")
        assert creds is not None and creds.refresh_token and creds.client_secret
        secrets = [password, creds.refresh_token, creds.client_secret, world.key,
                   client.cookies[COOKIE]]
        bodies = [client.get(path).text for path in (
            "/api/connections", "/api/jobs", "/api/session", "/api/plans",
            f"/api/plans/{plan['id']}", "/api/runs", "/api/settings/calendar", "/",
            "/openapi.json")]
        runs = client.get("/api/runs").json()
        bodies += [client.get(f"/api/runs/{r['id']}").text for r in runs]
        assert any("Secretless" in b for b in bodies)  # the scan reads real content
        conns = client.get("/api/connections").json()
        assert {c["name"] for c in conns} == {"groupware", "crm"}
        assert conns[0]["username"] == "ana"
        for secret in secrets:
            for body in bodies:
                assert secret not in body
            assert secret not in caplog.text
        assert csrf in bodies[2]
