"""`crmsync undo`: revert the writes of one run, from its journal (see store.schema.journal).

Each write of the run, newest first, is reverted where its item is still as the run left
it: a created item is deleted, an updated one gets back its fields as they were, a deleted
one is created again from its before image. An item changed since is reported and left
alone, as is a write whose outcome the journal does not know (the run was cut off).

The state store afterwards, so that the next sync neither redoes what was undone blindly
nor leaves the two sides different unnoticed:
- reverted update: the pair's base on that side is the reverted item, the other side's
  base is forgotten and both items are marked pending: the next run compares the two as
  after a lost store, through the mapping. Where they differ (the undo put back a value
  the other side does not have), the conflict rule decides and the plan shows it: with
  "newest" the undo, the latest change, is carried to the other side; with "ask" the user
  chooses. A pair is never left different without the next plan saying so;
- reverted create: the pair is forgotten and the item it was copied from is ignored until
  it changes (else the next run would copy it again);
- reverted delete: the re-created item is ignored until it changes (else the next run
  would delete it again, or copy it as new).
The undo is itself a run (mode "undo") with a report and a journal: it can be undone.
"""

from __future__ import annotations

import dataclasses

from crmsync import merge
from crmsync.connectors.base import (
    SIDES,
    Create,
    Delete,
    Item,
    Result,
    Side,
    Update,
    Write,
    other,
)
from crmsync.errors import ConfigError
from crmsync.model import ObjectKind
from crmsync.plan import Pair
from crmsync.store import JournalEntry, RunItem
from crmsync.sync import ObjectReport, Report, Syncer

_ACTION = {"create": "delete", "update": "update", "delete": "create"}


def undo(syncer: Syncer, run_id: int, *, dry_run: bool = False,
         user: str | None = None) -> Report:
    """Revert run ``run_id``'s writes; the report lists each item reverted or left alone."""
    store, profile = syncer.store, syncer.profile
    run = store.run(profile.id, run_id)
    if run["dry_run"]:
        raise ConfigError(f"run {run_id} was a dry run: it changed nothing to undo")
    entries = list(reversed(store.journal(run_id)))
    if not entries:
        raise ConfigError(f"run {run_id} has no journal of writes to undo (it wrote "
                          "nothing, or ran before crmsync kept journals)")
    kinds = list(dict.fromkeys(e.kind for e in entries))
    if dry_run:
        report = Report(profile.name, mode="undo", user=user)
    else:
        report = syncer.start_run([], "undo", user)
    assert dry_run or report.run_id is not None
    for kind in kinds:
        obj = report.objects[kind] = ObjectReport()
        _undo_kind(syncer, report.run_id, kind, [e for e in entries if e.kind == kind],
                   obj, dry_run)
    if report.failed or any(i.outcome != "applied" for o in report.objects.values()
                            for i in o.items):
        report.status = "partial"
    if not dry_run:
        syncer.finish_run(report, [i for o in report.objects.values() for i in o.items])
    return report


def _undo_kind(syncer: Syncer, run_id: int | None, kind: ObjectKind, entries: list[JournalEntry],
               obj: ObjectReport, dry_run: bool) -> None:
    store, profile = syncer.store, syncer.profile
    current: dict[Side, dict[str, Item]] = {}
    for side in SIDES:
        ids = sorted({e.item_id for e in entries if e.side == side and e.item_id})
        current[side] = syncer.connector(side, kind).fetch(kind, ids) if ids else {}
    names = syncer.common_fields(kind)
    todo: list[tuple[JournalEntry, Write]] = []
    for entry in entries:
        now = current[entry.side].get(entry.item_id or "")
        code = f"{_ACTION[entry.action]}:{entry.side}"
        label = entry.before.label() if entry.before else (now.label() if now else "")
        item = RunItem(kind, code, "skipped", label or entry.item_id or "", "",
                       entry.crm_id, entry.gw_id, entry.side)
        write, reason = _revert(entry, now, names)
        if write is None:
            item.reason = reason
            obj.items.append(item)
            obj.counts["skip"] += 1
            continue
        todo.append((entry, write))
        item.outcome = "applied"
        obj.items.append(item)
        obj.counts[code] += 1
    if dry_run or not todo:
        return
    assert run_id is not None
    journal = [JournalEntry(kind, n, entry.side, _ACTION[entry.action],
                            None if isinstance(write, Create) else write.id,
                            current[entry.side].get(entry.item_id or ""),
                            crm_id=entry.crm_id, gw_id=entry.gw_id)
               for n, (entry, write) in enumerate(todo, 1)]
    store.journal_intents(run_id, journal)
    by_n: dict[int, Result] = {}
    for side in SIDES:
        connector = syncer.connector(side, kind)
        mine = [n for n, (e, _) in enumerate(todo) if e.side == side]
        for start in range(0, len(mine), connector.capabilities.batch_size):
            part = mine[start:start + connector.capabilities.batch_size]
            got = connector.apply(kind, [todo[n][1] for n in part])
            by_n.update(zip(part, got, strict=True))
    applied = [i for i in obj.items if i.outcome == "applied"]
    saved: list[Pair] = []
    dropped: list[int] = []
    for n, (entry, _write) in enumerate(todo):
        result = by_n[n]
        done = journal[n]
        if done.action == "create" and result.item is not None:
            done.item_id = result.item.id
        done.after_version = result.item.version if result.item else None
        done.outcome = result.status
        if result.status != "ok":
            applied[n].outcome = "failed"
            applied[n].reason = result.error or f"the write was refused ({result.status})"
            obj.counts["failed"] += 1
            continue
        _settle(syncer, kind, entry, result, saved, dropped)
    store.save_pairs(profile.id, kind, saved, dropped, run_id, (), journal)
    held: dict[Side, set[str]] = {s: set() for s in SIDES}
    for pair in saved:
        for side in SIDES:
            if (item_id := pair.id_on(side)) is not None:
                held[side].add(item_id)
    if any(held.values()):
        store.hold(profile.id, kind, held)


def _revert(entry: JournalEntry, now: Item | None, names: frozenset[str]
            ) -> tuple[Write | None, str]:
    """The write that reverts a journal entry, or why there is none."""
    if entry.outcome not in ("ok", None):
        return None, f"the run's write did not happen ({entry.outcome})"
    if entry.action == "delete":
        assert entry.before is not None
        if now is not None:
            return None, ("the item is there: the run's delete did not happen"
                          if entry.outcome is None else "changed since the run, left alone")
        return Create(source=entry.before), ""
    if entry.outcome is None:
        return None, "the run stopped before it knew whether this write happened; left alone"
    if now is None:
        return None, ("already gone" if entry.action == "create"
                      else "deleted since the run, left alone")
    if now.version != entry.after_version:
        return None, "changed since the run, left alone"
    if entry.action == "create":
        return Delete(now.id, now.version), ""
    assert entry.before is not None
    changes = merge.diff(merge.flatten(now.record(), names),
                         merge.flatten(entry.before.record(), names))
    return Update(now.id, now.version, changes, planned=now), ""


def _settle(syncer: Syncer, kind: ObjectKind, entry: JournalEntry, result: Result,
            saved: list[Pair], dropped: list[int]) -> None:
    """Bring the state store in line with one reverted write (see the module's doc)."""
    store, profile, side = syncer.store, syncer.profile, entry.side
    if entry.action == "delete":
        assert result.item is not None
        store.ignore(profile.id, kind, side, result.item.id, "until-change",
                     {side: result.item.version, other(side): None})
        return
    found = store.pairs(profile.id, kind, ids={side: {entry.item_id or ""}})
    if entry.action == "create":
        for pair in found:
            assert pair.id is not None
            dropped.append(pair.id)
            source = pair.id_on(other(side))
            if source is not None:
                store.ignore(profile.id, kind, other(side), source, "until-change",
                             {other(side): pair.version_on(other(side)), side: None})
        return
    store.load_bases(kind, found)
    for pair in found:
        bases = {"crm_base": result.item, "gw_base": None} if side == "crm" else \
            {"gw_base": result.item, "crm_base": None}
        saved.append(dataclasses.replace(pair, **bases))
