"""Admin: defaults for every user (new and existing) and their locks, per object; the
users with their last run and errors; pause all sync.

Every call goes through the service, which checks the admin role: a user who is not an
admin gets 403 from these pages as from the API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from crmsync.errors import ConfigError
from crmsync.model import OBJECT_KINDS
from crmsync.server import service, settings
from crmsync.server.web import forms, server
from crmsync.server.web.pages.common import back, page_session, posted, render

router = APIRouter()


def _text(value: Any) -> str:
    """A setting's value as the admin form's text (as ``crmsync settings`` takes it)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(value)
    return str(value)


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request) -> HTMLResponse:
    return admin(request)


def admin(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    session = page_session(request)
    srv = server(request)
    users = service.users_overview(srv, session.user)  # checks the role
    locks = {k: settings.locked(service.admin_defaults(srv, session.user, k))
             for k in OBJECT_KINDS}
    return render(request, "admin.html", status, page="admin", users=users,
                  paused=service.paused(srv.store), locks=locks, kinds=OBJECT_KINDS,
                  error=error, done=request.query_params.get("done"))


@router.post("/admin/pause")
async def pause(request: Request) -> Response:
    form, session = await posted(request)
    service.set_paused(server(request), session.user, form.get("paused") == "true")
    return back("/admin?done=pause")


@router.post("/admin/users")
async def add_user(request: Request) -> Response:
    form, session = await posted(request)
    try:
        service.add_user(server(request), session.user, str(form.get("email") or ""),
                         str(form.get("password") or ""), form.get("is_admin") == "true")
    except ConfigError as exc:
        return admin(request, f"The user was not added: {exc}", 400)
    return back("/admin?done=user")


@router.post("/admin/users/{user_id}/admin")
async def make_admin(request: Request, user_id: int) -> Response:
    form, session = await posted(request)
    try:
        service.make_admin(server(request), session.user, user_id,
                           form.get("is_admin") == "true")
    except ConfigError as exc:
        return admin(request, str(exc), 400)
    return back("/admin?done=role")


def _defaults_page(request: Request, kind: str, status: int = 200, error: str | None = None,
                   sent: dict[str, tuple[str, bool]] | None = None) -> HTMLResponse:
    session = page_session(request)
    rows = service.admin_defaults(server(request), session.user, kind)
    builtin = settings.builtin(kind)  # type: ignore[arg-type]
    current = {n: (_text(rows[n].value) if n in rows else "", n in rows and rows[n].locked)
               for n in settings.NAMES}
    return render(request, "admin_settings.html", status, page="admin", kind=kind,
                  sections=forms.sections_for(kind), options_for=forms.options_for,
                  builtin=builtin, shown=forms.shown, current=current | (sent or {}),
                  error=error, saved=request.query_params.get("saved"))


@router.get("/admin/settings/{kind}", response_class=HTMLResponse)
def defaults(request: Request, kind: str) -> HTMLResponse:
    return _defaults_page(request, kind)


@router.post("/admin/settings/{kind}")
async def save_defaults(request: Request, kind: str) -> Response:
    """Each changed row: a default (blank: none) and its lock, for every user."""
    form, session = await posted(request)
    srv = server(request)
    rows = service.admin_defaults(srv, session.user, kind)
    sent = {n: (str(form.get(f"value:{n}") or "").strip(), form.get(f"lock:{n}") == "true")
            for n in settings.NAMES if f"value:{n}" in form}
    try:
        for name, (text, locked) in sent.items():
            value = settings.parse_text(name, text) if text else None
            row = rows.get(name)
            if row is not None and (row.value, row.locked) == (value, locked):
                continue
            if value is None and not locked:
                if row is not None:
                    service.clear_admin_setting(srv, session.user, kind, name)
                continue
            service.set_admin_setting(srv, session.user, kind, name, value, locked)
    except ConfigError as exc:
        return _defaults_page(request, kind, 400, str(exc), sent)
    return back(f"/admin/settings/{kind}?saved=1")
