"""OAuth 2.0 endpoints: web server flow (authorization code), refresh token, JWT bearer.

Token responses carry access_token, instance_url, id, token_type, issued_at, signature
and scope (plus refresh_token for the code flow). ``signature`` is the documented
Base64 HMAC-SHA256 of ``id + issued_at`` keyed with the client secret.
https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm&type=5
https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm&type=5
https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm&type=5
Errors are 400 ``{"error", "error_description"}`` (invalid_grant, invalid_client_id,
invalid_client, unsupported_grant_type, ...).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
from cryptography import x509
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from crmsync.sandbox.state import State

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "refresh_token api"
# The audiences Salesforce accepts for JWT bearer; the sandbox adds its own URL.
JWT_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")

router = APIRouter()


async def _form(request: Request) -> dict[str, str]:
    """The form-encoded body (parsed here: no python-multipart needed), then the query
    string, which Salesforce also accepts for token requests."""
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"),
                          keep_blank_values=True))
    return form | {k: v for k, v in request.query_params.items() if k not in form}


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "error_description": self.description},
                            status_code=self.status)


def _state(request: Request) -> State:
    return request.app.state.sandbox


def _token_response(state: State, with_refresh: bool) -> dict[str, Any]:
    access = state.org.issue_token("access", state.user_id, state.session_timeout)
    # On the org's clock, as every time it gives (clients estimate its clock from this).
    issued_at = str(int(state.org.now().timestamp() * 1000))
    identity = state.identity_url()
    signature = base64.b64encode(hmac.new(state.client_secret.encode(),
                                          (identity + issued_at).encode(),
                                          hashlib.sha256).digest()).decode()
    body = {"access_token": access, "signature": signature, "scope": SCOPE,
            "instance_url": state.url, "id": identity, "token_type": "Bearer",
            "issued_at": issued_at}
    if with_refresh:
        body["refresh_token"] = state.org.issue_token("refresh", state.user_id, None)
    return body


def _check_client(state: State, form: dict[str, str], secret_required: bool) -> None:
    if form.get("client_id") != state.client_id:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    secret = form.get("client_secret")
    if (secret_required or secret is not None) and not (
            secret and hmac.compare_digest(secret, state.client_secret)):
        raise OAuthError("invalid_client", "invalid client credentials")


def _authorization_code(state: State, form: dict[str, str]) -> dict[str, Any]:
    _check_client(state, form, secret_required=True)
    issued = state.codes.pop(form.get("code", ""), None)
    if issued is None:
        raise OAuthError("invalid_grant", "invalid authorization code")
    client_id, redirect_uri, _ = issued
    if form.get("redirect_uri") != redirect_uri:
        raise OAuthError("redirect_uri_mismatch", "redirect_uri must match configuration")
    return _token_response(state, with_refresh=True)


def _refresh(state: State, form: dict[str, str]) -> dict[str, Any]:
    _check_client(state, form, secret_required=False)
    if state.org.token_user(form.get("refresh_token", ""), "refresh") is None:
        raise OAuthError("invalid_grant", "expired access/refresh token")
    return _token_response(state, with_refresh=False)


def _jwt_bearer(state: State, form: dict[str, str]) -> dict[str, Any]:
    assertion = form.get("assertion", "")
    public_key = x509.load_pem_x509_certificate(state.jwt_cert_pem).public_key()
    try:
        claims = jwt.decode(assertion, public_key, algorithms=["RS256"],  # type: ignore[arg-type]
                            options={"require": ["iss", "sub", "aud", "exp"],
                                     "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise OAuthError("invalid_grant", "expired authorization code") from None
    except jwt.InvalidTokenError:
        raise OAuthError("invalid_grant", "invalid assertion") from None
    if claims["iss"] != state.client_id:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if not any(a.rstrip("/") in (state.url, *JWT_AUDIENCES) for a in audiences):
        raise OAuthError("invalid_grant", "audience is invalid")
    if claims["sub"] != state.username:
        raise OAuthError("invalid_grant", "user hasn't approved this consumer")
    return _token_response(state, with_refresh=False)


GRANTS = {"authorization_code": _authorization_code, "refresh_token": _refresh,
          JWT_GRANT: _jwt_bearer}


@router.post("/services/oauth2/token")
async def token(request: Request) -> Response:
    form = await _form(request)
    grant = GRANTS.get(form.get("grant_type", ""))
    try:
        if grant is None:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        return JSONResponse(grant(_state(request), form))
    except OAuthError as exc:
        return exc.response()


@router.get("/services/oauth2/authorize")
async def authorize(request: Request) -> Response:
    """Auto-approves for the demo user (there is no login page to show)."""
    state = _state(request)
    params = request.query_params
    if params.get("client_id") != state.client_id:
        return OAuthError("invalid_client_id", "client identifier invalid").response()
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri:
        return OAuthError("redirect_uri_mismatch", "redirect_uri must match "
                          "configuration").response()
    sep = "&" if "?" in redirect_uri else "?"
    if params.get("response_type") != "code":
        query = {"error": "unsupported_response_type",
                 "error_description": "response type not supported"}
    else:
        code = "aPrx" + secrets.token_urlsafe(32)
        state.codes[code] = (state.client_id, redirect_uri, state.user_id)
        query = {"code": code}
    if params.get("state") is not None:
        query["state"] = params["state"]
    return RedirectResponse(redirect_uri + sep + urlencode(query), status_code=302)


@router.post("/services/oauth2/revoke")
async def revoke(request: Request) -> Response:
    token = (await _form(request)).get("token", "")
    state = _state(request)
    if state.org.token_user(token, "access") is None \
            and state.org.token_user(token, "refresh") is None:
        return OAuthError("invalid_token", "invalid token").response()
    state.org.revoke(token)
    return Response(status_code=200)
