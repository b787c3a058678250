"""The Salesforce sandbox over real HTTPS, checked against the shapes Salesforce documents.

Every test talks to a running sandbox (``sandbox``/``sf_client`` from tests/sfsandbox.py)
through httpx with TLS verified against the sandbox's CA.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from crmsync.sandbox.db import id18
from crmsync.sandbox.server import Sandbox

from sfsandbox import API, access_token, control

TOKEN = "/services/oauth2/token"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
LIMIT = re.compile(r"^api-usage=(\d+)/(\d+)$")


def _unique(prefix: str = "T") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _token(sandbox: Sandbox, **form: str) -> httpx.Response:
    return httpx.post(sandbox.url + TOKEN, data=form, verify=sandbox.ssl_context())


def _query(client: httpx.Client, soql: str, resource: str = "query") -> httpx.Response:
    return client.get(f"{API}/{resource}", params={"q": soql})


def _create(client: httpx.Client, sobject: str, **fields: object) -> str:
    response = client.post(f"{API}/sobjects/{sobject}", json=fields)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _event(**extra: object) -> dict[str, object]:
    return {"Subject": _unique("Meeting"), "StartDateTime": "2026-12-01T09:00:00Z",
            "EndDateTime": "2026-12-01T10:00:00Z"} | extra


def _collection(records: list[dict], all_or_none: bool = False) -> dict:
    return {"allOrNone": all_or_none, "records": records}


# --- OAuth -------------------------------------------------------------------------------
# https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm


def test_refresh_token_grant_answers_the_documented_token_response(sandbox: Sandbox) -> None:
    response = _token(sandbox, grant_type="refresh_token", refresh_token=sandbox.refresh_token,
                      client_id=sandbox.client_id, client_secret=sandbox.client_secret)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "signature", "scope", "instance_url", "id",
                         "token_type", "issued_at"}
    assert body["token_type"] == "Bearer" and body["instance_url"] == sandbox.url
    assert body["id"].startswith(sandbox.url + "/id/00D")
    # signature = Base64(HMAC-SHA256(client secret, id + issued_at)), as documented
    expected = base64.b64encode(hmac.new(sandbox.client_secret.encode(),
                                         (body["id"] + body["issued_at"]).encode(),
                                         hashlib.sha256).digest()).decode()
    assert body["signature"] == expected
    assert "Sforce-Limit-Info" not in response.headers  # token calls are not API calls


@pytest.mark.parametrize(("form", "error"), [
    ({"grant_type": "refresh_token", "refresh_token": "nope"}, "invalid_grant"),
    ({"grant_type": "password"}, "unsupported_grant_type"),
    ({"grant_type": "refresh_token", "client_id": "someone-else"}, "invalid_client_id"),
])
def test_token_errors_are_400_with_error_and_description(sandbox: Sandbox, form: dict,
                                                         error: str) -> None:
    form = {"client_id": sandbox.client_id, "refresh_token": sandbox.refresh_token} | form
    response = _token(sandbox, **form)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]


def test_authorization_code_flow(sandbox: Sandbox) -> None:
    # https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm
    redirect = "http://localhost:8765/callback"
    with httpx.Client(verify=sandbox.ssl_context()) as client:
        response = client.get(sandbox.url + "/services/oauth2/authorize", params={
            "response_type": "code", "client_id": sandbox.client_id,
            "redirect_uri": redirect, "state": "xyz"})
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    params = parse_qs(location.query)
    assert params["state"] == ["xyz"]
    form = {"grant_type": "authorization_code", "code": params["code"][0],
            "client_id": sandbox.client_id, "redirect_uri": redirect}
    wrong_secret = _token(sandbox, **form, client_secret="wrong")
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (400, "invalid_client")
    granted = _token(sandbox, **form, client_secret=sandbox.client_secret)
    assert granted.status_code == 200
    assert granted.json()["refresh_token"] and granted.json()["access_token"]
    again = _token(sandbox, **form, client_secret=sandbox.client_secret)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    refreshed = _token(sandbox, grant_type="refresh_token", client_id=sandbox.client_id,
                       refresh_token=granted.json()["refresh_token"])
    assert refreshed.status_code == 200


def _assertion(sandbox: Sandbox, key: object = None, **claims: object) -> str:
    # https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm
    payload = {"iss": sandbox.client_id, "sub": sandbox.username, "aud": sandbox.login_url,
               "exp": int(time.time()) + 180} | claims
    if key is None:
        key = serialization.load_pem_private_key(
            Path(sandbox.jwt_private_key_path).read_bytes(), password=None)
    return jwt.encode(payload, key, algorithm="RS256")  # type: ignore[arg-type]


def test_jwt_bearer_grant_gives_an_access_token_and_no_refresh_token(
        sandbox: Sandbox) -> None:
    response = _token(sandbox, grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer",
                      assertion=_assertion(sandbox))
    assert response.status_code == 200, response.text
    assert "refresh_token" not in response.json()
    data = httpx.get(sandbox.url + f"{API}/sobjects/Contact/describe",
                     verify=sandbox.ssl_context(),
                     headers={"Authorization": "Bearer " + response.json()["access_token"]})
    assert data.status_code == 200


@pytest.mark.parametrize(("claims", "error", "description"), [
    ({"iss": "another-app"}, "invalid_client_id", "client identifier invalid"),
    ({"aud": "https://evil.example.com"}, "invalid_grant", "audience is invalid"),
    ({"sub": "someone@else.com"}, "invalid_grant", "user hasn't approved this consumer"),
    ({"exp": int(time.time()) - 60}, "invalid_grant", "expired authorization code"),
    ({"key": "other"}, "invalid_grant", "invalid assertion"),
])
def test_jwt_bearer_checks_signature_iss_sub_aud_exp(sandbox: Sandbox, claims: dict,
                                                     error: str, description: str) -> None:
    key = None
    if claims.pop("key", None):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = _token(sandbox, grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer",
                      assertion=_assertion(sandbox, key, **claims))
    assert response.status_code == 400
    assert response.json() == {"error": error, "error_description": description}


def test_a_bad_or_expired_session_is_401_invalid_session_id(sandbox: Sandbox,
                                                           sf_client: httpx.Client) -> None:
    expected = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    bad = httpx.get(sandbox.url + f"{API}/sobjects/Event/describe",
                    verify=sandbox.ssl_context(), headers={"Authorization": "Bearer nope"})
    assert (bad.status_code, bad.json()) == (401, expected)
    assert sf_client.get(f"{API}/limits").status_code == 200
    control(sandbox, "expire-tokens")
    expired = sf_client.get(f"{API}/limits")
    assert (expired.status_code, expired.json()) == (401, expected)
    # Access tokens also lapse after the session timeout (2 hours of the sandbox's clock).
    sf_client.headers["Authorization"] = "Bearer " + access_token(sandbox)
    assert sf_client.get(f"{API}/limits").status_code == 200
    control(sandbox, "clock", offset_days=0.1)
    assert sf_client.get(f"{API}/limits").status_code == 401


# --- describe and records ------------------------------------------------------------------
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_sobject_describe.htm


def test_describe_lists_fields_with_types_lengths_and_picklists(
        sf_client: httpx.Client) -> None:
    contact = sf_client.get(f"{API}/sobjects/Contact/describe").json()
    assert contact["name"] == "Contact" and contact["keyPrefix"] == "003"
    fields = {f["name"]: f for f in contact["fields"]}
    assert (fields["LastName"]["type"], fields["LastName"]["length"],
            fields["LastName"]["nillable"]) == ("string", 80, False)
    assert fields["Email"]["length"] == 80 and fields["MailingPostalCode"]["length"] == 20
    event = {f["name"]: f for f in sf_client.get(f"{API}/sobjects/Event/describe").json()
             ["fields"]}
    assert [p["value"] for p in event["ShowAs"]["picklistValues"]] == \
        ["Busy", "OutOfOffice", "Free"]
    assert set(event["ShowAs"]["picklistValues"][0]) >= {"value", "label", "active",
                                                         "defaultValue"}
    assert event["Description"]["length"] == 32000 and event["Subject"]["length"] == 255
    task = {f["name"]: f for f in sf_client.get(f"{API}/sobjects/Task/describe").json()
            ["fields"]}
    assert task["IsClosed"]["createable"] is False and task["IsClosed"]["updateable"] is False
    missing = sf_client.get(f"{API}/sobjects/Opportunity/describe")
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"


def test_crud_round_trip_with_ids_and_system_modstamp(sf_client: httpx.Client) -> None:
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_sobject_create.htm
    created = sf_client.post(f"{API}/sobjects/Contact",
                             json={"FirstName": "Ada", "LastName": "Lovelace",
                                   "Email": "ada@example.com"})
    assert created.status_code == 201
    assert created.json() == {"id": created.json()["id"], "success": True, "errors": []}
    contact_id = created.json()["id"]
    assert len(contact_id) == 18 and contact_id.startswith("003")
    assert id18(contact_id[:15]) == contact_id
    record = sf_client.get(f"{API}/sobjects/Contact/{contact_id}").json()
    assert record["attributes"] == {"type": "Contact",
                                    "url": f"{API}/sobjects/Contact/{contact_id}"}
    assert record["Name"] == "Ada Lovelace" and record["IsDeleted"] is False
    assert STAMP.match(record["SystemModstamp"]) and record["OwnerId"].startswith("005")
    # a 15-character Id names the same record
    assert sf_client.get(f"{API}/sobjects/Contact/{contact_id[:15]}").json()["Id"] == contact_id

    patched = sf_client.patch(f"{API}/sobjects/Contact/{contact_id}", json={"Title": "Countess"})
    assert (patched.status_code, patched.content) == (204, b"")
    after = sf_client.get(f"{API}/sobjects/Contact/{contact_id}",
                          params={"fields": "Title,SystemModstamp"}).json()
    assert after["Title"] == "Countess" and set(after) == {"attributes", "Title",
                                                          "SystemModstamp"}
    assert after["SystemModstamp"] > record["SystemModstamp"]

    assert sf_client.delete(f"{API}/sobjects/Contact/{contact_id}").status_code == 204
    gone = sf_client.get(f"{API}/sobjects/Contact/{contact_id}")
    assert gone.status_code == 404 and gone.json()[0]["errorCode"] == "NOT_FOUND"
    for method in ("PATCH", "DELETE"):
        deleted = sf_client.request(method, f"{API}/sobjects/Contact/{contact_id}",
                                    json={"Title": "x"} if method == "PATCH" else None)
        assert deleted.status_code == 404
        assert deleted.json()[0]["errorCode"] == "ENTITY_IS_DELETED"


def test_system_modstamp_strictly_increases_across_a_burst(sf_client: httpx.Client) -> None:
    results = sf_client.post(f"{API}/composite/sobjects", json=_collection(
        [{"attributes": {"type": "Contact"}, "LastName": _unique()} for _ in range(50)])).json()
    ids = "','".join(r["id"] for r in results)
    rows = _query(sf_client, f"SELECT SystemModstamp, CreatedDate FROM Contact "
                             f"WHERE Id IN ('{ids}')").json()["records"]
    stamps = [r["SystemModstamp"] for r in rows]
    assert len(set(stamps)) == 50 and all(STAMP.match(s) for s in stamps)
    assert all(r["SystemModstamp"] == r["CreatedDate"] for r in rows)


@pytest.mark.parametrize(("sobject", "body", "code", "fields"), [
    ("Contact", {"FirstName": "No last name"}, "REQUIRED_FIELD_MISSING", ["LastName"]),
    ("Contact", {"LastName": "x" * 81}, "STRING_TOO_LONG", ["LastName"]),
    ("Event", _event(Subject="s" * 256), "STRING_TOO_LONG", ["Subject"]),
    ("Contact", {"LastName": "X", "Shoe": 42}, "INVALID_FIELD", ["Shoe"]),
    ("Task", {"Subject": "t", "IsClosed": True}, "INVALID_FIELD_FOR_INSERT_UPDATE",
     ["IsClosed"]),
    ("Task", {"Subject": "t", "Status": "Whenever"},
     "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Status"]),
    ("Contact", {"LastName": "X", "AccountId": "not-an-id"}, "MALFORMED_ID", ["AccountId"]),
    ("Contact", {"LastName": "X", "Email": "no-at-sign"}, "INVALID_EMAIL_ADDRESS", ["Email"]),
])
def test_single_record_errors_are_400_lists_with_fields(sf_client: httpx.Client, sobject: str,
                                                        body: dict, code: str,
                                                        fields: list[str]) -> None:
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm
    response = sf_client.post(f"{API}/sobjects/{sobject}", json=body)
    assert response.status_code == 400
    [error] = response.json()
    assert (error["errorCode"], error["fields"]) == (code, fields)
    assert error["message"]


def test_string_limits_count_utf16_units_like_salesforce(sf_client: httpx.Client) -> None:
    ok = sf_client.post(f"{API}/sobjects/Contact", json={"LastName": "é" * 80})
    assert ok.status_code == 201
    too_long = sf_client.post(f"{API}/sobjects/Contact", json={"LastName": "😀" * 41})
    assert too_long.json()[0]["errorCode"] == "STRING_TOO_LONG"
    assert "max length=80" in too_long.json()[0]["message"]


def test_bad_ids_not_found_and_bad_json(sf_client: httpx.Client) -> None:
    malformed = sf_client.get(f"{API}/sobjects/Contact/123")
    assert (malformed.status_code, malformed.json()[0]["errorCode"]) == (400, "MALFORMED_ID")
    missing = sf_client.get(f"{API}/sobjects/Contact/{id18('003RM0000zzzzzz')}")
    assert missing.status_code == 404
    assert missing.json() == [{"message": "The requested resource does not exist",
                               "errorCode": "NOT_FOUND"}]
    broken = sf_client.post(f"{API}/sobjects/Contact", content=b"{not json",
                            headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


def test_event_times_dates_and_duration_stay_consistent(sf_client: httpx.Client) -> None:
    # https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_event.htm
    event_id = _create(sf_client, "Event", Subject="Call", StartDateTime="2026-11-22T10:00:00Z",
                       DurationInMinutes=45)
    event = sf_client.get(f"{API}/sobjects/Event/{event_id}").json()
    assert event["EndDateTime"] == "2026-11-22T10:45:00.000+0000"
    assert event["ActivityDateTime"] == event["StartDateTime"]
    assert (event["ActivityDate"], event["ShowAs"], event["IsAllDayEvent"]) == \
        ("2026-11-22", "Busy", False)
    all_day = _create(sf_client, "Event", Subject="Offsite", IsAllDayEvent=True,
                      ActivityDate="2026-12-03", EndDate="2026-12-04")
    event = sf_client.get(f"{API}/sobjects/Event/{all_day}").json()
    assert event["StartDateTime"] == "2026-12-03T00:00:00.000+0000"
    assert event["DurationInMinutes"] == 2 * 1440
    no_end = sf_client.post(f"{API}/sobjects/Event", json={
        "Subject": "x", "StartDateTime": "2026-11-22T10:00:00Z"})
    assert no_end.json()[0]["errorCode"] == "REQUIRED_FIELD_MISSING"


def test_task_closes_with_its_status(sf_client: httpx.Client) -> None:
    task_id = _create(sf_client, "Task", Subject="Follow up", ActivityDate="2026-12-01")
    task = sf_client.get(f"{API}/sobjects/Task/{task_id}").json()
    assert (task["Status"], task["Priority"], task["IsClosed"]) == ("Not Started", "Normal",
                                                                    False)
    sf_client.patch(f"{API}/sobjects/Task/{task_id}", json={"Status": "Completed"})
    task = sf_client.get(f"{API}/sobjects/Task/{task_id}").json()
    assert task["IsClosed"] is True and STAMP.match(task["CompletedDateTime"])


# --- SOQL --------------------------------------------------------------------------------
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_query.htm


def test_query_filters_orders_limits_and_follows_relationships(
        sf_client: httpx.Client) -> None:
    tag = _unique("Acme")
    account = _create(sf_client, "Account", Name=tag)
    for first, city in (("Bea", "Oslo"), ("Al", "Rome"), ("Cy", None)):
        _create(sf_client, "Contact", FirstName=first, LastName=tag, AccountId=account,
                MailingCity=city)
    rows = _query(sf_client, f"SELECT FirstName, Account.Name FROM Contact WHERE LastName = "
                             f"'{tag.upper()}' AND (MailingCity IN ('Oslo', 'Rome') OR "
                             "MailingCity = null) ORDER BY FirstName DESC LIMIT 2").json()
    assert rows["totalSize"] == 2 and rows["done"] is True
    assert [r["FirstName"] for r in rows["records"]] == ["Cy", "Bea"]
    first = rows["records"][0]
    assert set(first) == {"attributes", "FirstName", "Account"}
    assert first["Account"]["Name"] == tag
    assert first["Account"]["attributes"]["type"] == "Account"
    count = _query(sf_client, f"SELECT COUNT() FROM Contact WHERE LastName = '{tag}' "
                              "AND MailingCity != null").json()
    assert (count["totalSize"], count["records"]) == (2, [])


def test_query_events_by_datetime_with_owner_and_invitees(sf_client: httpx.Client) -> None:
    tag = _unique("Sync")
    contact = _create(sf_client, "Contact", LastName=tag, Email="inv@example.com")
    event_id = _create(sf_client, "Event", **_event(Subject=tag,
                                                    StartDateTime="2026-12-10T09:00:00Z",
                                                    EndDateTime="2026-12-10T09:30:00Z"))
    _create(sf_client, "EventRelation", EventId=event_id, RelationId=contact, IsInvitee=True)
    soql = ("SELECT Id, Subject, Owner.Email, (SELECT RelationId, Status FROM EventRelations) "
            f"FROM Event WHERE Subject = '{tag}' AND StartDateTime >= 2026-12-10T00:00:00Z "
            "AND StartDateTime < 2026-12-11T00:00:00+0000")
    [row] = _query(sf_client, soql).json()["records"]
    assert row["Owner"]["Email"] == "demo@example.com"
    relations = row["EventRelations"]
    assert relations["totalSize"] == 1 and relations["records"][0]["RelationId"] == contact
    assert relations["records"][0]["Status"] == "New"
    earlier = _query(sf_client, f"SELECT Id FROM Event WHERE Subject = '{tag}' "
                                "AND StartDateTime < 2026-12-10T09:00:00Z").json()
    assert earlier["totalSize"] == 0


@pytest.mark.parametrize("soql", [
    "SELECT Id FROM Contact WHERE LastName = 'a' AND FirstName = 'b' OR Email = null",
    "SELECT Id FROM Contact GROUP BY LastName",
    "SELECT Id FROM Contact WHERE CreatedDate > '2026-01-01'",
    "SELECT Id FROM Contact WHERE LastName = 'unterminated",
    "SELECT FROM Contact",
    "DELETE FROM Contact",
    "SELECT Id FROM Contact LIMIT",
])
def test_anything_outside_the_subset_is_malformed_query(sf_client: httpx.Client,
                                                        soql: str) -> None:
    response = _query(sf_client, soql)
    assert response.status_code == 400
    [error] = response.json()
    assert error["errorCode"] == "MALFORMED_QUERY" and error["message"]


def test_unknown_fields_and_objects_in_soql(sf_client: httpx.Client) -> None:
    field = _query(sf_client, "SELECT Shoe FROM Contact")
    assert field.json()[0]["errorCode"] == "INVALID_FIELD"
    obj = _query(sf_client, "SELECT Id FROM Opportunity")
    assert obj.json()[0]["errorCode"] == "INVALID_TYPE"
    long_text = _query(sf_client, "SELECT Id FROM Contact WHERE Description = 'x'")
    assert long_text.json()[0]["errorCode"] == "INVALID_FIELD"


def test_deleted_records_leave_query_but_stay_in_query_all(sf_client: httpx.Client) -> None:
    tag = _unique()
    contact = _create(sf_client, "Contact", LastName=tag)
    sf_client.delete(f"{API}/sobjects/Contact/{contact}")
    soql = f"SELECT Id, IsDeleted FROM Contact WHERE LastName = '{tag}'"
    assert _query(sf_client, soql).json()["totalSize"] == 0
    [row] = _query(sf_client, soql, "queryAll").json()["records"]
    assert (row["Id"], row["IsDeleted"]) == (contact, True)


def test_query_pages_2000_records_then_next_records_url(sf_client: httpx.Client) -> None:
    tag = _unique("Page")
    for _ in range(11):  # 2,200 contacts, 200 per call
        batch = [{"attributes": {"type": "Contact"}, "LastName": tag} for _ in range(200)]
        assert all(r["success"] for r in sf_client.post(f"{API}/composite/sobjects",
                                                        json=_collection(batch)).json())
    first = _query(sf_client, f"SELECT Id FROM Contact WHERE LastName = '{tag}'").json()
    assert (first["totalSize"], first["done"], len(first["records"])) == (2200, False, 2000)
    assert re.fullmatch(rf"{API}/query/01g\w{{15}}-2000", first["nextRecordsUrl"])
    second = sf_client.get(first["nextRecordsUrl"]).json()
    assert (second["totalSize"], second["done"], len(second["records"])) == (2200, True, 200)
    assert "nextRecordsUrl" not in second
    ids = {r["Id"] for r in first["records"] + second["records"]}
    assert len(ids) == 2200
    stale = sf_client.get(first["nextRecordsUrl"])
    assert stale.status_code == 400 and stale.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


# --- sObject Collections -------------------------------------------------------------------
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_create.htm


def test_collections_save_what_they_can_when_all_or_none_is_false(
        sf_client: httpx.Client) -> None:
    tag = _unique()
    response = sf_client.post(f"{API}/composite/sobjects", json=_collection([
        {"attributes": {"type": "Contact"}, "LastName": tag},
        {"attributes": {"type": "Event"}, **_event(Subject="s" * 300)},
        {"attributes": {"type": "Contact"}, "FirstName": "nameless"},
        {"attributes": {"type": "Event"}, **_event(Subject=tag)},
    ]))
    assert response.status_code == 200
    ok, too_long, missing, event = response.json()
    assert ok["success"] is True and ok["errors"] == [] and ok["id"].startswith("003")
    assert event["success"] is True and event["id"].startswith("00U")
    assert too_long == {"success": False, "errors": [{
        "statusCode": "STRING_TOO_LONG", "fields": ["Subject"],
        "message": too_long["errors"][0]["message"]}]}
    assert "max length=255" in too_long["errors"][0]["message"]
    assert missing["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"


def test_collections_all_or_none_rolls_everything_back(sf_client: httpx.Client) -> None:
    tag = _unique()
    results = sf_client.post(f"{API}/composite/sobjects", json=_collection([
        {"attributes": {"type": "Contact"}, "LastName": tag},
        {"attributes": {"type": "Contact"}, "LastName": "x" * 81},
    ], all_or_none=True)).json()
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    assert _query(sf_client, f"SELECT Id FROM Contact WHERE LastName = '{tag}'"
                  ).json()["totalSize"] == 0


def test_collections_update_and_delete_report_per_record(sf_client: httpx.Client) -> None:
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_update.htm
    keep, gone = _create(sf_client, "Contact", LastName="Keep"), _create(sf_client, "Contact",
                                                                        LastName="Gone")
    sf_client.delete(f"{API}/sobjects/Contact/{gone}")
    results = sf_client.patch(f"{API}/composite/sobjects", json=_collection([
        {"attributes": {"type": "Contact"}, "Id": keep, "Title": "Boss"},
        {"attributes": {"type": "Contact"}, "Id": gone, "Title": "Ghost"},
        {"attributes": {"type": "Contact"}, "Title": "No id"},
    ])).json()
    assert results[0] == {"id": keep, "success": True, "errors": []}
    assert results[1]["id"] == gone and results[1]["success"] is False
    assert results[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert results[2]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_delete.htm
    deleted = sf_client.delete(f"{API}/composite/sobjects",
                               params={"ids": f"{keep},{gone},bad", "allOrNone": "false"}).json()
    assert deleted[0] == {"id": keep, "success": True, "errors": []}
    assert deleted[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert deleted[2]["errors"][0]["statusCode"] == "MALFORMED_ID"


def test_collections_refuse_more_than_200_records(sf_client: httpx.Client) -> None:
    records = [{"attributes": {"type": "Contact"}, "LastName": "x"} for _ in range(201)]
    response = sf_client.post(f"{API}/composite/sobjects", json=_collection(records))
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    ids = ",".join([id18("003RM0000000001")] * 201)
    too_many = sf_client.delete(f"{API}/composite/sobjects", params={"ids": ids})
    assert too_many.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


# --- updated / deleted -----------------------------------------------------------------------
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getupdated.htm
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm


def _server_now(sandbox: Sandbox) -> datetime:
    now = httpx.get(sandbox.url + "/_sandbox/stats", verify=sandbox.ssl_context()).json()["now"]
    return datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%f%z")


def _move_clock(sandbox: Sandbox, client: httpx.Client, days: float) -> None:
    control(sandbox, "clock", offset_days=days)
    client.headers["Authorization"] = "Bearer " + access_token(sandbox)


def test_updated_and_deleted_cover_whole_minutes(sandbox: Sandbox,
                                                 sf_client: httpx.Client) -> None:
    start = _server_now(sandbox).replace(second=0, microsecond=0)
    changed = _create(sf_client, "Contact", LastName=_unique())
    removed = _create(sf_client, "Contact", LastName=_unique())
    sf_client.delete(f"{API}/sobjects/Contact/{removed}")
    span = {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()}
    # Salesforce ignores seconds: this minute is not covered yet.
    early = sf_client.get(f"{API}/sobjects/Contact/updated/", params=span).json()
    assert changed not in early["ids"]
    _move_clock(sandbox, sf_client, 2 / 1440)  # two minutes later
    updated = sf_client.get(f"{API}/sobjects/Contact/updated/", params=span).json()
    assert set(updated) == {"ids", "latestDateCovered"}
    assert changed in updated["ids"] and removed not in updated["ids"]
    assert STAMP.match(updated["latestDateCovered"])
    deleted = sf_client.get(f"{API}/sobjects/Contact/deleted/", params=span).json()
    assert set(deleted) == {"deletedRecords", "earliestDateAvailable", "latestDateCovered"}
    [entry] = [d for d in deleted["deletedRecords"] if d["id"] == removed]
    assert STAMP.match(entry["deletedDate"]) and entry["deletedDate"] < \
        deleted["latestDateCovered"]
    backwards = sf_client.get(f"{API}/sobjects/Contact/updated/",
                              params={"start": span["end"], "end": span["start"]})
    assert backwards.status_code == 400
    assert backwards.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"


def test_deleted_records_are_kept_15_days(sandbox: Sandbox, sf_client: httpx.Client) -> None:
    start = _server_now(sandbox).replace(second=0, microsecond=0)
    removed = _create(sf_client, "Contact", LastName=_unique())
    sf_client.delete(f"{API}/sobjects/Contact/{removed}")
    _move_clock(sandbox, sf_client, 16)
    now = _server_now(sandbox)
    too_early = sf_client.get(f"{API}/sobjects/Contact/deleted/", params={
        "start": start.isoformat(), "end": now.isoformat()})
    assert too_early.status_code == 400
    assert too_early.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    recent = sf_client.get(f"{API}/sobjects/Contact/deleted/", params={
        "start": (now - timedelta(days=1)).isoformat(), "end": now.isoformat()}).json()
    assert recent["earliestDateAvailable"] > start.strftime("%Y-%m-%dT%H:%M")
    assert removed not in [d["id"] for d in recent["deletedRecords"]]
    purged = _query(sf_client, f"SELECT Id FROM Contact WHERE Id = '{removed}'", "queryAll")
    assert purged.json()["totalSize"] == 0


# --- limits and injected failures ------------------------------------------------------------
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm


def test_every_data_response_carries_the_limit_header(sandbox: Sandbox,
                                                      sf_client: httpx.Client) -> None:
    first = sf_client.get(f"{API}/sobjects/Contact/describe")
    used, limit = map(int, LIMIT.match(first.headers["Sforce-Limit-Info"]).groups())  # type: ignore[union-attr]
    assert limit == 15000
    error = sf_client.get(f"{API}/sobjects/Nope/describe")
    assert error.headers["Sforce-Limit-Info"] == f"api-usage={used + 1}/15000"
    batch = [{"attributes": {"type": "Contact"}, "LastName": "x"} for _ in range(3)]
    collection = sf_client.post(f"{API}/composite/sobjects", json=_collection(batch))
    assert collection.headers["Sforce-Limit-Info"] == f"api-usage={used + 2}/15000"


def test_request_limit_exceeded_when_the_daily_allowance_is_used(
        sandbox: Sandbox, sf_client: httpx.Client) -> None:
    control(sandbox, "limits", daily=100, used=99)
    last = sf_client.get(f"{API}/limits")
    assert last.status_code == 200 and last.headers["Sforce-Limit-Info"] == "api-usage=100/100"
    refused = sf_client.get(f"{API}/limits")
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.",
                               "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=100/100"
    # A rolling 24 hours: a day later the allowance is back.
    _move_clock(sandbox, sf_client, 1.01)
    assert sf_client.get(f"{API}/limits").status_code == 200


def test_injected_http_fault_answers_n_times_then_stops(sandbox: Sandbox,
                                                       sf_client: httpx.Client) -> None:
    control(sandbox, "faults", path_regex="/query$", method="GET", status=503,
            body=[{"message": "try later", "errorCode": "SERVER_UNAVAILABLE"}], times=2)
    for _ in range(2):
        failed = _query(sf_client, "SELECT Id FROM Account")
        assert failed.status_code == 503 and failed.json()[0]["errorCode"] == \
            "SERVER_UNAVAILABLE"
    assert _query(sf_client, "SELECT Id FROM Account").status_code == 200


def test_unable_to_lock_row_per_record_and_on_single_calls(sandbox: Sandbox,
                                                           sf_client: httpx.Client) -> None:
    control(sandbox, "faults", record_error={"errorCode": "UNABLE_TO_LOCK_ROW", "times": 1})
    results = sf_client.post(f"{API}/composite/sobjects", json=_collection(
        [{"attributes": {"type": "Contact"}, "LastName": "a"},
         {"attributes": {"type": "Contact"}, "LastName": "b"}])).json()
    assert results[0]["success"] is False and results[1]["success"] is True
    assert results[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert "unable to obtain exclusive access" in results[0]["errors"][0]["message"]
    control(sandbox, "faults", record_error={"errorCode": "UNABLE_TO_LOCK_ROW", "times": 1,
                                             "operation": "update"})
    contact = _create(sf_client, "Contact", LastName="Locked")
    locked = sf_client.patch(f"{API}/sobjects/Contact/{contact}", json={"Title": "x"})
    assert (locked.status_code, locked.json()[0]["errorCode"]) == (400, "UNABLE_TO_LOCK_ROW")
    retried = sf_client.patch(f"{API}/sobjects/Contact/{contact}", json={"Title": "x"})
    assert retried.status_code == 204


def test_validation_rule_raises_field_custom_validation_exception(
        sandbox: Sandbox, sf_client: httpx.Client) -> None:
    control(sandbox, "validation", object="Event", field="Subject", contains="FORBIDDEN",
            message="Subjects may not say FORBIDDEN")
    results = sf_client.post(f"{API}/composite/sobjects", json=_collection([
        {"attributes": {"type": "Event"}, **_event(Subject="A FORBIDDEN topic")},
        {"attributes": {"type": "Event"}, **_event()}])).json()
    assert results[0]["errors"] == [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                     "message": "Subjects may not say FORBIDDEN",
                                     "fields": ["Subject"]}]
    assert results[1]["success"] is True
    update = sf_client.patch(f"{API}/sobjects/Event/{results[1]['id']}",
                             json={"Subject": "FORBIDDEN now"})
    assert update.json()[0]["errorCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"


# --- recurring events (see crmsync/sandbox/recurrence.py for the model) --------------------


def test_an_event_series_materializes_occurrences_in_its_time_zone(
        sf_client: httpx.Client) -> None:
    tag = _unique("Weekly")
    # 09:00 in Berlin, weekly, across the end of summer time (2026-10-25).
    series = _create(sf_client, "Event", Subject=tag, StartDateTime="2026-10-19T07:00:00Z",
                     EndDateTime="2026-10-19T08:00:00Z", IsRecurrence2=True,
                     Recurrence2PatternText="RRULE:FREQ=WEEKLY;INTERVAL=1;COUNT=3",
                     Recurrence2PatternTimeZone="Europe/Berlin")
    soql = (f"SELECT Id, StartDateTime, EndDateTime, ActivityRecurrence2Id, IsRecurrence2, "
            f"Recurrence2PatternText FROM Event WHERE Subject = '{tag}' "
            "ORDER BY StartDateTime")
    rows = _query(sf_client, soql).json()["records"]
    head = [r for r in rows if r["Id"] == series][0]
    occurrences = [r for r in rows if r["Recurrence2PatternText"] is None]
    assert head["ActivityRecurrence2Id"].startswith("828")
    assert [o["StartDateTime"] for o in occurrences] == [
        "2026-10-19T07:00:00.000+0000", "2026-10-26T08:00:00.000+0000",
        "2026-11-02T08:00:00.000+0000"]
    assert all(o["IsRecurrence2"] and o["ActivityRecurrence2Id"] ==
               head["ActivityRecurrence2Id"] for o in occurrences)

    # Changing one occurrence makes it an exception; the series then leaves it alone.
    changed, dropped = occurrences[1]["Id"], occurrences[2]["Id"]
    sf_client.patch(f"{API}/sobjects/Event/{changed}", json={"Location": "Room 2"})
    sf_client.delete(f"{API}/sobjects/Event/{dropped}")
    sf_client.patch(f"{API}/sobjects/Event/{series}", json={"Location": "Room 1"})
    rows = {r["Id"]: r for r in _query(
        sf_client, f"SELECT Id, Location, IsRecurrence2Exception FROM Event "
                   f"WHERE Subject = '{tag}'").json()["records"]}
    assert rows[changed]["IsRecurrence2Exception"] is True
    assert rows[changed]["Location"] == "Room 2"
    assert rows[occurrences[0]["Id"]]["Location"] == "Room 1"
    assert dropped not in rows

    # Deleting the series deletes every occurrence.
    assert sf_client.delete(f"{API}/sobjects/Event/{series}").status_code == 204
    assert _query(sf_client, f"SELECT Id FROM Event WHERE Subject = '{tag}'"
                  ).json()["totalSize"] == 0


def test_a_bad_recurrence_pattern_is_refused(sf_client: httpx.Client) -> None:
    response = sf_client.post(f"{API}/sobjects/Event", json=_event(
        IsRecurrence2=True, Recurrence2PatternText="every tuesday"))
    assert response.status_code == 400
    assert response.json()[0]["fields"] == ["Recurrence2PatternText"]


# --- the server itself ---------------------------------------------------------------------


def test_the_server_stops_cleanly_with_a_client_still_connected(tmp_path: Path) -> None:
    sandbox = Sandbox(db_path=tmp_path / "org.db")
    sandbox.start()
    client = httpx.Client(base_url=sandbox.url, verify=sandbox.ssl_context())
    client.headers["Authorization"] = "Bearer " + access_token(sandbox)
    contact = _create(client, "Contact", LastName="Persistent")
    client_id, port = sandbox.client_id, sandbox.port
    began = time.monotonic()
    sandbox.stop()
    assert time.monotonic() - began < 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    client.close()
    # The same data file brings back the records, the app and its refresh token.
    with Sandbox(db_path=tmp_path / "org.db") as again:
        assert again.client_id == client_id
        client = httpx.Client(base_url=again.url, verify=again.ssl_context(),
                              headers={"Authorization": "Bearer " + access_token(again)})
        assert client.get(f"{API}/sobjects/Contact/{contact}").json()["LastName"] == \
            "Persistent"
        client.close()


def test_requests_without_a_trusted_ca_fail_tls_verification(sandbox: Sandbox) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(sandbox.url + "/services/data", verify=True)
    assert datetime.now(UTC)  # the sandbox CA is not in the system store


def test_composite_runs_subrequests_with_references_as_one_api_call(
        sf_client: httpx.Client) -> None:
    # https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_composite.htm
    tag = _unique()
    before = int(LIMIT.match(sf_client.get(f"{API}/limits").headers["Sforce-Limit-Info"]  # type: ignore[union-attr]
                             ).group(1))
    response = sf_client.post(f"{API}/composite", json={"allOrNone": False, "compositeRequest": [
        {"method": "POST", "url": f"{API}/sobjects/Account", "referenceId": "acct",
         "body": {"Name": tag}},
        {"method": "POST", "url": f"{API}/sobjects/Contact", "referenceId": "person",
         "body": {"LastName": tag, "AccountId": "@{acct.id}"}},
        {"method": "GET", "referenceId": "found",
         "url": f"{API}/query?q=SELECT+Account.Name+FROM+Contact+WHERE+Id='@{{person.id}}'"},
        {"method": "GET", "url": f"{API}/sobjects/Contact/@{{nothing.id}}",
         "referenceId": "broken"},
    ]})
    assert response.status_code == 200
    assert response.headers["Sforce-Limit-Info"] == f"api-usage={before + 1}/15000"
    acct, person, found, broken = response.json()["compositeResponse"]
    assert (acct["httpStatusCode"], acct["referenceId"]) == (201, "acct")
    assert person["body"]["success"] is True
    assert found["body"]["records"][0]["Account"]["Name"] == tag
    assert broken["httpStatusCode"] == 400
    assert broken["body"][0]["errorCode"] == "PROCESSING_HALTED"


def test_composite_all_or_none_rolls_back_and_halts(sf_client: httpx.Client) -> None:
    tag = _unique()
    answers = sf_client.post(f"{API}/composite", json={"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": f"{API}/sobjects/Contact", "referenceId": "a",
         "body": {"LastName": tag}},
        {"method": "POST", "url": f"{API}/sobjects/Contact", "referenceId": "b",
         "body": {"LastName": "x" * 81}},
        {"method": "POST", "url": f"{API}/sobjects/Contact", "referenceId": "c",
         "body": {"LastName": tag}},
    ]}).json()["compositeResponse"]
    assert [a["httpStatusCode"] for a in answers] == [400, 400, 400]
    assert answers[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert answers[1]["body"][0]["errorCode"] == "STRING_TOO_LONG"
    assert _query(sf_client, f"SELECT Id FROM Contact WHERE LastName = '{tag}'"
                  ).json()["totalSize"] == 0
    too_many = sf_client.post(f"{API}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{API}/limits", "referenceId": f"r{i}"} for i in range(26)]})
    assert too_many.status_code == 400


def test_moving_an_all_day_event_keeps_its_length(sf_client: httpx.Client) -> None:
    event_id = _create(sf_client, "Event", Subject="Fair", IsAllDayEvent=True,
                       ActivityDate="2026-12-03", EndDate="2026-12-05")
    sf_client.patch(f"{API}/sobjects/Event/{event_id}", json={"ActivityDate": "2026-12-10"})
    event = sf_client.get(f"{API}/sobjects/Event/{event_id}").json()
    assert (event["ActivityDate"], event["EndDate"], event["DurationInMinutes"]) == \
        ("2026-12-10", "2026-12-12", 3 * 1440)


def _sandbox_command(tmp_path: Path) -> subprocess.Popen[str]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "crmsync", "sandbox", "--port", "0",
                             "--data", str(tmp_path / "org.db")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


# Only against a hang: the steps wait for what the sandbox prints, never for a time.
HANG = 120


def test_the_command_line_serves_until_ctrl_c(tmp_path: Path) -> None:
    proc = _sandbox_command(tmp_path)
    guard = threading.Timer(HANG, proc.kill)  # a hang ends the output: the test fails
    guard.start()
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"https://127\.0\.0\.1:\d+", first)
        assert url, first + proc.stderr.read()  # type: ignore[union-attr]
        # Ctrl-C once it says how to stop it, as a user would (the text may be wrapped).
        shown = [first]
        while "Ctrl-C to stop." not in " ".join("".join(shown).split()):
            shown.append(proc.stdout.readline())  # type: ignore[union-attr]
            assert shown[-1], "".join(shown) + proc.stderr.read()  # type: ignore[union-attr]
        details = (tmp_path / "org.keys" / "connection.json")
        assert oct(details.stat().st_mode & 0o777) == "0o600"
        ca = str(tmp_path / "org.keys" / "ca.pem")
        secrets = json.loads(details.read_text())
        token = httpx.post(url.group() + TOKEN, verify=ssl.create_default_context(cafile=ca),
                           data={"grant_type": "refresh_token", "client_id": secrets["client_id"],
                                 "refresh_token": secrets["refresh_token"]})
        assert token.status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
    finally:
        guard.cancel()
        proc.kill()
    assert proc.returncode == 0, err
    out = "".join(shown) + out
    assert "Sandbox stopped." in out and secrets["client_secret"] not in out


def test_ctrl_c_while_the_sandbox_starts_up_stops_it_cleanly(tmp_path: Path) -> None:
    # Ctrl-C as soon as it serves, while it still prints its details: a clean stop too
    # (it used to end in a KeyboardInterrupt traceback, exit 1, when it came that early).
    proc = _sandbox_command(tmp_path)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert "sandbox running at" in first, first + proc.stderr.read()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Sandbox stopped." in out


def test_a_zoned_series_takes_its_until_in_utc(sf_client: httpx.Client) -> None:
    # RFC 5545 3.3.10: with a zoned start, UNTIL is given in UTC. 09:00 Berlin until the
    # third Monday's 08:00 UTC (= 09:00 CET): three occurrences, the DST change between.
    tag = _unique("Until")
    _create(sf_client, "Event", Subject=tag, StartDateTime="2026-10-19T07:00:00Z",
            EndDateTime="2026-10-19T08:00:00Z", IsRecurrence2=True,
            Recurrence2PatternText="RRULE:FREQ=WEEKLY;UNTIL=20261102T080000Z",
            Recurrence2PatternTimeZone="Europe/Berlin")
    rows = _query(sf_client, f"SELECT StartDateTime FROM Event WHERE Subject = '{tag}' "
                             "AND Recurrence2PatternText = null ORDER BY StartDateTime"
                  ).json()["records"]
    assert [r["StartDateTime"] for r in rows] == [
        "2026-10-19T07:00:00.000+0000", "2026-10-26T08:00:00.000+0000",
        "2026-11-02T08:00:00.000+0000"]


def test_an_all_day_series_takes_a_date_until(sf_client: httpx.Client) -> None:
    tag = _unique("Daily")
    _create(sf_client, "Event", Subject=tag, IsAllDayEvent=True, ActivityDate="2026-12-01",
            EndDate="2026-12-01", IsRecurrence2=True,
            Recurrence2PatternText="RRULE:FREQ=DAILY;UNTIL=20261203",
            Recurrence2PatternTimeZone="Europe/Berlin")
    rows = _query(sf_client, f"SELECT ActivityDate FROM Event WHERE Subject = '{tag}' "
                             "AND Recurrence2PatternText = null ORDER BY ActivityDate"
                  ).json()["records"]
    assert [r["ActivityDate"] for r in rows] == ["2026-12-01", "2026-12-02", "2026-12-03"]
