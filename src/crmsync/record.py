"""Record (SnapRecord, SPEC 2): one groupware event into the CRM, as a one-way pair.

The pair is stored with ``one_way`` set: the planner sends the event's later groupware
changes to the CRM and never writes the CRM's changes back (see crmsync.plan). Recording
an event again never duplicates it: a recorded one gets its groupware changes since sent
(useful while calendar sync is off), a two-way pair is left as it is.

Record is on by default (setting ``record``) and refused while calendar sync is in
``auto`` mode, as the seed product switches it off then; it works whatever the mode
otherwise, also "off" and "manual".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crmsync.connectors.base import Create, Item
from crmsync.errors import ConfigError, ItemError
from crmsync.plan import Pair, View, make_plan
from crmsync.store import RunItem
from crmsync.sync import Prepared, Syncer

# A Salesforce-style record Id: 15 or 18 letters and digits.
_CRM_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


@dataclass
class Recorded:
    """What ``record`` did: ``status`` is "recorded", "updated" (recorded before; its
    groupware changes were sent now), "already-recorded" or "synced" (a two-way pair)."""

    status: str
    label: str
    groupware_id: str
    crm_id: str | None
    related: list[str]
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "label": self.label, "groupware_id": self.groupware_id,
                "crm_id": self.crm_id, "related": self.related, "warning": self.warning}


def parse_fields(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to CRM field values; JSON values (true, 3) are typed."""
    out: dict[str, Any] = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--field {text!r}: expected KEY=VALUE, e.g. Type=Meeting")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out[key.strip()] = parsed if isinstance(parsed, bool | int | float) else value
    return out


def check_allowed(syncer: Syncer) -> None:
    profile = syncer.profile
    if "calendar" not in profile.objects:
        raise ConfigError(f"profile {profile.name!r} does not sync calendar; record needs it")
    policy = syncer.policy("calendar")
    if policy.mode == "auto":
        raise ConfigError(
            f"record is switched off while calendar auto sync is on for {profile.name!r}: "
            "auto sync already sends events to the CRM. Set the calendar mode to manual or "
            "off to record single events.")
    if not policy.record:
        raise ConfigError(f"record is turned off for {profile.name!r} (setting 'record' "
                          "of calendar)")


def find_event(syncer: Syncer, ref: str) -> Item:
    """The groupware event with this item id (href), file name or UID."""
    gw = syncer.connector("groupware", "calendar")
    listing = gw.list_changes("calendar", None)
    ids = [u[0] for u in listing.upserts]
    by_name = [i for i in ids if i == ref or i.rstrip("/").rsplit("/", 1)[-1] == ref]
    if by_name:
        return gw.fetch("calendar", by_name[:1])[by_name[0]]
    # Most calendars name an event's file after its UID: try that before reading all.
    guess = [i for i in ids if i.rstrip("/").rsplit("/", 1)[-1] == ref + ".ics"]
    for item in gw.fetch("calendar", guess[:1]).values():
        if item.uid == ref:
            return item
    have = {u[0]: u[2] for u in listing.upserts if u[2] is not None}
    missing = [i for i in ids if i not in have]
    if missing:
        have.update(gw.fetch("calendar", missing))
    for item in have.values():
        if item.uid == ref:
            return item
    raise ConfigError(f"no event {ref!r} in the groupware calendar (give its UID, file "
                      "name or href)")


def resolve_relations(syncer: Syncer, relate: Sequence[str], alternates: bool) -> list[str]:
    """CRM Ids to relate: Ids as given, emails looked up among Contacts and Leads."""
    emails = [r for r in relate if "@" in r]
    found = syncer.connector("crm", "calendar").find_people(
        emails, alternates=alternates) if emails else {}
    out: list[str] = []
    for ref in relate:
        if "@" in ref:
            people = found.get(ref.strip().lower())
            if not people:
                raise ConfigError(f"--relate {ref}: no CRM Contact or Lead has this email")
            people = sorted(people, key=lambda p: p["type"] != "Contact")
            out.append(people[0]["Id"])
        elif _CRM_ID.match(ref):
            out.append(ref)
        else:
            raise ConfigError(f"--relate {ref!r}: give an email or a CRM record Id "
                              "(15 or 18 characters)")
    return list(dict.fromkeys(out))


def record_event(syncer: Syncer, ref: str, relate: Sequence[str] = (),
                 fields: dict[str, Any] | None = None) -> Recorded:
    """Record one groupware event in the CRM as a one-way pair (see the module doc)."""
    check_allowed(syncer)
    fields = fields or {}
    crm = syncer.connector("crm", "calendar")
    if (relate or fields) and not crm.capabilities.relations:
        raise ConfigError(f"{crm!r} cannot relate events or set extra fields; record "
                          "without --relate and --field")
    item = find_event(syncer, ref)
    store, pid = syncer.store, syncer.profile.id
    known = store.pairs(pid, "calendar", ids={"groupware": {item.id}})
    if known and known[0].crm_id is not None:
        pair = known[0]
        if not pair.one_way:
            return Recorded("synced", item.label(), item.id, pair.crm_id, [])
        return _follow(syncer, pair, item)
    related = resolve_relations(syncer, relate, syncer.policy("calendar")
                                .match_alternate_emails)
    run_id = store.start_run(pid, ["calendar"], "record", None)
    (result,) = crm.apply("calendar", [Create(source=item, relate=tuple(related),
                                              extra=fields)])
    if result.status != "ok" or result.item is None:
        error = result.error or result.status
        store.save_pairs(pid, "calendar", [], [], run_id, [RunItem(
            "calendar", "create:crm", "failed", item.label(), error, None, item.id)])
        store.finish_run(run_id, "failed", {"calendar": {"failed": 1}}, error)
        raise ItemError(f"the CRM refused {item.label()}: {error}", item.id)
    # An unlinked pair of this event (its CRM item was deleted) makes way for this one.
    dropped = [p.id for p in known if p.id is not None]
    pair = Pair(None, "calendar", result.item.id, None, item.id, None,
                crm_base=result.item, gw_base=item, one_way=True)
    store.save_pairs(pid, "calendar", [pair], dropped, run_id, [RunItem(
        "calendar", "create:crm", "applied", item.label(), "recorded (one-way)",
        result.item.id, item.id)])
    store.finish_run(run_id, "ok", {"calendar": {"create:crm": 1}})
    return Recorded("recorded", item.label(), item.id, result.item.id, related,
                    result.error)


def _follow(syncer: Syncer, pair: Pair, item: Item) -> Recorded:
    """Recording a recorded event again sends its groupware changes since (if any), as
    the next sync would: a way to update it while calendar sync is off."""
    syncer.store.load_bases("calendar", [pair])
    assert pair.crm_id is not None
    crm_now = syncer.connector("crm", "calendar").fetch("calendar", [pair.crm_id]).get(
        pair.crm_id)
    plan = make_plan("calendar", [View(pair, crm_now, item)], syncer.policy("calendar"),
                     syncer.common_fields("calendar"))
    if not any(step.actions for step in plan.steps):
        return Recorded("already-recorded", item.label(), item.id, pair.crm_id, [])
    report = syncer.run([Prepared.unlisted(plan)], mode="record")
    problems = [i for r in report.objects.values() for i in r.items
                if i.outcome in ("failed", "conflict")]
    if problems:
        raise ItemError(f"{item.label()}: {problems[0].reason}", item.id)
    notes = [a.reason for _, a in plan.actions() if a.op == "skip"]
    return Recorded("updated" if plan.writes else "already-recorded", item.label(), item.id,
                    pair.crm_id, [], "; ".join(notes) or None)
