"""The Microsoft identity platform, as much as crmsync and MSAL need of it.

* ``GET /{tenant}/v2.0/.well-known/openid-configuration``: OpenID discovery, which MSAL
  reads before anything else (so MSAL works against the sandbox with
  ``authority=https://127.0.0.1:PORT/TENANT``, instance discovery and authority
  validation turned off).
* ``POST /{tenant}/oauth2/v2.0/devicecode``: the device authorization request; the user
  "approves" through the control API (``POST /_sandbox/device/approve``).
  https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code
* ``POST /{tenant}/oauth2/v2.0/token``: client credentials (application token, no
  ``/me``), refresh token and device code grants (delegated token for the sandbox user).
  https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow

Access tokens are opaque here (real ones are JWTs; clients must not read them anyway).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from crmsync.graphsandbox.resources import Principal

TOKEN_LIFETIME = 3600
DEVICE_LIFETIME = 900


@dataclass
class Identity:
    """The tenant's app registration, its user, and the tokens handed out."""

    tenant: str = "contoso"
    user: str = "adele@contoso.example"
    client_id: str = field(default_factory=lambda: "00000000-" + secrets.token_hex(4)
                           + "-4000-8000-" + secrets.token_hex(6))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    tokens: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    # Redeemed refresh tokens stop working (the strictest rotation Microsoft applies).
    single_use_refresh: bool = False
    # device code -> [user code, approved, expires]
    devices: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, principal: Principal, refresh: bool) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = (principal, time.time() + TOKEN_LIFETIME)
        out: dict[str, Any] = {"token_type": "Bearer", "expires_in": TOKEN_LIFETIME,
                               "ext_expires_in": TOKEN_LIFETIME, "access_token": token,
                               "scope": "https://graph.microsoft.com/.default"
                               if principal.kind == "app" else
                               "Calendars.ReadWrite Contacts.ReadWrite Tasks.ReadWrite"}
        if refresh:
            rt = secrets.token_urlsafe(40)
            with self.lock:
                self.refresh[rt] = principal.mailbox or ""
            out["refresh_token"] = rt
        return out

    def principal(self, token: str) -> Principal | None:
        with self.lock:
            found = self.tokens.get(token)
        if found is None or found[1] < time.time():
            return None
        return found[0]

    def expire_all(self) -> None:
        with self.lock:
            self.tokens.clear()

    def ready_refresh_token(self) -> str:
        """A refresh token for the sandbox user, as an earlier device-code login left."""
        return self.issue(Principal("user", self.user), refresh=True)["refresh_token"]

    def approve(self, user_code: str) -> bool:
        with self.lock:
            for entry in self.devices.values():
                if entry[0] == user_code:
                    entry[1] = True
                    return True
        return False


router = APIRouter()


def _identity(request: Request) -> Identity:
    return request.app.state.identity


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description,
                         "error_codes": [], "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ")},
                        status_code=status)


@router.get("/{tenant}/v2.0/.well-known/openid-configuration")
async def discovery(tenant: str, request: Request) -> JSONResponse:
    base = str(request.base_url).rstrip("/") + f"/{tenant}"
    return JSONResponse({
        "issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                  "client_secret_basic"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"]})


@router.post("/{tenant}/oauth2/v2.0/devicecode")
async def devicecode(tenant: str, request: Request) -> JSONResponse:
    ident = _identity(request)
    form = await request.form()
    if form.get("client_id") != ident.client_id:
        return _oauth_error("unauthorized_client", "AADSTS700016: Application not found.")
    device = secrets.token_urlsafe(32)
    user_code = secrets.token_hex(4).upper()
    with ident.lock:
        ident.devices[device] = [user_code, False, time.time() + DEVICE_LIFETIME]
    where = str(request.base_url).rstrip("/") + "/devicelogin"
    return JSONResponse({"device_code": device, "user_code": user_code,
                         "verification_uri": where, "expires_in": DEVICE_LIFETIME,
                         "interval": 1,
                         "message": f"To sign in, use a web browser to open the page {where} "
                                    f"and enter the code {user_code} to authenticate."})


@router.post("/{tenant}/oauth2/v2.0/token")
async def token(tenant: str, request: Request) -> JSONResponse:
    ident = _identity(request)
    form = await request.form()
    client_id = str(form.get("client_id") or "")
    secret = form.get("client_secret")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        import base64

        client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
    if client_id != ident.client_id:
        return _oauth_error("unauthorized_client", "AADSTS700016: Application with identifier "
                            f"'{client_id}' was not found in the directory.")
    grant = form.get("grant_type")
    if grant == "client_credentials":
        if secret != ident.client_secret:
            return _oauth_error("invalid_client", "AADSTS7000215: Invalid client secret "
                                "provided.", 401)
        return JSONResponse(ident.issue(Principal("app"), refresh=False))
    if grant == "refresh_token":
        with ident.lock:
            given = str(form.get("refresh_token") or "")
            user = (ident.refresh.pop(given, None) if ident.single_use_refresh
                    else ident.refresh.get(given))
        if user is None:
            return _oauth_error("invalid_grant", "AADSTS70000: The provided refresh token "
                                "is invalid or expired.")
        return JSONResponse(ident.issue(Principal("user", user), refresh=True))
    if grant in ("urn:ietf:params:oauth:grant-type:device_code", "device_code"):
        code = str(form.get("device_code") or "")
        with ident.lock:
            entry = ident.devices.get(code)
        if entry is None or entry[2] < time.time():
            return _oauth_error("expired_token", "AADSTS70020: The device code expired.")
        if not entry[1]:
            return _oauth_error("authorization_pending", "AADSTS70016: The user has not yet "
                                "completed authentication.")
        with ident.lock:
            ident.devices.pop(code, None)
        return JSONResponse(ident.issue(Principal("user", ident.user), refresh=True))
    return _oauth_error("unsupported_grant_type", f"AADSTS70003: grant type {grant!r} is not "
                        "supported.")
