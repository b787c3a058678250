"""Connections: the groupware account (CalDAV/CardDAV, tried live before it is saved) and
Salesforce (OAuth web-server flow: the browser goes to Salesforce and comes back to the
API's callback), and the page that asks to reconnect after a refusal.

No secret is ever put in a page: a DAV password is asked for again, never shown.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.server import service
from crmsync.server.web import server
from crmsync.server.web.pages.common import back, page_session, posted, render

router = APIRouter()
KINDS_URLS = (("calendar", "Calendar URL (CalDAV)"), ("tasks", "Task list URL (CalDAV)"),
              ("contacts", "Address book URL (CardDAV)"))


def connections_page(request: Request, status: int = 200, error: str | None = None,
                     error_on: str | None = None, sent: dict | None = None,
                     template: str = "connections.html", **extra) -> HTMLResponse:
    """The Connections page (or the reconnect page), with an error of one connection."""
    session = page_session(request)
    srv = server(request)
    conns = {c.name: c for c in service.connections(srv, session.user)}
    gw = conns.get("groupware")
    dav = sent or {"urls": dict(gw.endpoints) if gw else {},
                   "username": gw.username if gw else "", "verify_tls": True}
    return render(request, template, status, page="connections", conns=conns, dav=dav,
                  kinds_urls=KINDS_URLS, error=error, error_on=error_on,
                  salesforce_ready=srv.salesforce is not None,
                  removed=request.query_params.get("removed"),
                  saved=request.query_params.get("saved"), **extra)


@router.get("/connections", response_class=HTMLResponse)
def connections(request: Request) -> HTMLResponse:
    return connections_page(request)


@router.post("/connections/groupware")
async def connect_groupware(request: Request) -> Response:
    """Test and save the CalDAV/CardDAV account (each collection is tried first)."""
    form, session = await posted(request)
    urls = {kind: str(form.get(f"{kind}_url") or "").strip() for kind, _ in KINDS_URLS}
    username = str(form.get("username") or "").strip() or None
    password = str(form.get("password") or "") or None
    verify = form.get("verify_tls") == "true"
    try:
        service.add_dav(server(request), session.user, {k: u for k, u in urls.items() if u},
                        username, password, verify)
    except (ConfigError, ConnectionFailed) as exc:
        sent = {"urls": urls, "username": username or "", "verify_tls": verify}
        where = form.get("back")
        template = "reconnect.html" if where == "reconnect" else "connections.html"
        return connections_page(request, 400, f"The connection test failed: {exc}",
                                "groupware", sent, template=template, name="groupware")
    return back("/connections?saved=groupware")


@router.post("/connections/crm/authorize")
async def connect_salesforce(request: Request) -> Response:
    """Start the OAuth flow: off to Salesforce's authorize page."""
    from crmsync.server.web.api import _callback_url

    _, session = await posted(request)
    url = service.salesforce_start(server(request), session.user, session.csrf_token,
                                   _callback_url(request))
    return back(url)


@router.post("/connections/{name}/remove")
async def remove(request: Request, name: str) -> Response:
    _, session = await posted(request)
    service.remove_connection(server(request), session.user, name)
    return back(f"/connections?removed={name}")


@router.get("/connections/{name}/reconnect", response_class=HTMLResponse)
def reconnect(request: Request, name: str) -> HTMLResponse:
    """A connection was refused (an expired or revoked Salesforce token, a changed
    password): what happened and the one button that fixes it."""
    if name not in service.CONNECTIONS:
        raise service.NotFound(f"no connection {name!r}")
    return connections_page(request, template="reconnect.html", name=name)
