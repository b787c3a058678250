"""One user can never read or change another's settings, connections, plans or runs.

Every route of the JSON API, and every page with an id in its path, is taken from the app
itself and called by user B with user A's ids: an API route added later without an entry
here fails the test instead of escaping it. Then schemathesis runs against the app's
OpenAPI schema and finds no server error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from crmsync.model import Event, moment
from crmsync.server import service
from crmsync.server.web import COOKIE
from scenario import Scenario
from serverworld import add_user, make_world, run_queued, sign_in, web_app
from test_server_web import api_routes, page_routes

START = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)
SECRET_LABEL = "Board meeting of A only"

# The body B sends on each route (None: no body). Every API route must be listed.
BODIES: dict[tuple[str, str], Any] = {
    ("GET", "/api/session"): None,
    ("DELETE", "/api/session"): None,
    ("GET", "/api/jobs"): None,
    ("POST", "/api/jobs/{kind}/run"): None,
    ("GET", "/api/settings/{kind}"): None,
    ("PATCH", "/api/settings/{kind}"): {"values": {"future_days": 7}},
    ("GET", "/api/connections"): None,
    ("PUT", "/api/connections/groupware"): {"calendar_url": "ftp://nowhere/"},
    ("POST", "/api/connections/groupware/discover"): {"url": "ftp://nowhere/"},
    ("POST", "/api/connections/crm/authorize"): None,
    ("GET", "/api/connections/crm/callback"): None,
    ("DELETE", "/api/connections/{name}"): None,
    ("GET", "/api/plans"): None,
    ("GET", "/api/plans/{plan_id}"): None,
    ("POST", "/api/plans/{plan_id}/choices"): {"keys": ["x"], "choice": "exclude"},
    ("POST", "/api/plans/{plan_id}/confirm"): None,
    ("POST", "/api/plans/{plan_id}/discard"): None,
    ("GET", "/api/ignores"): None,
    ("POST", "/api/ignores/remove"): "A's ignore",
    ("GET", "/api/runs"): None,
    ("GET", "/api/runs/{run_id}"): None,
    ("GET", "/api/admin/settings/{kind}"): None,
    ("PUT", "/api/admin/settings/{kind}/{name}"): {"value": 1, "locked": True},
    ("DELETE", "/api/admin/settings/{kind}/{name}"): None,
    ("GET", "/api/admin/users"): None,
    ("POST", "/api/admin/users"): {"email": "eve@example.com", "password": "x" * 12},
    ("PATCH", "/api/admin/users/{user_id}"): {"is_admin": True},
    ("GET", "/api/admin/pause"): None,
    ("PUT", "/api/admin/pause"): {"paused": True},
}
# Routes answering the caller's own things: they succeed, showing nothing of A's.
OWN = {("GET", "/api/session"), ("GET", "/api/jobs"), ("POST", "/api/jobs/{kind}/run"),
       ("GET", "/api/settings/{kind}"), ("PATCH", "/api/settings/{kind}"),
       ("GET", "/api/connections"), ("POST", "/api/connections/crm/authorize"),
       ("GET", "/api/plans"), ("GET", "/api/ignores"),
       ("GET", "/api/runs")}


def test_another_users_ids_are_never_found(scn: Scenario, tmp_path: Path):
    world = make_world(tmp_path, scn.sandbox)
    a = add_user(world, "a@example.com", {"calendar": scn.collections["calendar"]},
                 scn.sandbox)
    b = add_user(world, "b@example.com")
    scn.put(Event(uid="a@t", summary=SECRET_LABEL, start=moment(START),
                  end=moment(START + timedelta(hours=1))))
    service.update_settings(world.srv, a, "calendar", {"mode": "manual", "future_days": 90})
    assert [o for _, _, o in run_queued(world)] == ["review"]
    [plan] = service.list_plans(world.srv, a)
    [run] = service.list_runs(world.srv, a)
    world.store.ignore(a.profile_id, "calendar", "crm", "00UA0000000001", "forever", {})
    ids = {"plan_id": plan.id, "run_id": run["id"], "user_id": a.id, "kind": "calendar",
           "name": "groupware"}
    markers = [a.email, scn.collections["calendar"], SECRET_LABEL, "00UA0000000001"]
    app = web_app(world)
    routes = api_routes(app)
    missing = [r for r in routes if r not in BODIES and r != ("POST", "/api/session")]
    assert not missing, f"add these routes to the security test: {missing}"
    with TestClient(app, base_url="https://testserver") as client:
        sign_in(client, b.email)
        # Signing out last: it ends B's session.
        for method, path in sorted(routes, key=lambda r: r == ("DELETE", "/api/session")):
            if (method, path) == ("POST", "/api/session"):
                continue
            url = re.sub(r"{(\w+)}", lambda m: str(ids[m[1]]), path)
            body = BODIES[(method, path)]
            if body == "A's ignore":
                body = {"kind": "calendar", "side": "crm", "item_id": "00UA0000000001"}
            params = None
            if path.endswith("/callback"):
                params = {"state": "1.2.3", "code": "c"}
            answer = client.request(method, url, json=body, params=params,
                                    follow_redirects=False)
            where = f"{method} {path}: {answer.status_code} {answer.text[:200]}"
            if (method, path) in OWN or path == "/api/session":
                assert answer.status_code < 300, where
            else:
                assert answer.status_code in (400, 403, 404), where
            for marker in markers:
                assert marker not in answer.text, where
        # The pages with an id in their path, the same way (forms carry B's CSRF token).
        sign_in(client, b.email)
        pages = [(m, p) for m, p in page_routes(app)
                 if any(f"{{{key}}}" in p for key in ("plan_id", "run_id", "user_id"))]
        assert len(pages) >= 7, pages
        for method, path in pages:
            url = re.sub(r"{(\w+)}", lambda m: str(ids[m[1]]), path)
            answer = client.request(method, url, data={"csrf_token": client.headers[
                "X-CSRF-Token"], "choice": "exclude", "keys": "x"}
                if method == "POST" else None, follow_redirects=False)
            where = f"page {method} {path}: {answer.status_code} {answer.text[:200]}"
            assert answer.status_code in (403, 404), where
            for marker in markers:
                assert marker not in answer.text, where
    # A's things are as they were.
    assert service.get_plan(world.srv, a, plan.id).status == "review"
    assert len(service.connections(world.srv, a)) == 2
    assert len(service.list_ignores(world.srv, a)) == 1
    assert service.get_settings(world.srv, a, "calendar").own == {"mode": "manual",
                                                                   "future_days": 90}
    assert not a.is_admin and not service.paused(world.store)
    assert service.admin_defaults(world.srv, add_user(world, "root@example.com",
                                                      is_admin=True), "calendar") == {}


# --- schemathesis ---------------------------------------------------------------------------


@pytest.fixture
def signed_in_app(tmp_path: Path) -> Iterator[dict[str, Any]]:
    world = make_world(tmp_path)
    add_user(world, "root@example.com", is_admin=True)
    add_user(world, "ana@example.com")
    app = web_app(world)
    with TestClient(app, base_url="https://testserver") as client:
        csrf = sign_in(client, "root@example.com")
        yield {"app": app, "headers": {"X-CSRF-Token": csrf},
               "cookies": {COOKIE: client.cookies[COOKIE]}}


def test_no_server_errors(signed_in_app: dict[str, Any]):
    """Every operation of /openapi.json, a bounded number of generated requests each."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", signed_in_app["app"])
    # Connecting (or discovering) a groupware account reaches out to the URLs given
    # (tested on their own);
    # signing out would end the session the other calls use.
    schema = (schema.exclude(path_regex="^/api/connections/groupware")
              .exclude(path="/api/session", method="DELETE"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            response = case.call(headers=signed_in_app["headers"],
                                 cookies=signed_in_app["cookies"])
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        call()
    # The calls were signed in: most operations answered with success at least once.
    succeeded = [label for label, codes in statuses.items() if any(c < 300 for c in codes)]
    assert len(statuses) == len(operations) and len(succeeded) >= 10, statuses
