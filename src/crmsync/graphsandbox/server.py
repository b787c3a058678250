"""Run the Graph sandbox: uvicorn with TLS on a loopback port, in a background thread.

    with GraphSandbox() as graph:
        graph.url, graph.ca_path, graph.authority, graph.client_id, graph.client_secret

The TLS certificates come from :mod:`crmsync.sandbox.tls` (the Salesforce sandbox's), so
one local CA serves both sandboxes' kind of setup.
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

import uvicorn

from crmsync.graphsandbox.app import create_app
from crmsync.graphsandbox.oauth import Identity
from crmsync.graphsandbox.resources import Mailboxes
from crmsync.graphsandbox.store import Store
from crmsync.sandbox import tls

STARTUP_TIMEOUT = 15.0
USERS = ("adele@contoso.example", "megan@contoso.example")


class GraphSandbox:
    """A local Microsoft 365 tenant over HTTPS: Graph at ``url + "/v1.0"`` and the
    identity platform at ``authority`` (``url + "/" + tenant``). ``db_path`` None keeps
    the mailboxes in memory."""

    def __init__(self, db_path: str | Path | None = None, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if db_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="crmsync-graph-")
            keys = Path(self._tmp.name)
        else:
            keys = Path(db_path).with_suffix(".keys")
        self.files = tls.ensure(keys)
        self.store = Store(db_path)
        self.boxes = Mailboxes(self.store, USERS)
        self.identity = Identity(user=USERS[0])
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"https://{host}:{self.port}"
        self.app = create_app(self.boxes, self.identity)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def ca_path(self) -> str:
        return str(self.files.ca_cert)

    @property
    def authority(self) -> str:
        return f"{self.url}/{self.identity.tenant}"

    @property
    def client_id(self) -> str:
        return self.identity.client_id

    @property
    def client_secret(self) -> str:
        return self.identity.client_secret

    @property
    def user(self) -> str:
        return self.identity.user

    @property
    def refresh_token(self) -> str:
        return self.identity.ready_refresh_token()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path)

    def start(self) -> GraphSandbox:
        config = uvicorn.Config(self.app, log_level="warning",
                                ssl_certfile=str(self.files.server_cert),
                                ssl_keyfile=str(self.files.server_key),
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._sock.listen(128)
        server, sock = self._server, self._sock
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])),
                                        name=f"graph-sandbox-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Graph sandbox did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.force_exit = True
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> GraphSandbox:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
