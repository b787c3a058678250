"""Typed errors. Each carries enough context for the run report to explain it to a user."""

from __future__ import annotations

import logging

log = logging.getLogger("crmsync")


class CrmsyncError(Exception):
    """Base of every error crmsync raises on purpose."""

    exit_code = 1


class ConfigError(CrmsyncError):
    """A profile, endpoint or setting is wrong; the message says which and how to fix it."""

    exit_code = 2


class ItemError(CrmsyncError):
    """One item cannot be read or written; the run skips it and goes on."""

    def __init__(self, message: str, item_id: str | None = None) -> None:
        super().__init__(message)
        self.item_id = item_id


class FormatError(ItemError):
    """An item's native content (iCalendar, vCard, ...) cannot be parsed or written."""


class ConnectionFailed(CrmsyncError):
    """A side cannot be reached or refuses our credentials: the run stops, nothing lost."""

    exit_code = 5


class PreconditionFailed(ItemError):
    """The item changed on its side since it was planned (etag/modstamp mismatch)."""


class ApiLimitReached(ConnectionFailed):
    """A side's API allowance (or the share of it crmsync may use) is spent: the run stops.

    Nothing is lost: what was written is recorded, the rest waits for the next run.
    """


def unexpected(exc: BaseException) -> str:
    """An exception nobody expected while handling one item, as that item's reason: its
    class and message. The traceback goes to the debug log (``crmsync -v``), so that the
    bug can be found and fixed while the run goes on with the other items."""
    log.debug("unexpected error on one item", exc_info=exc)
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""  # the rest (a statement, its parameters) is logged
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
