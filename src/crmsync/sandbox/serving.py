"""Serve a sandbox: uvicorn with TLS on a loopback port, in a background thread.

Both sandboxes (Salesforce's and Microsoft Graph's) run this way: tests and the command
line start one, talk to it over real HTTPS, and stop it. The TLS files come from
:mod:`crmsync.sandbox.tls`, next to the sandbox's database or in a temporary folder.
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
from typing import Any, Self

import uvicorn

from crmsync.sandbox import tls

STARTUP_TIMEOUT = 15.0


class TlsServer:
    """What a sandbox needs to be served; subclasses give the app and close their data."""

    #: For messages and the thread's name.
    title = "sandbox"

    def __init__(self, db_path: str | Path | None, port: int, host: str, prefix: str) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if db_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
            keys = Path(self._tmp.name)
        else:
            keys = Path(db_path).with_suffix(".keys")
        self.files = tls.ensure(keys)
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"https://{host}:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _app(self) -> Any:
        raise NotImplementedError

    def _close(self) -> None:
        """Release the sandbox's data (its database) once it no longer serves."""

    @property
    def ca_path(self) -> str:
        return str(self.files.ca_cert)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the sandbox's CA (for ``httpx``'s ``verify=``)."""
        return ssl.create_default_context(cafile=self.ca_path)

    def start(self) -> Self:
        config = uvicorn.Config(self._app(), log_level="warning",
                                ssl_certfile=str(self.files.server_cert),
                                ssl_keyfile=str(self.files.server_key),
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._sock.listen(128)
        server, sock = self._server, self._sock
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve([sock])),
                                        name=f"{self.title}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {self.title} did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving, wait for the thread, close the socket and the data."""
        if self._server is not None:
            # Idle keep-alive TLS connections would hold a graceful shutdown for as long
            # as the clients keep them open; in-flight requests are ours to lose.
            self._server.force_exit = True
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()
        self._close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> None:
        """Block until the server stops (for the command line)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
