"""A user's effective settings: built-in defaults < admin defaults < the user's own.

Pure functions, no store: :mod:`crmsync.server.service` reads the admin's rows and the
user's profile and hands them here. A LOCKED setting always takes the admin's value (or
the built-in default when the admin only locked it) and the user cannot change it; the
user's own value for it, if any, is kept but has no effect while the lock stands.

Values are JSON values (lists for ``prevent`` and ``auto_days``); every change is checked
by :class:`crmsync.policy.Policy` with the rest of the object's settings.
"""

from __future__ import annotations

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
    return Policy.default_for(kind).to_dict()


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
