"""My Settings: the Sync Jobs table (one row per object), Sync now, and each object's
settings, read-only and as the form.

Sync now queues a run; with htmx the row comes back in its new state ("queued",
"running") and keeps asking for itself every two seconds until the run is over. Without
JavaScript the form posts and the page comes back.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from crmsync.errors import ConfigError
from crmsync.model import OBJECT_KINDS
from crmsync.server import service
from crmsync.server.settings import LockedSetting
from crmsync.server.web import forms, server
from crmsync.server.web.pages.common import (
    back,
    form_session,
    is_htmx,
    page_session,
    posted,
    render,
)

router = APIRouter()
POLL_SECONDS = 2


def _job(request: Request, kind: str) -> service.JobView:
    session = page_session(request)
    jobs = {j.kind: j for j in service.jobs_overview(server(request), session.user)}
    if kind not in jobs:
        raise service.NotFound(f"no object {kind!r}; objects: {', '.join(OBJECT_KINDS)}")
    return jobs[kind]


def _row(request: Request, kind: str) -> HTMLResponse:
    return render(request, "_job_row.html", job=_job(request, kind), poll=POLL_SECONDS)


@router.get("/", response_class=HTMLResponse)
def my_settings(request: Request) -> Response:
    """My Settings: the Sync Jobs table and the state of the connections."""
    session = page_session(request)
    srv = server(request)
    return render(request, "settings.html", session=session, page="settings",
                  jobs=service.jobs_overview(srv, session.user),
                  connections=service.connections(srv, session.user),
                  paused=service.paused(srv.store), poll=POLL_SECONDS,
                  connected=request.query_params.get("connected"))


@router.get("/jobs/{kind}/row", response_class=HTMLResponse)
def job_row(request: Request, kind: str) -> HTMLResponse:
    """One row of the Sync Jobs table (htmx polls it while a run is queued or running)."""
    return _row(request, kind)


@router.post("/jobs/{kind}/run")
def sync_now(request: Request, kind: str,
             csrf_token: Annotated[str | None, Form()] = None) -> Response:
    session = form_session(request, csrf_token)
    service.sync_now(server(request), session.user, kind)
    if is_htmx(request):
        return _row(request, kind)
    return back("/")


def _settings_page(request: Request, kind: str, edit: bool, status: int = 200,
                   error: str | None = None, error_field: str | None = None,
                   submitted: dict | None = None) -> HTMLResponse:
    session = page_session(request)
    view = service.get_settings(server(request), session.user, kind)
    values = dict(view.values) | (submitted or {})
    return render(request, "object.html", status, page="settings", kind=kind, edit=edit,
                  view=view, values=values, sections=forms.sections_for(kind),
                  options_for=forms.options_for, shown=forms.shown, error=error,
                  error_field=error_field, saved=request.query_params.get("saved"))


@router.get("/settings/{kind}", response_class=HTMLResponse)
def settings_view(request: Request, kind: str) -> HTMLResponse:
    """The object's settings, read only (with an Edit button)."""
    return _settings_page(request, kind, edit=False)


@router.get("/settings/{kind}/edit", response_class=HTMLResponse)
def settings_form(request: Request, kind: str) -> HTMLResponse:
    return _settings_page(request, kind, edit=True)


@router.post("/settings/{kind}/edit")
async def save_settings(request: Request, kind: str) -> Response:
    form, session = await posted(request)
    srv = server(request)
    view = service.get_settings(srv, session.user, kind)
    try:
        changed = forms.changes(form, kind, view.values, view.locked)
        if changed:
            service.update_settings(srv, session.user, kind, changed)
    except LockedSetting as exc:
        return _settings_page(request, kind, True, 403, str(exc), exc.name)
    except ConfigError as exc:
        # Show the form again as it was sent, with what is wrong.
        field = next((n for n in forms.FIELDS if n in str(exc)), None)
        sent = {n: v for n, v in _sent(form, kind).items() if n not in view.locked}
        return _settings_page(request, kind, True, 400, str(exc), field, sent)
    return back(f"/settings/{kind}?saved=1")


def _sent(form, kind: str) -> dict:
    out = {}
    for section in forms.sections_for(kind):
        for field in section.fields:
            if field.widget == "checks":
                out[field.name] = form.getlist(field.name)
            elif field.widget == "bool":
                out[field.name] = form.get(field.name) == "true"
            elif field.name in form:
                out[field.name] = form[field.name]
    return out
