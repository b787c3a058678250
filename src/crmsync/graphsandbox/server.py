"""Run the Graph sandbox: uvicorn with TLS on a loopback port, in a background thread.

    with GraphSandbox() as graph:
        graph.url, graph.ca_path, graph.authority, graph.client_id, graph.client_secret

The TLS certificates come from :mod:`crmsync.sandbox.tls` (the Salesforce sandbox's), so
one local CA serves both sandboxes' kind of setup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crmsync.graphsandbox.app import create_app
from crmsync.graphsandbox.oauth import Identity
from crmsync.graphsandbox.resources import Mailboxes
from crmsync.graphsandbox.store import Store
from crmsync.sandbox.serving import TlsServer

USERS = ("adele@contoso.example", "megan@contoso.example")


class GraphSandbox(TlsServer):
    """A local Microsoft 365 tenant over HTTPS: Graph at ``url + "/v1.0"`` and the
    identity platform at ``authority`` (``url + "/" + tenant``). ``db_path`` None keeps
    the mailboxes in memory."""

    def __init__(self, db_path: str | Path | None = None, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        super().__init__(db_path, port, host, prefix="crmsync-graph-")
        self.store = Store(db_path)
        self.boxes = Mailboxes(self.store, USERS)
        self.identity = Identity(user=USERS[0])
        self.app = create_app(self.boxes, self.identity)

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

    title = "Graph sandbox"

    def _app(self) -> Any:
        return self.app

    def _close(self) -> None:
        self.store.close()
