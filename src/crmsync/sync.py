"""A sync run: gather what changed on both sides, plan it, apply the plan.

Why a killed run is safe to run again:

* Writes are idempotent (an update writes fields to values, a delete of a missing item is
  a no-op) and carry the version they were planned from.
* After each chunk of writes the new pair states are committed at once; a create whose
  commit was lost is found again on the next run by its UID (or content) and re-paired
  instead of created twice (see :func:`crmsync.plan.pair_up`).
* Cursors move only when a run finishes. Items a run could not settle (failures,
  conflicts awaiting a decision) are remembered as pending and fetched again next time.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from crmsync import selection
from crmsync.connectors import connect
from crmsync.connectors.base import (
    SIDES,
    Changes,
    Connector,
    Create,
    Credentials,
    Delete,
    Item,
    ReadProgress,
    Result,
    Side,
    Update,
    Write,
    other,
)
from crmsync.errors import ConfigError, CrmsyncError, FormatError, ItemError, unexpected
from crmsync.merge import SEP, apply_changes, diff, flatten
from crmsync.model import Event, ObjectKind, pinned
from crmsync.plan import (
    SIDE_NAME,
    WRITES,
    Action,
    Decisions,
    IgnoreMode,
    Image,
    Pair,
    Plan,
    Step,
    View,
    decide,
    make_plan,
)
from crmsync.planfile import Outcome, PlanFile, PlanFileError, reconcile
from crmsync.policy import Policy
from crmsync.store import JournalEntry, Profile, RunItem, Store, now

# Progress reports: (phase, object, done, total), phase "fetching" or "applying". The
# core only counts; a view (the CLI's progress bar) decides whether and how to show it.
Progress = Callable[[str, str, int, int], None]
MAX_REPLANS = 3
CHUNK = 200
# Items fetched per progress report: a multiple of the connectors' own batches (DAV
# multiget 100, Salesforce 200 ids per query), so that reporting costs no extra request.
FETCH_CHUNK = 200
# How long run reports are kept by default (config.toml: [history] keep_days).
KEEP_DAYS = 90


@dataclass
class Prepared:
    """One object's plan together with what is needed to apply it and move on."""

    kind: ObjectKind
    plan: Plan
    # The cursors the listing returned, and the ones the run started from; None for a
    # plan made without a listing (crmsync.record), which leaves cursors as they are.
    listed: dict[Side, str | None] | None
    old: dict[Side, str | None]
    pending: dict[Side, set[str]]
    # The listings' warnings for the run report (see Changes.notes), by side.
    notes: list[tuple[Side, str]] = field(default_factory=list)

    @classmethod
    def unlisted(cls, plan: Plan) -> Prepared:
        return cls(plan.kind, plan, None, {}, {s: set() for s in SIDES})


@dataclass
class ObjectReport:
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    items: list[RunItem] = field(default_factory=list)


@dataclass
class Report:
    profile: str
    status: str = "ok"  # ok | partial | failed | aborted
    run_id: int | None = None
    started: str = field(default_factory=now)
    finished: str | None = None
    objects: dict[str, ObjectReport] = field(default_factory=dict)
    error: str | None = None
    # Requests each side's servers were sent (planning included): {"groupware": 3}
    requests: dict[str, int] = field(default_factory=dict)
    # A side's other counters, e.g. a CRM's API calls and daily allowance:
    # {"crm": {"api_calls": 4, "api_usage": 812, "api_limit": 15000}}
    api: dict[str, dict[str, int]] = field(default_factory=dict)
    mode: str = "manual"  # manual | auto | record | dry-run
    user: str | None = None
    duration_ms: int | None = None

    @property
    def failed(self) -> int:
        return sum(r.counts.get("failed", 0) for r in self.objects.values())

    @property
    def conflicts(self) -> int:
        return sum(r.counts.get("conflict", 0) for r in self.objects.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "profile": self.profile,
            "mode": self.mode,
            "user": self.user,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "requests": self.requests,
            **({"api": self.api} if self.api else {}),
            "objects": {
                kind: {
                    "counts": dict(sorted(r.counts.items())),
                    "items": [
                        {"action": i.action, "side": i.side, "outcome": i.outcome,
                         "label": i.label, "reason": i.reason, "crm_id": i.crm_id,
                         "groupware_id": i.gw_id}
                        for i in r.items if i.outcome != "applied"
                    ],
                }
                for kind, r in self.objects.items()
            },
        }


class Syncer:
    """Runs one profile's sync. Connectors default to the profile's endpoints."""

    def __init__(self, store: Store, profile: Profile, crm: Connector | None = None,
                 groupware: Connector | None = None,
                 credentials: Callable[[Side], Credentials | None] | None = None,
                 clock: Callable[[], datetime] | None = None,
                 keep_days: int = KEEP_DAYS) -> None:
        self.store = store
        # Run reports older than this are forgotten when a run starts; 0 keeps them all.
        self.keep_days = keep_days
        self._began = time.monotonic()  # the current run's start, for its duration
        self.profile = profile
        # Connectors given here serve every object of their side (tests, embedding);
        # the others are opened on first use, one per endpoint.
        self._given: dict[Side, Connector | None] = {"crm": crm, "groupware": groupware}
        self._open: dict[tuple[Side, str], Connector] = {}
        self._credentials = credentials or (lambda side: None)
        # Per object, the emails the CRM knows a person for (this run's lookup).
        self._known: dict[ObjectKind, frozenset[str] | None] = {}
        self._images: dict[ObjectKind, dict[Side, Image]] = {}
        # "Now" for the sync range and the rules; a run may be planned as of another time.
        self.clock = clock or (lambda: datetime.now(UTC))

    def connector(self, side: Side, kind: ObjectKind) -> Connector:
        given = self._given[side]
        if given is not None:
            return given
        endpoint = self.profile.endpoint(side, kind)
        if (side, endpoint) not in self._open:
            self._open[(side, endpoint)] = connect(endpoint, side, self._credentials(side))
        return self._open[(side, endpoint)]

    def _connectors(self) -> list[tuple[Side, Connector]]:
        out = [(s, c) for s, c in self._given.items() if c is not None]
        return out + [(side, c) for (side, _), c in self._open.items()]

    def stats(self) -> dict[str, dict[str, int]]:
        """Each side's counters (e.g. HTTP requests) summed over its connectors."""
        out: dict[str, dict[str, int]] = {}
        for side, connector in self._connectors():
            for key, n in connector.stats().items():
                out.setdefault(side, {})[key] = out.get(side, {}).get(key, 0) + n
        return out

    def close(self) -> None:
        for _, connector in self._connectors():
            connector.close()

    def policy(self, kind: ObjectKind) -> Policy:
        return Policy.of_profile(kind, self.profile.settings.get(kind))

    def switched_off(self, kinds: Sequence[ObjectKind] | None = None) -> list[ObjectKind]:
        """The objects (of ``kinds``, default all the profile's) whose mode is off."""
        return [k for k in (kinds or self.profile.objects) if not self.policy(k).syncs]

    def common_fields(self, kind: ObjectKind) -> frozenset[str]:
        crm, gw = (self.connector(s, kind).capabilities.fields.get(kind, frozenset())
                   for s in SIDES)
        return crm & gw

    # --- gathering -------------------------------------------------------------------------

    def prepare(self, kinds: Sequence[ObjectKind] | None = None,
                progress: Progress | None = None) -> list[Prepared]:
        kinds = list(kinds or self.profile.objects)
        for kind in kinds:
            if kind not in self.profile.objects:
                raise ConfigError(f"profile {self.profile.name!r} does not sync {kind}")
        off = self.switched_off(kinds)
        return [self.gather(kind, progress) for kind in kinds if kind not in off]

    def gather(self, kind: ObjectKind, progress: Progress | None = None) -> Prepared:
        pid = self.profile.id
        old = {s: self.store.cursor(pid, kind, s) for s in SIDES}
        # Read before listing: what a checkpoint marks pending is this run's own listing.
        pend = self.store.pending(pid, kind)
        tally = _Tally(progress, "fetching", kind)
        changes = {s: self._list(s, kind, old[s], tally.part(f"list {s}")) for s in SIDES}
        listed = {s: changes[s].cursor for s in SIDES}
        notes = [(s, note) for s in SIDES for note in changes[s].notes]
        if not any(changes[s].upserts or changes[s].deleted or changes[s].complete or pend[s]
                   for s in SIDES):
            # Nothing changed anywhere: no need to even load the pairs.
            return Prepared(kind, Plan(kind, []), listed, old, pend, notes)

        complete = any(changes[s].complete for s in SIDES)
        if complete:
            # A full listing infers deletions from what it misses: it needs every pair.
            all_pairs = self.store.pairs(pid, kind)
        else:
            all_pairs = self.store.pairs(pid, kind, ids={
                s: {u[0] for u in changes[s].upserts} | set(changes[s].deleted) | pend[s]
                for s in SIDES})
        index: dict[Side, dict[str, Pair]] = {s: {} for s in SIDES}
        for pair in all_pairs:
            for s in SIDES:
                side_id = pair.id_on(s)
                if side_id is not None:
                    index[s][side_id] = pair
        touched: dict[int, dict[Side, Item | None]] = defaultdict(dict)
        unpaired: dict[Side, list[Item]] = {s: [] for s in SIDES}

        def place(side: Side, item_id: str, item: Item | None) -> None:
            pair = index[side].get(item_id)
            if pair is not None and pair.id is not None:
                touched[pair.id][side] = item
            elif item is not None:
                unpaired[side].append(item)

        wanted: dict[Side, list[str]] = {}
        deleted: dict[Side, set[str]] = {}
        for side in SIDES:
            listing = changes[side]
            seen = {u[0] for u in listing.upserts}
            # Items a run could not settle come back although their version is known.
            to_fetch = sorted(pend[side] - seen)
            for item_id, version, item in listing.upserts:
                pair = index[side].get(item_id)
                if pair is not None and pair.version_on(side) == version \
                        and item_id not in pend[side]:
                    continue
                if item is None:
                    to_fetch.append(item_id)
                else:
                    place(side, item_id, item)
            gone = set(listing.deleted)
            if listing.complete:
                # A full listing names every item it covers: a paired one it misses was
                # deleted, or lies outside a ranged listing (a server's time range, the
                # CRM's reconciliation). Asking for those few tells which.
                to_fetch += sorted(index[side].keys() - seen - set(to_fetch))
            wanted[side] = to_fetch
            deleted[side] = gone
        for side, to_fetch in wanted.items():
            report = tally.part(f"fetch {side}")
            for start in range(0, len(to_fetch), FETCH_CHUNK):
                chunk = to_fetch[start:start + FETCH_CHUNK]
                fetched = self.connector(side, kind).fetch(kind, chunk)
                deleted[side] |= set(chunk) - fetched.keys()
                for item_id, item in fetched.items():
                    place(side, item_id, item)
                report(start + len(chunk), len(to_fetch))
            for item_id in deleted[side]:
                if item_id in index[side]:
                    place(side, item_id, None)

        all_pairs += self._taken_back(kind, unpaired, touched)
        by_id = {p.id: p for p in all_pairs}
        chosen = [by_id[i] for i in touched]
        self.store.load_bases(kind, chosen)
        views = []
        for pair in chosen:
            assert pair.id is not None
            current = touched[pair.id]
            sides = {s: current[s] if s in current else pair.base_on(s) for s in SIDES}
            views.append(View(pair, sides["crm"], sides["groupware"]))
        totals = None
        if any(v.crm is None or v.gw is None for v in views):
            # Only deletions can trip the mass-delete guard, which needs the side sizes.
            paired = ({s: len(index[s]) for s in SIDES} if complete
                      else self.store.side_counts(pid, kind))
            totals = {s: paired[s] + len(unpaired[s]) for s in SIDES}
        policy = self.policy(kind)
        self._known[kind] = self.known_emails(kind, policy, unpaired["groupware"])
        sent = (self.store.unsettled_creates(pid, kind)
                if all(unpaired[s] for s in SIDES) else None)
        # Nothing stored of this object (no pair, no create a stopped run left: a first
        # sync, or a lost store): unmatched look-alikes of re-paired items wait for the
        # user instead of being created (see crmsync.plan.pair_up).
        fresh = (not all_pairs and not sent and all(unpaired[s] for s in SIDES)
                 and not any(self.store.side_counts(pid, kind).values()))
        plan = make_plan(kind, views, policy, self.common_fields(kind), unpaired=unpaired,
                         totals=totals, sent=sent, fresh=fresh,
                         held={(s, i) for s in SIDES for i in pend[s]},
                         holders=self._holders(kind, unpaired, deleted),
                         **self._rules(kind))
        return Prepared(kind, plan, listed, old, pend, notes)

    def _taken_back(self, kind: ObjectKind, unpaired: dict[Side, list[Item]],
                    touched: dict[int, dict[Side, Item | None]]) -> list[Pair]:
        """The pairs left one-sided (an item deleted on one side, its deletion kept from
        the other by a prevent switch) that a new item on the emptied side takes back
        with the survivor's UID (a restore, another client putting it back): that item
        joins the pair (``touched``) instead of being created beside the survivor, which
        would fail on the UID on every run."""
        out: list[Pair] = []
        for side in SIDES:
            new = {i.uid: i for i in unpaired[side] if i.uid}
            if not new:
                continue
            holders = self.store.uid_holders(self.profile.id, kind, other(side), new)
            if not holders:
                continue
            lone = [p for p in self.store.pairs(self.profile.id, kind,
                                                ids={other(side): set(holders.values())})
                    if p.id_on(side) is None and p.id is not None and p.id not in touched]
            by_survivor = {p.id_on(other(side)): p for p in lone}
            for uid, held in holders.items():
                pair = by_survivor.get(held)
                if pair is None or pair.id is None:
                    continue
                item = new[uid]
                unpaired[side].remove(item)
                touched[pair.id][side] = item
                out.append(pair)
        return out

    def _holders(self, kind: ObjectKind, unpaired: dict[Side, list[Item]],
                 deleted: dict[Side, set[str]]) -> dict[tuple[Side, str], str]:
        """The paired items, by (side, UID), having the UID of a new item on their side
        (its twin: see crmsync.plan), but for those deleted now (a file renamed)."""
        out: dict[tuple[Side, str], str] = {}
        for side in SIDES:
            uids = {i.uid for i in unpaired[side] if i.uid}
            if not uids:
                continue
            held = self.store.uid_holders(self.profile.id, kind, side, uids)
            out.update({(side, uid): item_id for uid, item_id in held.items()
                        if item_id not in deleted[side]})
        return out

    def _rules(self, kind: ObjectKind) -> dict[str, Any]:
        """What the planner needs beyond the items, the same for a run's plan and for
        each step planned again: stored ignores, this run's known emails, now, what each
        side would refuse to store, and each side's image of a record (what it keeps of
        it, for comparing through the mapping)."""
        return {"ignored": self.store.ignored(self.profile.id, kind),
                "known_emails": self._known.get(kind), "now": self.clock(),
                "refuses": {s: self.connector(s, kind).refuses for s in SIDES},
                "lossy": {s: self.connector(s, kind).lossy for s in SIDES},
                "images": self.images(kind)}

    def images(self, kind: ObjectKind) -> dict[Side, Image]:
        """Per side, a record as that side keeps it once written (Connector.image), for
        the planner's comparisons; floating times pinned first where the side keeps
        instants only, as the executor pins them."""
        if kind not in self._images:
            out: dict[Side, Image] = {}
            for side in SIDES:
                connector = self.connector(side, kind)
                image = connector.image(kind)
                if image is None:
                    continue
                if kind == "calendar" and not connector.capabilities.floating:
                    out[side] = _pinning(image, self.policy(kind).zone())
                else:
                    out[side] = image
            self._images[kind] = out
        return self._images[kind]

    def known_emails(self, kind: ObjectKind, policy: Policy,
                     new: Sequence[Item]) -> frozenset[str] | None:
        """For "matched" selection: which emails of the new groupware items a CRM Contact
        or Lead has, looked up in one batch for the whole run."""
        if kind != "calendar" or policy.selection != "matched" or not new:
            return None
        emails: set[str] = set()
        for item in new:
            try:
                emails |= selection.candidate_emails([item.record()])
            except Exception:  # noqa: BLE001 - planned (and reported) as a failed skip
                continue
        if not emails:
            return frozenset()
        found = self.connector("crm", kind).find_people(
            emails, alternates=policy.match_alternate_emails)
        return frozenset(found)

    def decide(self, prepared: Sequence[Prepared], decisions: Decisions) -> list[Prepared]:
        """The prepared plans as the user decided them in the review (see
        :func:`crmsync.plan.decide`); nothing is written until they are run."""
        return [dataclasses.replace(p, plan=decide(p.plan, decisions, self.policy(p.kind),
                                                   self.common_fields(p.kind),
                                                   self.images(p.kind)))
                for p in prepared]

    # --- ignores ---------------------------------------------------------------------------

    def ignore(self, kind: ObjectKind, item_id: str, side: Side | None,
               mode: IgnoreMode) -> Side:
        """Ignore one item (and its counterpart): ``forever``, or ``until-change``, as of
        both sides' current versions. Returns the side the id was found on."""
        pid = self.profile.id
        sides = [side] if side else list(SIDES)
        pairs = {s: self.store.pairs(pid, kind, ids={s: {item_id}}) for s in sides}
        found = [s for s in sides if pairs[s]]
        if len(found) > 1:
            raise ConfigError(f"{item_id!r} is an item id on both sides; say which with "
                              "--side crm|groupware")
        if not found and side is None:
            raise ConfigError(f"{item_id!r} is not paired: say which side it is on with "
                              "--side crm|groupware")
        where: Side = found[0] if found else side  # type: ignore[assignment]
        pair = pairs[where][0] if found else None
        ids = {s: pair.id_on(s) if pair else None for s in SIDES}
        ids[where] = item_id
        versions: dict[Side, str | None] = {}
        for s, sid in ids.items():
            versions[s] = None
            if sid is not None:
                current = self.connector(s, kind).fetch(kind, [sid]).get(sid)
                if current is None and s == where and pair is None:
                    raise ConfigError(f"no {kind} item {item_id!r} in the {SIDE_NAME[s]}")
                versions[s] = current.version if current else None
        self.store.ignore(pid, kind, where, item_id, mode, versions)
        return where

    def _list(self, side: Side, kind: ObjectKind, cursor: str | None,
              progress: ReadProgress | None = None) -> Changes:
        """One side's changes since ``cursor``, saving progress through long listings."""
        pid = self.profile.id
        paired: dict[Side, int] | None = None

        def has_pairs() -> bool:
            nonlocal paired
            if paired is None:
                paired = self.store.side_counts(pid, kind)
            return paired[side] > 0

        def checkpoint(at: str, ids: Sequence[str], complete: bool) -> None:
            # A full listing infers deletions from what it misses, which a resumed one
            # cannot: its progress is saved only while the side has nothing to miss.
            if not (complete and has_pairs()):
                self.store.checkpoint(pid, kind, side, at, ids)

        # A first listing may skip what lies outside the sync range; later ones see every
        # change, so that an item moving into the range is not missed.
        window = None
        if cursor is None and kind != "contacts" and not has_pairs():
            window = self.policy(kind).window(self.clock())
        return self.connector(side, kind).list_changes(kind, cursor, window=window,
                                                       checkpoint=checkpoint,
                                                       progress=progress)

    # --- applying --------------------------------------------------------------------------

    def run(self, prepared: Sequence[Prepared], *, mode: str = "manual",
            progress: Progress | None = None, user: str | None = None) -> Report:
        """Apply prepared plans, record the run, and move the cursors.

        ``user`` is who started it (a server's user); default the OS user.
        """
        report = self.start_run(prepared, mode, user)
        assert report.run_id is not None
        warnings: list[RunItem] = []
        try:
            for prep in prepared:
                obj = report.objects[prep.kind] = ObjectReport()
                warnings += _warnings(prep, obj)
                _Executor(self, report.run_id, prep.kind, obj, progress).execute(prep)
        except CrmsyncError as exc:
            report.status, report.error = "failed", str(exc)
            self.finish_run(report, warnings)
            raise
        except BaseException as exc:
            report.status, report.error = "failed", f"interrupted: {exc!r}"
            self.finish_run(report, warnings)
            raise
        if report.failed:
            report.status = "partial"
        self.finish_run(report, warnings)
        return report

    def record_dry_run(self, prepared: Sequence[Prepared], user: str | None = None) -> Report:
        """Keep the report of a run that only planned (a dry run, a saved plan file):
        what it would do, and each skipped or failed item with its reason."""
        report = self.start_run(prepared, "dry-run", user, dry_run=True)
        items: list[RunItem] = []
        for prep in prepared:
            obj = report.objects[prep.kind] = ObjectReport()
            _warnings(prep, obj)
            for step, action in prep.plan.actions():
                code = "failed" if action.failed else action.code
                obj.counts[code] += 1
                if action.op in ("skip", "conflict") or action.failed:
                    ids = step.ids()
                    obj.items.append(RunItem(
                        prep.kind, action.code,
                        "failed" if action.failed else
                        "conflict" if action.op == "conflict" else "skipped",
                        step.label(), action.reason, ids.get("crm"), ids.get("groupware"),
                        action.side))
            items += obj.items
        self.finish_run(report, items)
        return report

    def start_run(self, prepared: Sequence[Prepared], mode: str, user: str | None,
                  dry_run: bool = False) -> Report:
        if self.keep_days > 0:
            # Real time, not self.clock (the planning "now"): run times are real.
            cutoff = datetime.now(UTC) - timedelta(days=self.keep_days)
            self.store.purge_runs(self.profile.id, cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"))
        report = Report(self.profile.name, mode=mode, user=user or _user())
        report.run_id = self.store.start_run(self.profile.id, [p.kind for p in prepared], mode,
                                             report.user, dry_run=dry_run)
        self._began = time.monotonic()
        return report

    def finish_run(self, report: Report, items: Sequence[RunItem] = ()) -> None:
        report.finished = now()
        report.duration_ms = round((time.monotonic() - self._began) * 1000)
        stats = self.stats()
        report.requests = {side: n["requests"] for side, n in stats.items() if "requests" in n}
        report.api = {side: {k: v for k, v in n.items() if k != "requests"}
                      for side, n in stats.items() if set(n) - {"requests"}}
        counts: dict[str, Any] = {k: dict(r.counts) for k, r in report.objects.items()}
        usage: dict[str, Any] = {}
        if report.requests:
            usage["requests"] = report.requests
        if report.api:
            usage["api"] = report.api
        assert report.run_id is not None
        try:
            self.store.finish_run(report.run_id, report.status, counts, report.error,
                                  usage=usage, duration_ms=report.duration_ms, items=items)
        except Exception:  # noqa: BLE001 - the store may be what failed; keep the first error
            if report.status == "ok":
                raise

    # --- plan files ------------------------------------------------------------------------

    def prepare_file(self, saved: PlanFile, progress: Progress | None = None
                     ) -> list[tuple[Prepared, Outcome]]:
        """Re-check a plan file against the sides: list and fetch again, plan again, and
        keep of each object's fresh plan what the file says (see crmsync.planfile)."""
        if saved.profile != self.profile.name or saved.profile_id not in (None,
                                                                          self.profile.id):
            theirs = (saved.profile if saved.profile != self.profile.name
                      else f"an earlier profile named {saved.profile!r}")
            raise PlanFileError(f"this plan was made for {theirs}, not for profile "
                                f"{self.profile.name!r}: refusing to apply it")
        out = []
        for prep in self.prepare(saved.kinds, progress):
            def choose(step: Step, choice: str | None, kind: ObjectKind = prep.kind) -> Step:
                # The file's "choose" is the same choice made in the review.
                one = Decisions({step.key: "exclude" if choice in (None, "skip")
                                 else choice})  # type: ignore[dict-item]
                return decide(Plan(kind, [step]), one, self.policy(kind),
                              self.common_fields(kind), self.images(kind)).steps[0]

            outcome = reconcile(prep.plan, saved.steps[prep.kind], choose)
            prep.plan = outcome.plan
            out.append((prep, outcome))
        return out

    def replan(self, kind: ObjectKind, step: Step) -> Step:
        """Plan one step again from the sides' current items (after a precondition failed)."""
        current: dict[Side, Item | None] = {}
        for side in SIDES:
            item_id = step.ids().get(side)
            current[side] = (self.connector(side, kind).fetch(kind, [item_id]).get(item_id)
                             if item_id else None)
        view = View(step.pair, current["crm"], current["groupware"])
        rules = self._rules(kind)
        if step.pair is None:
            plan = make_plan(kind, [], self.policy(kind), self.common_fields(kind),
                             unpaired={s: [i] for s, i in current.items() if i is not None},
                             **rules)
        else:
            plan = make_plan(kind, [view], self.policy(kind), self.common_fields(kind),
                             **rules)
        # No step: nothing to do for it now (e.g. it left the sync range); the pair stays.
        return plan.steps[0] if plan.steps else Step(kind, step.pair, None, None,
                                                     state="settle")


class _Tally:
    """One progress report summed from several sources (each side's listing and
    fetching), so that a view shows one count and one total per phase and object."""

    def __init__(self, progress: Progress | None, phase: str, kind: str) -> None:
        self.progress = progress
        self.phase = phase
        self.kind = kind
        self.parts: dict[str, tuple[int, int]] = {}

    def part(self, name: str) -> ReadProgress:
        def report(done: int, total: int) -> None:
            self.parts[name] = (done, total)
            if self.progress is not None:
                self.progress(self.phase, self.kind, sum(d for d, _ in self.parts.values()),
                              sum(t for _, t in self.parts.values()))
        return report


def _warnings(prep: Prepared, obj: ObjectReport) -> list[RunItem]:
    """The listings' notes as report items (outcome "warning": not failures, not counted);
    added to ``obj`` and returned."""
    items = [RunItem(prep.kind, "listing", "warning", SIDE_NAME[side], note, side=side)
             for side, note in prep.notes]
    obj.items += items
    return items


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


class _Executor:
    """Applies one object's plan: batched writes, state committed per chunk."""

    def __init__(self, syncer: Syncer, run_id: int, kind: ObjectKind, report: ObjectReport,
                 progress: Progress | None) -> None:
        self.syncer = syncer
        self.run_id = run_id
        self.store = syncer.store
        self.kind = kind
        self.report = report
        self.progress = progress
        self.pending: dict[Side, set[str]] = {s: set() for s in SIDES}
        self.seq = 0  # numbers this object's journal entries

    def execute(self, prep: Prepared) -> None:
        steps = prep.plan.steps
        for new in prep.plan.ignores:
            # Chosen in the review: stored first, as their steps settle without a write.
            self.store.ignore(self.syncer.profile.id, self.kind, new.side, new.item_id,
                              new.ignore.mode, {s: new.ignore.version_on(s) for s in SIDES})
        total = sum(len(s.actions) for s in steps) or len(steps)
        done = 0
        for start in range(0, len(steps), CHUNK):
            chunk = steps[start:start + CHUNK]
            for attempt in range(MAX_REPLANS + 1):
                chunk = self._apply_chunk(chunk, last_try=attempt == MAX_REPLANS)
                if not chunk:
                    break
                chunk = [self.syncer.replan(self.kind, s) for s in chunk]
            done += sum(len(s.actions) for s in steps[start:start + CHUNK])
            if self.progress:
                self.progress("applying", self.kind, min(done, total), total)
        if prep.plan.lapsed:
            # Their item changed: "ignore until one side changes" is over.
            self.store.unignore(self.syncer.profile.id, self.kind, prep.plan.lapsed)
        if prep.listed is None:
            return
        listed = prep.listed
        cursors = {s: self.syncer.connector(s, self.kind).cursor(self.kind, listed[s])
                   for s in SIDES}
        if cursors != prep.old or self.pending != prep.pending:
            self.store.save_progress(self.syncer.profile.id, self.kind, cursors, self.pending)

    def _pin_zone(self, side: Side | None) -> tzinfo | None:
        """The user's zone when ``side`` keeps instants only and floating times must be
        pinned before they are written there; None when they are written as they are."""
        if self.kind != "calendar" or side is None:
            return None
        if self.syncer.connector(side, self.kind).capabilities.floating:
            return None
        return self.syncer.policy(self.kind).zone()

    def _keeps_uid(self, side: Side | None) -> bool:
        return side is not None and \
            self.syncer.connector(side, self.kind).capabilities.keeps_uid

    def _apply_chunk(self, steps: list[Step], last_try: bool) -> list[Step]:
        """Apply a chunk; returns the steps whose items changed meanwhile, to re-plan.

        One item's trouble at any point (its write cannot be made, the side's connector
        fails on it, its new pair state cannot be stored) is that item's outcome; the
        other steps of the chunk go on."""
        writes: dict[Side, list[tuple[Action, Write]]] = {s: [] for s in SIDES}
        # The journal: each write's intent and before image, stored before it is sent.
        journaled: dict[int, JournalEntry] = {}
        results: dict[int, Result] = {}
        # Writes that may or may not have happened (their batch failed part-way): their
        # journal entries stay open, as after a crash, for the next run to settle.
        unknown: set[int] = set()
        for step in steps:
            if step.state == "record":
                for action in step.actions:
                    if action.op in WRITES:
                        try:
                            write = _write(step, action, self._pin_zone(action.side),
                                           self._keeps_uid(action.side))
                        except Exception as exc:  # noqa: BLE001 - fails this item only
                            results[id(action)] = Result("failed", error=(
                                f"cannot be written to {SIDE_NAME[action.side]}: "  # type: ignore[index]
                                f"{exc if isinstance(exc, CrmsyncError) else unexpected(exc)}"))
                            continue
                        writes[action.side].append((action, write))  # type: ignore[index]
                        journaled[id(action)] = self._intent(step, action)
        # "Keep both": the old pair is forgotten before its items are copied. Should the run
        # stop after the copies are made, the next run pairs each item with its copy by
        # content (see crmsync.plan.pair_up) instead of copying again.
        split = [s.pair.id for s in steps if s.state == "record" and s.pair is not None
                 and s.pair.id is not None and any(a.copy for a in s.actions)]
        self.store.save_pairs(self.syncer.profile.id, self.kind, [], split)
        self._journal(journaled, results)
        for side in SIDES:
            writes[side] = [(a, w) for a, w in writes[side] if id(a) in journaled]
            connector = self.syncer.connector(side, self.kind)
            batch_size = connector.capabilities.batch_size
            todo = writes[side]
            for start in range(0, len(todo), batch_size):
                part = todo[start:start + batch_size]
                for (action, _), result in zip(part, self._send(connector, part, unknown),
                                               strict=True):
                    results[id(action)] = result

        replan: list[Step] = []
        done: list[tuple[Step, list[Pair], list[int], list[RunItem]]] = []
        for step in steps:
            saved: list[Pair] = []
            dropped: list[int] = []
            try:
                outcome = self._settle(step, results, last_try)
                if outcome == "replan":
                    replan.append(step)
                    # Nothing to keep but what its writes answered (the journal's).
                    done.append((step, [], [], []))
                    continue
                if outcome == "record":
                    self._record(step, results, saved, dropped)
                items = self._items(step, results, outcome)
            except Exception as exc:  # noqa: BLE001 - fails this item only
                saved, dropped = [], []
                items = self._failed(step, f"cannot be settled: {unexpected(exc)}", results)
            done.append((step, saved, dropped, items))
        self._claim(done, results)
        self._save(done, journaled, results, unknown)
        return replan

    def _journal(self, journaled: dict[int, JournalEntry], results: dict[int, Result]) -> None:
        """Store the chunk's intents before any write; an intent the store refuses is not
        sent (a write is never made unjournaled): that item fails, the others go on."""
        try:
            self.store.journal_intents(self.run_id, list(journaled.values()))
            return
        except Exception as exc:  # noqa: BLE001 - tried again one by one
            unexpected(exc)
        for key, entry in list(journaled.items()):
            try:
                self.store.journal_intents(self.run_id, [entry])
            except Exception as exc:  # noqa: BLE001 - this item's failure
                del journaled[key]
                results[key] = Result("failed", error=(
                    f"not written: the state store refused its journal entry "
                    f"({unexpected(exc)})"))

    def _send(self, connector: Connector, part: list[tuple[Action, Write]],
              unknown: set[int]) -> list[Result]:
        """One batch of writes to a side; should the connector fail on the batch (a bug:
        connectors answer per write), the writes that are safe to send again are sent one
        by one, so that the bug fails only the item it concerns. A side that cannot be
        reached stops the run (ConnectionFailed)."""
        try:
            return connector.apply(self.kind, [w for _, w in part])
        except CrmsyncError as exc:
            if not isinstance(exc, ItemError):
                raise
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the batch's trouble, not the run's
            error = unexpected(exc)
        out = []
        for action, write in part:
            # Whether the batch made it is unknown: updates and deletes carry their
            # version, and a side keeping UIDs finds a create made already ("exists"),
            # so those are sent again; a create on another side is left for the next run
            # to find (see Store.unsettled_creates) rather than risk making it twice.
            again = len(part) > 1 and (not isinstance(write, Create)
                                       or connector.capabilities.keeps_uid)
            if not again:
                unknown.add(id(action))
                out.append(Result("failed", error=error))
                continue
            try:
                out.append(connector.apply(self.kind, [write])[0])
            except CrmsyncError as exc:
                if not isinstance(exc, ItemError):
                    raise
                unknown.add(id(action))
                out.append(Result("failed", error=str(exc)))
            except Exception as exc:  # noqa: BLE001 - this item's failure
                unknown.add(id(action))
                out.append(Result("failed", error=unexpected(exc)))
        return out

    def _failed(self, step: Step, reason: str, results: dict[int, Result] | None = None,
                counted: Sequence[RunItem] = ()) -> list[RunItem]:
        """A step whose bookkeeping failed: one failed item, its ids (and what its writes
        made) looked at again next run; ``counted``, its items as counted so far, are
        taken back from the counts."""
        self._pend(step, results or {})
        for item in counted:
            if item.outcome != "warning":  # warnings are not counted
                self.report.counts["failed" if item.outcome == "failed" else item.action] -= 1
        ids = {s: _plain(i) for s, i in step.ids().items()}
        side = next((a.side for a in step.actions if a.side is not None), None)
        self.report.counts["failed"] += 1
        # Plain text: what the store refused may be the item's own text (a NUL byte,
        # which PostgreSQL does not keep), and this report item must be kept.
        return [RunItem(self.kind, "failed", "failed", _plain(step.label()), _plain(reason),
                        ids.get("crm"), ids.get("groupware"), side)]

    def _claim(self, done: list[tuple[Step, list[Pair], list[int], list[RunItem]]],
               results: dict[int, Result]) -> None:
        """Keep one item id in one pair: a step whose new pair would hold an item another
        pair holds (two creates that found the same item by its UID, an item paired
        already) is that step's failure instead of a store that refuses the chunk after
        its writes were made."""
        wanted: dict[Side, set[str]] = {s: set() for s in SIDES}
        for _, saved, _, _ in done:
            for pair in saved:
                for side in SIDES:
                    if (item_id := pair.id_on(side)) is not None:
                        wanted[side].add(item_id)
        if not any(wanted.values()):
            return
        freed = {pid for _, _, dropped, _ in done for pid in dropped}
        held: dict[tuple[Side, str], int | str] = {}
        for pair in self.store.pairs(self.syncer.profile.id, self.kind, ids=wanted):
            if pair.id not in freed:
                for side in SIDES:
                    if (item_id := pair.id_on(side)) is not None:
                        held[(side, item_id)] = pair.id  # type: ignore[assignment]
        for n, (step, saved, dropped, _) in enumerate(done):
            owner: int | str = step.pair.id if step.pair and step.pair.id else f"new{n}"
            clash = [(side, item_id, held[(side, item_id)]) for pair in saved
                     for side in SIDES if (item_id := pair.id_on(side)) is not None
                     and held.get((side, item_id), owner) != owner]
            if not clash:
                for pair in saved:
                    for side in SIDES:
                        if (item_id := pair.id_on(side)) is not None:
                            held[(side, item_id)] = owner
                continue
            side, item_id, _ = clash[0]
            twin = self._holder(done, side, item_id, held[(side, item_id)])
            reason = (f"{SIDE_NAME[side]} item {item_id} is paired with {twin} already "
                      "(same UID); run `crmsync repair`")
            done[n] = (step, [], dropped, self._failed(step, reason, results, done[n][3]))

    def _holder(self, done: list[tuple[Step, list[Pair], list[int], list[RunItem]]],
                side: Side, item_id: str, owner: int | str) -> str:
        """The other side's item of the pair holding ``item_id``, to name it."""
        there = other(side)
        for _, saved, _, _ in done:
            for pair in saved:
                if pair.id_on(side) == item_id and pair.id_on(there):
                    return str(pair.id_on(there))
        if isinstance(owner, int):
            for pair in self.store.pairs(self.syncer.profile.id, self.kind,
                                         ids={side: {item_id}}):
                if pair.id_on(there):
                    return str(pair.id_on(there))
        return "another item"

    def _save(self, done: list[tuple[Step, list[Pair], list[int], list[RunItem]]],
              journaled: dict[int, JournalEntry], results: dict[int, Result],
              unknown: set[int]) -> None:
        """Store the chunk's pair states, run items and completed journal entries in one
        transaction; should the store refuse it, step by step, so that a step it refuses
        is that item's failure (its writes stay open in the journal, as after a crash,
        and the next run settles them) and the others are kept."""
        pid = self.syncer.profile.id

        def entries(step: Step) -> list[JournalEntry]:
            return [_done(journaled[id(a)], results[id(a)]) for a in step.actions
                    if id(a) in journaled and id(a) in results and id(a) not in unknown]

        try:
            self.store.save_pairs(pid, self.kind, [p for _, s, _, _ in done for p in s],
                                  [d for _, _, ds, _ in done for d in ds], self.run_id,
                                  [i for _, _, _, its in done for i in its],
                                  [e for step, _, _, _ in done for e in entries(step)])
            for _, _, _, items in done:
                self.report.items.extend(items)
            return
        except Exception as exc:  # noqa: BLE001 - tried again step by step below
            unexpected(exc)
        failed: list[RunItem] = []
        for step, saved, dropped, items in done:
            try:
                self.store.save_pairs(pid, self.kind, saved, dropped, self.run_id, items,
                                      entries(step))
                self.report.items.extend(items)
            except Exception as exc:  # noqa: BLE001 - this item's failure
                if not (saved or dropped or items):
                    continue  # a step planned again: its journal entries stay open
                failed += self._failed(step, "its new state could not be stored "
                                             f"({unexpected(exc)}); it is looked at again "
                                             "on the next run", results, items)
        # Only the report is left to keep; a store that refuses even that is broken.
        self.store.save_pairs(pid, self.kind, [], [], self.run_id, failed)
        self.report.items.extend(failed)

    def _intent(self, step: Step, action: Action) -> JournalEntry:
        """The journal entry of a write: the item before it (for an update or delete), or
        the item a create copies (what it sends, by which its copy is found again should
        the run stop before it hears back; see Store.unsettled_creates)."""
        self.seq += 1
        side = action.side
        assert side is not None
        create = action.op == "create"
        before = step.item(other(side) if create else side)
        ids = step.ids()
        return JournalEntry(self.kind, self.seq, side, action.op,
                            None if create or before is None else before.id, before,
                            crm_id=ids.get("crm"), gw_id=ids.get("groupware"))

    def _settle(self, step: Step, results: dict[int, Result], last_try: bool) -> str:
        statuses = [results[id(a)].status for a in step.actions if id(a) in results]
        if "changed" in statuses and not last_try and "failed" not in statuses:
            return "replan"
        ok = ("ok", "exists") if not self._paired_elsewhere(step, results) else ("ok",)
        if step.state == "retry" or any(s not in ok for s in statuses):
            self._pend(step, results)
            return "retry"
        if "exists" in statuses:
            # Paired with the item that was already there: the next run merges the two.
            self._pend(step, results)
        return step.state

    def _pend(self, step: Step, results: dict[int, Result]) -> None:
        for side, item_id in step.ids().items():
            self.pending[side].add(item_id)
        for action in step.actions:
            result = results.get(id(action))
            if result is not None and result.item is not None and action.side is not None:
                self.pending[action.side].add(result.item.id)

    def _paired_elsewhere(self, step: Step, results: dict[int, Result]) -> bool:
        """Whether a create found an item with its UID that another pair already holds."""
        for action in step.actions:
            result = results.get(id(action))
            if result is not None and result.status == "exists" and result.item is not None:
                side = action.side
                assert side is not None
                if self.store.pairs(self.syncer.profile.id, self.kind,
                                    ids={side: {result.item.id}}):
                    return True
        return False

    def _record(self, step: Step, results: dict[int, Result], saved: list[Pair],
                dropped: list[int]) -> None:
        if any(a.copy for a in step.actions):
            self._record_copies(step, results, saved)
            return
        after: dict[Side, Item | None] = {s: step.item(s) for s in SIDES}
        # A side whose create found the item already there has no base yet: the next
        # run compares the two items as after a lost store (conflict rule decides).
        no_base: set[Side] = set()
        for action in step.actions:
            if id(action) in results and action.side is not None:
                result = results[id(action)]
                after[action.side] = result.item
                if result.status == "exists":
                    no_base.add(action.side)
        pair = step.pair
        if after["crm"] is None and after["groupware"] is None:
            if pair is not None and pair.id is not None:
                dropped.append(pair.id)
            return
        crm, gw = after["crm"], after["groupware"]
        saved.append(Pair(
            pair.id if pair else None, self.kind,
            crm.id if crm else None, None, gw.id if gw else None, None,
            crm_base=None if "crm" in no_base else crm,
            gw_base=None if "groupware" in no_base else gw,
            one_way=pair.one_way if pair else False,
        ))

    def _record_copies(self, step: Step, results: dict[int, Result], saved: list[Pair]) -> None:
        """Each item of a kept-both conflict paired with its new copy on the other side."""
        for action in step.actions:
            result = results.get(id(action))
            if not action.copy or result is None or result.item is None:
                continue
            original = step.item(other(action.side))  # type: ignore[arg-type]
            assert original is not None
            crm, gw = ((original, result.item) if action.side == "groupware"
                       else (result.item, original))
            saved.append(Pair(None, self.kind, crm.id, None, gw.id, None,
                              crm_base=crm, gw_base=gw))

    def _items(self, step: Step, results: dict[int, Result], settled: str) -> list[RunItem]:
        out = []
        ids = step.ids()
        for action in step.actions:
            result = results.get(id(action))
            reason = action.reason
            if action.failed:
                outcome = "failed"
            elif action.op == "conflict":
                outcome = "conflict"
            elif action.op == "skip":
                outcome = "skipped"
            elif result is None or result.status == "ok":
                outcome = "applied"
            elif result.status == "exists" and settled == "record":
                outcome, reason = "linked", (
                    f"an item with the same UID was already in {SIDE_NAME[action.side]}: "
                    "paired with it; differences are merged on the next run")
            else:
                outcome = "failed"
                reason = result.error or {
                    "changed": "the item kept changing while it was being synced",
                    "exists": "an item with the same UID already exists there",
                }.get(result.status, result.status)
            code = action.code
            self.report.counts["failed" if outcome == "failed" else code] += 1
            out.append(RunItem(self.kind, code, outcome, step.label(parse=outcome != "applied"),
                               reason, ids.get("crm"), ids.get("groupware"), action.side))
            notes = [*(action.lossy if outcome == "applied" else []),
                     *([result.note] if result is not None and result.note else [])]
            if notes:
                # Written, with something the user should know (what the side did not
                # keep, Result.note): not counted.
                out.append(RunItem(self.kind, code, "warning", step.label(), "; ".join(notes),
                                   ids.get("crm"), ids.get("groupware"), action.side))
        return out


def _pinning(image: Image, zone: tzinfo) -> Image:
    """``image`` of an event with its floating times pinned to ``zone`` first."""
    return lambda record: image(pinned(record, zone) if isinstance(record, Event) else record)


def _plain(text: str) -> str:
    """``text`` as any store keeps it: NUL bytes and lone surrogates spelled out."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _done(entry: JournalEntry, result: Result) -> JournalEntry:
    """A journal entry completed with its write's result."""
    item = result.item
    if entry.action == "create" and item is not None:
        entry.item_id = item.id
    entry.after_version = item.version if item is not None else None
    entry.outcome = result.status
    return entry


def _write(step: Step, action: Action, zone: tzinfo | None = None,
           keeps_uid: bool = False) -> Write:
    """The write for ``action``; floating times pinned to ``zone`` when one is given.

    A groupware item keeps the Id of the CRM item it is paired with (Record.crm_id): given
    on create, and added on the item's next update when it lacks it, so that the pair is
    found again should the state store be lost. An item without a UID is copied to a side
    keeping UIDs (which needs one: CalDAV servers refuse an item without) with a UID
    derived from where it comes from (:func:`derived_uid`), the same on every run."""
    target = action.side
    assert target is not None
    if action.op == "create":
        source = step.item(other(target))
        assert source is not None
        crm_id = source.id if target == "groupware" else ""
        no_uid = keeps_uid and not action.copy and not source.uid and not source.record().uid
        if not action.copy and zone is None and not no_uid:
            return Create(source=source, crm_id=crm_id)
        record = source.record()
        if no_uid:
            record = dataclasses.replace(record, uid=derived_uid(other(target), source.id))
        if action.copy:
            # A copy beside the item the target side already has: an identity of its own.
            record = dataclasses.replace(record, uid="")
        if zone is not None and isinstance(record, Event):
            record = pinned(record, zone)
        return Create(source=source, record=record, crm_id=crm_id)
    item = step.item(target)
    assert item is not None
    if action.op == "update":
        changes = action.changes
        if zone is not None:
            before = item.record()
            after = apply_changes(before, changes)
            if isinstance(after, Event):
                names = {key.partition(SEP)[0] for key in changes}
                changes = diff(flatten(before, names), flatten(pinned(after, zone), names))
        return Update(item.id, item.version, changes, planned=item,
                      crm_id=missing_kept_id(item, step.crm) if target == "groupware" else "")
    return Delete(item.id, item.version)


def derived_uid(side: Side, item_id: str) -> str:
    """A UID for an item that has none: stable, from its side and id."""
    digest = hashlib.sha1(f"{side}:{item_id}".encode()).hexdigest()[:24]
    return f"crmsync-{digest}@derived"


def missing_kept_id(gw: Item, crm: Item | None) -> str:
    """The CRM Id a groupware item is to keep (Record.crm_id), when it lacks it; else ""."""
    if crm is None:
        return ""
    try:
        return crm.id if gw.record().crm_id != crm.id else ""
    except FormatError:
        return ""
