"""The Salesforce sandbox for tests: a module-scoped running server and a ready client.

conftest.py loads this module as a plugin, so every test module can ask for the fixtures:

    def test_something(sandbox, sf_client):
        sf_client.get("/services/data/v62.0/sobjects/Contact/describe")

``sandbox`` is a :class:`crmsync.sandbox.server.Sandbox` (attributes ``url``, ``ca_path``,
``client_id``, ``client_secret``, ``username``, ``refresh_token``,
``jwt_private_key_path``); it runs once per test module with its data in memory.
``sf_client`` is an httpx client on it with a fresh access token, created per test after
resetting the control API (faults, limits, clock, validation rules), so tests do not see
each other's injected faults. Records stay between tests of a module; use unique values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from crmsync.sandbox.server import Sandbox

API = "/services/data/v62.0"


def access_token(sandbox: Sandbox) -> str:
    response = httpx.post(sandbox.url + "/services/oauth2/token", verify=sandbox.ssl_context(),
                          data={"grant_type": "refresh_token", "client_id": sandbox.client_id,
                                "refresh_token": sandbox.refresh_token})
    response.raise_for_status()
    return response.json()["access_token"]


def control(sandbox: Sandbox, what: str, **body: object) -> dict:
    """POST to the sandbox's control API, e.g. ``control(sb, "limits", daily=5)``."""
    response = httpx.post(f"{sandbox.url}/_sandbox/{what}", json=body, verify=sandbox.ssl_context())
    response.raise_for_status()
    return response.json()


# The offset of the sandboxes' clocks, in days. It only grows: a sandbox's record times
# never go back, and cursors kept from earlier must not lie in the future.
_AHEAD = [0.0]


def clock_on(sandbox: Sandbox, minutes: float = 0) -> None:
    """Move the sandbox's clock ``minutes`` further on; 0 sets it again after a reset.

    Salesforce lists deletions up to its last whole minute: a test that needs a deletion
    listed now moves the clock past it."""
    _AHEAD[0] += minutes / 1440
    control(sandbox, "clock", offset_days=_AHEAD[0])


def clock_at(sandbox: Sandbox, second: float) -> None:
    """Move the sandbox's clock on until it reads ``second`` past a minute (it runs in
    this process, on this machine's clock plus the offset), for tests about a minute's
    turn: Salesforce lists deletions by whole minutes."""
    now = time.time() + _AHEAD[0] * 86400
    clock_on(sandbox, (second - now % 60) % 60 / 60)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture
def sf_client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    control(sandbox, "reset")
    with sandbox.client(timeout=10) as client:
        yield client
