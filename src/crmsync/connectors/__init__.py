"""Connectors, one module each, chosen by the scheme of an ENDPOINT (``vdir:PATH``, ...)."""

from __future__ import annotations

import os

from crmsync.connectors.base import Connector, Credentials, Side
from crmsync.errors import ConfigError

SCHEMES = ("vdir", "caldav", "carddav", "salesforce", "msgraph")


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """Split ``SCHEME:LOCATION``; raise ConfigError unless the scheme is known."""
    scheme, sep, location = endpoint.partition(":")
    if not sep or not location:
        raise ConfigError(f"endpoint {endpoint!r} must look like SCHEME:LOCATION, e.g. vdir:~/sync")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown endpoint scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return scheme, location


def connect(endpoint: str, side: Side, credentials: Credentials | None = None) -> Connector:
    """The connector for ``endpoint`` serving ``side``."""
    scheme, location = parse_endpoint(endpoint)
    # Imported on use: each connector may pull in its own libraries.
    if scheme == "vdir":
        from crmsync.connectors.vdir import VdirConnector

        return VdirConnector(location, side)
    if scheme == "salesforce":
        # Settings come from the query string; see crmsync.connectors.salesforce.
        from crmsync.connectors.salesforce import SalesforceConnector, split_endpoint

        instance, settings = split_endpoint(location)
        return SalesforceConnector(instance, side, credentials=credentials, settings=settings)
    if scheme == "msgraph":
        # Settings come from the query string; see crmsync.connectors.msgraph.
        from crmsync.connectors.msgraph import GraphConnector

        return GraphConnector(location, side, credentials=credentials)
    from crmsync.connectors.dav import DavConnector

    return DavConnector(location, side, protocol=scheme,  # type: ignore[arg-type]
                        credentials=credentials, multiget_batch=_batch())


def _batch() -> int:
    """Items per calendar-/addressbook-multiget: $CRMSYNC_MULTIGET_BATCH, default 100.

    Some servers cap multiget answers silently (crmsync re-fetches what is missing, at a
    cost); a smaller batch suits them, a larger one saves round trips on fast servers.
    """
    value = os.environ.get("CRMSYNC_MULTIGET_BATCH", "100")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"CRMSYNC_MULTIGET_BATCH must be a positive number, not {value!r}")
    return int(value)
