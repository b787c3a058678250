"""`crmsync repair`: find and fix what keeps a profile from syncing cleanly (issue 9).

Per object it lists both sides in full and reads every pair, then:

- duplicate UIDs on one side: every item sharing a UID but one (the paired one, else the
  first by id) gets a fresh UID by an update (which a CalDAV/CardDAV connector carries
  out as a copy under the new UID, then a delete of the old resource).
- orphan pairs: a pair whose items are gone on both sides is forgotten; one gone on one
  side only is a deletion the next sync propagates (reported, left alone); an item id in
  two pairs is reported.
- paired groupware items lacking the kept CRM Id (X-CRMSYNC-CRM-ID) get it, so that they
  re-pair should the store be lost.

Deciding and doing are separate: :func:`find` is read-only, :func:`fix` writes.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from crmsync import formats
from crmsync.connectors.base import SIDES, Item, Side, Update
from crmsync.model import ObjectKind
from crmsync.plan import Pair
from crmsync.sync import FETCH_CHUNK, Syncer, missing_kept_id

Problem = Literal["duplicate-uid", "orphan-pair", "one-sided-pair", "paired-twice",
                  "missing-crm-id"]
# found: not fixed yet (a dry run); fixed; reported: nothing to do here (the next sync
# does it, or it needs a person); changed: the item changed since it was read (run repair
# again); failed: the side refused the write.
KEEPS_CRM_ID = (formats.ICALENDAR, formats.VCARD)
Status = Literal["found", "fixed", "reported", "changed", "failed"]


@dataclass
class Finding:
    kind: ObjectKind
    problem: Problem
    side: Side | None
    item_id: str | None
    detail: str
    status: Status = "found"
    # For the fix: the pair concerned, the item as read, a new UID / kept CRM Id to write.
    pair: Pair | None = field(default=None, repr=False)
    item: Item | None = field(default=None, repr=False)
    uid: str = ""
    crm_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "problem": self.problem, "side": self.side,
                "item_id": self.item_id, "detail": self.detail, "status": self.status}


@dataclass
class RepairReport:
    findings: list[Finding]

    def counts(self) -> dict[str, int]:
        return dict(Counter(f"{f.problem}:{f.status}" for f in self.findings))

    @property
    def unfixed(self) -> list[Finding]:
        return [f for f in self.findings if f.status in ("changed", "failed")]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "unfixed": len(self.unfixed),
                "findings": [f.to_dict() for f in self.findings]}


def listing(syncer: Syncer, side: Side, kind: ObjectKind) -> dict[str, Item]:
    """Every item of ``kind`` on ``side``, with its content (read in batches as needed)."""
    changes = syncer.connector(side, kind).list_changes(kind, None)
    items = {i: item for i, _, item in changes.upserts if item is not None}
    return items | _fetch(syncer, side, kind, {i for i, _, item in changes.upserts
                                               if item is None})


def _fetch(syncer: Syncer, side: Side, kind: ObjectKind, ids: set[str]) -> dict[str, Item]:
    connector, todo, out = syncer.connector(side, kind), sorted(ids), {}
    for start in range(0, len(todo), FETCH_CHUNK):
        out |= connector.fetch(kind, todo[start:start + FETCH_CHUNK])
    return out


def find(syncer: Syncer, kinds: list[ObjectKind] | None = None) -> RepairReport:
    findings: list[Finding] = []
    for kind in kinds or syncer.profile.objects:
        findings += _find_kind(syncer, kind)
    return RepairReport(findings)


def _find_kind(syncer: Syncer, kind: ObjectKind) -> list[Finding]:
    items = {s: listing(syncer, s, kind) for s in SIDES}
    pairs = syncer.store.pairs(syncer.profile.id, kind)
    # A paired id the full listing missed may lie outside its range: ask for it.
    for side in SIDES:
        items[side] |= _fetch(syncer, side, kind, {i for p in pairs if (i := p.id_on(side))
                                                   and i not in items[side]})
    out: list[Finding] = []
    by_id: dict[Side, dict[str, list[Pair]]] = {s: defaultdict(list) for s in SIDES}
    for pair in pairs:
        for side in SIDES:
            if (i := pair.id_on(side)) is not None:
                by_id[side][i].append(pair)
    for side in SIDES:
        for item_id, held in sorted(by_id[side].items()):
            if len(held) > 1:
                out.append(Finding(kind, "paired-twice", side, item_id,
                                   f"in {len(held)} pairs ({', '.join(str(p.id) for p in held)})",
                                   "reported"))
    for pair in pairs:
        here = {s: (i := pair.id_on(s)) is not None and i in items[s] for s in SIDES}
        if not any(here.values()):
            out.append(Finding(kind, "orphan-pair", None, None,
                               f"pair {pair.id} (crm {pair.crm_id}, groupware {pair.gw_id}): "
                               "both items are gone; the pair is forgotten", pair=pair))
        elif not all(here.values()):
            gone = next(s for s in SIDES if not here[s])
            if pair.id_on(gone) is not None:
                out.append(Finding(kind, "one-sided-pair", gone, pair.id_on(gone),
                                   f"pair {pair.id}: gone on the {gone} side, a deletion "
                                   "the next sync propagates", "reported", pair=pair))
    # Duplicate UIDs: keep the paired item (else the first by id), renew the others.
    for side in SIDES:
        groups: dict[str, list[Item]] = defaultdict(list)
        for item_id in sorted(items[side]):
            if (uid := items[side][item_id].uid) is not None:
                groups[uid].append(items[side][item_id])
        for uid, same in groups.items():
            if len(same) < 2:
                continue
            keep = next((i for i in same if i.id in by_id[side]), same[0])
            for item in same:
                if item is not keep:
                    held = by_id[side].get(item.id)
                    # The same new UID when repair runs again after a stop: the item
                    # written under it is found instead of being written twice.
                    renewed = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                             f"crmsync-repair:{side}:{item.id}:{uid}"))
                    out.append(Finding(kind, "duplicate-uid", side, item.id,
                                       f"UID {uid!r} also on {keep.id}; gets a new UID",
                                       pair=held[0] if held else None, item=item,
                                       uid=renewed))
    # Paired groupware items lacking the kept CRM Id (only iCalendar and vCard keep one).
    for pair in pairs:
        gw = items["groupware"].get(pair.gw_id or "")
        crm = items["crm"].get(pair.crm_id or "")
        if gw is not None and crm is not None and gw.fmt in KEEPS_CRM_ID \
                and (crm_id := missing_kept_id(gw, crm)):
            out.append(Finding(kind, "missing-crm-id", "groupware", gw.id,
                               f"lacks the kept CRM Id {crm_id}", pair=pair, item=gw,
                               crm_id=crm_id))
    return out


def fix(syncer: Syncer, report: RepairReport) -> RepairReport:
    """Carry out what ``report`` found: forget dead pairs, write new UIDs and kept CRM Ids
    (one update per item, If-Match its version). A changed item is reported, not retried.
    Every step is safe to redo: a re-run finds what is left."""
    pid = syncer.profile.id
    by_kind: dict[ObjectKind, list[Finding]] = defaultdict(list)
    for f in report.findings:
        if f.status == "found":
            by_kind[f.kind].append(f)
    for kind, todo in by_kind.items():
        dead = [f for f in todo if f.problem == "orphan-pair"]
        if dead:
            syncer.store.save_pairs(pid, kind, [], [f.pair.id for f in dead if f.pair
                                                    and f.pair.id is not None])
            for f in dead:
                f.status = "fixed"
        # One update per item, carrying its new UID and its kept CRM Id together.
        per_item: dict[tuple[Side, str], list[Finding]] = defaultdict(list)
        for f in todo:
            if f.item is not None and f.side is not None:
                per_item[(f.side, f.item.id)].append(f)
        for side in SIDES:
            keys = [k for k in per_item if k[0] == side]
            if keys:
                _write(syncer, kind, side, [per_item[k] for k in keys])
    return report


def _write(syncer: Syncer, kind: ObjectKind, side: Side,
           groups: list[list[Finding]]) -> None:
    connector = syncer.connector(side, kind)
    writes = []
    for group in groups:
        item = group[0].item
        assert item is not None
        writes.append(Update(item.id, item.version, {}, planned=item,
                             crm_id=next((f.crm_id for f in group if f.crm_id), ""),
                             uid=next((f.uid for f in group if f.uid), "")))
    size = connector.capabilities.batch_size
    results = []
    for start in range(0, len(writes), size):
        results += connector.apply(kind, writes[start:start + size])
    saved: list[Pair] = []
    for group, write, result in zip(groups, writes, results, strict=True):
        for f in group:
            f.status = "fixed" if result.status == "ok" else (
                "changed" if result.status == "changed" else "failed")
            if result.error and f.status != "fixed":
                f.detail += f" ({result.error})"
        pair = next((f.pair for f in group if f.pair is not None), None)
        if result.status == "ok" and result.item is not None and pair is not None \
                and pair.version_on(side) == write.version:
            # The item was as last synced: its new version is the base, so the next sync
            # sees nothing to do. (One changed since keeps its old base and syncs.)
            syncer.store.load_bases(kind, [pair])
            # (A new UID may have moved the item to a new id: see DavConnector.)
            if side == "crm":
                saved.append(dataclasses.replace(pair, crm_id=result.item.id,
                                                 crm_version=result.item.version,
                                                 crm_base=result.item))
            else:
                saved.append(dataclasses.replace(pair, gw_id=result.item.id,
                                                 gw_version=result.item.version,
                                                 gw_base=result.item))
    syncer.store.save_pairs(syncer.profile.id, kind, saved, [])
