"""Run the sandbox: uvicorn with TLS on a loopback port, in a background thread.

    with Sandbox() as sf, sf.client() as http:
        http.get("/services/data/v62.0/query", params={"q": "SELECT Id FROM Contact"})

A connector is given ``sf.url``, ``sf.ca_path``, ``sf.client_id``, ``sf.client_secret``
and ``sf.refresh_token`` (or the JWT key) instead.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import uvicorn

from crmsync.sandbox import tls
from crmsync.sandbox.app import create_app
from crmsync.sandbox.db import Org
from crmsync.sandbox.state import State

if TYPE_CHECKING:
    import httpx

STARTUP_TIMEOUT = 15.0


class Sandbox:
    """A local Salesforce org over HTTPS. ``db_path`` None keeps the data in memory; with a
    path, records, tokens, client id/secret and keys (``<db>.keys/``) survive restarts."""

    def __init__(self, db_path: str | Path | None = None, daily_limit: int = 15000,
                 port: int = 0, host: str = "127.0.0.1") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if db_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="crmsync-sandbox-")
            keys = Path(self._tmp.name)
        else:
            keys = Path(db_path).with_suffix(".keys")
        self.files = tls.ensure(keys)
        self.org = Org(db_path, daily_limit)
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"https://{host}:{self.port}"
        self.state = State(self.org, self.url, self.files.jwt_cert.read_bytes())
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- what a client needs ------------------------------------------------------------

    @property
    def ca_path(self) -> str:
        return str(self.files.ca_cert)

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

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the sandbox's CA (for ``httpx``'s ``verify=``)."""
        return ssl.create_default_context(cafile=self.ca_path)

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

    def start(self) -> Sandbox:
        config = uvicorn.Config(create_app(self.state), log_level="warning",
                                ssl_certfile=str(self.files.server_cert),
                                ssl_keyfile=str(self.files.server_key),
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._sock.listen(128)
        server, sock = self._server, self._sock
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])),
                                        name=f"sandbox-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Salesforce sandbox did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving, wait for the thread, close the socket and the database."""
        if self._server is not None:
            # Idle keep-alive TLS connections would hold a graceful shutdown for as long
            # as the clients keep them open; in-flight requests are ours to lose.
            self._server.force_exit = True
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()
        self.org.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> None:
        """Block until the server stops (for the command line)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
