"""Field-level views of records: flatten, diff, apply.

The planner merges at the level of FIELDS (``summary``, ``start``, ...). A dict-valued
field, the overridden instances of a recurring series, is split one level further
(``overrides/2026-12-01T09:00:00Z``) so that moving one occurrence on one side and
another occurrence on the other side merges without a conflict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crmsync.model import Record

Flat = dict[str, Any]
SEP = "/"


def flatten(record: Record, names: Iterable[str]) -> Flat:
    """The record's fields restricted to ``names``, dict-valued ones split per key."""
    values = record.fields()
    out: Flat = {}
    for name in names:
        value = values.get(name)
        if isinstance(value, dict):
            for key, sub in value.items():
                out[f"{name}{SEP}{key}"] = sub
        else:
            out[name] = value
    return out


def diff(before: Flat, after: Flat) -> Flat:
    """The fields whose value differs; a vanished sub-key maps to None."""
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    changed.update({k: None for k in before.keys() - after.keys()})
    return changed


def apply_changes(record: Record, changes: Flat) -> Record:
    """A new record with ``changes`` written over ``record``."""
    values = record.fields()
    for key, value in changes.items():
        name, _, sub = key.partition(SEP)
        if sub:
            bucket = dict(values.get(name) or {})
            if value is None:
                bucket.pop(sub, None)
            else:
                bucket[sub] = value
            values[name] = bucket
        else:
            values[name] = value
    return type(record).from_fields(values, uid=record.uid, crm_id=record.crm_id)
