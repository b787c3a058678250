"""Run the sandbox: uvicorn with TLS on a loopback port, in a background thread.

    with Sandbox() as sf, sf.client() as http:
        http.get("/services/data/v62.0/query", params={"q": "SELECT Id FROM Contact"})

A connector is given ``sf.url``, ``sf.ca_path``, ``sf.client_id``, ``sf.client_secret``
and ``sf.refresh_token`` (or the JWT key) instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmsync.sandbox.app import create_app
from crmsync.sandbox.db import Org
from crmsync.sandbox.serving import TlsServer
from crmsync.sandbox.state import State

if TYPE_CHECKING:
    import httpx

class Sandbox(TlsServer):
    """A local Salesforce org over HTTPS. ``db_path`` None keeps the data in memory; with a
    path, records, tokens, client id/secret and keys (``<db>.keys/``) survive restarts."""

    def __init__(self, db_path: str | Path | None = None, daily_limit: int = 15000,
                 port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(db_path, port, host, prefix="crmsync-sandbox-")
        self.org = Org(db_path, daily_limit)
        self.state = State(self.org, self.url, self.files.jwt_cert.read_bytes())

    # --- what a client needs ------------------------------------------------------------

    @property
    def jwt_private_key_path(self) -> str:
        return str(self.files.jwt_key)

    @property
    def jwt_certificate_path(self) -> str:
        return str(self.files.jwt_cert)

    @property
    def client_id(self) -> str:
        return self.state.client_id

    @property
    def client_secret(self) -> str:
        return self.state.client_secret

    @property
    def username(self) -> str:
        return self.state.username

    @property
    def refresh_token(self) -> str:
        return self.state.ready_refresh_token()

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An httpx client on the sandbox, logged in as its user (by the refresh token):
        what a CRM user or a test needs to enter and inspect records."""
        import httpx

        verify = self.ssl_context()
        token = httpx.post(self.url + "/services/oauth2/token", verify=verify, timeout=timeout,
                           data={"grant_type": "refresh_token", "client_id": self.client_id,
                                 "client_secret": self.client_secret,
                                 "refresh_token": self.refresh_token})
        token.raise_for_status()
        return httpx.Client(base_url=self.url, verify=verify, timeout=timeout, headers={
            "Authorization": f"Bearer {token.json()['access_token']}"})

    @property
    def login_url(self) -> str:
        """The audience of JWT assertions and the base of /services/oauth2/ (the sandbox
        is its own login server)."""
        return self.url

    # --- life cycle ---------------------------------------------------------------------

    title = "Salesforce sandbox"

    def _app(self) -> Any:
        return create_app(self.state)

    def _close(self) -> None:
        self.org.close()
