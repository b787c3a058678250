"""The running sandbox's state: the org, its demo user and app, and what tests inject.

Everything under ``Controls`` is set through the ``/_sandbox/`` control API (not
Salesforce): injected HTTP faults, per-record errors, validation rules.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crmsync.sandbox.db import Org, format_datetime
from crmsync.sandbox.errors import RecordError

USERNAME = "demo@crmsync.sandbox"
USER_EMAIL = "demo@example.com"
USER_TIME_ZONE = "GMT"
SESSION_TIMEOUT = timedelta(hours=2)

RECORD_ERROR_MESSAGES = {
    "UNABLE_TO_LOCK_ROW": "unable to obtain exclusive access to this record or 1 records",
}


@dataclass
class Fault:
    """Answer matching requests with ``status``/``body`` ``times`` times."""

    path_regex: str
    method: str | None
    status: int
    body: Any
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    # Do the request, then answer with the fault: the work is done but its answer lost.
    after: bool = False
    # Hold the answer (before or, with ``after``, after doing the request) until the
    # control API releases it, so a test can kill the client at that very moment.
    hold: bool = False
    # Let this many matching requests through before the fault applies.
    skip: int = 0


@dataclass
class InjectedRecordError:
    code: str
    message: str
    times: int
    operation: str | None = None  # create, update, delete; None: any
    sobject: str | None = None
    fields: list[str] = field(default_factory=list)


@dataclass
class ValidationRule:
    sobject: str
    field: str
    contains: str
    message: str


class Controls:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.record_errors: list[InjectedRecordError] = []
        self.rules: list[ValidationRule] = []
        self.holding = 0
        self.released = threading.Event()

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.record_errors.clear()
            self.rules.clear()
        self.released.set()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and (fault.method is None
                                        or method in fault.method.split(",")) \
                        and re.search(fault.path_regex, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.times -= 1
                    return fault
        return None

    def take_record_error(self, operation: str, sobject: str) -> None:
        """Raise the next injected record error that applies, if any."""
        with self.lock:
            for err in self.record_errors:
                if err.times > 0 and err.operation in (None, operation) \
                        and err.sobject in (None, sobject):
                    err.times -= 1
                    raise RecordError(err.code, err.message, list(err.fields))

    def validate(self, sobject: str, data: dict[str, Any]) -> None:
        """The org's validation rules (FIELD_CUSTOM_VALIDATION_EXCEPTION)."""
        for rule in list(self.rules):
            value = data.get(rule.field)
            if rule.sobject == sobject and isinstance(value, str) and rule.contains in value:
                raise RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message,
                                  [rule.field])


class State:
    """The org plus its one demo user, connected app and the JWT signing certificate."""

    def __init__(self, org: Org, url: str, jwt_cert_pem: bytes,
                 session_timeout: timedelta = SESSION_TIMEOUT) -> None:
        self.org = org
        self.url = url
        self.jwt_cert_pem = jwt_cert_pem
        self.session_timeout = session_timeout
        self.controls = Controls()
        self.cursors: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self.codes: dict[str, tuple[str, str, str]] = {}  # code -> client, redirect, user
        self.user_time_zone = USER_TIME_ZONE
        self.username = USERNAME
        self.client_id = self._setting("client_id", lambda: "3MVG9sandbox" +
                                       secrets.token_urlsafe(24).replace("-", "x"))
        self.client_secret = self._setting("client_secret",
                                           lambda: secrets.token_hex(32).upper())
        self.user_id = self._ensure_user()

    def _setting(self, key: str, make: Any) -> str:
        value = self.org.meta(key)
        if value is None:
            value = make()
            self.org.set_meta(key, value)
        return value

    def _ensure_user(self) -> str:
        existing = self.org.meta("user_id")
        if existing:
            return existing
        now = self.org.next_stamp()
        user_id = self.org.new_id("User")
        self.org.insert("User", {
            "Id": user_id, "IsDeleted": False, "CreatedDate": now, "LastModifiedDate": now,
            "SystemModstamp": now, "Name": "Demo User", "Email": USER_EMAIL,
            "Username": USERNAME, "TimeZoneSidKey": USER_TIME_ZONE})
        self.org.set_meta("user_id", user_id)
        return user_id

    @property
    def org_id(self) -> str:
        return self.org.meta("org_id") or ""

    def identity_url(self) -> str:
        return f"{self.url}/id/{self.org_id}/{self.user_id}"

    def ready_refresh_token(self) -> str:
        """One refresh token for the demo user that survives restarts on the same data."""
        token = self.org.meta("demo_refresh_token")
        if token is None or self.org.token_user(token, "refresh") is None:
            token = self.org.issue_token("refresh", self.user_id, None)
            self.org.set_meta("demo_refresh_token", token)
        return token

    def stats(self) -> dict[str, Any]:
        return {"api_calls": self.org.api_calls, "api_calls_by": dict(self.org.api_calls_by),
                "api_used": self.org.api_used,
                "daily_limit": self.org.daily_limit,
                "holding": self.controls.holding,
                "now": format_datetime(self.org.now()),
                "clock_offset_days": self.org.clock_offset.total_seconds() / 86400}
