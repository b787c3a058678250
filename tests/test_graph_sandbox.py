"""The Graph sandbox on its own, over HTTPS, against the Microsoft documentation it follows.

Each test names the page whose behaviour it checks; the sandbox is only as useful as it is
faithful to them, since the connector's tests trust it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from crmsync.graphsandbox.server import GraphSandbox
from graphsandbox import GraphUser, gcontrol, graph_stats, sent_mail

ZONE = "W. Europe Standard Time"


def at(days: int, hour: int = 9) -> str:
    when = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    return (when + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S")


def event(subject: str, days: int = 2, **extra: Any) -> dict[str, Any]:
    return {"subject": subject, "start": {"dateTime": at(days), "timeZone": ZONE},
            "end": {"dateTime": at(days, 10), "timeZone": ZONE}, **extra}


def view(days: int = 60) -> str:
    start = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"/me/calendarView/delta?startDateTime={start}&endDateTime={end}"


def raw(graph: GraphSandbox, outlook: GraphUser, method: str, path: str,
        body: Any = None, **headers: str) -> httpx.Response:
    return outlook.http.request(method, path, json=body, headers=headers)


def test_calendar_view_delta_rounds(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/delta-query-events: a round of pages, each
    with an @odata.nextLink, the last with an @odata.deltaLink; the next round returns only
    what changed, a deleted event as an entry with @removed."""
    ids = [outlook("POST", "/me/events", event(f"E{n}", n + 1))["id"] for n in range(3)]
    first = outlook("GET", view(), Prefer="odata.maxpagesize=2")
    assert len(first["value"]) == 2 and "@odata.nextLink" in first
    last = outlook("GET", first["@odata.nextLink"])
    assert len(last["value"]) == 1 and "@odata.deltaLink" in last
    assert "@odata.nextLink" not in last
    quiet = outlook("GET", last["@odata.deltaLink"])
    assert quiet["value"] == []
    outlook("PATCH", f"/me/events/{ids[0]}", {"subject": "E0 renamed"})
    outlook("DELETE", f"/me/events/{ids[1]}")
    changes = outlook("GET", quiet["@odata.deltaLink"])["value"]
    assert [(c["id"], c.get("subject"), c.get("@removed")) for c in changes] == [
        (ids[0], "E0 renamed", None), (ids[1], None, {"reason": "deleted"})]


def test_calendar_view_delta_lists_instances_not_masters(graph: GraphSandbox,
                                                         outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/event-delta: a calendarView holds single
    instances and the occurrences and exceptions of series, with seriesMasterId."""
    master = outlook("POST", "/me/events", event("Series", recurrence={
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "numbered", "numberOfOccurrences": 3, "startDate": at(2)[:10]}}))
    assert master["type"] == "seriesMaster"
    listed = outlook("GET", view())["value"]
    assert {e["type"] for e in listed} == {"occurrence"}
    assert {e["seriesMasterId"] for e in listed} == {master["id"]}
    assert len(listed) == 3


def test_an_unknown_delta_token_is_410_gone(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/delta-query-overview: a token the service no
    longer knows answers 410 Gone; the client starts over with a full round."""
    link = outlook("GET", view())["@odata.deltaLink"]
    gcontrol(graph, "expire-deltas")
    answer = raw(graph, outlook, "GET", link)
    assert answer.status_code == 410
    assert answer.json()["error"]["code"] == "SyncStateNotFound"


def test_times_follow_prefer_outlook_timezone(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/user-list-events#support-various-time-zones:
    start and end come in the zone of Prefer: outlook.timezone, UTC without it; the zone the
    event was made in stays in originalStartTimeZone."""
    made = outlook("POST", "/me/events", event("Zoned"))
    utc = outlook("GET", f"/me/events/{made['id']}")
    assert utc["start"]["timeZone"] == "UTC" and utc["originalStartTimeZone"] == ZONE
    pacific = outlook("GET", f"/me/events/{made['id']}",
                      Prefer='outlook.timezone="Pacific Standard Time"')
    assert pacific["start"]["timeZone"] == "Pacific Standard Time"
    assert pacific["start"]["dateTime"] != utc["start"]["dateTime"]


def test_text_bodies_are_stored_as_html(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/resources/itembody: Outlook keeps bodies
    as HTML; Prefer: outlook.body-content-type="text" asks for text."""
    made = outlook("POST", "/me/events", event("Body", body={"contentType": "text",
                                                             "content": "a < b\nline 2"}))
    assert made["body"]["contentType"] == "html" and "a &lt; b<br>" in made["body"]["content"]
    text = outlook("GET", f"/me/events/{made['id']}",
                   Prefer='outlook.body-content-type="text"')
    assert text["body"] == {"contentType": "text", "content": "a < b\nline 2"}


def test_if_match_on_a_stale_etag_is_412(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/event-update: an update carrying the
    @odata.etag it read (If-Match) fails with 412 once the item changed since."""
    made = outlook("POST", "/me/events", event("Etag"))
    outlook("PATCH", f"/me/events/{made['id']}", {"subject": "Changed"})
    stale = raw(graph, outlook, "PATCH", f"/me/events/{made['id']}", {"subject": "Late"},
                **{"If-Match": made["@odata.etag"]})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "ErrorIrresolvableConflict"
    current = outlook("GET", f"/me/events/{made['id']}")
    fresh = raw(graph, outlook, "PATCH", f"/me/events/{made['id']}", {"subject": "On time"},
                **{"If-Match": current["@odata.etag"]})
    assert fresh.status_code == 200 and fresh.json()["@odata.etag"] != current["@odata.etag"]


def test_occurrences_become_exceptions_or_are_cancelled(graph: GraphSandbox,
                                                        outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/event-list-instances: a patched
    occurrence is an exception (with originalStart); a deleted one is no longer listed."""
    master = outlook("POST", "/me/events", event("Weekly", recurrence={
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [
            (datetime.now(UTC) + timedelta(days=2)).strftime("%A").lower()]},
        "range": {"type": "numbered", "numberOfOccurrences": 3, "startDate": at(2)[:10]}}))
    span = f"startDateTime={at(0)}Z&endDateTime={at(30)}Z"
    first = outlook("GET", f"/me/events/{master['id']}/instances?{span}")["value"]
    assert [i["type"] for i in first] == ["occurrence"] * 3
    outlook("PATCH", f"/me/events/{first[0]['id']}", {"subject": "Moved"})
    outlook("DELETE", f"/me/events/{first[1]['id']}")
    after = outlook("GET", f"/me/events/{master['id']}/instances?{span}")["value"]
    assert [(i["type"], i["subject"]) for i in after] == [("exception", "Moved"),
                                                          ("occurrence", "Weekly")]
    assert after[0]["originalStart"] == first[0]["originalStart"]


def test_a_retried_create_with_a_transaction_id_is_one_event(graph: GraphSandbox,
                                                             outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/resources/event (transactionId): the
    server avoids redundant POSTs when a client retries the same create."""
    one = outlook("POST", "/me/events", event("Once", transactionId="tx-1"))
    two = outlook("POST", "/me/events", event("Once", transactionId="tx-1"))
    assert one["id"] == two["id"]


def test_meetings_send_mail_as_exchange_does(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/user-post-events (invitations on create),
    .../event-update (updates to attendees), .../event-delete (cancellations from the
    organizer); changes to categories stay in the mailbox."""
    people = [{"emailAddress": {"address": "x@example.com"}, "type": "required"}]
    lone = outlook("POST", "/me/events", event("Alone"))
    outlook("PATCH", f"/me/events/{lone['id']}", {"subject": "Still alone"})
    assert sent_mail(graph) == []
    meeting = outlook("POST", "/me/events", event("Meeting", attendees=people))
    outlook("PATCH", f"/me/events/{meeting['id']}", {"categories": ["Red"]})
    outlook("PATCH", f"/me/events/{meeting['id']}", {"subject": "Meeting (new time)"})
    outlook("DELETE", f"/me/events/{meeting['id']}")
    assert [(m["kind"], m["recipients"]) for m in sent_mail(graph)] == [
        ("invitation", ["x@example.com"]), ("update", ["x@example.com"]),
        ("cancellation", ["x@example.com"])]


def test_contacts_and_tasks_delta(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/api/contact-delta and
    https://learn.microsoft.com/en-us/graph/api/todotask-delta: the same round semantics."""
    link = outlook("GET", "/me/contacts/delta")["@odata.deltaLink"]
    contact = outlook("POST", "/me/contacts", {"givenName": "Ana", "surname": "Lima"})
    assert [c["id"] for c in outlook("GET", link)["value"]] == [contact["id"]]
    lists = outlook("GET", "/me/todo/lists")["value"]
    tasks = f"/me/todo/lists/{lists[0]['id']}/tasks"
    link = outlook("GET", f"{tasks}/delta")["@odata.deltaLink"]
    task = outlook("POST", tasks, {"title": "Quote"})
    outlook("DELETE", f"{tasks}/{task['id']}")
    assert outlook("GET", link)["value"] == []  # made and gone within the round
    assert raw(graph, outlook, "POST", tasks, {}).status_code == 400


def test_throttling_and_error_bodies(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/throttling: 429 with Retry-After;
    https://learn.microsoft.com/en-us/graph/errors: {"error": {"code", "message",
    "innerError"}}."""
    gcontrol(graph, "faults", path_regex="/contacts", status=429, times=1,
             headers={"Retry-After": "7"})
    throttled = raw(graph, outlook, "GET", "/me/contacts/delta")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    error = throttled.json()["error"]
    assert error["code"] == "TooManyRequests" and "request-id" in error["innerError"]
    missing = raw(graph, outlook, "GET", "/me/events/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ErrorItemNotFound"
    anonymous = httpx.get(graph.url + "/v1.0/me/events/x", verify=graph.ssl_context())
    assert anonymous.status_code == 401


def test_json_batching(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/graph/json-batching: up to 20 requests, each
    answered with its id and status (a throttled one with its own 429)."""
    gcontrol(graph, "faults", path_regex="/contacts$", method="POST", status=429, times=1,
             headers={"Retry-After": "1"})
    requests = [{"id": str(n), "method": "POST", "url": "/me/contacts",
                 "headers": {"Content-Type": "application/json"},
                 "body": {"surname": f"B{n}"}} for n in range(3)]
    answer = outlook("POST", "/$batch", {"requests": requests})
    assert [(r["id"], r["status"]) for r in answer["responses"]] == [
        ("0", 429), ("1", 201), ("2", 201)]
    assert answer["responses"][0]["headers"]["Retry-After"] == "1"
    too_many = raw(graph, outlook, "POST", "/$batch", {"requests": [
        {"id": str(n), "method": "GET", "url": "/me/contacts/delta"} for n in range(21)]})
    assert too_many.status_code == 400
    assert graph_stats(graph)["batches"] == 1


def test_me_needs_a_delegated_token(graph: GraphSandbox, outlook: GraphUser) -> None:
    """https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow:
    an application token acts for no user; /users/{id} names the mailbox."""
    token = httpx.post(graph.authority + "/oauth2/v2.0/token", verify=graph.ssl_context(), data={
        "grant_type": "client_credentials", "client_id": graph.client_id,
        "client_secret": graph.client_secret,
        "scope": "https://graph.microsoft.com/.default"}).json()["access_token"]
    with httpx.Client(base_url=graph.url + "/v1.0", verify=graph.ssl_context(),
                      headers={"Authorization": f"Bearer {token}"}) as app:
        assert app.get("/me/calendars").status_code == 400
        assert app.get(f"/users/{graph.user}/calendars").status_code == 200
        assert app.get("/users/nobody@contoso.example/calendars").status_code == 404
