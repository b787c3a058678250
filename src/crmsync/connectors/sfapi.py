"""The Salesforce REST API as crmsync uses it: OAuth 2.0, calls, limits and errors.

Why httpx and not simple-salesforce. simple-salesforce 1.12 was tried against the
sandbox: it takes a ``requests.Session`` for TLS, but a session's ``verify`` (the sandbox's
CA) is silently overridden by ``REQUESTS_CA_BUNDLE`` from the environment unless
``trust_env`` is turned off; a 503 surfaces as ``SalesforceGeneralError`` (no retry, no
Retry-After); an expired session as ``SalesforceExpiredSession`` (no renewal by refresh token
or JWT); and its collections/composite helpers hand back raw lists crmsync would still map
record by record. It does read ``Sforce-Limit-Info``. What would remain of it is URL
building. crmsync already has one HTTP stack, :class:`crmsync.connectors.dav.Http` (a
keep-alive httpx client with timeouts, retries with jittered backoff on 5xx/429 and lost
connections, TLS verification with a CA bundle, request counting): this module uses it, so
both connectors behave and report alike, and tests swap one kind of transport.

Token calls (``/services/oauth2/token``) are requests but not API calls; every
``/services/data`` call is both, and its ``Sforce-Limit-Info: api-usage=USED/MAX`` header
says how much of the org's daily allowance is used (USED counts that call).
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm

OAuth flows:

* web server flow (authorization code, then refresh token): :func:`authorize_url`,
  :func:`exchange_code`; https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm
* refresh token flow: https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm
* JWT bearer flow (server edition: a connected app with a certificate, no user
  interaction): :func:`jwt_assertion`, :func:`jwt_token`; https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm

An access token that expires mid-run (401 INVALID_SESSION_ID) is renewed by the flow the
credentials allow and the call is sent once more. Secrets never appear in repr() or in
error messages.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import httpx

from crmsync.connectors.base import Credentials
from crmsync.connectors.dav import Http, public_url
from crmsync.errors import ApiLimitReached, ConfigError, ConnectionFailed, CrmsyncError

log = logging.getLogger(__name__)

API_VERSION = "v62.0"
LOGIN_URL = "https://login.salesforce.com"
DATA = f"/services/data/{API_VERSION}/"
TOKEN_PATH = "/services/oauth2/token"
# sObject Collections take at most 200 records per call; the composite resource at most
# 25 subrequests, of which at most 5 queries or collections.
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections.htm
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_composite_post.htm
COLLECTION_SIZE = 200
COMPOSITE_SIZE = 25
COMPOSITE_QUERIES = 5
LOCK_RETRIES = 4

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Token:
    """A token endpoint's answer."""

    access_token: str = field(repr=False)
    instance_url: str = ""
    # The user the token acts for: the last segment of the identity URL ("id").
    user_id: str | None = None
    # When the server issued it, in seconds on the server's clock.
    issued_at: float | None = None
    refresh_token: str | None = field(default=None, repr=False)


class SalesforceError(CrmsyncError):
    """An error answer: HTTP status and Salesforce's ``errorCode``s and messages."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        self.status = status
        self.errors = errors
        first = errors[0] if errors else {}
        self.code = str(first.get("errorCode") or first.get("statusCode") or status)
        super().__init__(describe_errors(errors) or f"HTTP {status}")


def describe_errors(errors: Sequence[dict[str, Any]]) -> str:
    """``STRING_TOO_LONG: Subject: data value too large ...`` for a report."""
    parts = []
    for error in errors:
        code = error.get("errorCode") or error.get("statusCode") or "ERROR"
        message = error.get("message") or ""
        fields = error.get("fields") or []
        where = f" (fields: {', '.join(fields)})" if fields else ""
        parts.append(f"{code}: {message}{where}")
    return "; ".join(parts)


# --- OAuth -------------------------------------------------------------------------------


def authorize_url(client_id: str, redirect_uri: str, *, login_url: str = LOGIN_URL,
                  state: str | None = None, scope: str | None = None) -> str:
    """Where to send the user's browser to grant access (web server flow, step 1)."""
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri}
    if state:
        params["state"] = state
    if scope:
        params["scope"] = scope
    return f"{login_url.rstrip('/')}/services/oauth2/authorize?{urlencode(params)}"


def exchange_code(code: str, *, client_id: str, client_secret: str | None, redirect_uri: str,
                  login_url: str = LOGIN_URL, credentials: Credentials | None = None,
                  transport: httpx.BaseTransport | None = None) -> Token:
    """The tokens for an authorization code (web server flow, step 2)."""
    http = _http(credentials, transport)
    try:
        form = {"grant_type": "authorization_code", "code": code, "client_id": client_id,
                "redirect_uri": redirect_uri}
        if client_secret:
            form["client_secret"] = client_secret
        return token_request(http, login_url, form)
    finally:
        http.close()


def jwt_token(*, client_id: str, username: str, private_key: str,
              login_url: str = LOGIN_URL, credentials: Credentials | None = None,
              transport: httpx.BaseTransport | None = None) -> Token:
    """An access token by the JWT bearer flow (``private_key``: PEM text or a file)."""
    http = _http(credentials, transport)
    try:
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": jwt_assertion(client_id, username, login_url, private_key)}
        return token_request(http, login_url, form)
    finally:
        http.close()


def jwt_assertion(client_id: str, username: str, audience: str, private_key: str,
                  lifetime: int = 180) -> str:
    """A signed JWT (RS256) asking for a token for ``username`` (JWT bearer flow)."""
    import jwt

    key = _read_key(private_key)
    claims = {"iss": client_id, "sub": username, "aud": audience.rstrip("/"),
              "exp": int(time.time()) + lifetime}
    return jwt.encode(claims, key, algorithm="RS256")


def _read_key(private_key: str) -> str:
    if "-----BEGIN" in private_key:
        return private_key
    path = os.path.expanduser(private_key)
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"the private key file {path} cannot be read: {exc}") from exc


def token_request(http: Http, login_url: str, form: dict[str, str]) -> Token:
    url = login_url.rstrip("/") + TOKEN_PATH
    response = http.send("POST", url, urlencode(form).encode(),
                         {"Content-Type": "application/x-www-form-urlencoded",
                          "Accept": "application/json"}, accept_401=True)
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code != 200 or "access_token" not in data:
        error = data.get("error") or f"HTTP {response.status_code}"
        detail = data.get("error_description") or ""
        raise ConnectionFailed(f"Salesforce at {public_url(login_url)} refused the login "
                               f"({form['grant_type'].rpartition(':')[2]}): {error}"
                               + (f": {detail}" if detail else ""))
    issued = data.get("issued_at")
    return Token(
        access_token=data["access_token"],
        instance_url=data.get("instance_url") or "",
        user_id=(data.get("id") or "").rstrip("/").rpartition("/")[2] or None,
        issued_at=int(issued) / 1000 if str(issued or "").isdigit() else None,
        refresh_token=data.get("refresh_token"),
    )


def _http(credentials: Credentials | None, transport: httpx.BaseTransport | None,
          sleep: Sleep = time.sleep, timeout: float = 30.0) -> Http:
    # Only TLS settings go to Http: the bearer token is set per call, as it is renewed.
    creds = credentials or Credentials()
    return Http(Credentials(verify=creds.verify, ca_bundle=creds.ca_bundle),
                timeout=timeout, transport=transport, sleep=sleep)


# --- the client --------------------------------------------------------------------------


class Client:
    """Calls on one org's REST API, authenticated, counted and kept within budget."""

    def __init__(self, instance_url: str, credentials: Credentials | None, *,
                 api_share: float = 0.5, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, sleep: Sleep = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.instance_url = instance_url.rstrip("/")
        self.credentials = credentials or Credentials()
        self.login_url = (self.credentials.login_url or self.instance_url).rstrip("/")
        self.api_share = api_share
        self.http = _http(credentials, transport, sleep, timeout)
        self.sleep = sleep
        self.random = rng or random.Random()
        self._token: str | None = self.credentials.token
        self.user_id: str | None = None
        self.api_calls = 0
        self.api_usage: int | None = None
        self.api_limit: int | None = None
        # Server clock minus ours, in seconds, once known.
        self.skew: float | None = None
        self.has_composite = True

    def __repr__(self) -> str:
        return f"Client({public_url(self.instance_url)})"

    def close(self) -> None:
        self.http.close()

    # --- authentication ------------------------------------------------------------------

    def can_login(self) -> bool:
        c = self.credentials
        return bool(c.client_id and (c.refresh_token or c.private_key and c.username))

    def login(self) -> Token:
        """A new access token by the refresh token or the JWT bearer flow."""
        c = self.credentials
        if not c.client_id:
            raise ConfigError("Salesforce credentials need a client_id (the connected app's "
                              "consumer key) to log in; run `crmsync login`")
        if c.refresh_token:
            form = {"grant_type": "refresh_token", "refresh_token": c.refresh_token,
                    "client_id": c.client_id}
            if c.client_secret:
                form["client_secret"] = c.client_secret
        elif c.private_key and c.username:
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": jwt_assertion(c.client_id, c.username, self.login_url,
                                               c.private_key)}
        else:
            raise ConfigError("Salesforce credentials need a refresh token (web server "
                              "flow) or a private key and username (JWT bearer flow)")
        sent = time.time()
        token = token_request(self.http, self.login_url, form)
        self._token = token.access_token
        self.user_id = token.user_id or self.user_id
        if token.issued_at is not None:
            self.skew = token.issued_at - (sent + time.time()) / 2
        return token

    def _bearer(self) -> str:
        if self._token is None:
            if not self.can_login():
                raise ConfigError("no Salesforce credentials: give an access token, a "
                                  "refresh token or a JWT private key (`crmsync login`)")
            self.login()
        assert self._token is not None
        return self._token

    def whoami(self) -> str | None:
        """The Id of the user the token acts for; None with a bare access token."""
        if self.user_id is None and self._token is None:
            self._bearer()
        return self.user_id

    def saw(self, server_seconds: float) -> None:
        """A moment the server has reached (a SystemModstamp, latestDateCovered): our
        estimate of its clock never stays behind what it has shown."""
        ahead = server_seconds - time.time()
        if self.skew is None or ahead > self.skew:
            self.skew = ahead

    def server_now(self) -> float:
        """The server's clock, as far as we know it. Not known yet, it is learned by
        signing in now (the token's issued_at; the next call would sign in anyway), else
        ours is taken: a listing's window must not follow a clock that lags the org's."""
        if self.skew is None and self._token is None and self.can_login():
            self.login()
        return time.time() + (self.skew or 0.0)

    # --- calls ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            return path
        if path.startswith("/"):
            return self.instance_url + path
        return self.instance_url + DATA + path

    def call(self, method: str, path: str, body: Any = None, *,
             params: dict[str, str] | None = None) -> Any:
        """One API call; the decoded JSON answer (None when empty).

        Raises ApiLimitReached before exceeding the budget or when the org is out of calls,
        ConnectionFailed when the session cannot be renewed, SalesforceError otherwise.
        """
        url = self.url(path)
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, quote_via=quote)
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        renewed = False
        locked = 0
        while True:
            self._check_budget()
            headers = {"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            response = self.http.send(method, url, data, headers, accept_401=True,
                                      repeatable=_repeatable(method, path))
            self.api_calls += 1
            self._read_limits(response)
            if response.status_code == 401:
                if renewed or not self.can_login():
                    raise ConnectionFailed(
                        f"Salesforce at {public_url(self.instance_url)} refused the session "
                        f"({_first_code(response) or 'HTTP 401'}); log in again")
                self._token = None
                self.login()
                renewed = True
                continue
            if response.status_code >= 400:
                error = SalesforceError(response.status_code, _errors(response))
                if error.code == "REQUEST_LIMIT_EXCEEDED":
                    raise ApiLimitReached(
                        f"Salesforce at {public_url(self.instance_url)} has no API calls left "
                        f"today ({error}); the run stopped, the rest waits for the next run")
                if error.code == "UNABLE_TO_LOCK_ROW" and locked < LOCK_RETRIES:
                    locked += 1
                    self.sleep(self.lock_wait(locked))
                    continue
                raise error
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise ConnectionFailed(f"Salesforce sent an unreadable answer to {method} "
                                       f"{path}: {exc}") from exc

    def lock_wait(self, attempt: int) -> float:
        """Seconds to wait before retrying rows another transaction holds: full jitter."""
        return self.random.uniform(0.1, min(8.0, 0.5 * 2 ** attempt))

    def _check_budget(self) -> None:
        if self.api_limit is None or self.api_usage is None:
            return
        cap = int(self.api_limit * self.api_share)
        if self.api_usage + 1 > cap:
            raise ApiLimitReached(
                f"crmsync may use {self.api_share:.0%} of the org's {self.api_limit} daily "
                f"API calls ({cap}); {self.api_usage} are used. The run stopped before "
                "exceeding it; the rest waits for the next run (or raise api_share)")

    def _read_limits(self, response: httpx.Response) -> None:
        info = response.headers.get("Sforce-Limit-Info", "")
        for part in info.split(","):
            name, _, value = part.strip().partition("=")
            if name == "api-usage" and "/" in value:
                used, _, limit = value.partition("/")
                if used.strip().isdigit() and limit.strip().isdigit():
                    self.api_usage, self.api_limit = int(used), int(limit)

    # --- resources -----------------------------------------------------------------------

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record a SOQL query returns, following nextRecordsUrl."""
        return self.more(self.call("GET", "query", params={"q": soql}))

    def more(self, page: dict[str, Any]) -> list[dict[str, Any]]:
        records = list(page.get("records") or [])
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            page = self.call("GET", page["nextRecordsUrl"])
            records += page.get("records") or []
        return records

    def composite(self, requests: Sequence[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
        """Subrequests (method, path, body) in as few composite calls as allowed.

        Each answer is (HTTP status, body); one call per 25 subrequests or 5 queries.
        """
        out: list[tuple[int, Any]] = []
        if not self.has_composite:
            return [self._one(*request) for request in requests]
        for chunk in _composite_chunks(requests):
            if len(chunk) == 1:
                # One subrequest: the plain call costs the same and is simpler to read.
                out.append(self._one(*chunk[0]))
                continue
            for method, path, _ in chunk:
                log.debug("  in composite: %s %s", method, unquote(path))
            body = {"allOrNone": False, "compositeRequest": [
                {"method": method, "url": self.url(path)[len(self.instance_url):],
                 "referenceId": f"r{i}", **({"body": b} if b is not None else {})}
                for i, (method, path, b) in enumerate(chunk)]}
            try:
                answer = self.call("POST", "composite", body)
            except SalesforceError as exc:
                if exc.status not in (404, 405):
                    raise
                # An org (or a test server) without the composite resource: one call each.
                self.has_composite = False
                return out + [self._one(*r) for r in requests[len(out):]]
            by_ref = {r.get("referenceId"): r for r in answer.get("compositeResponse", [])}
            for i in range(len(chunk)):
                sub = by_ref.get(f"r{i}") or {}
                out.append((int(sub.get("httpStatusCode", 500)), sub.get("body")))
        return out


    def _one(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """A subrequest sent on its own, answered like one in a composite."""
        try:
            return 200, self.call(method, path, body)
        except SalesforceError as exc:
            return exc.status, exc.errors


def _composite_chunks(requests: Sequence[tuple[str, str, Any]]
                      ) -> Iterator[Sequence[tuple[str, str, Any]]]:
    chunk: list[tuple[str, str, Any]] = []
    queries = 0
    for request in requests:
        heavy = request[1].startswith(("query", "composite/"))
        if len(chunk) == COMPOSITE_SIZE or heavy and queries == COMPOSITE_QUERIES:
            yield chunk
            chunk, queries = [], 0
        chunk.append(request)
        queries += heavy
    if chunk:
        yield chunk


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        data = response.json()
    except ValueError:
        return [{"errorCode": f"HTTP_{response.status_code}",
                 "message": response.text[:200]}]
    if isinstance(data, dict):
        data = [data]
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def _first_code(response: httpx.Response) -> str | None:
    errors = _errors(response)
    return errors[0].get("errorCode") if errors else None


def soql_quote(value: str) -> str:
    """A SOQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def soql_list(values: Sequence[str]) -> str:
    return "(" + ", ".join(soql_quote(v) for v in values) + ")"


def soql_datetime(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def _repeatable(method: str, path: str) -> bool:
    """Whether doing the call twice is no harm: all but inserts. A composite call only
    bundles queries here; PATCH and DELETE write the same outcome again."""
    return method != "POST" or path == "composite"
