"""What every page needs: the templates, who is signed in, the form's CSRF check.

A page that is not signed in raises 401, which the app answers with a redirect to the
sign-in page (see :func:`crmsync.server.web._errors`); unsafe requests carry the
session's CSRF token in the ``csrf_token`` form field (plain forms) or the
``X-CSRF-Token`` header (htmx, set once on ``<body>``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from crmsync.plan import SIDE_NAME
from crmsync.server import accounts
from crmsync.server.accounts import Session
from crmsync.server.web import CSRF_HEADER, TEMPLATES, current_session

templates = Jinja2Templates(directory=str(TEMPLATES))


def when(stamp: str | None) -> str:
    """A stored UTC stamp ("2026-11-22T08:00:00Z") as people read it."""
    if not stamp:
        return ""
    try:
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return stamp
    return at.strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["when"] = when
templates.env.globals["SIDE_NAME"] = SIDE_NAME


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("session", current_session(request))
    return templates.TemplateResponse(request, template, context, status_code=status)


def page_session(request: Request) -> Session:
    """The signed-in user's session; 401 (the app redirects to sign in) otherwise."""
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "sign in first")
    return session


def form_session(request: Request, csrf_token: str | None) -> Session:
    """The session of an unsafe page request, whose CSRF token came in the form's field
    or, from htmx, in the header."""
    session = page_session(request)
    if not accounts.csrf_ok(session, csrf_token or request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
    return session


async def posted(request: Request) -> tuple[FormData, Session]:
    """A posted form and the session it came from (its CSRF token checked)."""
    form = await request.form()
    token = form.get("csrf_token")
    return form, form_session(request, token if isinstance(token, str) else None)


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def back(url: str) -> RedirectResponse:
    """After a form post: see the result with a GET (post/redirect/get)."""
    return RedirectResponse(url, status_code=303)
