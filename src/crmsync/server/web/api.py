"""The JSON API: one thin route per service operation, under ``/api``.

Every route but signing in depends on :func:`signed_in` (session and CSRF); ownership
and roles are checked by the service, so a route cannot forget them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.server import accounts, service
from crmsync.server.accounts import Session
from crmsync.server.web import (
    COOKIE,
    current_session,
    server,
    set_session_cookie,
    signed_in,
)
from crmsync.server.web.models import (
    AdminSettingIn,
    AdminSettingOut,
    AdminUserOut,
    AuthorizeOut,
    Choose,
    Collections,
    ConnectionOut,
    DavAccount,
    DavServer,
    Error,
    IgnoreKey,
    IgnoreOut,
    JobOut,
    JobState,
    Kind,
    NewUser,
    Paused,
    PlanOut,
    RunOut,
    SessionOut,
    SettingsChange,
    SettingsOut,
    SignIn,
    UserChange,
    UserOut,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error}, 401: {"model": Error}, 403: {"model": Error},
    404: {"model": Error}}
router = APIRouter(prefix="/api", responses=ERRORS)
Auth = Annotated[Session, Depends(signed_in)]
Id = Annotated[int, Path(ge=1, le=2**53)]


def _user_out(user: accounts.User) -> UserOut:
    return UserOut(id=user.id, email=user.email, is_admin=user.is_admin)


# --- the session --------------------------------------------------------------------------


@router.post("/session", response_model=SessionOut, tags=["session"],
             responses={429: {"model": Error}})
def sign_in(body: SignIn, request: Request, response: Response) -> SessionOut:
    """Sign in: sets the session cookie; answers the CSRF token to send from now on."""
    srv = server(request)
    address = request.client.host if request.client else "unknown"
    user = accounts.authenticate(srv.store, body.email, body.password, address)
    if user is None:
        raise HTTPException(401, "wrong email or password")
    token, session = accounts.start_session(srv.store, user)
    set_session_cookie(request, response, token)
    return SessionOut(user=_user_out(user), csrf_token=session.csrf_token)


@router.get("/session", response_model=SessionOut, tags=["session"])
def whoami(session: Auth) -> SessionOut:
    return SessionOut(user=_user_out(session.user), csrf_token=session.csrf_token)


@router.delete("/session", status_code=204, tags=["session"])
def sign_out(session: Auth, request: Request, response: Response) -> None:
    accounts.end_session(server(request).store, session)
    response.delete_cookie(COOKIE, path="/")


# --- sync jobs and settings ---------------------------------------------------------------


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def jobs(session: Auth, request: Request) -> list[dict[str, Any]]:
    """My Settings' Sync Jobs: one row per object."""
    return [asdict(j) for j in service.jobs_overview(server(request), session.user)]


@router.post("/jobs/{kind}/run", response_model=JobState, status_code=202, tags=["jobs"])
def sync_now(kind: Kind, session: Auth, request: Request) -> JobState:
    """Sync now: queue a run (nothing more while one is queued or running)."""
    return JobState(state=service.sync_now(server(request), session.user, kind))


@router.get("/settings/{kind}", response_model=SettingsOut, tags=["settings"])
def get_settings(kind: Kind, session: Auth, request: Request) -> dict[str, Any]:
    return asdict(service.get_settings(server(request), session.user, kind))


@router.patch("/settings/{kind}", response_model=SettingsOut, tags=["settings"])
def change_settings(kind: Kind, body: SettingsChange, session: Auth,
                    request: Request) -> dict[str, Any]:
    """Change some of my settings; 403 names a setting an admin locked."""
    return asdict(service.update_settings(server(request), session.user, kind, body.values))


# --- connections --------------------------------------------------------------------------


@router.get("/connections", response_model=list[ConnectionOut], tags=["connections"])
def connections(session: Auth, request: Request) -> list[dict[str, Any]]:
    """My connections, without secrets; ``needs_reconnect`` after a refusal."""
    return [asdict(c) for c in service.connections(server(request), session.user)]


@router.put("/connections/groupware", response_model=ConnectionOut, tags=["connections"])
def connect_groupware(body: DavAccount, session: Auth, request: Request) -> dict[str, Any]:
    """Connect a CalDAV/CardDAV account; each collection is tried before it is saved."""
    urls = {"calendar": body.calendar_url, "tasks": body.tasks_url,
            "contacts": body.contacts_url}
    return asdict(service.add_dav(server(request), session.user,
                                  {k: v for k, v in urls.items() if v}, body.username,
                                  body.password, body.verify_tls))


@router.post("/connections/groupware/discover", response_model=Collections,
             tags=["connections"])
def discover_groupware(body: DavServer, session: Auth, request: Request) -> dict[str, Any]:
    """The calendars and address books at a server, to pick from (nothing is saved)."""
    return service.discover_dav(server(request), session.user, body.url, body.username,
                                body.password, body.verify_tls)


def _callback_url(request: Request) -> str:
    base = request.app.state.public_url
    path = request.app.url_path_for("salesforce_callback")
    return f"{base}{path}" if base else str(request.url_for("salesforce_callback"))


@router.post("/connections/crm/authorize", response_model=AuthorizeOut, tags=["connections"])
def salesforce_authorize(session: Auth, request: Request) -> AuthorizeOut:
    """Start connecting Salesforce: send the browser to ``authorize_url``."""
    url = service.salesforce_start(server(request), session.user, session.csrf_token,
                                   _callback_url(request))
    return AuthorizeOut(authorize_url=url)


@router.get("/connections/crm/callback", name="salesforce_callback", status_code=303,
            tags=["connections"], response_class=RedirectResponse)
def salesforce_callback(request: Request,
                        state: Annotated[str, Query(max_length=500)] = "",
                        code: Annotated[str | None, Query(max_length=2000)] = None,
                        error: Annotated[str | None, Query(max_length=500)] = None
                        ) -> RedirectResponse:
    """Where Salesforce sends the browser back; then on to My Settings. A browser that
    asks for HTML gets a failure as the Connections page, with what went wrong."""
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "sign in first")
    try:
        service.salesforce_callback(server(request), session.user, session.csrf_token,
                                    state=state, code=code, error=error,
                                    redirect_uri=_callback_url(request))
    except (ConfigError, ConnectionFailed) as exc:
        if not (request.app.state.pages and "text/html" in request.headers.get("accept", "")):
            raise
        from crmsync.server.web.pages.connections import connections_page

        return connections_page(request, 400, f"Salesforce was not connected: {exc}",
                                "crm")  # type: ignore[return-value]
    return RedirectResponse("/?connected=crm", status_code=303)


@router.delete("/connections/{name}", status_code=204, tags=["connections"])
def disconnect(name: str, session: Auth, request: Request) -> None:
    service.remove_connection(server(request), session.user, name)


# --- review -------------------------------------------------------------------------------


@router.get("/plans", response_model=list[PlanOut], tags=["review"])
def plans(session: Auth, request: Request) -> list[dict[str, Any]]:
    return [asdict(p) for p in service.list_plans(server(request), session.user)]


@router.get("/plans/{plan_id}", response_model=PlanOut, tags=["review"])
def plan(plan_id: Id, session: Auth, request: Request) -> dict[str, Any]:
    """A plan for review: per step the CRM item, the groupware item, the actions, and the
    choice made (include, exclude, ignore-*, or a conflict's winner)."""
    return asdict(service.get_plan(server(request), session.user, plan_id))


@router.post("/plans/{plan_id}/choices", response_model=PlanOut, tags=["review"])
def choose(plan_id: Id, body: Choose, session: Auth, request: Request) -> dict[str, Any]:
    """Set one choice for one or more steps (multi-select)."""
    return asdict(service.choose(server(request), session.user, plan_id, body.keys,
                                 body.choice))


@router.post("/plans/{plan_id}/confirm", response_model=PlanOut, tags=["review"])
def confirm(plan_id: Id, session: Auth, request: Request) -> dict[str, Any]:
    """Confirm: a job applies the plan as chosen, after checking nothing changed."""
    return asdict(service.confirm_plan(server(request), session.user, plan_id))


@router.post("/plans/{plan_id}/discard", response_model=PlanOut, tags=["review"])
def discard(plan_id: Id, session: Auth, request: Request) -> dict[str, Any]:
    return asdict(service.discard_plan(server(request), session.user, plan_id))


@router.get("/ignores", response_model=list[IgnoreOut], tags=["review"])
def ignores(session: Auth, request: Request) -> list[dict[str, Any]]:
    return service.list_ignores(server(request), session.user)


@router.post("/ignores/remove", status_code=204, tags=["review"])
def unignore(body: IgnoreKey, session: Auth, request: Request) -> None:
    service.remove_ignore(server(request), session.user, body.kind, body.side, body.item_id)


# --- run history --------------------------------------------------------------------------


@router.get("/runs", response_model=list[RunOut], tags=["runs"])
def runs(session: Auth, request: Request,
         limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    return service.list_runs(server(request), session.user, limit)


@router.get("/runs/{run_id}", response_model=RunOut, tags=["runs"])
def run(run_id: Id, session: Auth, request: Request) -> dict[str, Any]:
    """One run's report, with each item that was skipped, failed or in conflict."""
    return service.get_run(server(request), session.user, run_id)


# --- admin --------------------------------------------------------------------------------


@router.get("/admin/settings/{kind}", response_model=dict[str, AdminSettingOut],
            tags=["admin"])
def admin_settings(kind: Kind, session: Auth, request: Request) -> dict[str, Any]:
    """The defaults and locks for every user, by setting."""
    rows = service.admin_defaults(server(request), session.user, kind)
    return {name: asdict(s) for name, s in rows.items()}


@router.put("/admin/settings/{kind}/{name}", response_model=dict[str, AdminSettingOut],
            tags=["admin"])
def set_admin_setting(kind: Kind, name: Annotated[str, Path(max_length=64)],
                      body: AdminSettingIn, session: Auth, request: Request
                      ) -> dict[str, Any]:
    """Set a default for every user (new and existing) and lock or unlock it."""
    rows = service.set_admin_setting(server(request), session.user, kind, name, body.value,
                                     body.locked)
    return {n: asdict(s) for n, s in rows.items()}


@router.delete("/admin/settings/{kind}/{name}", status_code=204, tags=["admin"])
def clear_admin_setting(kind: Kind, name: Annotated[str, Path(max_length=64)],
                        session: Auth, request: Request) -> None:
    service.clear_admin_setting(server(request), session.user, kind, name)


@router.get("/admin/users", response_model=list[AdminUserOut], tags=["admin"])
def admin_users(session: Auth, request: Request) -> list[dict[str, Any]]:
    """Every user with their last run and last error."""
    return [asdict(u) for u in service.users_overview(server(request), session.user)]


@router.post("/admin/users", response_model=AdminUserOut, status_code=201, tags=["admin"])
def admin_add_user(body: NewUser, session: Auth, request: Request) -> dict[str, Any]:
    return asdict(service.add_user(server(request), session.user, body.email, body.password,
                                   body.is_admin))


@router.patch("/admin/users/{user_id}", response_model=AdminUserOut, tags=["admin"])
def admin_change_user(user_id: Id, body: UserChange, session: Auth,
                      request: Request) -> dict[str, Any]:
    return asdict(service.make_admin(server(request), session.user, user_id, body.is_admin))


@router.get("/admin/pause", response_model=Paused, tags=["admin"])
def get_paused(session: Auth, request: Request) -> Paused:
    service.require_admin(session.user)
    return Paused(paused=service.paused(server(request).store))


@router.put("/admin/pause", response_model=Paused, tags=["admin"])
def set_paused(body: Paused, session: Auth, request: Request) -> Paused:
    """Pause (or resume) all sync: no scheduled runs, queued runs do nothing."""
    return Paused(paused=service.set_paused(server(request), session.user, body.paused))
