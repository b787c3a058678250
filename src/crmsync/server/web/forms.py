"""The settings form of one object: every setting of :class:`crmsync.policy.Policy`,
grouped and labelled as people read them, and the form's answer back as changes.

The form is a view of the effective settings; what it sends back is only what the user
changed (a setting left as it was stays unset for the user, so an admin's default keeps
reaching them). Locked settings are shown disabled and never sent: the service refuses
them anyway (:class:`crmsync.server.settings.LockedSetting`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData

from crmsync.errors import ConfigError
from crmsync.policy import (
    MAX_FUTURE_DAYS,
    MAX_PAST_DAYS,
    MIN_AUTO_EVERY,
    PREVENT_SWITCHES,
    WEEKDAYS,
)
from crmsync.server.settings import NAMES


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    # radio | checks | number | decimal | text | bool
    widget: str
    options: tuple[tuple[str, str], ...] = ()
    help: str = ""
    low: float | None = None
    high: float | None = None
    # Only for these objects (record mode is the calendar's).
    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    title: str
    fields: tuple[Field, ...]
    help: str = ""


_OP = {"create": "create", "update": "update", "delete": "delete"}
_SIDE = {"crm": "in the CRM", "groupware": "in the groupware"}

SECTIONS: tuple[Section, ...] = (
    Section("Sync mode", (
        Field("mode", "How this object syncs", "radio", (
            ("off", "Do not sync"),
            ("manual", "Sync after I review each run (manual)"),
            ("auto", "Sync automatically on a schedule"),
            ("record", "Record single events into the CRM only"))),
        Field("selection", "Which new groupware items go to the CRM", "radio", (
            ("all", "Sync all items"),
            ("matched", "Only items with a matching CRM contact or lead"),
            ("designated", "Only items I designate (CRM category or smart address)")),
            help="Items created in the CRM always sync to the groupware."),
    )),
    Section("Schedule", (
        Field("auto_every", "Sync every (minutes)", "number", low=MIN_AUTO_EVERY,
              help=f"At least {MIN_AUTO_EVERY} minutes."),
        Field("auto_days", "On these days", "checks",
              tuple((d, d.capitalize()) for d in WEEKDAYS)),
        Field("auto_window", "Between (HH:MM-HH:MM)", "text",
              help="For example 08:00-18:00; 00:00-24:00 is all day."),
        Field("timezone", "Time zone", "text",
              help="An IANA name such as Europe/Berlin; the schedule and the range use it."),
    ), help="Used when the mode is automatic."),
    Section("Range", (
        Field("past_days", "Days in the past", "number", low=0, high=MAX_PAST_DAYS),
        Field("future_days", "Days in the future", "number", low=0, high=MAX_FUTURE_DAYS),
    ), help=f"At most {MAX_PAST_DAYS} days back and {MAX_FUTURE_DAYS} days ahead."),
    Section("Designation and matching", (
        Field("crm_category", "CRM category", "text",
              help="A groupware item with this category is designated for the CRM."),
        Field("smart_address", "Smart address", "text",
              help="An attendee at this address (a local part matches any domain) "
                   "designates the item."),
        Field("match_alternate_emails", "Match alternate/secondary email addresses", "bool"),
        Field("shared", "This is a shared calendar (sync every item not marked private)",
              "bool"),
        Field("record", "Allow recording single events into the CRM", "bool",
              only=("calendar",)),
    )),
    Section("Exclusions", (
        Field("include_private", "Sync private items too", "bool"),
        Field("exclude_category", "Never sync items with this category", "text",
              help="Empty turns this check off."),
        Field("exclude_attendee", "Never sync events with this attendee (smart address)",
              "text", help="Empty turns this check off."),
    )),
    Section("Prevent operations", (
        Field("prevent", "Never do these", "checks", tuple(
            (s, f"{_OP[s.split(':')[1]].capitalize()} {_SIDE[s.split(':')[0]]}")
            for s in PREVENT_SWITCHES)),
    ), help="These override every other rule, conflicts included."),
    Section("Conflict management", (
        Field("conflict", "Both sides changed the same field", "radio", (
            ("newest", "The newest change wins"),
            ("crm", "Make the CRM the master"),
            ("groupware", "Make the groupware the master"),
            ("ask", "Ask me (in the review)"))),
        Field("delete_vs_update", "Deleted on one side, updated on the other", "radio", (
            ("keep", "Keep the updated item"),
            ("crm", "Make the CRM the master"),
            ("groupware", "Make the groupware the master"),
            ("delete", "Delete the item"))),
    )),
    Section("Mass-delete guard", (
        Field("mass_delete_share", "Stop when a run would delete more than this share",
              "decimal", low=0, high=1, help="A number from 0 to 1, e.g. 0.5 for half."),
        Field("mass_delete_min", "... and more than this many items", "number", low=0),
    ), help="A stopped run waits for your review."),
)

FIELDS: dict[str, Field] = {f.name: f for s in SECTIONS for f in s.fields}
assert set(FIELDS) == set(NAMES), set(NAMES) ^ set(FIELDS)


def sections_for(kind: str) -> list[Section]:
    out = []
    for section in SECTIONS:
        fields = tuple(f for f in section.fields if not f.only or kind in f.only)
        if fields:
            out.append(Section(section.title, fields, section.help))
    return out


def options_for(field: Field, kind: str) -> tuple[tuple[str, str], ...]:
    if field.name == "mode" and kind != "calendar":
        return tuple(o for o in field.options if o[0] != "record")
    return field.options


def shown(field: Field, value: Any) -> str:
    """A value as the read-only view shows it."""
    if field.widget == "bool":
        return "yes" if value else "no"
    labels = dict(field.options)
    if field.widget == "checks":
        return ", ".join(labels.get(v, v) for v in value) if value else "none"
    if field.widget == "radio":
        return labels.get(value, str(value))
    return "(none)" if value in ("", None) else str(value)


def _number(field: Field, text: str) -> int | float:
    try:
        return float(text) if field.widget == "decimal" else int(text)
    except ValueError:
        raise ConfigError(f"{field.label}: {text!r} is not a "
                          f"{'number' if field.widget == 'decimal' else 'whole number'}"
                          ) from None


def changes(form: FormData, kind: str, current: Mapping[str, Any],
            locked: list[str]) -> dict[str, Any]:
    """The settings the form changed. Untouched ones are left out, and so are locked ones
    the page did not send (a locked one sent anyway is passed on for the service to
    refuse)."""
    out: dict[str, Any] = {}
    for section in sections_for(kind):
        for field in section.fields:
            if field.name in locked and field.name not in form:
                continue  # disabled on the page; one sent anyway goes to the service
            if field.widget == "bool":
                value: Any = form.get(field.name) == "true"
            elif field.widget == "checks":
                value = [str(v) for v in form.getlist(field.name)]
                if sorted(value) == sorted(current[field.name]):
                    continue
            elif field.name not in form:
                continue
            elif field.widget in ("number", "decimal"):
                value = _number(field, str(form[field.name]).strip())
            else:
                value = str(form[field.name]).strip()
            if value != current[field.name]:
                out[field.name] = value
    return out
