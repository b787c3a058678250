"""The state store: profiles, pairs with their bases, cursors, ignores and run history.

SQLite by default (a file in the data folder), PostgreSQL for the server edition; the
schema is the same and Alembic migrates it on open. Writes are small transactions made
right after the writes they record, so a killed run loses at most the bookkeeping of its
last batch, which the next run re-derives (see crmsync.sync).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from crmsync.connectors.base import SIDES, Item, Side, other
from crmsync.errors import ConfigError
from crmsync.model import ObjectKind
from crmsync.plan import Ignore, IgnoreMode, Pair
from crmsync.store.schema import (
    cursors,
    ignores,
    journal,
    pairs,
    pending,
    profiles,
    run_items,
    runs,
)

# The Alembic revision this code expects; checked on open without importing Alembic.
SCHEMA_HEAD = "0005"
MIGRATIONS = Path(__file__).with_name("migrations")
_PREFIX: dict[Side, str] = {"crm": "crm", "groupware": "gw"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Profile:
    id: int
    name: str
    # Each side's ENDPOINT: one for every object, or a JSON object {kind: endpoint} when
    # objects live in different places (a CalDAV calendar and a CardDAV address book).
    crm: str
    groupware: str
    objects: list[ObjectKind]
    # {kind: {setting: value}}; see crmsync.policy.Policy
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def endpoint(self, side: Side, kind: ObjectKind) -> str:
        value = self.crm if side == "crm" else self.groupware
        if not value.startswith("{"):
            return value
        try:
            return json.loads(value)[kind]
        except KeyError:
            raise ConfigError(f"profile {self.name!r} has no {side} endpoint for {kind}") from None


def join_endpoints(per_kind: dict[str, str]) -> str:
    """The stored form of a side's endpoints: plain when every object shares one."""
    if len(set(per_kind.values())) == 1:
        return next(iter(per_kind.values()))
    return json.dumps(per_kind, sort_keys=True)


@dataclass
class RunItem:
    kind: ObjectKind
    action: str
    outcome: str  # applied | skipped | failed | conflict
    label: str = ""
    reason: str = ""
    crm_id: str | None = None
    gw_id: str | None = None
    side: str | None = None


@dataclass
class JournalEntry:
    """One write of a run (see schema.journal)."""

    kind: ObjectKind
    seq: int
    side: Side
    action: str  # create | update | delete
    item_id: str | None = None
    # The item before an update or delete; for a create, the item it copies (as sent).
    before: Item | None = None
    after_version: str | None = None
    crm_id: str | None = None
    gw_id: str | None = None
    outcome: str | None = None  # None: the write may or may not have happened
    run_id: int | None = None


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        """Open (creating and migrating as needed) the store at a SQLAlchemy URL."""
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def schema_version(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except (OperationalError, ProgrammingError):
            return None

    def migrate(self) -> None:
        if self.schema_version() == SCHEMA_HEAD:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    # --- profiles --------------------------------------------------------------------------

    def add_profile(self, name: str, crm: str, groupware: str, objects: Sequence[str],
                    settings: dict[str, dict[str, Any]]) -> Profile:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(profiles).values(
                    name=name, crm=crm, groupware=groupware, objects=json.dumps(list(objects)),
                    settings=json.dumps(settings), created_at=now()))
        except IntegrityError:
            raise ConfigError(f"a profile named {name!r} already exists") from None
        return self.profile(name)

    def profile(self, name: str) -> Profile:
        with self.engine.connect() as conn:
            row = conn.execute(select(profiles).where(profiles.c.name == name)).first()
        if row is None:
            raise ConfigError(f"no profile named {name!r}; see 'crmsync profile list'")
        return _profile(row)

    def profiles(self) -> list[Profile]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(profiles).order_by(profiles.c.name)).all()
        return [_profile(r) for r in rows]

    def save_settings(self, profile: Profile) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(profiles).where(profiles.c.id == profile.id)
                         .values(settings=json.dumps(profile.settings)))

    def remove_profile(self, name: str) -> None:
        profile = self.profile(name)
        with self.engine.begin() as conn:
            for table in (pairs, cursors, pending, ignores):
                conn.execute(delete(table).where(table.c.profile_id == profile.id))
            run_ids = select(runs.c.id).where(runs.c.profile_id == profile.id)
            conn.execute(delete(run_items).where(run_items.c.run_id.in_(run_ids)))
            conn.execute(delete(journal).where(journal.c.run_id.in_(run_ids)))
            conn.execute(delete(runs).where(runs.c.profile_id == profile.id))
            conn.execute(delete(profiles).where(profiles.c.id == profile.id))

    # --- pairs -----------------------------------------------------------------------------

    def pairs(self, profile_id: int, kind: ObjectKind,
              ids: dict[Side, set[str]] | None = None) -> list[Pair]:
        """The pairs of one object, without bases (see load_bases).

        With ``ids``, only the pairs holding one of these item ids on that side: a run
        that lists a few changes need not load every pair.
        """
        c = pairs.c
        query = select(c.id, c.crm_id, c.crm_version, c.gw_id, c.gw_version, c.one_way).where(
            c.profile_id == profile_id, c.kind == kind)
        with self.engine.connect() as conn:
            if ids is None:
                rows = conn.execute(query).all()
            else:
                rows = []
                for side, wanted in ids.items():
                    column = c.crm_id if side == "crm" else c.gw_id
                    chosen = sorted(wanted)
                    for start in range(0, len(chosen), 500):
                        rows += conn.execute(query.where(column.in_(chosen[start:start + 500])))
        unique = {r[0]: r for r in rows}
        return [Pair(r[0], kind, r[1], r[2], r[3], r[4], one_way=bool(r[5]))
                for r in unique.values()]

    def uid_holders(self, profile_id: int, kind: ObjectKind, side: Side,
                    uids: Iterable[str]) -> dict[str, str]:
        """Of ``uids``, those a paired item on ``side`` has (by its stored base): uid ->
        that item's id. A new item with such a UID is a twin (see plan.make_plan)."""
        c = pairs.c
        raw = c.crm_raw if side == "crm" else func.coalesce(c.gw_raw, c.crm_raw)
        fmt = c.crm_fmt if side == "crm" else func.coalesce(c.gw_fmt, c.crm_fmt)
        item_id = c.crm_id if side == "crm" else c.gw_id
        wanted = set(uids)
        query = select(item_id, raw, fmt).where(c.profile_id == profile_id, c.kind == kind,
                                                item_id.is_not(None))
        if len(wanted) <= 50:
            # A few new items (the usual run): only the bases that may hold their UIDs.
            query = query.where(or_(*(raw.contains(u, autoescape=True) for u in wanted)))
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for held, text_, fmt_ in conn.execute(query):
                uid = Item(held, "", text_ or "", fmt_ or "", kind).uid
                if uid in wanted:
                    out.setdefault(uid, held)
        return out

    def side_counts(self, profile_id: int, kind: ObjectKind) -> dict[Side, int]:
        """How many paired items each side holds (for the mass-delete guard)."""
        c = pairs.c
        query = select(func.count(c.crm_id), func.count(c.gw_id)).where(
            c.profile_id == profile_id, c.kind == kind)
        with self.engine.connect() as conn:
            crm, gw = conn.execute(query).one()
        return {"crm": crm, "groupware": gw}

    def pair_counts(self, profile_id: int) -> dict[str, int]:
        """How many pairs each object has."""
        query = (select(pairs.c.kind, func.count()).where(pairs.c.profile_id == profile_id)
                 .group_by(pairs.c.kind))
        with self.engine.connect() as conn:
            return {kind: n for kind, n in conn.execute(query)}

    def load_bases(self, kind: ObjectKind, chosen: Iterable[Pair]) -> None:
        """Fill in the bases of the given pairs."""
        by_id = {p.id: p for p in chosen if p.id is not None}
        ids = list(by_id)
        c = pairs.c
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(c.id, c.crm_id, c.crm_version, c.crm_fmt, c.crm_modified,
                               c.crm_raw, c.gw_id, c.gw_version, c.gw_fmt, c.gw_modified,
                               c.gw_raw).where(c.id.in_(ids[start:start + 500]))
                for row in conn.execute(query):
                    pair = by_id[row[0]]
                    pair.crm_base = _base(kind, *row[1:6])
                    gw_raw = row[10]
                    if gw_raw is None and row[8] is not None and row[5] is not None:
                        gw_raw = row[5]  # stored once: the same content as the CRM base
                    pair.gw_base = _base(kind, *row[6:10], gw_raw)

    def save_pairs(self, profile_id: int, kind: ObjectKind, saved: Sequence[Pair],
                   dropped: Sequence[int], run_id: int | None = None,
                   items: Sequence[RunItem] = (), done: Sequence[JournalEntry] = ()) -> None:
        """Record new pair states, forget dropped pairs, log what the run did to them and
        complete its journal entries (``done``), in one transaction: the history never
        disagrees with the state."""
        if not saved and not dropped and not items and not done:
            return
        stamp = now()
        new_rows, old_rows = [], []
        for pair in saved:
            row: dict[str, Any] = {"updated_at": stamp}
            for side in SIDES:
                p = _PREFIX[side]
                base = pair.base_on(side)
                row[f"{p}_id"] = pair.id_on(side)
                row[f"{p}_version"] = base.version if base else None
                row[f"{p}_fmt"] = base.fmt if base else None
                row[f"{p}_modified"] = base.modified if base else None
                row[f"{p}_raw"] = base.raw if base else None
            if _same_content(pair.crm_base, pair.gw_base):
                row["gw_raw"] = None  # see schema: "same as the CRM base"
            if pair.id is None:
                new_rows.append(row | {"profile_id": profile_id, "kind": kind,
                                       "one_way": pair.one_way})
            else:
                old_rows.append(row | {"pair_id": pair.id})
        with self.engine.begin() as conn:
            if dropped:
                conn.execute(delete(pairs).where(pairs.c.id.in_(list(dropped))))
            if old_rows:
                conn.execute(
                    update(pairs).where(pairs.c.id == bindparam("pair_id")), old_rows)
            if new_rows:
                conn.execute(insert(pairs), new_rows)
            if items:
                assert run_id is not None
                _insert_run_items(conn, run_id, items)
            if done:
                assert run_id is not None
                c = journal.c
                conn.execute(update(journal).where(
                    c.run_id == run_id, c.kind == bindparam("j_kind"),
                    c.seq == bindparam("j_seq")).values(
                    item_id=bindparam("j_item"), after_version=bindparam("j_after"),
                    outcome=bindparam("j_outcome")),
                    [{"j_kind": e.kind, "j_seq": e.seq, "j_item": e.item_id,
                      "j_after": e.after_version, "j_outcome": e.outcome} for e in done])

    # --- the journal -----------------------------------------------------------------------

    def journal_intents(self, run_id: int, entries: Sequence[JournalEntry]) -> None:
        """Record writes about to be sent, with their before images (one insert)."""
        if not entries:
            return
        with self.engine.begin() as conn:
            conn.execute(insert(journal), [
                {"run_id": run_id, "kind": e.kind, "seq": e.seq, "side": e.side,
                 "action": e.action, "item_id": e.item_id,
                 "before_version": e.before.version if e.before else None,
                 "before_fmt": e.before.fmt if e.before else None,
                 "before_raw": e.before.raw if e.before else None,
                 "crm_id": e.crm_id, "gw_id": e.gw_id} for e in entries])

    def unsettled_creates(self, profile_id: int, kind: ObjectKind
                          ) -> dict[tuple[Side, str], Item]:
        """Creates a stopped run sent without learning whether they happened: by the
        (side, id) of the item each copied, that item as it was sent (the newest)."""
        c = journal.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.side, c.crm_id, c.gw_id, c.before_version, c.before_raw,
                       c.before_fmt)
                .join(runs, runs.c.id == c.run_id)
                .where(runs.c.profile_id == profile_id, c.kind == kind,
                       c.action == "create", c.outcome.is_(None), c.before_raw.is_not(None))
                .order_by(c.id)).all()
        out: dict[tuple[Side, str], Item] = {}
        for r in rows:
            if source_id := _copied_id(r):
                out[(other(r.side), source_id)] = Item(source_id, r.before_version,
                                                       r.before_raw, r.before_fmt, kind)
        return out

    def journal(self, run_id: int) -> list[JournalEntry]:
        """A run's journal, in the order its writes were sent."""
        c = journal.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(journal).where(c.run_id == run_id)
                                .order_by(c.id)).all()
        return [JournalEntry(
            r.kind, r.seq, r.side, r.action, r.item_id,
            Item(_copied_id(r) if r.action == "create" else r.item_id, r.before_version,
                 r.before_raw, r.before_fmt, r.kind) if r.before_raw is not None else None,
            r.after_version, r.crm_id, r.gw_id, r.outcome, r.run_id) for r in rows]

    # --- cursors, pending items, ignores -----------------------------------------------------

    def cursor(self, profile_id: int, kind: ObjectKind, side: Side) -> str | None:
        c = cursors.c
        with self.engine.connect() as conn:
            return conn.execute(select(c.value).where(
                c.profile_id == profile_id, c.kind == kind, c.side == side)).scalar()

    def pending(self, profile_id: int, kind: ObjectKind) -> dict[Side, set[str]]:
        c = pending.c
        out: dict[Side, set[str]] = {s: set() for s in SIDES}
        with self.engine.connect() as conn:
            for side, item_id in conn.execute(select(c.side, c.item_id).where(
                    c.profile_id == profile_id, c.kind == kind)):
                out[side].add(item_id)
        return out

    def save_progress(self, profile_id: int, kind: ObjectKind,
                      new_cursors: dict[Side, str | None],
                      still_pending: dict[Side, set[str]]) -> None:
        """Move the cursors and replace the pending set, in one transaction."""
        stamp = now()
        with self.engine.begin() as conn:
            for side, value in new_cursors.items():
                _set_cursor(conn, profile_id, kind, side, value, stamp)
            conn.execute(delete(pending).where(pending.c.profile_id == profile_id,
                                               pending.c.kind == kind))
            rows = [{"profile_id": profile_id, "kind": kind, "side": side, "item_id": i}
                    for side, ids in still_pending.items() for i in sorted(ids)]
            if rows:
                conn.execute(insert(pending), rows)

    def checkpoint(self, profile_id: int, kind: ObjectKind, side: Side, cursor: str,
                   ids: Iterable[str]) -> None:
        """Move one side's cursor part-way through a listing and mark the ids listed
        before it pending, in one transaction: a run cut off after this resumes from
        ``cursor`` and still looks at those ids."""
        c = pending.c
        with self.engine.begin() as conn:
            _set_cursor(conn, profile_id, kind, side, cursor, now())
            known = set(conn.execute(select(c.item_id).where(
                c.profile_id == profile_id, c.kind == kind, c.side == side)).scalars())
            rows = [{"profile_id": profile_id, "kind": kind, "side": side, "item_id": i}
                    for i in sorted(set(ids) - known)]
            if rows:
                conn.execute(insert(pending), rows)

    def hold(self, profile_id: int, kind: ObjectKind, ids: dict[Side, set[str]]) -> None:
        """Mark items pending (fetched and planned again by the next run, whether or not
        a listing names them), e.g. the two items of a pair that an undo left different."""
        c = pending.c
        with self.engine.begin() as conn:
            for side, wanted in ids.items():
                known = set(conn.execute(select(c.item_id).where(
                    c.profile_id == profile_id, c.kind == kind, c.side == side)).scalars())
                rows = [{"profile_id": profile_id, "kind": kind, "side": side, "item_id": i}
                        for i in sorted(wanted - known)]
                if rows:
                    conn.execute(insert(pending), rows)

    def reset_cursors(self, profile_id: int, kind: ObjectKind | None = None) -> None:
        """Forget cursors so that the next run lists everything (e.g. after rule changes)."""
        with self.engine.begin() as conn:
            query = delete(cursors).where(cursors.c.profile_id == profile_id)
            if kind is not None:
                query = query.where(cursors.c.kind == kind)
            conn.execute(query)

    def ignored(self, profile_id: int, kind: ObjectKind) -> dict[tuple[Side, str], Ignore]:
        """The user's ignores of one object, by (side, item id)."""
        c = ignores.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.side, c.item_id, c.mode, c.crm_version,
                                       c.gw_version).where(
                c.profile_id == profile_id, c.kind == kind))
            return {(r[0], r[1]): Ignore(r[2], r[3], r[4]) for r in rows}

    def ignores(self, profile_id: int) -> list[dict[str, Any]]:
        """Every ignore of a profile, for listing."""
        c = ignores.c
        query = (select(c.kind, c.side, c.item_id, c.mode, c.crm_version, c.gw_version,
                        c.created_at).where(c.profile_id == profile_id)
                 .order_by(c.kind, c.side, c.item_id))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def ignore(self, profile_id: int, kind: ObjectKind, side: Side, item_id: str,
               mode: IgnoreMode, versions: dict[Side, str | None]) -> None:
        """Set (or replace) the ignore of one item."""
        c = ignores.c
        with self.engine.begin() as conn:
            conn.execute(delete(ignores).where(c.profile_id == profile_id, c.kind == kind,
                                               c.side == side, c.item_id == item_id))
            conn.execute(insert(ignores).values(
                profile_id=profile_id, kind=kind, side=side, item_id=item_id, mode=mode,
                crm_version=versions.get("crm"), gw_version=versions.get("groupware"),
                created_at=now()))

    def unignore(self, profile_id: int, kind: ObjectKind,
                 keys: Iterable[tuple[Side, str]]) -> int:
        """Lift ignores; returns how many there were."""
        c = ignores.c
        n = 0
        with self.engine.begin() as conn:
            for side, item_id in keys:
                n += conn.execute(delete(ignores).where(
                    c.profile_id == profile_id, c.kind == kind, c.side == side,
                    c.item_id == item_id)).rowcount
        return n

    # --- runs ------------------------------------------------------------------------------

    def start_run(self, profile_id: int, objects: Sequence[str], mode: str,
                  user: str | None, dry_run: bool = False, at: str | None = None) -> int:
        """Record that a run started (``at``, default now); returns its id.

        An earlier run of the same objects still marked running was stopped before it
        could finish (killed, power lost): it is marked aborted. (Should it in fact still
        be running, its own end records its outcome over this.)"""
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(
                runs.c.profile_id == profile_id, runs.c.status == "running",
                runs.c.objects == json.dumps(list(objects))).values(
                status="aborted", error="the run stopped before it finished"))
            return conn.execute(insert(runs).values(
                profile_id=profile_id, objects=json.dumps(list(objects)), mode=mode,
                started_by=user, status="running", started_at=at or now(), dry_run=dry_run,
            ).returning(runs.c.id)).scalar_one()

    def finish_run(self, run_id: int, status: str, counts: dict[str, Any],
                   error: str | None = None, *, usage: dict[str, Any] | None = None,
                   duration_ms: int | None = None, items: Sequence[RunItem] = ()) -> None:
        """Record a run's outcome (and ``items`` not logged with their pairs yet)."""
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(
                status=status, finished_at=now(), counts=json.dumps(counts), error=error,
                usage=json.dumps(usage) if usage else None, duration_ms=duration_ms))
            if items:
                _insert_run_items(conn, run_id, items)

    def purge_runs(self, profile_id: int, before: str) -> int:
        """Forget the runs (and their items) started before ``before``; returns how many."""
        old = select(runs.c.id).where(runs.c.profile_id == profile_id,
                                      runs.c.started_at < before)
        with self.engine.begin() as conn:
            conn.execute(delete(run_items).where(run_items.c.run_id.in_(old)))
            conn.execute(delete(journal).where(journal.c.run_id.in_(old)))
            return conn.execute(delete(runs).where(runs.c.profile_id == profile_id,
                                                   runs.c.started_at < before)).rowcount

    def runs(self, profile_id: int, limit: int = 50) -> list[dict[str, Any]]:
        query = (select(runs).where(runs.c.profile_id == profile_id)
                 .order_by(runs.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query)]

    def run(self, profile_id: int, run_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(
                runs.c.id == run_id, runs.c.profile_id == profile_id)).first()
            if row is None:
                raise ConfigError(f"no run {run_id} for this profile")
            out = _run(row)
            items = conn.execute(select(run_items).where(run_items.c.run_id == run_id)
                                 .order_by(run_items.c.id))
            out["items"] = [{k: v for k, v in r._mapping.items() if k not in ("id", "run_id")}
                            for r in items]
        return out

    def last_runs(self, profile_id: int) -> dict[str, dict[str, Any]]:
        """The latest finished, non-dry run per object kind."""
        # Dry runs are left out in the query: many of them must not hide the last real run.
        query = (select(runs).where(runs.c.profile_id == profile_id, runs.c.dry_run.is_(False),
                                    runs.c.status != "running")
                 .order_by(runs.c.id.desc()).limit(200))
        with self.engine.connect() as conn:
            recent = [_run(r) for r in conn.execute(query)]
        out: dict[str, dict[str, Any]] = {}
        for run in reversed(recent):
            for kind in run["objects"]:
                out[kind] = run
        return out


def _insert_run_items(conn, run_id: int, items: Sequence[RunItem]) -> None:
    conn.execute(insert(run_items), [
        {"run_id": run_id, "kind": i.kind, "action": i.action, "side": i.side,
         "crm_id": i.crm_id,
         "gw_id": i.gw_id, "label": i.label[:500], "outcome": i.outcome, "reason": i.reason}
        for i in items])


def _same_content(a: Item | None, b: Item | None) -> bool:
    return a is not None and b is not None and a.fmt == b.fmt and a.raw == b.raw


def _base(kind: ObjectKind, item_id, version, fmt, modified, raw) -> Item | None:
    if item_id is None or raw is None:
        return None
    return Item(item_id, version, raw, fmt, kind, modified=modified)


def _profile(row) -> Profile:
    return Profile(row.id, row.name, row.crm, row.groupware, json.loads(row.objects),
                   json.loads(row.settings or "{}"))


def _run(row) -> dict[str, Any]:
    out = dict(row._mapping)
    out["objects"] = json.loads(out["objects"])
    out["counts"] = json.loads(out["counts"]) if out["counts"] else {}
    usage = json.loads(out["usage"]) if out.get("usage") else {}
    for key in ("requests", "api"):
        # Runs recorded before 0003 kept these among the counts.
        if key in out["counts"]:
            usage.setdefault(key, out["counts"].pop(key))
    out["usage"] = usage
    return out


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL keeps readers (the web UI, `status`) unblocked during a run; NORMAL sync is
    # durable across a killed process, which is the failure the executor is built for.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _set_cursor(conn: Connection, profile_id: int, kind: ObjectKind, side: Side,
                value: str | None, stamp: str) -> None:
    conn.execute(delete(cursors).where(cursors.c.profile_id == profile_id,
                                       cursors.c.kind == kind, cursors.c.side == side))
    conn.execute(insert(cursors).values(profile_id=profile_id, kind=kind, side=side,
                                        value=value, updated_at=stamp))


def _copied_id(row: Any) -> str | None:
    """The id of the item a journaled create copies: the other side's item of the pair."""
    return row.gw_id if row.side == "crm" else row.crm_id
