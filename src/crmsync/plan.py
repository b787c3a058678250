"""The planner: from each side's changes and the stored base, a Plan of Actions.

Pure: no I/O, no clock, no randomness; the same inputs give the same plan in the same
order. Three views go in for every item (Dropbox's Nucleus calls them remote, local and
synced): the CRM's current item, the groupware's current item, and the PAIR from the
state store with each side's BASE, what that side looked like at the last sync.

A STEP is everything the run does for one pair (or one new item): zero or more ACTIONS
(create/update/delete on a side, conflict, skip, link) and what to remember afterwards.
Dry runs, the review screens and ``--json`` output are all views of the plan; the
executor applies it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from crmsync import formats, rules, selection
from crmsync.connectors.base import SIDES, Item, Side, other
from crmsync.errors import FormatError, unexpected
from crmsync.merge import Flat, apply_changes, diff, flatten
from crmsync.model import Contact, Event, ObjectKind, Record, Task
from crmsync.policy import Policy

Op = Literal["create", "update", "delete", "conflict", "skip", "link"]
PairedBy = Literal["sent", "crm-id", "uid", "content", "near"]
# A function giving a record as one side would store it (and read it back) when written
# there: fields cut to the side's limits, times as instants, ... (Connector.image). Where
# a side's value is the image of the other side's, the two agree: a lossy copy is never
# taken for a change, and never written over the fuller original.
Image = Callable[[Record], Record]
WRITES: frozenset[Op] = frozenset({"create", "update", "delete"})
_RANK = {"delete": 0, "conflict": 1, "update": 2, "create": 3, "link": 4, "skip": 5}
SIDE_NAME = {"crm": "CRM", "groupware": "groupware"}
# What the review may do with a conflict left for the user (conflict rule "ask").
CONFLICT_CHOICES = ("crm", "groupware", "both", "skip")
# Field values that say "nothing here" (see _Planner._merge).
_EMPTY: tuple[Any, ...] = (None, "", [], {})
# Why a side would certainly refuse a record as written, None when it would take it: the
# side's Connector.refuses (its field limits, its required fields).
Refuses = Callable[[ObjectKind, Record], str | None]
# What a side will not keep of a record it writes: the side's Connector.lossy.
Lossy = Callable[[ObjectKind, Record], list[str]]

# After a step: "record" stores the pair's new state once its writes succeed; "settle"
# stores nothing but the change is handled; "retry" leaves it to be presented again on
# the next run (a failure, or a conflict waiting for the user).
StepState = Literal["record", "settle", "retry"]
IgnoreMode = Literal["forever", "until-change"]
# What the user decided for one step in the review (see ``decide``): take it as planned,
# leave it out of this run, ignore it, or (a conflict) let one side win.
Choice = Literal["include", "exclude", "ignore-until-change", "ignore-forever", "crm",
                 "groupware", "both"]
CHOICES: tuple[Choice, ...] = ("include", "exclude", "ignore-until-change",
                               "ignore-forever", "crm", "groupware", "both")
# The choices that settle a conflict by its items' content (not by leaving it out).
WINNERS: tuple[Choice, ...] = ("crm", "groupware", "both")


@dataclass
class Pair:
    """A CRM item and its groupware counterpart as the state store remembers them.

    A side's id is None once that side's item was deleted and the deletion could not be
    mirrored (it was prevented): the survivor is then no longer synced.
    """

    id: int | None
    kind: ObjectKind
    crm_id: str | None
    crm_version: str | None
    gw_id: str | None
    gw_version: str | None
    crm_base: Item | None = None
    gw_base: Item | None = None
    # A recorded event (SnapRecord): groupware changes go to the CRM, never back.
    one_way: bool = False

    def id_on(self, side: Side) -> str | None:
        return self.crm_id if side == "crm" else self.gw_id

    def version_on(self, side: Side) -> str | None:
        return self.crm_version if side == "crm" else self.gw_version

    def base_on(self, side: Side) -> Item | None:
        return self.crm_base if side == "crm" else self.gw_base


@dataclass(frozen=True)
class Ignore:
    """The user's "ignore" of one item (SPEC 2): ``forever``, or ``until-change``: until
    either side's version differs from the one it had when the ignore was set."""

    mode: IgnoreMode
    crm_version: str | None = None
    gw_version: str | None = None

    def version_on(self, side: Side) -> str | None:
        return self.crm_version if side == "crm" else self.gw_version


@dataclass(frozen=True)
class NewIgnore:
    """An ignore to store: the item (``side``, ``item_id``) and, for ``until-change``,
    both sides' versions as the plan saw them."""

    side: Side
    item_id: str
    ignore: Ignore


@dataclass
class Decisions:
    """The user's choices in the review, by step key (:attr:`Step.key`); a step not named
    runs as planned. Plain data: the review screen fills it, :func:`decide` applies it."""

    choices: dict[str, Choice] = field(default_factory=dict)

    def set(self, keys: Iterable[str], choice: Choice) -> None:
        for key in keys:
            if choice == "include":
                self.choices.pop(key, None)
            else:
                self.choices[key] = choice

    def get(self, key: str) -> Choice:
        return self.choices.get(key, "include")


@dataclass
class View:
    """Planner input for one pair or one unpaired item.

    ``crm``/``gw`` are the side's current items: the base item when the side did not
    change, None when the side has no item (deleted, or never had one).
    """

    pair: Pair | None
    crm: Item | None
    gw: Item | None
    # Without a pair: what both items last agreed on, when known (the item a create sent
    # when the run stopped before it heard back): a difference from it is that side's
    # change, as with a pair's bases.
    base: Item | None = None
    # Without a pair: the evidence the two items were matched by (see :func:`pair_up`):
    # "sent" (the content a create sent), "crm-id" (the CRM Id the groupware item keeps),
    # "uid", "content" (start, end, subject only: no identity evidence at all) or "near"
    # (start and end only: not a pairing, a question for the user).
    by: PairedBy | None = None
    # Why an unpaired item is neither paired nor created: look-alikes (see pair_up).
    tie: str = ""

    def item(self, side: Side) -> Item | None:
        return self.crm if side == "crm" else self.gw


@dataclass
class Action:
    op: Op
    # Where the action writes (create/update/delete); for skips, the side it concerns.
    side: Side | None = None
    # update: the fields to write, flattened (see crmsync.merge).
    changes: Flat = field(default_factory=dict)
    reason: str = ""
    # conflict: field -> (CRM value, groupware value)
    conflicts: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # A skip because something is broken rather than because a rule said so.
    failed: bool = False
    # conflict: what the review may choose ("crm": keep the CRM's values, ...).
    choices: tuple[str, ...] = ()
    # create: a new item with an identity of its own, copied from the other side's item
    # of the step, which keeps its own pair ("keep both" on a conflict).
    copy: bool = False
    # create/update: what the side written will not keep of the item (Connector.lossy).
    lossy: list[str] = field(default_factory=list)

    @property
    def code(self) -> str:
        """``create:crm``, ``update:groupware``, ``conflict``, ... for counts and JSON."""
        return f"{self.op}:{self.side}" if self.op in WRITES else self.op


@dataclass
class Step:
    kind: ObjectKind
    pair: Pair | None
    crm: Item | None
    gw: Item | None
    actions: list[Action] = field(default_factory=list)
    state: StepState = "record"

    def item(self, side: Side) -> Item | None:
        return self.crm if side == "crm" else self.gw

    @property
    def key(self) -> str:
        if self.pair is not None and self.pair.id is not None:
            return f"{self.kind}:pair:{self.pair.id}"
        return f"{self.kind}:{self.crm.id if self.crm else ''}|{self.gw.id if self.gw else ''}"

    def label(self, parse: bool = True) -> str:
        """The items' label; without ``parse``, only if already parsed (else the id)."""
        for item in (self.crm, self.gw):
            if item is not None:
                return item.label(parse)
        return self.key

    def ids(self) -> dict[Side, str]:
        """Every item id this step concerns, current or deleted, per side."""
        out: dict[Side, str] = {}
        for side in SIDES:
            item = self.item(side)
            item_id = item.id if item else (self.pair.id_on(side) if self.pair else None)
            if item_id:
                out[side] = item_id
        return out

    def _order(self) -> tuple[int, str, str]:
        first = min([_RANK[a.op] for a in self.actions], default=9)
        return (first, self.crm.id if self.crm else "", self.gw.id if self.gw else "")


@dataclass
class Plan:
    kind: ObjectKind
    steps: list[Step]
    # Sides where the mass-delete guard tripped: side -> (planned deletes, items there).
    guard: dict[Side, tuple[int, int]] = field(default_factory=dict)
    # "Until-change" ignores whose item changed: lifted when the plan is applied.
    lapsed: list[tuple[Side, str]] = field(default_factory=list)
    # Ignores the user chose in the review: stored when the plan is applied.
    ignores: list[NewIgnore] = field(default_factory=list)

    def actions(self) -> Iterator[tuple[Step, Action]]:
        for step in self.steps:
            for action in step.actions:
                yield step, action

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for _, action in self.actions():
            out["failed" if action.failed else action.code] += 1
        return dict(sorted(out.items()))

    @property
    def writes(self) -> int:
        return sum(1 for _, a in self.actions() if a.op in WRITES)

    @property
    def conflicts(self) -> int:
        return sum(1 for _, a in self.actions() if a.op == "conflict")


# --- the user's decisions -----------------------------------------------------------------


def decide(plan: Plan, decisions: Decisions, policy: Policy, common: frozenset[str],
           images: Mapping[Side, Image] | None = None) -> Plan:
    """The plan as the user decided it in the review; ``plan`` is left as it was.

    * ``exclude``: the step writes nothing this run and its items come back on the next
      (a skip whose state is "retry": the executor keeps them pending).
    * ``ignore-*``: a skip that settles the step; the ignore is stored when the plan is
      applied (:attr:`Plan.ignores`), the planner's ``ignored`` skips it from then on.
    * ``crm``/``groupware`` on a conflict: the step planned again as if that side were the
      conflict rule (the planner's own path, prevent switches included).
    * ``both`` on a conflict: each item stays as it is, and each is copied to the other
      side as a new item of its own (see :func:`_keep_both`).

    ``policy``, ``common`` and ``images`` are the ones the plan was made with.
    """
    steps: list[Step] = []
    ignores: list[NewIgnore] = []
    for step in plan.steps:
        choice = decisions.get(step.key)
        if choice == "include":
            steps.append(step)
        elif choice == "exclude":
            steps.append(replace(step, actions=[Action(
                "skip", reason="excluded by the user: shown again on the next run")],
                state="retry"))
        elif choice in ("ignore-until-change", "ignore-forever"):
            new = _ignore_of(step, "forever" if choice == "ignore-forever" else "until-change")
            if new is None:
                steps.append(step)
                continue
            ignores.append(new)
            what = ("ignored forever" if new.ignore.mode == "forever"
                    else "differences ignored until one side changes")
            steps.append(replace(step, actions=[Action("skip", new.side,
                                                       reason=f"{what} (in the review)")],
                                 state="settle"))
        elif choice == "both":
            steps.append(_keep_both(step, policy, common))
        else:
            steps.append(_resolve(step, choice, policy, common, images))
    chosen = {(n.side, n.item_id) for n in ignores}
    out = Plan(plan.kind, steps, lapsed=[k for k in plan.lapsed if k not in chosen],
               ignores=plan.ignores + ignores)
    totals = {side: total for side, (_, total) in plan.guard.items()}
    out.guard = {s: g for s, g in _mass_delete_guard(out, policy, totals).items()
                 if s in plan.guard}
    return out


def _ignore_of(step: Step, mode: IgnoreMode) -> NewIgnore | None:
    """The ignore of a step's items, kept on the CRM side when it has an id there."""
    ids = step.ids()
    side: Side | None = "crm" if "crm" in ids else ("groupware" if ids else None)
    if side is None:
        return None
    versions = {s: (i.version if (i := step.item(s)) else None) for s in SIDES}
    if mode == "forever":
        return NewIgnore(side, ids[side], Ignore("forever"))
    return NewIgnore(side, ids[side], Ignore(mode, versions["crm"], versions["groupware"]))


def _resolve(step: Step, winner: Side, policy: Policy, common: frozenset[str],
             images: Mapping[Side, Image] | None = None) -> Step:
    """A conflict step planned again with ``winner`` as the conflict rule; any other
    step as it was (a winner means nothing without a conflict)."""
    if not any(a.op == "conflict" for a in step.actions):
        return step
    planner = _Planner(replace(policy, conflict=winner), common, {}, None, None, images,
                       chosen=True)
    again = planner.step(step.kind, View(step.pair, step.crm, step.gw))
    return again if again is not None else step


def _keep_both(step: Step, policy: Policy, common: frozenset[str]) -> Step:
    """A conflict kept both ways: the pair splits into two, nothing existing is changed.

    The CRM item gets a new groupware copy and the groupware item a new CRM copy, each
    with an identity of its own (a fresh UID); the executor forgets the old pair (if any:
    two unpaired look-alikes kept as two items have none) before writing and pairs each
    item with its copy. A copy a prevent switch forbids is left
    out: its item stays unpaired. Any other step is left as it was.
    """
    if (step.crm is None or step.gw is None
            or not any(a.op == "conflict" and (step.pair is not None or "both" in a.choices)
                       for a in step.actions)):
        return step
    planner = _Planner(policy, common, {}, None, None)
    actions = []
    for target in SIDES:
        if policy.prevents(target, "create"):
            actions.append(planner._prevented(target, "create"))
        else:
            source = SIDE_NAME[other(target)]
            actions.append(Action("create", target, copy=True, reason=(
                f"conflict kept both: the {source}'s version as a new item")))
    return replace(step, actions=actions, state="record")


# --- planning ----------------------------------------------------------------------------


def make_plan(
    kind: ObjectKind,
    views: Iterable[View],
    policy: Policy,
    common: frozenset[str],
    *,
    unpaired: dict[Side, list[Item]] | None = None,
    totals: dict[Side, int] | None = None,
    ignored: Mapping[tuple[Side, str], Ignore] | None = None,
    known_emails: frozenset[str] | None = None,
    now: datetime | None = None,
    sent: Mapping[tuple[Side, str], Item] | None = None,
    holders: Mapping[tuple[Side, str], str] | None = None,
    refuses: Mapping[Side, Refuses] | None = None,
    lossy: Mapping[Side, Lossy] | None = None,
    images: Mapping[Side, Image] | None = None,
    fresh: bool = False,
    held: Collection[tuple[Side, str]] = (),
) -> Plan:
    """Plan one object's run.

    ``views`` are the stored pairs with a change on either side; ``unpaired`` are items no
    pair knows yet (new ones, or all of them after the state store was lost): they are
    matched across sides by UID, then by content, before anything is created.
    ``common`` are the fields both sides store; ``totals`` the item count per side, for
    the mass-delete guard. ``ignored`` are the user's ignores by (side, item id);
    ``known_emails`` the emails the CRM knows a person for ("matched" selection).
    ``now`` (aware) places the sync range (see crmsync.rules); without it every item is
    in range. ``sent`` are creates whose outcome a stopped run never learned, by (side,
    id) of the item they copied: see :func:`pair_up`. ``holders`` are the paired items
    by (side, UID): a new item with the UID of another item on its side is a twin (see
    :func:`_twins`). ``refuses`` asks a side whether it would certainly refuse a write
    (SPEC 5: a subject over the CRM's limit): such a write is planned as a skip with the
    side's reason, never tried; ``lossy`` what a side will not keep of a record, noted on
    the create or update. ``images`` give, per side, a record as that side stores
    it (see :data:`Image`); values equal through them are equal. ``fresh``: no pair of
    this object is stored yet; ``held``: the (side, id)s an earlier run left unsettled
    (see :func:`pair_up`).
    """
    all_views = list(views)
    twins: dict[int, tuple[Side, str, str, str]] = {}
    if unpaired:
        new = pair_up(kind, unpaired.get("crm", []), unpaired.get("groupware", []), sent,
                      fresh=fresh, held=held)
        twins = _twins(new, unpaired, holders or {})
        all_views.extend(new)
    planner = _Planner(policy, common, ignored or {}, known_emails, now, images,
                       refuses=refuses, lossy=lossy)
    planned = [(view, step) for view in all_views
               if (step := planner.step(kind, view)) is not None]
    # A twin whose kept item this very plan deletes (its counterpart was deleted) is the
    # item with that UID from now on: the first of them syncs now, not one run later.
    deleting = {(a.side, item.id) for _, step in planned for a in step.actions
                if a.op == "delete" and a.side and (item := step.item(a.side)) is not None}
    released: set[tuple[Side, str]] = set()
    for view, step in sorted(planned, key=lambda vs: min(vs[1].ids().values(), default="")):
        twin = twins.get(id(view))
        if twin is None or not any(a.op in WRITES for a in step.actions):
            continue
        side, holder, uid, reason = twin
        if (side, holder) in deleting and (side, uid) not in released:
            released.add((side, uid))
            continue
        step.actions = [Action("skip", reason=reason, failed=True)]
        step.state = "retry"
    steps = sorted((step for _, step in planned), key=Step._order)
    plan = Plan(kind, steps, lapsed=sorted(planner.lapsed))
    plan.guard = _mass_delete_guard(plan, policy, totals or {})
    return plan


def differences(crm: Item, gw: Item, common: frozenset[str],
                images: Mapping[Side, Image] | None = None) -> dict[str, tuple[Any, Any]]:
    """The fields in which two paired items differ, compared through the mapping as the
    planner compares them (a value equal to the image of the other side's is equal):
    field -> (CRM value, groupware value). For `crmsync verify`."""
    planner = _Planner(Policy(), common, {}, None, None, images)
    now: dict[Side, Flat] = {"crm": planner._fields(crm), "groupware": planner._fields(gw)}
    keys = set(diff(now["crm"], now["groupware"]))
    agreed = planner._agreed(View(None, crm, gw), now, keys)
    return {k: (now["crm"].get(k), now["groupware"].get(k)) for k in sorted(keys - agreed)}


def _twins(views: list[View], unpaired: Mapping[Side, list[Item]],
           holders: Mapping[tuple[Side, str], str]
           ) -> dict[int, tuple[Side, str, str, str]]:
    """The one-sided views (items to copy to the other side) whose item shares its UID
    with another item on its side, by id(view): the side, the item kept, the UID and the
    reason it is kept out.

    Of items sharing a UID one is synced: the paired one (``holders``), else one that
    matched an item on the other side, else the first by id. Copying the others would make
    a second item with that UID where the first one went, or two pairs for one item.
    """
    keep: dict[tuple[Side, str], str] = dict(holders)
    for view in views:  # a twin that found its counterpart is the one kept
        if view.crm is not None and view.gw is not None:
            for side in SIDES:
                item = view.item(side)
                if item is not None and item.uid:
                    keep.setdefault((side, item.uid), item.id)
    for side in SIDES:
        for item in sorted(unpaired.get(side, []), key=lambda i: i.id):
            if item.uid:
                keep.setdefault((side, item.uid), item.id)
    out: dict[int, tuple[Side, str, str, str]] = {}
    for view in views:
        if (view.crm is None) == (view.gw is None):
            continue
        side: Side = "crm" if view.crm is not None else "groupware"
        item = view.item(side)
        assert item is not None
        twin = keep.get((side, item.uid)) if item.uid else None
        if twin is not None and twin != item.id:
            out[id(view)] = (side, twin, item.uid, (
                f"same UID as {twin} in {SIDE_NAME[side]} ({item.uid}): not synced until "
                "the UIDs differ; run `crmsync repair`"))
    return out


def _mass_delete_guard(plan: Plan, policy: Policy, totals: dict[Side, int]) -> dict:
    deletes: dict[Side, int] = defaultdict(int)
    for _, action in plan.actions():
        if action.op == "delete" and action.side:
            deletes[action.side] += 1
    tripped = {}
    for side, n in deletes.items():
        total = max(totals.get(side, n), n)
        if n > policy.mass_delete_min and n > policy.mass_delete_share * total:
            tripped[side] = (n, total)
    return tripped


def content_key(record: Record) -> tuple | None:
    """What identifies an item when ids are lost: used to re-pair, never to merge."""
    if isinstance(record, Event):
        return ("event", record.start, record.end, record.summary.strip().casefold())
    if isinstance(record, Contact):
        email = record.emails[0].lower() if record.emails else ""
        name = record.full_name.strip().casefold()
        return ("contact", name, email) if name or email else None
    if isinstance(record, Task):
        return ("task", record.summary.strip().casefold(), record.due)
    return None


def pair_up(kind: ObjectKind, crm_items: list[Item], gw_items: list[Item],
            sent: Mapping[tuple[Side, str], Item] | None = None, *,
            fresh: bool = False, held: Collection[tuple[Side, str]] = ()) -> list[View]:
    """Match items that no pair knows: first an item with the copy a stopped run may have
    made of it (``sent``: by the source's (side, id), the item as the create sent it; the
    copy has that content), then by the CRM Id a groupware item keeps (Record.crm_id),
    then by UID, then by content (start, end, subject).

    Unmatched items come back as one-sided views (they will be created on the other side);
    a UID seen twice on one side is kept out until it is repaired. A kept Id naming no
    unpaired CRM item (paired elsewhere, deleted) is passed over.

    Content never guesses an identity: it pairs one item with one item. Where several
    items on a side look alike (the same key, see :func:`content_key`) and the other side
    has one of them too, none of them is paired and none is created (a create would copy
    an item the other side may already have): each comes back as a view with ``tie`` set,
    which the planner reports.

    ``fresh``: no pair of this object is stored (a first sync, or the store was lost).
    When some items then pair (by kept Id, UID or content), the sides already hold copies
    of each other, and an item without a match may be the copy of one changed on the
    other side: items left that resemble one there are not created (see :func:`_near`).
    ``held`` are the (side, id)s of items an earlier run left unsettled: such a question
    left for the user is asked again, whatever is stored by now.
    """
    crm_items = sorted(crm_items, key=lambda i: i.id)
    gw_items = sorted(gw_items, key=lambda i: i.id)
    if not crm_items or not gw_items:
        return [View(None, i, None) for i in crm_items] + [View(None, None, i) for i in gw_items]
    views: list[View] = []
    if sent:
        views, crm_items, gw_items = _pair_sent(kind, crm_items, gw_items, sent)
    crm_by_id = {item.id: item for item in crm_items}
    kept: list[Item] = []
    for item in gw_items:
        match = crm_by_id.pop(_kept_id(item), None)
        if match is not None:
            views.append(View(None, match, item, by="crm-id"))
        else:
            kept.append(item)
    crm_items = [i for i in crm_items if i.id in crm_by_id]
    left: dict[Side, list[Item]] = {"crm": [], "groupware": []}
    gw_by_uid: dict[str, Item] = {}
    for item in kept:
        if item.uid and item.uid not in gw_by_uid:
            gw_by_uid[item.uid] = item
        else:
            left["groupware"].append(item)
    for item in crm_items:
        match = gw_by_uid.pop(item.uid, None) if item.uid else None
        if match is not None:
            views.append(View(None, item, match, by="uid"))
        else:
            left["crm"].append(item)
    left["groupware"].extend(gw_by_uid.values())
    groups: dict[tuple, dict[Side, list[Item]]] = {}
    for side in SIDES:
        for item in sorted(left[side], key=lambda i: i.id):
            key = _safe_key(item)
            if key is None:
                views.append(View(None, *_one_sided(side, item)))
            else:
                groups.setdefault(key, {"crm": [], "groupware": []})[side].append(item)
    alone: dict[Side, list[Item]] = {"crm": [], "groupware": []}
    for group in groups.values():
        crm, gw = group["crm"], group["groupware"]
        if len(crm) == 1 and len(gw) == 1 or (len(crm) == len(gw) and _alike(group)):
            views.extend(View(None, c, g, by="content") for c, g in zip(crm, gw, strict=True))
        elif crm and gw:
            views.extend(_ties(kind, group))
        else:
            for side in SIDES:
                alone[side].extend(group[side])
    # When some items already have their copy on the other side (a lost or old store, not
    # two calendars meeting for the first time), the rest may be copies changed since.
    near = fresh and any(v.by for v in views)
    close = {s: [i for i in alone[s] if near or (s, i.id) in held] for s in SIDES}
    views.extend(_near(kind, close))
    views.extend(View(None, *_one_sided(s, i)) for s in SIDES for i in alone[s]
                 if i not in close[s])
    return views


def _near(kind: ObjectKind, alone: Mapping[Side, list[Item]]) -> list[View]:
    """Items without a match that resemble one on the other side (an event at the same
    start and end, a contact with the same first email; see :func:`near_key`): most often
    the two copies of one item that changed while no pair joined them (a lost store).
    Creating them would duplicate both, pairing them would guess: one with one becomes a
    view ``by="near"``, which the planner turns into a decision for the user; more are
    reported as look-alikes. The rest are one-sided views, to be created."""
    groups: dict[tuple, dict[Side, list[Item]]] = {}
    views: list[View] = []
    for side in SIDES:
        for item in alone[side]:
            try:
                key = near_key(item.record())
            except FormatError:
                key = None
            if key is None:
                views.append(View(None, *_one_sided(side, item)))
            else:
                groups.setdefault(key, {"crm": [], "groupware": []})[side].append(item)
    for group in groups.values():
        crm, gw = group["crm"], group["groupware"]
        if len(crm) == 1 and len(gw) == 1:
            views.append(View(None, crm[0], gw[0], by="near"))
        elif crm and gw:
            views.extend(_ties(kind, group, near=True))
        else:
            views.extend(View(None, *_one_sided(s, i)) for s in SIDES for i in group[s])
    return views


def near_key(record: Record) -> tuple | None:
    """What makes two unmatched items look like the same one changed (see :func:`_near`):
    an event's start and end, a contact's first email. None: nothing (tasks)."""
    if isinstance(record, Event) and record.start:
        return ("event", record.start, record.end)
    if isinstance(record, Contact) and record.emails:
        return ("contact", record.emails[0].lower())
    return None


def _alike(group: Mapping[Side, list[Item]]) -> bool:
    """Whether the items of each side are all the same in every field: then which copy
    pairs with which changes nothing, and pairing them in order guesses nothing."""
    for side in SIDES:
        try:
            first, *rest = [i.record().fields() for i in group[side]]
        except FormatError:
            return False
        if any(fields != first for fields in rest):
            return False
    return True


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0


def _one_sided(side: Side, item: Item) -> tuple[Item | None, Item | None]:
    return (item, None) if side == "crm" else (None, item)


_LOOKS = {"calendar": "start, end and subject", "contacts": "name and first email",
          "tasks": "subject and due date"}
_NEAR = {"calendar": "start and end", "contacts": "first email"}


def _ties(kind: ObjectKind, group: Mapping[Side, list[Item]], near: bool = False
          ) -> list[View]:
    """Views reporting look-alike items that content cannot tell apart."""
    crm, gw = len(group["crm"]), len(group["groupware"])
    same = _NEAR.get(kind, "content") if near else _LOOKS.get(kind, "content")
    why = (f"{crm + gw} look-alike items ({crm} in CRM, {gw} in groupware; the same "
           f"{same}) and no stored pair or kept id for them: not paired by content and "
           "nothing written, as that would guess which is which; tell them apart (give "
           "an item and its copy the same new subject on both sides, or delete a surplus "
           "copy) and sync again")
    return [View(None, *_one_sided(s, i), tie=why) for s in SIDES for i in group[s]]


def _kept_id(item: Item) -> str:
    try:
        return item.record().crm_id
    except Exception:  # noqa: BLE001 - unreadable: planned (and reported) as a step
        return ""


def _pair_sent(kind: ObjectKind, crm_items: list[Item], gw_items: list[Item],
               sent: Mapping[tuple[Side, str], Item]
               ) -> tuple[list[View], list[Item], list[Item]]:
    """Pair each source of a create whose answer was lost with the copy it made, found by
    the content that was sent (the source may have changed since); the views carry what
    was sent as their base. Returns those views and the items left over.

    One to one, as in :func:`pair_up`: when several sources sent look-alike content, or
    several items on the other side look like what was sent, none of them is paired
    (each is reported as a tie), unless the items of each side are all the same."""
    items: dict[Side, list[Item]] = {"crm": crm_items, "groupware": gw_items}
    keys = {(s, i.id): _safe_key(i) for s in SIDES for i in items[s]}
    taken: set[tuple[Side, str]] = set()
    views: list[View] = []
    for side in SIDES:
        target = other(side)
        sources: dict[tuple, list[tuple[Item, Item]]] = defaultdict(list)
        for source in items[side]:
            copy_of = sent.get((side, source.id))
            key = _safe_key(copy_of) if copy_of is not None else None
            if key is not None and (side, source.id) not in taken:
                sources[key].append((source, copy_of))  # type: ignore[arg-type]
        for key, group in sources.items():
            matches = [i for i in items[target] if (target, i.id) not in taken
                       and keys[(target, i.id)] == key]
            if not matches:
                continue
            taken |= {(side, s.id) for s, _ in group} | {(target, i.id) for i in matches}
            if len(group) == len(matches) and (len(group) == 1 or _alike(
                    {side: [s for s, _ in group], target: matches})):
                for (source, copy_of), match in zip(group, matches, strict=True):
                    pair = (source, match) if side == "crm" else (match, source)
                    views.append(View(None, *pair, base=copy_of, by="sent"))
            else:
                views.extend(_ties(kind, {side: [s for s, _ in group], target: matches}))
    rest = {s: [i for i in items[s] if (s, i.id) not in taken] for s in SIDES}
    return views, rest["crm"], rest["groupware"]


def _safe_key(item: Item) -> tuple | None:
    try:
        return content_key(item.record())
    except Exception:  # noqa: BLE001 - unreadable: planned (and reported) as a step
        return None


class _Planner:
    def __init__(self, policy: Policy, common: frozenset[str],
                 ignored: Mapping[tuple[Side, str], Ignore],
                 known_emails: frozenset[str] | None, now: datetime | None,
                 images: Mapping[Side, Image] | None = None, *, chosen: bool = False,
                 refuses: Mapping[Side, Refuses] | None = None,
                 lossy: Mapping[Side, Lossy] | None = None) -> None:
        self.policy = policy
        self.refuses = refuses or {}
        self.lossy = lossy or {}
        self.common = common
        self.ignored = ignored
        self.known_emails = known_emails
        self.now = now
        self.images = images or {}
        # Planning a conflict again with the side the user chose as the rule: the choice
        # stands even where the winner's side cannot hold the loser's value in full.
        self.chosen = chosen
        self.lapsed: list[tuple[Side, str]] = []
        # Flattened fields by content: a base copied verbatim to the other side, and an
        # unchanged side whose base is its current item, are parsed once.
        self._flat: dict[tuple[str, str], Flat] = {}

    def step(self, kind: ObjectKind, view: View) -> Step | None:
        """The step for one view; None when the view is not considered at all."""
        step = Step(kind, view.pair, view.crm, view.gw)
        try:
            if not self._plan(step, view):
                return None
            self._refused(step)
        except FormatError as exc:
            step.actions = [Action("skip", reason=f"cannot read item {exc.item_id}: {exc}",
                                   failed=True)]
            step.state = "retry"
        except Exception as exc:  # noqa: BLE001 - a bug on one item fails that item only
            # (the rules' range check, selection, merging): reported, the run goes on.
            names = " / ".join(step.ids().values()) or "?"
            step.actions = [Action("skip", reason=(
                f"cannot plan item {names}: {unexpected(exc)}"), failed=True)]
            step.state = "retry"
        return step

    def _plan(self, step: Step, view: View) -> bool:
        """Fill in the step; False when the view is out of the plan altogether."""
        pair = view.pair
        if self.policy.mode == "record" and not (pair is not None and pair.one_way):
            return False  # record mode syncs only the events recorded (crmsync.record)
        why = self._ignored(view)
        if why is not None:
            step.actions.append(Action("skip", why[0], reason=why[1]))
            step.state = "settle"
            return True
        for side in SIDES:
            item = view.item(side)
            if item is not None and item.error is not None:
                raise FormatError(item.error, item.id)
        if pair is not None and (pair.crm_id is None or pair.gw_id is None) \
                and (view.crm is None or view.gw is None):
            # Unlinked: the counterpart was deleted and mirroring it was prevented. The
            # survivor is no longer synced; the pair is only kept to say so. (Unless an
            # item with the survivor's UID came back on the emptied side, see
            # Syncer._taken_back: then the two are compared, without a base, below.)
            return True
        if pair is not None and view.crm is None and view.gw is None:
            return True  # deleted on both sides: forget the pair
        if not self._considered(step, view):
            return bool(step.actions)
        if pair is None:
            if view.tie:
                side: Side = "crm" if view.crm is not None else "groupware"
                step.actions.append(Action("skip", side, reason=view.tie))
                step.state = "retry"  # reported again on every run until told apart
            elif view.crm is not None and view.gw is not None:
                self._merge(step, view)
            else:
                self._create(step, view)
            return True
        for side in SIDES:
            if view.item(side) is None:
                self._deleted(step, view, side)
                return True
        self._merge(step, view)
        return True

    def _refused(self, step: Step) -> None:
        """The step's creates and updates that their side would certainly refuse, as
        skips with its reason (and, of the others, what their side will not keep:
        Action.lossy): shown in the review and dry run, never tried, so an item
        does not fail on every run. A new item refused is not synced at all (nothing is
        stored: it comes back once it changes); a refused update of a pair leaves the pair
        as it was, unless the step writes something else."""
        refused = False
        for n, action in enumerate(step.actions):
            if action.op not in ("create", "update") or action.side is None:
                continue
            ask, cuts = self.refuses.get(action.side), self.lossy.get(action.side)
            record = self._written(step, action) if ask or cuts else None
            if record is None:
                continue
            why = ask(step.kind, record) if ask is not None else None
            if why is not None:
                step.actions[n] = Action("skip", action.side, reason=(
                    f"not synced to {SIDE_NAME[action.side]}: {why}"))
                refused = True
            elif cuts is not None:
                action.lossy = cuts(step.kind, record)
        if not refused or any(a.op in WRITES for a in step.actions) and step.pair is not None:
            return
        new = step.pair is None and (step.crm is None or step.gw is None)
        if new:
            step.actions = [a for a in step.actions if a.op == "skip"]
        if new or step.pair is not None:
            step.state = "settle"

    def _written(self, step: Step, action: Action) -> Record | None:
        """The record ``action`` would write on its side."""
        target: Side = action.side  # type: ignore[assignment]
        if action.op == "create":
            source = step.item(other(target))
            return source.record() if source is not None else None
        current = step.item(target)
        return apply_changes(current.record(), action.changes) if current is not None else None

    def _considered(self, step: Step, view: View) -> bool:
        """The range and exclusion rules (crmsync.rules). An item they leave out is left
        alone on both sides: nothing created, updated or deleted because of it."""
        present = [(s, i) for s in SIDES if (i := view.item(s)) is not None]
        now = self.now
        inside = {s: now is None or rules.in_range(self.policy, i.record(), now)
                  for s, i in present}
        if view.pair is None and len(present) == 2 and not all(inside.values()) \
                and any(inside.values()):
            # Matched this run (by UID, kept id or content) with an item outside the sync
            # range: an item out of range is never written because of a pairing, and the
            # other is not written over by it either (or created beside it: one UID).
            out = next(s for s, i in present if not inside[s])
            step.actions.append(Action("skip", out, reason=(
                f"matches {view.item(out).label(parse=False)} in {SIDE_NAME[out]}, which "
                "lies outside the sync range: neither is written; move one into the range "
                "to sync them, or give the new one a UID of its own")))
            step.state = "settle"
            return False
        if now is not None and not any(inside.values()):
            # Out of range. New items and deletions (an item may only have dropped out of
            # a side's ranged listing) do not even appear; a change to a synced item is
            # shown as a skip, so that the user knows why it does not flow.
            if view.pair is not None and len(present) == 2:
                first, last = self.policy.window(now)
                zone = self.policy.zone()
                step.actions.append(Action("skip", reason=(
                    f"outside the sync range ({first.astimezone(zone):%Y-%m-%d} to "
                    f"{last.astimezone(zone):%Y-%m-%d}, {self.policy.timezone})")))
                step.state = "settle"
            return False
        for side, item in present:
            why = rules.exclusion(self.policy, item.record())
            if why is not None:
                left = " left alone on both sides" if view.pair is not None else " not synced"
                step.actions.append(Action("skip", side, reason=(
                    f"excluded in {SIDE_NAME[side]}: {why};{left}")))
                step.state = "settle"
                return False
        return True

    def _ignored(self, view: View) -> tuple[Side, str] | None:
        """The side and reason of a skip when the user ignores this item; an until-change
        ignore whose item changed since is noted in ``lapsed`` instead."""
        for side in SIDES:
            item = view.item(side)
            item_id = item.id if item else (view.pair.id_on(side) if view.pair else None)
            ignore = self.ignored.get((side, item_id)) if item_id else None
            if ignore is None:
                continue
            if ignore.mode == "forever":
                return side, "ignored forever (lift with 'crmsync unignore')"
            now = {s: (i.version if (i := view.item(s)) else None) for s in SIDES}
            if all(now[s] == ignore.version_on(s) for s in SIDES):
                return side, "differences ignored until one side changes"
            self.lapsed.append((side, item_id))  # type: ignore[arg-type]
        return None

    def _create(self, step: Step, view: View) -> None:
        source: Side = "crm" if view.crm is not None else "groupware"
        target = other(source)
        item = view.item(source)
        assert item is not None
        if not formats.looks_valid(item.fmt, item.raw):
            item.record()  # a full parse: raises FormatError with the reason
        marked = None
        if source == "groupware":
            record = item.record()
            why = selection.excluded(record, self.policy, self.known_emails)
            if why is not None:
                step.actions.append(Action("skip", target, reason=why))
                step.state = "settle"
                return
            marked = selection.mark(record, self.policy)
        if self.policy.prevents(target, "create"):
            step.actions.append(self._prevented(target, "create"))
            step.state = "settle"
            return
        step.actions.append(Action("create", target))
        if marked is not None:
            # Designated items sent to the CRM carry the CRM category in the groupware.
            if self.policy.prevents(source, "update"):
                step.actions.append(self._prevented(source, "update"))
            else:
                step.actions.append(Action(
                    "update", source, changes={"categories": marked},
                    reason=f"marked with the CRM category {self.policy.crm_category!r}"))

    def _deleted(self, step: Step, view: View, gone: Side) -> None:
        survivor = other(gone)
        assert view.pair is not None
        item = view.item(survivor)
        assert item is not None
        if view.pair.one_way:
            # A recorded event: the CRM keeps its record when the groupware event goes,
            # and a CRM deletion never reaches the groupware. The pair is unlinked.
            step.actions.append(Action("skip", survivor, reason=(
                f"recorded one-way, deleted in {SIDE_NAME[gone]}: the "
                f"{SIDE_NAME[survivor]} item is kept and no longer synced")))
            return
        if not self._changed(view.pair, survivor, item):
            self._delete(step, survivor, f"deleted in {SIDE_NAME[gone]}")
            return
        rule = self.policy.delete_vs_update
        deletion_wins = rule == "delete" or rule == gone
        why = (f"deleted in {SIDE_NAME[gone]} but changed in {SIDE_NAME[survivor]} since the "
               f"last sync (rule: {rule})")
        if deletion_wins:
            self._delete(step, survivor, why)
        elif self.policy.prevents(gone, "create"):
            step.actions.append(self._prevented(gone, "create"))
        else:
            step.actions.append(Action("create", gone, reason=why + ": recreated"))

    def _delete(self, step: Step, side: Side, why: str) -> None:
        if self.policy.prevents(side, "delete"):
            step.actions.append(self._prevented(side, "delete", why))
        else:
            step.actions.append(Action("delete", side, reason=why))

    def _prevented(self, side: Side, op: str, why: str = "") -> Action:
        note = f"not {op}d in {SIDE_NAME[side]}: 'do not {op} in {SIDE_NAME[side]}' is on"
        return Action("skip", side, reason=f"{why}; {note}" if why else note)

    def _changed(self, pair: Pair, side: Side, item: Item) -> bool:
        if item.version == pair.version_on(side):
            return False
        base = pair.base_on(side)
        if base is None:
            return True
        fields = self._fields(item)
        return bool(diff(self._fields(base), fields))

    def _fields(self, item: Item) -> Flat:
        key = (item.fmt, item.raw)
        flat = self._flat.get(key)
        if flat is None:
            flat = self._flat[key] = flatten(item.record(), self.common)
        return flat

    def _imaged(self, view: View, side: Side) -> Flat | None:
        """The other side's item as ``side`` would store it (its image), flattened; None
        when ``side`` stores what it is given."""
        image = self.images.get(side)
        source = view.item(other(side))
        if image is None or source is None:
            return None
        key = (f"image:{side}:{source.fmt}", source.raw)
        flat = self._flat.get(key)
        if flat is None:
            flat = self._flat[key] = flatten(image(source.record()), self.common)
        return flat

    def _agreed(self, view: View, now: Mapping[Side, Flat], keys: Iterable[str]) -> set[str]:
        """Of ``keys``, the fields where the two sides hold the same value through the
        mapping: one side's value is the image of the other's (a body cut to the CRM's
        limit, a location cut to 255 characters, ...). Neither is a change to write."""
        out = set()
        images: dict[Side, Flat | None] = {}
        for key in keys:
            if now["crm"].get(key) == now["groupware"].get(key):
                out.add(key)
                continue
            for side in SIDES:
                if side not in images:
                    images[side] = self._imaged(view, side)
                imaged = images[side]
                if imaged is not None and imaged.get(key) == now[side].get(key):
                    out.add(key)
                    break
        return out

    def _lossy(self, view: View, now: Mapping[Side, Flat], winner: Side,
               keys: Iterable[str]) -> list[str]:
        """Of ``keys``, the fields whose loser's value the winner's side cannot hold in
        full (its image there differs): the winner's value may be a cut copy of it."""
        loser = other(winner)
        imaged = self._imaged(view, winner)
        if imaged is None:
            return []
        return sorted(k for k in keys if imaged.get(k) != now[loser].get(k)
                      and _size(imaged.get(k)) < _size(now[loser].get(k)))

    def _merge(self, step: Step, view: View) -> None:
        assert view.crm is not None and view.gw is not None
        now = {"crm": self._fields(view.crm), "groupware": self._fields(view.gw)}
        pair = view.pair
        changed: dict[Side, Flat] = {}
        baseless = False
        if pair is not None and pair.crm_base is not None and pair.gw_base is not None:
            for side in SIDES:
                item = view.item(side)
                assert item is not None
                unchanged = item.version == pair.version_on(side)
                base_item = pair.base_on(side)
                assert base_item is not None
                base = now[side] if unchanged else self._fields(base_item)
                changed[side] = diff(base, now[side])
        elif view.base is not None:
            base = self._fields(view.base)
            for side in SIDES:
                changed[side] = diff(base, now[side])
        else:
            # No base (re-paired after the store was lost, or first sync of items that
            # exist on both sides): every difference counts as changed on both sides,
            # except that a side lacking a value never wipes the other side's: it is
            # filled from it instead.
            baseless = True
            for side in SIDES:
                changed[side] = {k: v for k, v in diff(now[other(side)], now[side]).items()
                                 if v not in _EMPTY}
        # Values equal through the mapping (a lossy copy and its original) are no change
        # where the two are compared with each other: without a base, and where both sides
        # changed a field. A change made on one side since the base is always carried
        # over (to a lossy side it may be a no-op, never a loss).
        agreed = self._agreed(view, now, changed["crm"].keys() | changed["groupware"].keys()
                              if baseless else changed["crm"].keys() & changed["groupware"].keys())
        for side in SIDES:
            changed[side] = {k: v for k, v in changed[side].items() if k not in agreed}
        if baseless and view.by in ("content", "near") and not self.chosen:
            # Both hold a value, and different ones (a side lacking a value is only
            # filled from the other: nothing of its own is replaced).
            differ = sorted(changed["crm"].keys() & changed["groupware"].keys())
            if differ or view.by == "near":
                # Matched by look only: which item is whose copy is a guess, so neither
                # is written over with the other's content.
                differ = differ or sorted(changed["crm"].keys() | changed["groupware"].keys())
                what = rules.describe(self.policy, view.gw.record())
                if view.by == "content":
                    why = (f"paired by content only (same {_LOOKS.get(step.kind, 'content')}"
                           f", no stored pair or kept id) but they differ in "
                           f"{', '.join(differ)}: neither is overwritten; choose the CRM's "
                           "or the groupware's version, or skip this time")
                    choices: tuple[str, ...] = ("crm", "groupware", "skip")
                else:
                    why = (f"not paired: no stored pair or kept id, and the other side has "
                           f"an item with the same {_NEAR.get(step.kind, 'content')} that "
                           f"differs in {', '.join(differ)} (the same item changed on one "
                           "side?): neither is created nor overwritten; if they are the "
                           "same, choose the CRM's or the groupware's version; if not, keep "
                           "both (each is copied to the other side); or skip this time")
                    choices = CONFLICT_CHOICES
                step.actions.append(Action(
                    "conflict", reason=f"{what}: {why}",
                    conflicts={k: (now["crm"].get(k), now["groupware"].get(k)) for k in differ},
                    choices=choices,
                ))
                step.state = "retry"
                return
        clash = sorted(k for k in changed["crm"].keys() & changed["groupware"].keys()
                       if changed["crm"][k] != changed["groupware"][k])
        note = ""
        one_way = pair is not None and pair.one_way
        if clash:
            winner: Side | None = "groupware" if one_way else self._winner(view)
            cut = [] if winner is None or self.chosen else self._lossy(view, now, winner, clash)
            if winner is None or cut:
                what = rules.describe(self.policy, view.gw.record())
                why = (f"both sides changed {', '.join(clash)}" if not cut else
                       f"both sides changed {', '.join(clash)} and the "
                       f"{SIDE_NAME[winner]} (the rule's winner) cannot hold the "  # type: ignore[index]
                       f"{SIDE_NAME[other(winner)]}'s {', '.join(cut)} in full: a cut "  # type: ignore[arg-type]
                       "copy never replaces the original by rule")
                step.actions.append(Action(
                    "conflict",
                    reason=(f"{what}: {why}; choose: keep the CRM's, the groupware's or "
                            "both, or skip this time"),
                    conflicts={k: (now["crm"].get(k), now["groupware"].get(k)) for k in clash},
                    choices=CONFLICT_CHOICES,
                ))
                step.state = "retry"
                return
            loser = other(winner)
            for key in clash:
                del changed[loser][key]
            note = (f"conflict on {', '.join(clash)}: {SIDE_NAME[winner]} wins "
                    f"(rule: {self.policy.conflict})")
        for target in SIDES:
            source = other(target)
            writes = {k: v for k, v in changed[source].items() if now[target].get(k) != v}
            if not writes:
                continue
            if one_way and target == "groupware":
                step.actions.append(Action("skip", target, reason=(
                    "recorded one-way: changes made in the CRM stay in the CRM")))
            elif self.policy.prevents(target, "update"):
                step.actions.append(self._prevented(target, "update"))
            else:
                step.actions.append(Action("update", target, changes=writes, reason=note))
        if pair is None and not any(a.op in WRITES for a in step.actions):
            step.actions.append(Action("link", reason="paired with the matching item"))

    def _winner(self, view: View) -> Side | None:
        rule = self.policy.conflict
        if rule == "ask":
            return None
        if rule in SIDES:
            return rule  # type: ignore[return-value]
        # newest: the side changed last; a tie or an unknown time goes to the CRM.
        assert view.crm is not None and view.gw is not None
        return "groupware" if (view.gw.modified or "") > (view.crm.modified or "") else "crm"
