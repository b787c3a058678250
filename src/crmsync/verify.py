"""`crmsync verify`: do the two sides of every pair agree? Read-only.

Per object it lists both sides in full (as `crmsync repair` does), reads every stored
pair and compares its two items field by field through the mapping, as the planner
compares items without a base: a CRM value that is the CRM's image of the groupware's
(a body cut to 32,000 characters, a location to 255, an invitee block taken out) agrees
with it. It lists each DIVERGENT pair (both items there, some field differs) with the
differing fields, and each pair with an item gone (a deletion the next sync carries over,
or an item outside what the sides list).

Why: the planner sees only what changed since the stored base. A pair whose sides came
apart without a change it can see (a server that kept an item's version across an edit, a
store restored from elsewhere, a bug) would stay different for ever without a word; this
is the check that says so. `crmsync sync` then carries a difference over once one side
changes; until then, edit the item that is wrong, or lose the store for the object
(both sides are compared afresh, see README "Lost state store").

Not compared: recorded one-way pairs (CRM edits stay in the CRM by design), unlinked
pairs (their deletion was prevented), and items the user ignores (listed as such).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmsync.connectors.base import SIDES, Item, Side
from crmsync.errors import FormatError
from crmsync.model import ObjectKind
from crmsync.plan import differences
from crmsync.repair import _fetch, listing
from crmsync.sync import Syncer


@dataclass
class PairCheck:
    """One pair that does not agree: ``fields`` (field -> (CRM value, groupware value))
    for a divergent pair, ``problem`` for one that cannot be compared."""

    kind: ObjectKind
    pair_id: int | None
    crm_id: str | None
    gw_id: str | None
    label: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pair": self.pair_id, "crm_id": self.crm_id,
                "gw_id": self.gw_id, "label": self.label, "problem": self.problem,
                "fields": {k: {"crm": c, "groupware": g} for k, (c, g) in self.fields.items()}}


@dataclass
class ObjectCheck:
    pairs: int = 0
    agree: int = 0
    # Items on each side no pair holds (the next sync creates or pairs them).
    unpaired: dict[Side, int] = field(default_factory=dict)
    divergent: list[PairCheck] = field(default_factory=list)
    # Not compared: one item gone, unreadable, one-way or ignored.
    other: list[PairCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "agree": self.agree, "unpaired": self.unpaired,
                "divergent": [d.to_dict() for d in self.divergent],
                "not_compared": [o.to_dict() for o in self.other]}


@dataclass
class VerifyReport:
    profile: str
    objects: dict[ObjectKind, ObjectCheck]

    @property
    def divergent(self) -> int:
        return sum(len(o.divergent) for o in self.objects.values())

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "divergent": self.divergent,
                "objects": {k: o.to_dict() for k, o in self.objects.items()}}


def verify(syncer: Syncer, kinds: list[ObjectKind] | None = None) -> VerifyReport:
    """Compare both sides of every pair of ``kinds`` (default: the profile's objects)."""
    return VerifyReport(syncer.profile.name,
                        {k: _verify_kind(syncer, k) for k in kinds or syncer.profile.objects})


def _verify_kind(syncer: Syncer, kind: ObjectKind) -> ObjectCheck:
    items = {s: listing(syncer, s, kind) for s in SIDES}
    pairs = syncer.store.pairs(syncer.profile.id, kind)
    for side in SIDES:
        items[side] |= _fetch(syncer, side, kind, {i for p in pairs if (i := p.id_on(side))
                                                   and i not in items[side]})
    common = syncer.common_fields(kind)
    images = syncer.images(kind)
    ignored = syncer.store.ignored(syncer.profile.id, kind)
    out = ObjectCheck(pairs=len(pairs))
    for side in SIDES:
        held = {p.id_on(side) for p in pairs}
        out.unpaired[side] = len(items[side].keys() - held)
    for pair in sorted(pairs, key=lambda p: p.id or 0):
        now: dict[Side, Item | None] = {s: items[s].get(i) if (i := pair.id_on(s)) else None
                                        for s in SIDES}
        crm, gw = now["crm"], now["groupware"]
        check = PairCheck(kind, pair.id, pair.crm_id, pair.gw_id,
                          next((i.label() for i in (crm, gw) if i is not None), ""))
        if pair.crm_id is None or pair.gw_id is None:
            check.problem = "unlinked: its counterpart's deletion was prevented"
        elif crm is None or gw is None:
            gone = "CRM" if crm is None else "groupware"
            check.problem = f"gone in {gone}: the next sync carries the deletion over"
        elif pair.one_way:
            check.problem = "recorded one-way: CRM edits stay in the CRM"
        elif any((s, i) in ignored for s in SIDES if (i := pair.id_on(s))):
            check.problem = "ignored by the user"
        else:
            try:
                check.fields = differences(crm, gw, common, images)
            except FormatError as exc:
                check.problem = f"cannot read item {exc.item_id}: {exc}"
            if not check.fields and not check.problem:
                out.agree += 1
                continue
            if check.fields:
                out.divergent.append(check)
                continue
        out.other.append(check)
    return out
