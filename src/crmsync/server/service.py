"""Everything a user or an admin of the server can do, as plain functions on the store.

The web app (pages and JSON API) and the jobs call these and nothing below them, so the
rules live here once: every function takes the acting :class:`User` and looks up only
what that user owns (another user's plan, run or connection is "not found", never
"forbidden": ids reveal nothing), and admin functions check the role first.

The job itself is :func:`run_job`: one sync run of one user's object, the same
:class:`crmsync.sync.Syncer` the command line runs, with the user's effective settings
and their connections' secrets from the vault. :func:`scheduled` tells the scheduler
which objects run on a schedule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, desc, func, insert, select, update

from crmsync import planfile
from crmsync.connectors import connect
from crmsync.connectors.base import Connector, Credentials, Side
from crmsync.connectors.sfapi import LOGIN_URL, authorize_url
from crmsync.errors import ConfigError, ConnectionFailed, CrmsyncError
from crmsync.model import OBJECT_KINDS, ObjectKind
from crmsync.plan import CHOICES, WINNERS, Decisions
from crmsync.policy import Policy
from crmsync.server import accounts, settings
from crmsync.server.accounts import User
from crmsync.server.queue import JobQueue, JobState, Scheduled
from crmsync.server.settings import AdminSetting
from crmsync.server.vault import Vault, load_keys
from crmsync.store import Profile, Store, now
from crmsync.store.schema import (
    admin_settings,
    plans,
    profiles,
    runs,
    server_flags,
    user_secrets,
    users,
)
from crmsync.sync import KEEP_DAYS, Syncer

log = logging.getLogger(__name__)

CONNECTIONS: tuple[Side, ...] = ("groupware", "crm")
# Settings that change which items a run considers (as in ``crmsync settings``): after a
# change the next run lists every item again.
RESCAN = frozenset({"mode", "past_days", "future_days", "timezone", "include_private",
                    "exclude_category", "exclude_attendee", "shared", "selection",
                    "match_alternate_emails", "crm_category", "smart_address"})
OAUTH_STATE_TTL = 600


class NotFound(CrmsyncError):
    """Nothing of that id belongs to the acting user (or it does not exist)."""


class Forbidden(CrmsyncError):
    """The acting user may not do this (not an admin)."""


@dataclass(frozen=True)
class SalesforceApp:
    """The server's connected app at Salesforce, for every user's OAuth web-server flow."""

    client_id: str
    client_secret: str = field(repr=False)
    login_url: str = LOGIN_URL
    # A CA bundle to trust (the crmsync sandbox's own CA in tests and demos).
    ca_bundle: str | None = None


@dataclass
class Server:
    """What the service works on: the store, the secrets vault and the job queue."""

    store: Store
    vault: Vault
    queue: JobQueue | None = None
    salesforce: SalesforceApp | None = None
    keep_days: int = KEEP_DAYS


def require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("only an admin may do this")


def _kind(kind: str) -> ObjectKind:
    if kind not in OBJECT_KINDS:
        raise NotFound(f"no object {kind!r}; objects: {', '.join(OBJECT_KINDS)}")
    return kind  # type: ignore[return-value]


# --- profiles and settings --------------------------------------------------------------


def _profile(store: Store, user: User | int) -> Profile:
    profile_id = user.profile_id if isinstance(user, User) else None
    with store.engine.connect() as conn:
        if profile_id is None:
            profile_id = conn.execute(select(users.c.profile_id)
                                      .where(users.c.id == user)).scalar()
        row = conn.execute(select(profiles).where(profiles.c.id == profile_id)).first()
    if row is None:
        raise NotFound("this user has no profile")
    return Profile(row.id, row.name, row.crm, row.groupware, json.loads(row.objects),
                   json.loads(row.settings or "{}"))


def _save_profile(store: Store, profile: Profile) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(profiles).where(profiles.c.id == profile.id).values(
            crm=profile.crm, groupware=profile.groupware, settings=json.dumps(profile.settings)))


def admin_rows(store: Store, kind: ObjectKind) -> dict[str, AdminSetting]:
    c = admin_settings.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(c.name, c.value, c.locked).where(c.kind == kind)).all()
    return {r.name: AdminSetting(json.loads(r.value) if r.value is not None else None,
                                 bool(r.locked)) for r in rows}


def _endpoint(profile: Profile, side: Side, kind: ObjectKind) -> str | None:
    raw = profile.crm if side == "crm" else profile.groupware
    if not raw:
        return None
    if not raw.startswith("{"):
        return raw
    return json.loads(raw).get(kind)


def _connected(profile: Profile, kind: ObjectKind) -> bool:
    return all(_endpoint(profile, s, kind) for s in ("crm", "groupware"))


def effective_policy(store: Store, profile: Profile, kind: ObjectKind) -> Policy:
    return settings.effective(kind, admin_rows(store, kind), profile.settings.get(kind, {}))


@dataclass
class SettingsView:
    kind: str
    values: dict[str, Any]  # effective
    own: dict[str, Any]  # what the user set themselves
    locked: list[str]
    defaults: dict[str, Any]  # the admin's defaults (without the built-in ones)
    # What a form shows: each setting's name, input type, choices and help.
    fields: list[dict[str, Any]] = field(default_factory=list)


def get_settings(srv: Server, user: User, kind: str) -> SettingsView:
    k = _kind(kind)
    profile = _profile(srv.store, user)
    admin = admin_rows(srv.store, k)
    own = profile.settings.get(k, {})
    return SettingsView(k, settings.merged(k, admin, own), dict(own), settings.locked(admin),
                        {n: s.value for n, s in admin.items() if s.value is not None},
                        settings.describe(k))


def update_settings(srv: Server, user: User, kind: str,
                    changes: dict[str, Any]) -> SettingsView:
    """Change the user's own settings of an object; a newly enabled object runs at once."""
    k = _kind(kind)
    profile = _profile(srv.store, user)
    admin = admin_rows(srv.store, k)
    own = profile.settings.get(k, {})
    before = settings.effective(k, admin, own)
    new_own = settings.change(k, admin, own, changes)
    after = settings.effective(k, admin, new_own)
    profile.settings[k] = new_own
    _save_profile(srv.store, profile)
    if any(getattr(before, n) != getattr(after, n) for n in RESCAN):
        srv.store.reset_cursors(profile.id, k)
    if before.mode == "off" and after.mode != "off" and srv.queue is not None:
        srv.queue.enqueue(user.id, k, "enabled")
    return get_settings(srv, user, k)


# --- the sync jobs overview ---------------------------------------------------------------


@dataclass
class JobView:
    kind: str
    enabled: bool
    mode: str
    connected: bool
    # Auto sync: every this many minutes, on these days, in this window (else None).
    frequency: int | None
    days: list[str]
    window: str
    last_run: dict[str, Any] | None
    state: JobState | None  # queued | running | None
    review_plan: int | None  # a plan waiting for the user's review
    # The connections this object uses that were refused: the user must reconnect them.
    reconnect: list[str] = field(default_factory=list)


def _last_runs(store: Store, profile_id: int) -> dict[str, dict[str, Any]]:
    return store.last_runs(profile_id)


def _run_summary(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {k: run.get(k) for k in ("id", "status", "started_at", "finished_at", "error",
                                    "mode")}


def jobs_overview(srv: Server, user: User) -> list[JobView]:
    profile = _profile(srv.store, user)
    last = _last_runs(srv.store, profile.id)
    with srv.store.engine.connect() as conn:
        waiting = {r.kind: r.id for r in conn.execute(
            select(plans.c.kind, plans.c.id).where(plans.c.user_id == user.id,
                                                   plans.c.status == "review"))}
        refused = {r.name for r in conn.execute(
            select(user_secrets.c.name).where(user_secrets.c.user_id == user.id,
                                              user_secrets.c.error.is_not(None)))}
    out = []
    for kind in OBJECT_KINDS:
        policy = effective_policy(srv.store, profile, kind)
        out.append(JobView(
            kind, policy.mode != "off", policy.mode, _connected(profile, kind),
            policy.auto_every if policy.mode == "auto" else None, list(policy.auto_days),
            policy.auto_window, _run_summary(last.get(kind)),
            srv.queue.state(user.id, kind) if srv.queue is not None else None,
            waiting.get(kind),
            [n for n in CONNECTIONS if n in refused and _endpoint(profile, n, kind)]))
    return out


def sync_now(srv: Server, user: User, kind: str) -> JobState:
    """Queue a run of the object (nothing more when one is queued or running)."""
    k = _kind(kind)
    if srv.queue is None:
        raise ConfigError("this server has no job queue")
    return srv.queue.enqueue(user.id, k, "now")


# --- connections --------------------------------------------------------------------------


@dataclass
class ConnectionView:
    name: str  # groupware | crm
    type: str  # dav | salesforce
    endpoints: dict[str, str]  # kind -> URL (no secrets)
    username: str | None
    error: str | None  # the last refusal; the user should reconnect
    needs_reconnect: bool
    updated_at: str


def connections(srv: Server, user: User) -> list[ConnectionView]:
    profile = _profile(srv.store, user)
    c = user_secrets.c
    with srv.store.engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(
            select(c.name, c.error, c.updated_at).where(c.user_id == user.id))}
    out = []
    for name in CONNECTIONS:
        if name not in rows:
            continue
        endpoints = {k: e for k in OBJECT_KINDS if (e := _endpoint(profile, name, k))}
        creds = srv.vault.get(user.id, name)
        out.append(ConnectionView(
            name, "salesforce" if name == "crm" else "dav",
            {k: e.partition(":")[2] for k, e in endpoints.items()},
            creds.username if creds else None, rows[name].error, rows[name].error is not None,
            rows[name].updated_at))
    return out


def _dav_check(url: str, protocol: str, creds: Credentials) -> None:
    """A live test of one collection: it answers with these credentials and is one."""
    from crmsync.connectors.dav import discover

    found = discover(url, protocol, creds)  # type: ignore[arg-type]
    if len(found) == 1 and found[0].url.rstrip("/") == url.rstrip("/"):
        return
    what = "calendar" if protocol == "caldav" else "address book"
    listed = ", ".join(c.url for c in found[:10])
    raise ConfigError(f"{url} is not a {what}" + (f"; found: {listed}" if listed else ""))


def _http_url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url!r} is not an http(s) URL")
    return url


def discover_dav(srv: Server, user: User, url: str, username: str | None,
                 password: str | None, verify_tls: bool = True) -> dict[str, list[dict]]:
    """The calendars and address books at a CalDAV/CardDAV server, to pick from; nothing
    is saved. ``url``: the server, a principal, a home or a collection."""
    from crmsync.connectors.dav import discover

    creds = Credentials(username=username or None, password=password or None,
                        verify=verify_tls)
    found: dict[str, list[dict]] = {}
    for protocol, key in (("caldav", "calendars"), ("carddav", "addressbooks")):
        found[key] = [{"url": c.url, "name": c.name, "components": sorted(c.components)}
                      for c in discover(_http_url(url), protocol, creds)]
    return found


def add_dav(srv: Server, user: User, urls: dict[str, str], username: str | None,
            password: str | None, verify_tls: bool = True) -> ConnectionView:
    """Connect a CalDAV/CardDAV account: each collection is tried before anything is saved.

    ``urls``: object -> collection URL (calendar and tasks: CalDAV; contacts: CardDAV).
    """
    chosen = {_kind(k): _http_url(u) for k, u in urls.items() if u and u.strip()}
    if not chosen:
        raise ConfigError("give the URL of at least one calendar, task list or address book")
    creds = Credentials(username=username or None, password=password or None,
                        verify=verify_tls)
    endpoints = {}
    for kind, url in chosen.items():
        protocol = "carddav" if kind == "contacts" else "caldav"
        _dav_check(url, protocol, creds)
        endpoints[kind] = f"{protocol}:{url}"
    profile = _profile(srv.store, user)
    # Always per object: one calendar must not stand for the address book too.
    profile.groupware = json.dumps(endpoints, sort_keys=True)
    _save_profile(srv.store, profile)
    srv.vault.put(user.id, "groupware", creds)
    return next(c for c in connections(srv, user) if c.name == "groupware")


def _oauth_sig(secret: str, user_id: int, stamp: str, nonce: str) -> str:
    return hmac.new(secret.encode(), f"{user_id}.{stamp}.{nonce}".encode(),
                    hashlib.sha256).hexdigest()


def salesforce_start(srv: Server, user: User, session_secret: str, redirect_uri: str) -> str:
    """The Salesforce authorize address; its ``state`` is bound to the user's session."""
    app = _salesforce(srv)
    stamp, nonce = str(int(time.time())), secrets.token_urlsafe(16)
    state = f"{stamp}.{nonce}.{_oauth_sig(session_secret, user.id, stamp, nonce)}"
    return authorize_url(app.client_id, redirect_uri, login_url=app.login_url, state=state)


def _salesforce(srv: Server) -> SalesforceApp:
    if srv.salesforce is None:
        raise ConfigError("Salesforce is not set up on this server (an admin gives the "
                          "connected app: crmsync serve --salesforce-client-id ...)")
    return srv.salesforce


def salesforce_callback(srv: Server, user: User, session_secret: str, *, state: str,
                        code: str | None, error: str | None,
                        redirect_uri: str) -> ConnectionView:
    """Finish the OAuth web-server flow: check the state, trade the code, save the token."""
    from crmsync import oauth_login

    app = _salesforce(srv)
    parts = state.split(".")
    if len(parts) != 3 or not hmac.compare_digest(
            parts[2], _oauth_sig(session_secret, user.id, parts[0], parts[1])):
        raise ConfigError("this answer from Salesforce does not belong to a connection you "
                          "started (state mismatch); start again")
    if not parts[0].isdigit() or time.time() - int(parts[0]) > OAUTH_STATE_TTL:
        raise ConfigError("the Salesforce authorization took too long; start again")
    if error:
        raise ConnectionFailed(f"Salesforce did not authorize crmsync: {error}")
    if not code:
        raise ConfigError("the answer from Salesforce carries no authorization code")
    tls = Credentials(ca_bundle=app.ca_bundle)
    creds, token = oauth_login.finish_web_login(
        code, client_id=app.client_id, client_secret=app.client_secret,
        redirect_uri=redirect_uri, login_url=app.login_url, tls=tls)
    instance = token.instance_url or app.login_url
    profile = _profile(srv.store, user)
    profile.crm = f"salesforce:{instance}"
    _save_profile(srv.store, profile)
    srv.vault.put(user.id, "crm", creds)
    return next(c for c in connections(srv, user) if c.name == "crm")


def remove_connection(srv: Server, user: User, name: str) -> None:
    if name not in CONNECTIONS or not srv.vault.delete(user.id, name):
        raise NotFound(f"no {name} connection")
    profile = _profile(srv.store, user)
    if name == "crm":
        profile.crm = ""
    else:
        profile.groupware = ""
    _save_profile(srv.store, profile)


def _mark_connection(store: Store, user_id: int, name: str, error: str | None) -> None:
    c = user_secrets.c
    with store.engine.begin() as conn:
        conn.execute(update(user_secrets).where(c.user_id == user_id, c.name == name).values(
            error=error, error_at=now() if error else None))


# --- plans for review ---------------------------------------------------------------------


@dataclass
class PlanView:
    id: int
    kind: str
    status: str
    created_at: str
    updated_at: str
    run_id: int | None
    counts: dict[str, int]
    steps: list[dict[str, Any]]


def _plan_row(store: Store, user: User, plan_id: int):
    with store.engine.connect() as conn:
        row = conn.execute(select(plans).where(plans.c.id == plan_id,
                                               plans.c.user_id == user.id)).first()
    if row is None:
        raise NotFound(f"no plan {plan_id}")
    return row


def _step_choices(step: dict[str, Any]) -> list[str]:
    out = ["include", "exclude", "ignore-until-change", "ignore-forever"]
    if any(a["op"] == "conflict" for a in step["actions"]):
        out += list(WINNERS)
    return out


def _plan_view(row, with_steps: bool = True) -> PlanView:
    body = json.loads(row.body)
    chosen = body.get("choices", {})
    steps = []
    counts: dict[str, int] = {}
    for obj in body["objects"].values():
        for step in obj["steps"]:
            for a in step["actions"]:
                code = "failed" if a.get("failed") else (
                    f"{a['op']}:{a['side']}" if a["op"] in ("create", "update", "delete")
                    else a["op"])
                counts[code] = counts.get(code, 0) + 1
            if with_steps:
                steps.append({"key": step["key"], "crm": step["crm"],
                              "groupware": step["groupware"], "actions": step["actions"],
                              "choice": chosen.get(step["key"], "include"),
                              "choices": _step_choices(step)})
    return PlanView(row.id, row.kind, row.status, row.created_at, row.updated_at, row.run_id,
                    dict(sorted(counts.items())), steps)


def list_plans(srv: Server, user: User) -> list[PlanView]:
    with srv.store.engine.connect() as conn:
        rows = conn.execute(select(plans).where(plans.c.user_id == user.id)
                            .order_by(desc(plans.c.id)).limit(50)).all()
    return [_plan_view(r, with_steps=False) for r in rows]


def get_plan(srv: Server, user: User, plan_id: int) -> PlanView:
    return _plan_view(_plan_row(srv.store, user, plan_id))


def choose(srv: Server, user: User, plan_id: int, keys: list[str], choice: str) -> PlanView:
    """The review's choice for some steps (multi-select): include, exclude, ignore, or a
    conflict's winner."""
    row = _plan_row(srv.store, user, plan_id)
    if row.status != "review":
        raise ConfigError(f"plan {plan_id} is {row.status}; only a plan in review changes")
    if choice not in CHOICES:
        raise ConfigError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    body = json.loads(row.body)
    steps = {s["key"]: s for obj in body["objects"].values() for s in obj["steps"]}
    chosen = body.setdefault("choices", {})
    for key in keys:
        if key not in steps:
            raise ConfigError(f"plan {plan_id} has no step {key!r}")
        if choice not in _step_choices(steps[key]):
            raise ConfigError(f"step {key!r} has no conflict: {choice!r} does not apply")
    for key in keys:
        if choice == "include":
            chosen.pop(key, None)
        else:
            chosen[key] = choice
    with srv.store.engine.begin() as conn:
        conn.execute(update(plans).where(plans.c.id == plan_id).values(
            body=json.dumps(body), updated_at=now()))
    return get_plan(srv, user, plan_id)


def confirm_plan(srv: Server, user: User, plan_id: int) -> PlanView:
    """Confirm the reviewed plan: a job applies it (re-checked against the sides)."""
    row = _plan_row(srv.store, user, plan_id)
    if row.status != "review":
        raise ConfigError(f"plan {plan_id} is {row.status}; only a plan in review is confirmed")
    with srv.store.engine.begin() as conn:
        conn.execute(update(plans).where(plans.c.id == plan_id).values(
            status="confirmed", updated_at=now()))
    if srv.queue is not None:
        srv.queue.enqueue(user.id, row.kind, "now")
    return get_plan(srv, user, plan_id)


def discard_plan(srv: Server, user: User, plan_id: int) -> PlanView:
    row = _plan_row(srv.store, user, plan_id)
    if row.status not in ("review", "confirmed"):
        raise ConfigError(f"plan {plan_id} is {row.status} already")
    with srv.store.engine.begin() as conn:
        conn.execute(update(plans).where(plans.c.id == plan_id).values(
            status="discarded", updated_at=now()))
    return get_plan(srv, user, plan_id)


# --- ignores and runs -----------------------------------------------------------------------


def list_ignores(srv: Server, user: User) -> list[dict[str, Any]]:
    return srv.store.ignores(_profile(srv.store, user).id)


def remove_ignore(srv: Server, user: User, kind: str, side: str, item_id: str) -> None:
    if side not in ("crm", "groupware"):
        raise NotFound(f"no side {side!r}")
    if not srv.store.unignore(_profile(srv.store, user).id, _kind(kind),
                              [(side, item_id)]):  # type: ignore[list-item]
        raise NotFound("no such ignore")


def list_runs(srv: Server, user: User, limit: int = 50) -> list[dict[str, Any]]:
    return srv.store.runs(_profile(srv.store, user).id, limit=max(1, min(limit, 500)))


def get_run(srv: Server, user: User, run_id: int) -> dict[str, Any]:
    try:
        return srv.store.run(_profile(srv.store, user).id, run_id)
    except ConfigError:
        raise NotFound(f"no run {run_id}") from None


# --- admin --------------------------------------------------------------------------------


def admin_defaults(srv: Server, admin: User, kind: str) -> dict[str, AdminSetting]:
    require_admin(admin)
    return admin_rows(srv.store, _kind(kind))


def set_admin_setting(srv: Server, admin: User, kind: str, name: str, value: Any,
                      locked: bool) -> dict[str, AdminSetting]:
    """An admin's default for every user (``value`` None: none) and its lock."""
    require_admin(admin)
    k = _kind(kind)
    if name not in settings.NAMES:
        raise NotFound(f"no setting {name!r}")
    rows = admin_rows(srv.store, k)
    if value is not None:
        value = settings.check_value(name, value)
    before = _modes(srv.store, k, rows)
    rows[name] = AdminSetting(value, locked)
    settings.check_admin(k, rows)
    c = admin_settings.c
    with srv.store.engine.begin() as conn:
        conn.execute(delete(admin_settings).where(c.kind == k, c.name == name))
        conn.execute(insert(admin_settings).values(
            kind=k, name=name, value=None if value is None else json.dumps(value),
            locked=locked, updated_at=now()))
    _enqueue_enabled(srv, k, before, _modes(srv.store, k, rows))
    return admin_rows(srv.store, k)


def _modes(store: Store, kind: ObjectKind,
           admin: dict[str, AdminSetting]) -> dict[int, str | None]:
    """Every active user's effective mode of ``kind`` under these admin rows (None: the
    user's settings do not make a valid object under them)."""
    out: dict[int, str | None] = {}
    for user in accounts.list_users(store):
        if user.disabled:
            continue
        own = _profile(store, user).settings.get(kind, {})
        try:
            out[user.id] = settings.effective(kind, admin, own).mode
        except ConfigError:
            out[user.id] = None
    return out


def _enqueue_enabled(srv: Server, kind: ObjectKind, before: dict[int, str | None],
                     after: dict[int, str | None]) -> None:
    """An admin default that turns an object on runs it at once for each user it enables."""
    if srv.queue is None:
        return
    for user_id, mode in after.items():
        if mode not in (None, "off") and before.get(user_id) in (None, "off"):
            srv.queue.enqueue(user_id, kind, "enabled")


def clear_admin_setting(srv: Server, admin: User, kind: str, name: str) -> None:
    require_admin(admin)
    k = _kind(kind)
    rows = admin_rows(srv.store, k)
    if name not in rows:
        raise NotFound(f"no admin default for {name!r}")
    before = _modes(srv.store, k, rows)
    del rows[name]
    c = admin_settings.c
    with srv.store.engine.begin() as conn:
        conn.execute(delete(admin_settings).where(c.kind == k, c.name == name))
    _enqueue_enabled(srv, k, before, _modes(srv.store, k, rows))


def paused(store: Store) -> bool:
    with store.engine.connect() as conn:
        value = conn.execute(select(server_flags.c.value)
                             .where(server_flags.c.name == "paused")).scalar()
    return bool(value and json.loads(value))


def set_paused(srv: Server, admin: User, value: bool) -> bool:
    require_admin(admin)
    with srv.store.engine.begin() as conn:
        conn.execute(delete(server_flags).where(server_flags.c.name == "paused"))
        conn.execute(insert(server_flags).values(name="paused", value=json.dumps(value),
                                                 updated_at=now()))
    return value


@dataclass
class UserView:
    id: int
    email: str
    is_admin: bool
    disabled: bool
    last_run: dict[str, Any] | None
    last_error: str | None
    connection_errors: dict[str, str]


def users_overview(srv: Server, admin: User) -> list[UserView]:
    require_admin(admin)
    out = []
    for user in accounts.list_users(srv.store):
        with srv.store.engine.connect() as conn:
            last = conn.execute(select(runs).where(
                runs.c.profile_id == user.profile_id, runs.c.dry_run.is_(False))
                .order_by(desc(runs.c.id)).limit(1)).first()
            failed = conn.execute(select(runs.c.error, runs.c.started_at).where(
                runs.c.profile_id == user.profile_id, runs.c.error.is_not(None))
                .order_by(desc(runs.c.id)).limit(1)).first()
            errors = {r.name: r.error for r in conn.execute(
                select(user_secrets.c.name, user_secrets.c.error).where(
                    user_secrets.c.user_id == user.id, user_secrets.c.error.is_not(None)))}
        out.append(UserView(user.id, user.email, user.is_admin, user.disabled,
                            _run_summary(dict(last._mapping)) if last else None,
                            failed.error if failed else None, errors))
    return out


def add_user(srv: Server, admin: User, email: str, password: str,
             is_admin: bool = False) -> UserView:
    require_admin(admin)
    user = accounts.create_user(srv.store, email, password, is_admin=is_admin)
    return next(u for u in users_overview(srv, admin) if u.id == user.id)


def make_admin(srv: Server, admin: User, user_id: int, is_admin: bool) -> UserView:
    require_admin(admin)
    target = accounts.get_user(srv.store, user_id)
    if target is None:
        raise NotFound(f"no user {user_id}")
    if not is_admin and target.is_admin and accounts.count_admins(srv.store) <= 1:
        raise ConfigError("the last admin cannot stop being one")
    accounts.set_admin(srv.store, user_id, is_admin)
    return next(u for u in users_overview(srv, admin) if u.id == user_id)


# --- the job ------------------------------------------------------------------------------


class _Blame:
    """A connector whose connection failures say which side they came from."""

    def __init__(self, inner: Connector, side: Side) -> None:
        self._inner, self._side = inner, side

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except ConnectionFailed as exc:
                exc.side = self._side  # type: ignore[attr-defined]
                raise

        return call


def _record(store: Store, profile: Profile, kind: str, status: str, error: str,
            user: str) -> int:
    """A run that did not get to the sides (paused, not connected, refused)."""
    run_id = store.start_run(profile.id, [kind], "server", user)
    store.finish_run(run_id, status, {}, error)
    return run_id


def _confirmed_plan(store: Store, user_id: int, kind: str):
    with store.engine.connect() as conn:
        return conn.execute(select(plans).where(
            plans.c.user_id == user_id, plans.c.kind == kind, plans.c.status == "confirmed")
            .order_by(desc(plans.c.id)).limit(1)).first()


_VAULTS: weakref.WeakKeyDictionary[Store, Vault] = weakref.WeakKeyDictionary()


def use_vault(store: Store, vault: Vault) -> None:
    """The vault jobs on ``store`` use when none is given (``crmsync serve`` sets it)."""
    _VAULTS[store] = vault


def vault_of(store: Store) -> Vault:
    """The vault registered for ``store``, else one with the process's keys: from
    $CRMSYNC_SERVER_KEYS, else server.key in the data folder (see crmsync.server.vault)."""
    if store not in _VAULTS:
        from crmsync.config import Paths

        _VAULTS[store] = Vault(store, load_keys(Paths.resolve().data_dir))
    return _VAULTS[store]


def run_job(store: Store, user_id: int, kind: str, *, vault: Vault | None = None,
            keep_days: int = KEEP_DAYS, clock: Callable[[], datetime] | None = None) -> str:
    """One sync run of a user's object, by its effective mode; what it did, in a word.

    auto: plan and apply. manual: apply the plan the user confirmed (re-checked against
    the sides, as ``crmsync apply`` does), else plan and keep the plan for review (writes
    nothing). off, a disabled user or a paused server: nothing (a paused server records
    why). Safe to run again after a crash: the Syncer's runs are idempotent, and a
    confirmed plan stays confirmed until its run is recorded.
    """
    user = accounts.get_user(store, user_id)
    if user is None or user.disabled or kind not in OBJECT_KINDS:
        return "nothing"
    k: ObjectKind = kind  # type: ignore[assignment]
    profile = _profile(store, user)
    if paused(store):
        _record(store, profile, k, "cancelled", "sync is paused by an admin", user.email)
        return "paused"
    policy = effective_policy(store, profile, k)
    if policy.mode == "off":
        return "off"
    if not _connected(profile, k):
        missing = [s for s in ("groupware", "crm") if not _endpoint(profile, s, k)]
        _record(store, profile, k, "failed", f"not connected: connect your "
                f"{' and '.join('CRM' if s == 'crm' else s for s in missing)} first",
                user.email)
        return "not connected"
    vault = vault or vault_of(store)
    run_profile = dataclasses.replace(profile, settings={k: policy.to_dict()})
    try:
        sides = {s: _Blame(connect(_endpoint(profile, s, k) or "", s, vault.get(user.id, s)), s)
                 for s in ("crm", "groupware")}
    except ConfigError as exc:
        _record(store, profile, k, "failed", str(exc), user.email)
        raise
    syncer = Syncer(store, run_profile, crm=sides["crm"],  # type: ignore[arg-type]
                    groupware=sides["groupware"],  # type: ignore[arg-type]
                    keep_days=keep_days, clock=clock)
    started = False
    try:
        if policy.mode == "manual" or policy.mode == "record":
            outcome, started = _manual(store, syncer, user, k)
        else:
            prepared = syncer.prepare([k])
            if prepared and prepared[0].plan.guard:
                # The mass-delete guard: a person decides, not the schedule.
                _keep_for_review(store, syncer, user, k, prepared)
                _record(store, profile, k, "aborted", "the mass-delete guard stopped the "
                        "run; its plan waits for your review", user.email)
                return "review"
            started = True
            syncer.run(prepared, mode="auto", user=user.email)
            outcome = "synced"
        for side in ("crm", "groupware"):
            _mark_connection(store, user.id, side, None)
        return outcome
    except ConnectionFailed as exc:
        side = getattr(exc, "side", None)
        if side is not None:
            _mark_connection(store, user.id, side, str(exc))
        if not started:
            _record(store, profile, k, "failed", str(exc), user.email)
        raise
    finally:
        syncer.close()


def _manual(store: Store, syncer: Syncer, user: User, kind: ObjectKind) -> tuple[str, bool]:
    confirmed = _confirmed_plan(store, user.id, kind)
    if confirmed is not None:
        body = json.loads(confirmed.body)
        saved = planfile.load(json.dumps(body), f"plan {confirmed.id}")
        checked = syncer.prepare_file(saved)
        kept: set[str] = set()
        for _, outcome in checked:
            # Steps whose items changed since the review were not seen: the next review.
            outcome.hold_replanned()
            kept |= set(outcome.kept)
        choices = {key: c for key, c in body.get("choices", {}).items() if key in kept}
        prepared = syncer.decide([p for p, _ in checked], Decisions(choices))
        report = syncer.run(prepared, mode="manual", user=user.email)
        with store.engine.begin() as conn:
            conn.execute(update(plans).where(plans.c.id == confirmed.id).values(
                status="applied", run_id=report.run_id, updated_at=now()))
        return "applied", True
    prepared = syncer.prepare([kind])
    plan = prepared[0].plan if prepared else None
    if plan is None or not (plan.writes or plan.conflicts or plan.guard):
        # Nothing to review: the run only records that the sides are in step.
        syncer.run(prepared, mode="manual", user=user.email)
        return "in step", True
    _keep_for_review(store, syncer, user, kind, prepared)
    return "review", False


def _keep_for_review(store: Store, syncer: Syncer, user: User, kind: ObjectKind,
                     prepared) -> int:
    """Save a run's plan for the user's review (replacing an older one in review)."""
    body = planfile.dump(syncer.profile.name, syncer.profile.id, [p.plan for p in prepared],
                         now())
    body["choices"] = {}
    stamp = now()
    cutoff = (datetime.now(UTC) - timedelta(days=max(syncer.keep_days, 1))
              ).strftime("%Y-%m-%dT%H:%M:%SZ")
    with store.engine.begin() as conn:
        conn.execute(update(plans).where(plans.c.user_id == user.id, plans.c.kind == kind,
                                         plans.c.status == "review")
                     .values(status="stale", updated_at=stamp))
        # Plans done with are kept as long as run reports are.
        conn.execute(delete(plans).where(
            plans.c.user_id == user.id, plans.c.updated_at < cutoff,
            plans.c.status.in_(("stale", "discarded", "applied"))))
        plan_id = conn.execute(insert(plans).values(
            user_id=user.id, kind=kind, status="review", body=planfile.dumps(body),
            created_at=stamp, updated_at=stamp).returning(plans.c.id)).scalar_one()
    syncer.record_dry_run(prepared, user=user.email)
    return plan_id


def scheduled(store: Store) -> list[Scheduled]:
    """Every connected object of an active user whose effective mode is auto (none while
    the server is paused), with its effective policy and last finished run's start.

    Asked every tick: the admin rows are read once, users with their profiles in one
    query, and the run history only of users who have an object on a schedule.
    """
    if paused(store):
        return []
    admin = {kind: admin_rows(store, kind) for kind in OBJECT_KINDS}
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(users.c.id.label("user_id"), profiles)
            .join(profiles, profiles.c.id == users.c.profile_id)
            .where(users.c.disabled.is_(False)).order_by(users.c.id)).all()
    wanted: list[tuple[int, int, ObjectKind, Policy]] = []
    for row in rows:
        profile = Profile(row.id, row.name, row.crm, row.groupware, json.loads(row.objects),
                          json.loads(row.settings or "{}"))
        for kind in OBJECT_KINDS:
            try:
                policy = settings.effective(kind, admin[kind], profile.settings.get(kind, {}))
            except ConfigError:
                log.warning("user %d: the settings of %s are invalid", row.user_id, kind)
                continue
            if policy.mode == "auto" and _connected(profile, kind):
                wanted.append((row.user_id, profile.id, kind, policy))
    last = _last_starts(store, sorted({w[1] for w in wanted}))
    out = []
    for user_id, profile_id, kind, policy in wanted:
        started = last.get((profile_id, kind))
        out.append(Scheduled(user_id, kind, policy, datetime.strptime(
            started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if started else None))
    return out


def _last_starts(store: Store, profile_ids: list[int]) -> dict[tuple[int, str], str]:
    """The start of each (profile, object)'s last finished, non-dry run, in one query per
    500 profiles (a server's runs are of one object each; a CLI run's of several)."""
    out: dict[tuple[int, str], str] = {}
    c = runs.c
    with store.engine.connect() as conn:
        for start in range(0, len(profile_ids), 500):
            query = (select(c.profile_id, c.objects, func.max(c.started_at))
                     .where(c.profile_id.in_(profile_ids[start:start + 500]),
                            c.dry_run.is_(False), c.status != "running")
                     .group_by(c.profile_id, c.objects))
            for profile_id, objects, started in conn.execute(query):
                for kind in json.loads(objects):
                    if started > out.get((profile_id, kind), ""):
                        out[(profile_id, kind)] = started
    return out

def make_user(store: Store, n: int, caldav: dict[str, str], salesforce: dict[str, str],
              vault: Vault | None = None) -> User:
    """Provision user ``n`` whose calendar syncs automatically: a CalDAV collection
    ({"url", "username", "password"}) and a Salesforce org's ready credentials (a refresh
    token: {"instance_url", "login_url", "ca_path", "client_id", "client_secret",
    "refresh_token"}), without a browser. For benchmarks and scripted set-ups."""
    vault = vault or vault_of(store)
    user = accounts.create_user(store, f"user{n}@example.com", secrets.token_urlsafe(18))
    srv = Server(store, vault)
    add_dav(srv, user, {"calendar": caldav["url"]}, caldav.get("username") or None,
            caldav.get("password") or None)
    vault.put(user.id, "crm", Credentials(
        client_id=salesforce["client_id"], client_secret=salesforce["client_secret"],
        refresh_token=salesforce["refresh_token"], ca_bundle=salesforce.get("ca_path"),
        login_url=salesforce.get("login_url")))
    profile = _profile(store, user)
    profile.crm = f"salesforce:{salesforce['instance_url']}"
    profile.settings["calendar"] = {"mode": "auto"}
    _save_profile(store, profile)
    return user
