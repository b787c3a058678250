"""Selection (SPEC 3): which new groupware events go to the CRM. Pure: no I/O.

SELECTION is a calendar setting (:class:`crmsync.policy.Policy`):

``all``
    Every event.
``matched``
    Only events whose organizer or an attendee has the email of a CRM Contact or Lead.
    The sync core asks the CRM once per run for every email of the candidate events and
    hands the emails it knows to :func:`excluded` (see ``Syncer.gather``).
``designated``
    Only events the user designated: carrying the CRM category (``crm_category``), or
    with the smart address (``smart_address``) among the attendees. Events sent to the
    CRM this way get the CRM category in the groupware too (:func:`mark`).

Selection decides about groupware events no pair knows yet. Items created in the CRM
always sync to the groupware, and a pair once synced stays synced when its event stops
matching (a contact deleted, the category removed): it is left as it is, never deleted
because of the selection. In a shared calendar (setting ``shared``) selection stands
aside: every item not marked private syncs (see crmsync.rules).
"""

from __future__ import annotations

from collections.abc import Iterable

from crmsync import rules
from crmsync.model import Event, Record
from crmsync.policy import Policy


def emails_of(event: Event) -> set[str]:
    """The lower-cased emails of the organizer and attendees."""
    people = [a.email for a in event.attendees]
    if event.organizer is not None:
        people.append(event.organizer.email)
    return {e.strip().lower() for e in people if e and e.strip()}


def candidate_emails(records: Iterable[Record]) -> set[str]:
    """Every email worth looking up in the CRM for ``matched`` selection."""
    out: set[str] = set()
    for record in records:
        if isinstance(record, Event):
            out |= emails_of(record)
    return out


def is_designated(event: Event, policy: Policy) -> bool:
    category = policy.crm_category.strip().casefold()
    if any(c.strip().casefold() == category for c in event.categories):
        return True
    return any(rules.smart_address(policy.smart_address, a.email) for a in event.attendees)


def excluded(record: Record, policy: Policy, known: frozenset[str] | None) -> str | None:
    """Why a new groupware item is not selected for the CRM, or None when it is.

    ``known``: the lower-cased emails the CRM has a Contact or Lead for (``matched``).
    """
    if not isinstance(record, Event) or policy.selection == "all" \
            or rules.shared_overrides_selection(policy):
        return None
    if policy.selection == "designated":
        if is_designated(record, policy):
            return None
        return (f"not designated for the CRM (selection 'designated': no category "
                f"{policy.crm_category!r} and no smart address {policy.smart_address!r})")
    if emails_of(record) & (known or frozenset()):
        return None
    return ("no organizer or attendee is a CRM contact or lead (selection 'matched')")


def mark(record: Record, policy: Policy) -> list[str] | None:
    """The categories to give a designated event sent to the CRM, or None if it has the
    CRM category already (or the selection is not ``designated``)."""
    if not isinstance(record, Event) or policy.selection != "designated" \
            or rules.shared_overrides_selection(policy):
        return None
    category = policy.crm_category.strip()
    if any(c.strip().casefold() == category.casefold() for c in record.categories):
        return None
    return sorted({*record.categories, category})
