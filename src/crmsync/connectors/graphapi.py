"""Microsoft Graph as crmsync uses it: MSAL tokens, calls, JSON batches, throttling.

Authentication is MSAL's (Microsoft's own library), for real tenants and for the local
Graph sandbox alike: the sandbox serves OpenID discovery, so MSAL is pointed at it as an
authority (``login_url``, e.g. ``https://127.0.0.1:PORT/contoso``) with instance discovery
and authority validation off. There is no second, hand-written OAuth path to keep right.

* client credentials (server edition, application permissions Calendars.ReadWrite,
  Contacts.ReadWrite, Tasks.ReadWrite): ``client_id`` + ``client_secret``; the endpoint
  names the mailbox (``msgraph:someone@example.com``), since ``/me`` has no meaning for
  an application.
  https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
* delegated (the CLI): ``crmsync login`` runs the device-code flow
  (:func:`device_login`), the refresh token is stored encrypted with the profile's
  credentials, each run redeems it for an access token.
  https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code

MSAL talks HTTP through ``requests``; its session is given the CA bundle and
``trust_env=False``, since ``REQUESTS_CA_BUNDLE`` would otherwise override the bundle.

Calls go through :class:`crmsync.connectors.dav.Http` (keep-alive, retries of 429/503 with
``Retry-After`` and of lost connections, the ``repeatable`` rule). An access token that
expires mid-run (401) is renewed once. ``$batch`` bundles up to 20 requests; a request
throttled inside a batch is sent again in the next batch after its ``Retry-After``.
https://learn.microsoft.com/en-us/graph/json-batching
https://learn.microsoft.com/en-us/graph/throttling
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from crmsync.connectors.base import Credentials
from crmsync.connectors.dav import MAX_WAIT, Http, _retry_after, public_url
from crmsync.errors import ConfigError, ConnectionFailed, CrmsyncError

log = logging.getLogger(__name__)

GRAPH_URL = "https://graph.microsoft.com"
VERSION = "v1.0"
AUTHORITY = "https://login.microsoftonline.com/organizations"
APP_SCOPES = ["https://graph.microsoft.com/.default"]
DELEGATED_SCOPES = ["Calendars.ReadWrite", "Contacts.ReadWrite", "Tasks.ReadWrite"]
BATCH_SIZE = 20
BATCH_ROUNDS = 4

Sleep = Callable[[float], None]


class GraphError(CrmsyncError):
    """An error answer: the HTTP status and Graph's ``error.code`` and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code


def error_of(status: int, body: Any) -> GraphError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return GraphError(status, str(error.get("code") or f"HTTP {status}"),
                          str(error.get("message") or ""))
    return GraphError(status, f"HTTP {status}", "")


# --- MSAL -------------------------------------------------------------------------------------


def _session(credentials: Credentials) -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False
    session.verify = credentials.ca_bundle if credentials.verify and credentials.ca_bundle \
        else credentials.verify
    return session


def _msal_options(credentials: Credentials) -> dict[str, Any]:
    authority = (credentials.login_url or AUTHORITY).rstrip("/")
    local = not authority.startswith("https://login.microsoftonline.com")
    # A local authority (the sandbox, a sovereign cloud's own) is not in Microsoft's list.
    return {"authority": authority, "http_client": _session(credentials),
            "validate_authority": not local, "instance_discovery": not local}


def acquire_token(credentials: Credentials) -> str:
    """An access token by what the credentials allow; ConnectionFailed when refused."""
    return acquire(credentials)[0]


def acquire(credentials: Credentials) -> tuple[str, Credentials]:
    """An access token, and the credentials to use next time: a refresh token the
    identity platform rotated replaces the old one (and ``renewed`` is told of it)."""
    import msal

    c = credentials
    if not c.client_id:
        raise ConfigError("Microsoft Graph credentials need a client_id (the app "
                          "registration's application id); run `crmsync login`")
    if c.refresh_token:
        app: Any = msal.PublicClientApplication(c.client_id, **_msal_options(c)) \
            if not c.client_secret else msal.ConfidentialClientApplication(
                c.client_id, client_credential=c.client_secret, **_msal_options(c))
        answer = app.acquire_token_by_refresh_token(c.refresh_token, scopes=DELEGATED_SCOPES)
        flow = "refresh token"
        rotated = answer.get("refresh_token")
        if "access_token" in answer and rotated and rotated != c.refresh_token:
            if c.renewed is not None:
                c.renewed(rotated)  # the old one may stop working: keep the new one
            c = dataclasses.replace(c, refresh_token=rotated)
    elif c.client_secret:
        app = msal.ConfidentialClientApplication(c.client_id, client_credential=c.client_secret,
                                                 **_msal_options(c))
        answer = app.acquire_token_for_client(scopes=APP_SCOPES)
        flow = "client credentials"
    else:
        raise ConfigError("Microsoft Graph credentials need a refresh token (`crmsync login`, "
                          "device code) or a client secret (client credentials)")
    return _token_of(answer, flow, c), c


def _token_of(answer: dict[str, Any], flow: str, c: Credentials) -> str:
    if "access_token" not in answer:
        raise ConnectionFailed(f"Microsoft identity platform at "
                               f"{public_url(c.login_url or AUTHORITY)} refused the login "
                               f"({flow}): {answer.get('error')}: "
                               f"{str(answer.get('error_description') or '').splitlines()[0]}")
    return str(answer["access_token"])


def device_login(client_id: str, *, login_url: str | None, tls: Credentials,
                 show: Callable[[str], None]) -> Credentials:
    """The device-code flow: ``show`` tells the user where to go and which code to enter;
    returns credentials holding the refresh token (never printed)."""
    import msal

    creds = Credentials(client_id=client_id, login_url=login_url, verify=tls.verify,
                        ca_bundle=tls.ca_bundle)
    app = msal.PublicClientApplication(client_id, **_msal_options(creds))
    flow = app.initiate_device_flow(scopes=DELEGATED_SCOPES)
    if "user_code" not in flow:
        raise ConnectionFailed(f"the device-code login could not start: "
                               f"{flow.get('error')}: {flow.get('error_description')}")
    show(str(flow["message"]))
    answer = app.acquire_token_by_device_flow(flow)
    _token_of(answer, "device code", creds)
    if not answer.get("refresh_token"):
        raise ConnectionFailed("the login gave no refresh token (is offline access allowed "
                               "for the app?)")
    return Credentials(client_id=client_id, login_url=login_url, verify=tls.verify,
                       ca_bundle=tls.ca_bundle, refresh_token=answer["refresh_token"])


# --- the client -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """One Graph request; ``repeatable``: sending it twice does no harm (see dav.Http)."""

    method: str
    url: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    repeatable: bool = True


class Client:
    """Calls on one tenant's Graph, authenticated and counted."""

    def __init__(self, base_url: str, credentials: Credentials | None, *,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None,
                 sleep: Sleep = time.sleep) -> None:
        self.base = base_url.rstrip("/") + "/" + VERSION
        self.credentials = credentials or Credentials()
        creds = self.credentials
        self.http = Http(Credentials(verify=creds.verify, ca_bundle=creds.ca_bundle),
                         timeout=timeout, transport=transport, sleep=sleep)
        self.sleep = sleep
        self._token: str | None = creds.token
        self.calls = 0
        self.batches = 0
        self.throttled = 0

    def __repr__(self) -> str:
        return f"Client({public_url(self.base)})"

    def close(self) -> None:
        self.http.close()

    def _bearer(self) -> str:
        if self._token is None:
            self._token, self.credentials = acquire(self.credentials)
        return self._token

    def url(self, path: str) -> str:
        return path if path.startswith(("https://", "http://")) else self.base + path

    def send(self, request: Request) -> Reply:
        """One call; every answer comes back (errors too) but a refused token."""
        renewed = False
        data = None if request.body is None else json.dumps(request.body).encode()
        while True:
            headers = {"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json",
                       "Prefer": 'outlook.timezone="UTC"', **request.headers}
            if data is not None:
                headers["Content-Type"] = "application/json"
            response = self.http.send(request.method, self.url(request.url), data, headers,
                                      accept_401=True, repeatable=request.repeatable)
            self.calls += 1
            if response.status_code == 401:
                if renewed or self.credentials.token:
                    raise ConnectionFailed(f"Microsoft Graph at {public_url(self.base)} refused "
                                           f"the token ({error_of(401, _json(response))}); "
                                           "log in again (`crmsync login`)")
                self._token, renewed = None, True
                continue
            return Reply(response.status_code, _json(response), dict(response.headers))

    def call(self, method: str, path: str, body: Any = None, *,
             headers: dict[str, str] | None = None, repeatable: bool = True) -> Any:
        """One call whose error answers raise GraphError; the decoded body."""
        reply = self.send(Request(method, path, body, headers or {}, repeatable))
        if reply.status >= 400:
            raise error_of(reply.status, reply.body)
        return reply.body

    def pages(self, url: str, headers: dict[str, str] | None = None
              ) -> tuple[list[dict[str, Any]], str | None]:
        """Every entry of a paged listing (a delta round) and its deltaLink."""
        entries: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", url, headers=headers)
            entries += page.get("value") or []
            if page.get("@odata.nextLink"):
                url = page["@odata.nextLink"]
                continue
            return entries, page.get("@odata.deltaLink")

    def batch(self, requests: Sequence[Request]) -> list[Reply]:
        """Requests in JSON batches of 20, answered in order. Throttled ones (429/503
        inside the batch) go again after the longest Retry-After asked, a few rounds."""
        replies: dict[int, Reply] = {}
        todo = list(range(len(requests)))
        for round_no in range(BATCH_ROUNDS):
            if not todo:
                break
            waits: list[float] = []
            again: list[int] = []
            for start in range(0, len(todo), BATCH_SIZE):
                chunk = todo[start:start + BATCH_SIZE]
                if len(chunk) == 1:
                    replies[chunk[0]] = self.send(requests[chunk[0]])
                    continue
                for i, reply in zip(chunk, self._one_batch([requests[i] for i in chunk]),
                                    strict=True):
                    if reply.status in (429, 503) and round_no < BATCH_ROUNDS - 1:
                        self.throttled += 1
                        again.append(i)
                        waits.append(_retry_after(_header(reply.headers, "Retry-After")) or 1.0)
                    else:
                        replies[i] = reply
            if again:
                wait = max(waits)
                if wait > MAX_WAIT:
                    raise ConnectionFailed(f"Microsoft Graph throttles crmsync: it asks to wait "
                                           f"{wait:.0f} s; the rest waits for the next run")
                self.sleep(wait)
            todo = again
        return [replies[i] for i in range(len(requests))]

    def _one_batch(self, requests: Sequence[Request]) -> list[Reply]:
        body = {"requests": [
            {"id": str(n), "method": r.method, "url": r.url.removeprefix(self.base),
             **({"body": r.body} if r.body is not None else {}),
             "headers": {**({"Content-Type": "application/json"} if r.body is not None
                            else {}), **r.headers}}
            for n, r in enumerate(requests)]}
        self.batches += 1
        answer = self.call("POST", "/$batch", body,
                           repeatable=all(r.repeatable for r in requests))
        by_id = {str(r.get("id")): r for r in (answer or {}).get("responses") or []}
        out = []
        for n in range(len(requests)):
            sub = by_id.get(str(n)) or {"status": 500, "body": None}
            out.append(Reply(int(sub.get("status") or 500), sub.get("body"),
                             {str(k): str(v) for k, v in (sub.get("headers") or {}).items()}))
        return out


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return {"error": {"code": f"HTTP {response.status_code}",
                          "message": response.text[:200]}}
