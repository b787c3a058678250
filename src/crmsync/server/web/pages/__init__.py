"""The HTML pages (Jinja2 templates, server-rendered, a little htmx).

Each page is a view of the same service calls as the JSON API, and checks nothing the
service does not. The modules: ``common`` (templates, session, CSRF), ``jobs`` (My
Settings, Sync now, each object's settings), ``connections`` (groupware account,
Salesforce OAuth, reconnect), ``review`` (a manual sync's plan), ``history`` (runs and
their reports) and ``admin`` (defaults and locks, users, pause). Every page works
without JavaScript; htmx only saves reloads.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from crmsync.server import accounts
from crmsync.server.accounts import RateLimited
from crmsync.server.web import COOKIE, current_session, server, set_session_cookie
from crmsync.server.web.pages import admin, connections, history, jobs, review
from crmsync.server.web.pages.common import back, form_session, render

router = APIRouter(include_in_schema=False)
# The sign-in form has no session yet: its CSRF token is a random value in a cookie of its
# own, echoed by the form (double submit), so no other site can sign a browser in.
SIGNIN_COOKIE = "crmsync_signin"


def _signin_page(request: Request, status: int = 200, error: str | None = None,
                 email: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    page = render(request, "signin.html", status, error=error, email=email, csrf_token=token)
    page.set_cookie(SIGNIN_COOKIE, token, max_age=3600, path="/signin", httponly=True,
                    samesite="strict", secure=request.app.state.secure_cookies)
    return page


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request) -> Response:
    if current_session(request) is not None:
        return back("/")
    return _signin_page(request)


@router.post("/signin")
def signin(request: Request, email: Annotated[str, Form(max_length=254)],
           password: Annotated[str, Form(max_length=1024)],
           csrf_token: Annotated[str, Form(max_length=100)] = "") -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
        return _signin_page(request, 403, "The form expired; please sign in again.", email)
    address = request.client.host if request.client else "unknown"
    try:
        user = accounts.authenticate(server(request).store, email, password, address)
    except RateLimited as exc:
        page = _signin_page(request, 429, str(exc), email)
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    if user is None:
        return _signin_page(request, 401, "Wrong email or password.", email)
    token, _ = accounts.start_session(server(request).store, user)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(request, response, token)
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout")
def signout(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
    session = form_session(request, csrf_token)
    accounts.end_session(server(request).store, session)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


for module in (jobs, connections, review, history, admin):
    router.include_router(module.router)
