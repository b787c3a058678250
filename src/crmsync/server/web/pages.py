"""The HTML pages (Jinja2 templates, server-rendered): sign-in and My Settings.

Each page is a view of the same service calls as the JSON API. Forms post with the
session's CSRF token in the ``csrf_token`` field; a page that is not signed in sends the
browser to the sign-in page.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from crmsync.server import accounts, service
from crmsync.server.accounts import RateLimited, Session
from crmsync.server.web import (
    COOKIE,
    TEMPLATES,
    current_session,
    server,
    set_session_cookie,
)

router = APIRouter(include_in_schema=False)
# The sign-in form has no session yet: its CSRF token is a random value in a cookie of its
# own, echoed by the form (double submit), so no other site can sign a browser in.
SIGNIN_COOKIE = "crmsync_signin"
templates = Jinja2Templates(directory=str(TEMPLATES))


def _render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


def _form_session(request: Request, csrf_token: str) -> Session:
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "sign in first")
    if not accounts.csrf_ok(session, csrf_token):
        raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
    return session


def _signin_page(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    page = _render(request, "signin.html", status, error=error, csrf_token=token)
    page.set_cookie(SIGNIN_COOKIE, token, max_age=3600, path="/signin", httponly=True,
                    samesite="strict", secure=request.app.state.secure_cookies)
    return page


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request) -> HTMLResponse:
    return _signin_page(request)


@router.post("/signin")
def signin(request: Request, email: Annotated[str, Form(max_length=254)],
           password: Annotated[str, Form(max_length=1024)],
           csrf_token: Annotated[str, Form(max_length=100)] = "") -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
        return _signin_page(request, 403, "The form expired; please sign in again.")
    address = request.client.host if request.client else "unknown"
    try:
        user = accounts.authenticate(server(request).store, email, password, address)
    except RateLimited as exc:
        page = _signin_page(request, 429, str(exc))
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    if user is None:
        return _signin_page(request, 401, "Wrong email or password.")
    token, _ = accounts.start_session(server(request).store, user)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(request, response, token)
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout")
def signout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    session = _form_session(request, csrf_token)
    accounts.end_session(server(request).store, session)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def my_settings(request: Request) -> Response:
    """My Settings: the Sync Jobs table (one row per object) and the connections."""
    session = current_session(request)
    if session is None:
        return RedirectResponse("/signin", status_code=303)
    srv = server(request)
    return _render(request, "settings.html", session=session,
                   jobs=service.jobs_overview(srv, session.user),
                   connections=service.connections(srv, session.user))


@router.post("/jobs/{kind}/run")
def sync_now(request: Request, kind: str, csrf_token: Annotated[str, Form()] = "") -> Response:
    session = _form_session(request, csrf_token)
    service.sync_now(server(request), session.user, kind)
    return RedirectResponse("/", status_code=303)
