"""Per-object sync rules that decide what the planner does with a change."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmsync.errors import ConfigError
from crmsync.model import ObjectKind

ConflictRule = Literal["newest", "crm", "groupware", "ask"]
DeleteRule = Literal["keep", "crm", "groupware", "delete"]
Operation = Literal["create", "update", "delete"]
# SPEC 2: off (the default), manual (review first), auto (scheduled), record (calendar only:
# single events recorded one way into the CRM).
Mode = Literal["off", "manual", "auto", "record"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MIN_AUTO_EVERY = 30
_WINDOW = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
# Which new groupware items go to the CRM (calendar): every one, only those with an
# organizer or attendee the CRM knows, or only those the user designated.
Selection = Literal["all", "matched", "designated"]

# "crm:delete" means "do not delete in the CRM"; six switches in all.
PREVENT_SWITCHES = tuple(
    f"{side}:{op}" for side in ("crm", "groupware") for op in get_args(Operation)
)


# SPEC 3: the range reaches at most 30 days back and 365 days ahead.
MAX_PAST_DAYS = 30
MAX_FUTURE_DAYS = 365


@dataclass(frozen=True)
class Policy:
    # Both sides changed the same field differently since the last sync.
    conflict: ConflictRule = "newest"
    # One side deleted the item, the other changed it since the last sync:
    # keep (recreate the deleted one from the updated one), crm / groupware (that side
    # is master), delete (the deletion wins).
    delete_vs_update: DeleteRule = "keep"
    # Operations never to perform, as "side:operation"; they override every other rule.
    prevent: frozenset[str] = field(default_factory=frozenset)
    # Mass-delete guard: a run that would delete more than this share of a side's items,
    # and more than `mass_delete_min` items, stops and asks.
    mass_delete_share: float = 0.5
    mass_delete_min: int = 10
    # The sync range, in days before and after now (calendar and tasks).
    past_days: int = 30
    future_days: int = 365

    # --- modes and rules (issue 5; see crmsync.rules) -------------------------------------
    # How the object syncs: off, manual, auto or (calendar) record. Settings stored before
    # modes existed read as "manual" (see of_profile).
    mode: Mode = "off"
    # Auto sync: every this many minutes (at least 30), on these weekdays, within this daily
    # window ("HH:MM-HH:MM"; it may wrap past midnight; "00:00-24:00" is all day).
    auto_every: int = 60
    auto_days: tuple[str, ...] = WEEKDAYS
    auto_window: str = "00:00-24:00"
    # The user's IANA time zone: the schedule, the range's days and every time shown.
    timezone: str = field(default_factory=lambda: local_zone())
    # Exclusions, in every mode: private items (either side) unless included; items with
    # this category; events with an attendee at this smart address (a local part, any
    # domain, or a whole address when it holds an "@"). Empty turns a check off.
    include_private: bool = False
    exclude_category: str = "DoNotSync"
    exclude_attendee: str = "DoNotRecord"
    # The collection is not the user's own (a shared calendar): every item not marked
    # private syncs, whatever the selection; private ones never do.
    shared: bool = False

    # --- selection and record (SPEC 2 "Record", 3 "Selection mode"; calendar) -----------
    # Which groupware items not yet paired are synced to the CRM; see crmsync.selection.
    # CRM items always sync to the groupware, whatever the selection.
    selection: Selection = "all"
    # "matched": an Email field other than the main one counts too (alternate emails).
    match_alternate_emails: bool = True
    # "designated": an item carrying this category, or having this smart address among
    # its attendees (a local part matches any domain; with an '@', the whole address).
    crm_category: str = "CRM"
    smart_address: str = "crm"
    # SnapRecord: `crmsync record` may record single groupware events into the CRM.
    record: bool = True

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The sync range as UTC datetimes [start, end)."""
        now = now or datetime.now(UTC)
        return now - timedelta(days=self.past_days), now + timedelta(days=self.future_days)

    def prevents(self, side: str, op: str) -> bool:
        return f"{side}:{op}" in self.prevent

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def syncs(self) -> bool:
        """Whether ``crmsync sync`` runs this object (not when it is off)."""
        return self.mode != "off"

    @classmethod
    def default_for(cls, kind: ObjectKind) -> Policy:
        # Contacts deleted in the address book should not wipe CRM contacts by default.
        return cls(prevent=frozenset({"crm:delete"})) if kind == "contacts" else cls()

    @classmethod
    def of_profile(cls, kind: ObjectKind, values: dict[str, Any] | None) -> Policy:
        """An object's policy as its profile stores it, over the object's defaults.

        Settings without a ``mode`` predate modes: the profile was made to sync the
        object, so it is manual (``crmsync sync`` keeps working as it did).
        """
        merged = cls.default_for(kind).to_dict() | {"mode": "manual"} | dict(values or {})
        policy = cls.from_dict(merged)
        policy.validate_for(kind)
        return policy

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prevent"] = sorted(self.prevent)
        out["auto_days"] = list(self.auto_days)
        return out

    def with_setting(self, name: str, text: str) -> Policy:
        """A copy with one setting given as command-line text; ConfigError if invalid."""
        spec = {f.name: f for f in fields(self)}.get(name)
        if spec is None:
            raise ConfigError(f"unknown setting {name!r}; settings: "
                              f"{', '.join(f.name for f in fields(self))}")
        policy = replace(self, **{name: _parse(name, spec.type, text)})
        policy.validate()
        return policy

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Policy:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        kwargs = dict(values)
        if "prevent" in kwargs:
            kwargs["prevent"] = frozenset(kwargs["prevent"])
        if "auto_days" in kwargs:
            kwargs["auto_days"] = tuple(kwargs["auto_days"])
        policy = cls(**kwargs)
        policy.validate()
        return policy

    def validate(self) -> None:
        if self.conflict not in get_args(ConflictRule):
            raise ConfigError(
                f"conflict rule {self.conflict!r} is not one of {', '.join(get_args(ConflictRule))}"
            )
        if self.delete_vs_update not in get_args(DeleteRule):
            raise ConfigError(
                f"delete-vs-update rule {self.delete_vs_update!r} is not one of "
                f"{', '.join(get_args(DeleteRule))}"
            )
        bad = self.prevent - set(PREVENT_SWITCHES)
        if bad:
            raise ConfigError(
                f"unknown prevent switch(es) {', '.join(sorted(bad))}; "
                f"use {', '.join(PREVENT_SWITCHES)}"
            )
        if not 0 < self.mass_delete_share <= 1:
            raise ConfigError("mass_delete_share must be in (0, 1]")
        if self.mass_delete_min < 0:
            raise ConfigError("mass_delete_min must be >= 0")
        for name, most in (("past_days", MAX_PAST_DAYS), ("future_days", MAX_FUTURE_DAYS)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= most:
                raise ConfigError(f"{name} must be a whole number from 0 to {most}")
        self._validate_modes()
        self._validate_selection()

    def _validate_modes(self) -> None:
        if self.mode not in get_args(Mode):
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(get_args(Mode))}")
        if not isinstance(self.auto_every, int) or self.auto_every < MIN_AUTO_EVERY:
            raise ConfigError(f"auto_every must be a whole number of minutes, at least "
                              f"{MIN_AUTO_EVERY}")
        bad = [d for d in self.auto_days if d not in WEEKDAYS]
        if bad or not self.auto_days:
            raise ConfigError(f"auto_days {', '.join(bad) or '(none)'}: give weekdays from "
                              f"{', '.join(WEEKDAYS)}")
        window_bounds(self.auto_window)
        try:
            self.zone()
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"time zone {self.timezone!r} is unknown; give an IANA name "
                              "such as Europe/Berlin or America/New_York") from None
        for name in ("include_private", "shared"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")

    def _validate_selection(self) -> None:
        if self.selection not in get_args(Selection):
            raise ConfigError(f"selection {self.selection!r} is not one of "
                              f"{', '.join(get_args(Selection))}")
        for name in ("match_alternate_emails", "record"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")
        for name in ("crm_category", "smart_address"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or "," in value:
                raise ConfigError(f"{name} must be a non-empty name without commas")
        if any(c.isspace() for c in self.smart_address.strip()):
            raise ConfigError("smart_address must be an address or its local part, "
                              "without spaces")

    def validate_for(self, kind: ObjectKind) -> None:
        """What only some objects allow: record mode is for the calendar."""
        if self.mode == "record" and kind != "calendar":
            raise ConfigError(f"mode record is for the calendar only, not {kind}")


def window_bounds(text: str) -> tuple[time, time | None]:
    """``"HH:MM-HH:MM"`` as (start, end); an end of 24:00 is None (end of day)."""
    m = _WINDOW.match(text.strip())
    if m is None or int(m[1]) > 23 or int(m[2]) > 59 or int(m[4]) > 59 \
            or int(m[3]) > 24 or (int(m[3]) == 24 and m[4] != "00"):
        raise ConfigError(f"auto_window {text!r} is not a daily window HH:MM-HH:MM, "
                          "e.g. 08:00-18:00")
    start = time(int(m[1]), int(m[2]))
    end = None if m[3] == "24" else time(int(m[3]), int(m[4]))
    if end == start:
        raise ConfigError(f"auto_window {text!r} is empty; use 00:00-24:00 for all day")
    return start, end


def due(policy: Policy, last_run: datetime | None, now: datetime) -> bool:
    """Whether an auto-sync job is due at ``now`` (aware), last run at ``last_run``.

    Due when the mode is auto, ``now`` falls on an allowed weekday and inside the daily
    window in the user's time zone, and at least ``auto_every`` minutes have passed since
    the last run (a first run is due at once).
    """
    if policy.mode != "auto":
        return False
    local = now.astimezone(policy.zone())
    start, end = window_bounds(policy.auto_window)
    clock = local.time().replace(tzinfo=None)
    if end is None:
        inside, day = clock >= start, local
    elif start < end:
        inside, day = start <= clock < end, local
    else:
        # The window wraps past midnight: the early part belongs to the day before.
        inside = clock >= start or clock < end
        day = local if clock >= start else local - timedelta(days=1)
    if not inside or WEEKDAYS[day.weekday()] not in policy.auto_days:
        return False
    return last_run is None or now - last_run >= timedelta(minutes=policy.auto_every)


def local_zone() -> str:
    """The machine's IANA time zone name: $TZ, /etc/localtime's target, else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = str(Path("/etc/localtime").resolve())
        candidates.append(target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "")
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _parse(name: str, type_name: Any, text: str) -> Any:
    """A setting's value from its command-line text, by the field's type."""
    text = text.strip()
    if type_name in ("bool", bool):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, not {text!r}")
    if type_name in ("int", int, "float", float):
        number = int if type_name in ("int", int) else float
        try:
            return number(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {text!r}") from None
    if "frozenset" in str(type_name) or "tuple" in str(type_name):
        items = [] if text.lower() in ("", "none", "-") else [
            p.strip().lower() for p in text.split(",") if p.strip()]
        return frozenset(items) if "frozenset" in str(type_name) else tuple(items)
    return text
