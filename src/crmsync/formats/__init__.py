"""Native formats: parse an item's text to a record, render a record back to text.

A FORMAT is a media-type-like string naming how a side stores an item. Rendering takes an
optional TEMPLATE, the item's current native text: fields the record models are written
over it and everything else (X- properties, alarms, unknown parameters, other components)
is kept, so syncing never strips a user's data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crmsync.model import ObjectKind, Record

ICALENDAR = "text/calendar"
VCARD = "text/vcard"
SALESFORCE = "application/vnd.crmsync.salesforce+json"
MSGRAPH = "application/vnd.crmsync.msgraph+json"

Parser = Callable[[str], "Record"]
Renderer = Callable[["Record", "str | None"], str]

_codecs: dict[tuple[str, str], tuple[Parser, Renderer]] = {}


def register(fmt: str, kind: ObjectKind, parse_fn: Parser, render_fn: Renderer) -> None:
    _codecs[(fmt, kind)] = (parse_fn, render_fn)


def _codec(fmt: str, kind: ObjectKind) -> tuple[Parser, Renderer]:
    if (fmt, kind) not in _codecs:
        _load_builtin(fmt)
    try:
        return _codecs[(fmt, kind)]
    except KeyError:
        raise LookupError(f"no codec for {kind} items in format {fmt!r}") from None


def _load_builtin(fmt: str) -> None:
    # Imported on first use: icalendar and vobject cost start-up time that a sync with
    # nothing changed never needs.
    if fmt == ICALENDAR:
        from crmsync.formats import ical

        register(ICALENDAR, "calendar", ical.parse_event, ical.render_event)  # type: ignore[arg-type]
        register(ICALENDAR, "tasks", ical.parse_task, ical.render_task)  # type: ignore[arg-type]
    elif fmt == VCARD:
        from crmsync.formats import vcard

        register(VCARD, "contacts", vcard.parse_contact, vcard.render_contact)  # type: ignore[arg-type]
    elif fmt == SALESFORCE:
        from crmsync.formats import salesforce

        register(SALESFORCE, "calendar", salesforce.parse_event, salesforce.render_event)  # type: ignore[arg-type]
        register(SALESFORCE, "tasks", salesforce.parse_task, salesforce.render_task)  # type: ignore[arg-type]
        register(SALESFORCE, "contacts", salesforce.parse_contact,  # type: ignore[arg-type]
                 salesforce.render_contact)  # type: ignore[arg-type]
    elif fmt == MSGRAPH:
        from crmsync.formats import msgraph

        register(MSGRAPH, "calendar", msgraph.parse_event, msgraph.render_event)  # type: ignore[arg-type]
        register(MSGRAPH, "tasks", msgraph.parse_task, msgraph.render_task)  # type: ignore[arg-type]
        register(MSGRAPH, "contacts", msgraph.parse_contact,  # type: ignore[arg-type]
                 msgraph.render_contact)  # type: ignore[arg-type]


_ENVELOPE = {ICALENDAR: ("BEGIN:VCALENDAR", "END:VCALENDAR"), VCARD: ("BEGIN:VCARD", "END:VCARD")}


def looks_valid(fmt: str, raw: str) -> bool:
    """A cheap check that ``raw`` is a whole item, for copies made without parsing.

    Copying an item verbatim skips the parse (most of the cost of a first sync); this
    catches truncated or foreign files, and whatever it lets through is parsed in full.
    """
    envelope = _ENVELOPE.get(fmt)
    if envelope is None:
        return False
    head, tail = envelope
    # Slices, not raw.strip()/upper(): an item can be megabytes. A lower-case "uid" only
    # costs a full parse, never a wrong answer.
    return raw[:64].lstrip().upper().startswith(head) \
        and raw[-64:].rstrip().upper().endswith(tail) and "\nUID" in raw


def parse(fmt: str, kind: ObjectKind, raw: str) -> Record:
    """Parse native text to a record; raises FormatError on broken input."""
    return _codec(fmt, kind)[0](raw)


def render(fmt: str, kind: ObjectKind, record: Record, template: str | None = None) -> str:
    """Render a record to native text, over ``template`` when the item already exists."""
    return _codec(fmt, kind)[1](record, template)
