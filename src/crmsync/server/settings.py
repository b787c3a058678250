"""A user's effective settings: built-in defaults < admin defaults < the user's own.

Pure functions, no store: :mod:`crmsync.server.service` reads the admin's rows and the
user's profile and hands them here. A LOCKED setting always takes the admin's value (or
the built-in default when the admin only locked it) and the user cannot change it; the
user's own value for it, if any, is kept but has no effect while the lock stands.

Values are JSON values (lists for ``prevent`` and ``auto_days``); every change is checked
by :class:`crmsync.policy.Policy` with the rest of the object's settings.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from crmsync.errors import ConfigError
from crmsync.model import ObjectKind
from crmsync.policy import Policy, _parse

NAMES: tuple[str, ...] = tuple(f.name for f in fields(Policy))
_TYPES = {f.name: str(f.type) for f in fields(Policy)}


class LockedSetting(ConfigError):
    """A change to a setting the admin locked."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the setting {name!r} is locked by an admin")
        self.name = name


@dataclass(frozen=True)
class AdminSetting:
    """An admin's default for one setting; ``value`` None: only a lock on the built-in."""

    value: Any = None
    locked: bool = False


def builtin(kind: ObjectKind) -> dict[str, Any]:
    """The built-in defaults: every object off until its user (or an admin) turns it on."""
    return dict(_builtin(kind))


@functools.cache
def _builtin(kind: ObjectKind) -> tuple[tuple[str, Any], ...]:
    # Made once per process: the scheduler merges every user's settings each tick.
    return tuple(Policy.default_for(kind).to_dict().items())


def check_value(name: str, value: Any) -> Any:
    """``value`` in the JSON type of setting ``name``; ConfigError otherwise."""
    if name not in _TYPES:
        raise ConfigError(f"unknown setting {name!r}; settings: {', '.join(NAMES)}")
    kind = _TYPES[name]
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif "frozenset" in kind or "tuple" in kind:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if ok:
            value = sorted(set(value)) if "frozenset" in kind else list(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{name}: {value!r} is not a valid value")
    return value


def parse_text(name: str, text: str) -> Any:
    """A setting's JSON value from form or command-line text (as ``crmsync settings``)."""
    if name not in _TYPES:
        raise ConfigError(f"unknown setting {name!r}; settings: {', '.join(NAMES)}")
    value = _parse(name, _TYPES[name], text)
    return sorted(value) if isinstance(value, frozenset) else (
        list(value) if isinstance(value, tuple) else value)


def merged(kind: ObjectKind, admin: Mapping[str, AdminSetting],
           own: Mapping[str, Any]) -> dict[str, Any]:
    """The effective values, unchecked."""
    out = builtin(kind)
    for name, setting in admin.items():
        if name in out and setting.value is not None:
            out[name] = setting.value
    for name, value in own.items():
        setting = admin.get(name)
        if name in out and not (setting is not None and setting.locked):
            out[name] = value
    return out


def effective(kind: ObjectKind, admin: Mapping[str, AdminSetting],
              own: Mapping[str, Any]) -> Policy:
    """The Policy a run of this object uses."""
    policy = Policy.from_dict(merged(kind, admin, own))
    policy.validate_for(kind)
    return policy


def locked(admin: Mapping[str, AdminSetting]) -> list[str]:
    return sorted(n for n, s in admin.items() if s.locked)


def change(kind: ObjectKind, admin: Mapping[str, AdminSetting], own: Mapping[str, Any],
           changes: Mapping[str, Any]) -> dict[str, Any]:
    """The user's own settings after ``changes``; LockedSetting or ConfigError if refused.

    A locked setting may be sent with its current effective value (a full form or a
    read-modify-write client sends every setting): that changes nothing and is not stored.
    """
    current = merged(kind, admin, own)
    out = dict(own)
    for name, raw in changes.items():
        value = check_value(name, raw)
        setting = admin.get(name)
        if setting is not None and setting.locked:
            if value != current[name]:
                raise LockedSetting(name)
            continue
        out[name] = value
    effective(kind, admin, out)  # the whole object must still be valid
    return out


def check_admin(kind: ObjectKind, admin: Mapping[str, AdminSetting]) -> None:
    """Admin defaults must make a valid object by themselves (users' values aside)."""
    for name, setting in admin.items():
        if setting.value is not None:
            check_value(name, setting.value)
    effective(kind, admin, {})


# --- what a settings form shows -------------------------------------------------------------

_HELP: dict[str, str] = {
    "mode": "off: not synced; manual: every run waits for your review; auto: on the "
            "schedule below; record (calendar): only events you record go to the CRM.",
    "conflict": "When both sides changed the same field: the newest change wins, the CRM "
                "or the groupware always wins, or ask (the item waits for a decision).",
    "delete_vs_update": "When one side deleted an item the other changed: keep the updated "
                        "item, the CRM or the groupware is master, or the deletion wins.",
    "prevent": "Operations never done, whatever the other rules say.",
    "mass_delete_share": "A run that would delete more than this share of a side's items "
                         "(and more than the minimum below) stops and asks.",
    "mass_delete_min": "The mass-delete guard trips only above this many deletions.",
    "past_days": "Days back that are synced (at most 30).",
    "future_days": "Days ahead that are synced (at most 365).",
    "auto_every": "Auto sync: minutes between runs (at least 30).",
    "auto_days": "Auto sync: the weekdays it runs on.",
    "auto_window": "Auto sync: the daily hours it runs in, HH:MM-HH:MM (00:00-24:00 is all "
                   "day), in your time zone.",
    "timezone": "Your time zone (IANA name, e.g. Europe/Berlin): the schedule and times.",
    "include_private": "Sync items marked private too (they stay home by default).",
    "exclude_category": "Items with this category are not synced (empty: no such check).",
    "exclude_attendee": "Events with this smart address among the attendees are not "
                        "synced (empty: no such check).",
    "shared": "A shared calendar: every item not marked private syncs.",
    "selection": "Which new calendar events go to the CRM: all; only those with a person "
                 "the CRM knows (matched); only those designated by category or smart "
                 "address.",
    "match_alternate_emails": "Matched: secondary email fields of Contacts and Leads count.",
    "crm_category": "Designated: the category that sends an event to the CRM.",
    "smart_address": "Designated: the attendee address that sends an event to the CRM.",
    "record": "Allow recording single events into the CRM.",
}
# Settings only the calendar has.
CALENDAR_ONLY = frozenset({"selection", "match_alternate_emails", "crm_category",
                           "smart_address", "record"})


def describe(kind: ObjectKind) -> list[dict[str, Any]]:
    """Each setting of ``kind`` for a form: name, input type, choices and help."""
    from typing import get_args

    from crmsync.policy import (
        PREVENT_SWITCHES,
        WEEKDAYS,
        ConflictRule,
        DeleteRule,
        Mode,
        Selection,
    )

    choices: dict[str, tuple[str, ...]] = {
        "mode": tuple(m for m in get_args(Mode) if m != "record" or kind == "calendar"),
        "conflict": get_args(ConflictRule), "delete_vs_update": get_args(DeleteRule),
        "selection": get_args(Selection), "prevent": PREVENT_SWITCHES, "auto_days": WEEKDAYS}
    out = []
    for name in sorted(NAMES, key=lambda n: n != "mode"):
        if name in CALENDAR_ONLY and kind != "calendar":
            continue
        declared = _TYPES[name]
        if name in ("prevent", "auto_days"):
            input_type = "choices"
        elif name in choices:
            input_type = "choice"
        else:
            input_type = {"bool": "bool", "int": "int", "float": "float"}.get(declared, "text")
        out.append({"name": name, "type": input_type, "choices": list(choices.get(name, ())),
                    "help": _HELP.get(name, "")})
    return out
