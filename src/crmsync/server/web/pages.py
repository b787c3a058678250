"""The HTML pages (Jinja2 templates, server-rendered): sign-in and My Settings.

Each page is a view of the same service calls as the JSON API. Forms post with the
session's CSRF token in the ``csrf_token`` field; a page that is not signed in sends the
browser to the sign-in page.
"""

from __future__ import annotations

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


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request) -> HTMLResponse:
    return _render(request, "signin.html", error=None)


@router.post("/signin")
def signin(request: Request, email: Annotated[str, Form(max_length=254)],
           password: Annotated[str, Form(max_length=1024)]) -> Response:
    address = request.client.host if request.client else "unknown"
    try:
        user = accounts.authenticate(server(request).store, email, password, address)
    except RateLimited as exc:
        page = _render(request, "signin.html", 429, error=str(exc))
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    if user is None:
        return _render(request, "signin.html", 401, error="Wrong email or password.")
    token, _ = accounts.start_session(server(request).store, user)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(request, response, token)
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
