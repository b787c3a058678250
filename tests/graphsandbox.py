"""The Graph sandbox for tests: a module-scoped running server and helpers.

conftest.py loads this module as a plugin, so every test module can ask for ``graph`` (a
:class:`crmsync.graphsandbox.server.GraphSandbox`, wiped and its faults dropped before
each test by ``graph_reset``) and use :func:`gcontrol` and :class:`GraphUser` (an httpx
client acting as the sandbox's user, as Outlook would).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from crmsync.connectors.base import Credentials
from crmsync.graphsandbox.server import GraphSandbox


def gcontrol(graph: GraphSandbox, what: str, **body: object) -> Any:
    """POST to the Graph sandbox's control API, e.g. ``gcontrol(g, "faults", status=429)``."""
    response = httpx.post(f"{graph.url}/_sandbox/{what}", json=body, verify=graph.ssl_context())
    response.raise_for_status()
    return response.json()


def server_tls(graph: GraphSandbox) -> ssl.SSLContext:
    """A server SSL context with the sandbox's own certificate, for a FaultProxy in front
    of it that clients (trusting the sandbox's CA) reach over https."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(graph.files.server_cert, graph.files.server_key)
    return context


def sent_mail(graph: GraphSandbox) -> list[dict[str, Any]]:
    return httpx.get(f"{graph.url}/_sandbox/mail", verify=graph.ssl_context()).json()["value"]


def graph_stats(graph: GraphSandbox) -> dict[str, int]:
    return httpx.get(f"{graph.url}/_sandbox/stats", verify=graph.ssl_context()).json()


def delegated(graph: GraphSandbox) -> Credentials:
    """What `crmsync login` stores after a device-code login to the sandbox."""
    return Credentials(client_id=graph.client_id, refresh_token=graph.refresh_token,
                       login_url=graph.authority, ca_bundle=graph.ca_path)


def application(graph: GraphSandbox) -> Credentials:
    """The server edition's client credentials."""
    return Credentials(client_id=graph.client_id, client_secret=graph.client_secret,
                       login_url=graph.authority, ca_bundle=graph.ca_path)


class GraphUser:
    """The sandbox's user at work in Outlook: an httpx client on /v1.0 with a token."""

    def __init__(self, graph: GraphSandbox) -> None:
        verify = graph.ssl_context()
        token = httpx.post(graph.authority + "/oauth2/v2.0/token", verify=verify, data={
            "grant_type": "refresh_token", "client_id": graph.client_id,
            "refresh_token": graph.refresh_token}).json()["access_token"]
        self.http = httpx.Client(base_url=graph.url + "/v1.0", verify=verify, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})

    def __call__(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        response = self.http.request(method, path, json=body, headers=headers)
        assert response.status_code < 400, response.text
        return response.json() if response.content else None

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphSandbox]:
    with GraphSandbox() as running:
        yield running


@pytest.fixture
def outlook(graph: GraphSandbox) -> Iterator[GraphUser]:
    gcontrol(graph, "reset", items=True)
    user = GraphUser(graph)
    yield user
    user.close()
