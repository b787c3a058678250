"""A server world for tests: a store, vault and embedded queue, users connected to the
real Radicale and the Salesforce sandbox through the service (OAuth included)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.fernet import Fernet

from crmsync.sandbox.server import Sandbox
from crmsync.server import accounts, service
from crmsync.server.accounts import User
from crmsync.server.queue import EmbeddedQueue
from crmsync.server.service import SalesforceApp, Server
from crmsync.server.vault import KEYS_ENV, Vault, load_keys
from crmsync.store import Store

PASSWORD = "correct horse battery"
REDIRECT = "https://crmsync.test/api/connections/crm/callback"
SESSION_SECRET = "a-session-secret"


@dataclass
class World:
    srv: Server
    queue: EmbeddedQueue
    key: str

    @property
    def store(self) -> Store:
        return self.srv.store


def make_world(tmp_path: Path, sandbox: Sandbox | None = None) -> World:
    store = Store.open(f"sqlite:///{tmp_path / 'server.db'}")
    key = Fernet.generate_key().decode()
    vault = Vault(store, load_keys(None, {KEYS_ENV: key}))
    queue = EmbeddedQueue(store.engine)
    app = None
    if sandbox is not None:
        app = SalesforceApp(sandbox.client_id, sandbox.client_secret,
                            login_url=sandbox.login_url, ca_bundle=str(sandbox.ca_path))
    return World(Server(store, vault, queue, app), queue, key)


def authorize(sandbox: Sandbox, url: str) -> dict[str, str]:
    """Follow the authorize address as a browser would (the sandbox approves at once): the
    query the callback is sent."""
    answer = httpx.get(url, verify=sandbox.ssl_context(), follow_redirects=False)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def connect_salesforce(world: World, user: User, sandbox: Sandbox) -> None:
    url = service.salesforce_start(world.srv, user, SESSION_SECRET, REDIRECT)
    query = authorize(sandbox, url)
    service.salesforce_callback(world.srv, user, SESSION_SECRET, state=query["state"],
                                code=query.get("code"), error=query.get("error"),
                                redirect_uri=REDIRECT)


def add_user(world: World, email: str, collections: dict[str, str] | None = None,
             sandbox: Sandbox | None = None, is_admin: bool = False) -> User:
    user = accounts.create_user(world.store, email, PASSWORD, is_admin=is_admin)
    if collections:
        service.add_dav(world.srv, user, collections, None, None)
    if sandbox is not None:
        connect_salesforce(world, user, sandbox)
    return user


def run_queued(world: World) -> list[tuple[int, str, str]]:
    """Run every queued job as a worker would; (user, kind, outcome or error) each."""
    done = []
    while (claimed := world.queue.claim("test")) is not None:
        error = None
        try:
            outcome = service.run_job(world.store, claimed.user_id, claimed.kind,
                                      vault=world.srv.vault)
        except Exception as exc:  # noqa: BLE001 - recorded as the queue records it
            error = outcome = f"{type(exc).__name__}: {exc}"
        world.queue.finish(claimed.id, error)
        done.append((claimed.user_id, claimed.kind, outcome))
    return done


def web_app(world: World, **options):
    from crmsync.server.web import create_app

    return create_app(world.store, world.queue, vault=world.srv.vault,
                      salesforce=world.srv.salesforce, **options)


def sign_in(client, email: str, password: str = PASSWORD) -> str:
    """Sign a TestClient in; the CSRF token, also set as the client's default header."""
    answer = client.post("/api/session", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    csrf = answer.json()["csrf_token"]
    client.headers["X-CSRF-Token"] = csrf
    return csrf
