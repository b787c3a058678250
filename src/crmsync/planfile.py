"""Plan files: a plan saved for later (``sync --plan-out``), then applied (``apply``).

A PLAN FILE is JSON: the profile it was made for, a format version, and per object every
step with its items (id, version, label on each side) and its actions. A person (or a
script) may edit it before applying: remove steps, remove actions, and choose the winner
of a conflict by setting its ``"choose"`` to one of its ``choices``. Everything else in
an action (the fields it writes, its reason) is for reading: what is applied is always
planned again from the sides' current items, so a file cannot make crmsync write
something its own planner would not.

Applying re-checks the plan against the sides (see :func:`reconcile`): a step whose items
still have the versions in the file is applied as the file says; a step whose items
changed meanwhile is RE-PLANNED, never forced; steps the file does not have (removed by
the user, or changed items new since) are left for the next run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmsync.connectors.base import SIDES, Item, Side
from crmsync.errors import ConfigError
from crmsync.model import OBJECT_KINDS, ObjectKind
from crmsync.plan import CONFLICT_CHOICES, WRITES, Action, Plan, Step

FORMAT = "crmsync-plan"
VERSION = 1
_SIDE_KEY: dict[Side, str] = {"crm": "crm", "groupware": "groupware"}


class PlanFileError(ConfigError):
    """A plan file that cannot be applied: unreadable, malformed, or for another profile."""


# --- writing ----------------------------------------------------------------------------


def dump(profile_name: str, profile_id: int, plans: Sequence[Plan], created: str) -> dict:
    """The plan file's content for these plans (one per object)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "profile": profile_name,
        "profile_id": profile_id,
        "created": created,
        "objects": {plan.kind: {"steps": [_step(s) for s in plan.steps]} for plan in plans},
    }


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def _item(item: Item | None, step: Step, side: Side) -> dict[str, Any] | None:
    if item is None:
        deleted = step.pair.id_on(side) if step.pair else None
        return {"id": deleted, "version": None, "deleted": True} if deleted else None
    return {"id": item.id, "version": item.version, "label": item.label()}


def _step(step: Step) -> dict[str, Any]:
    return {
        "key": step.key,
        "kind": step.kind,
        "pair": step.pair.id if step.pair else None,
        "crm": _item(step.crm, step, "crm"),
        "groupware": _item(step.gw, step, "groupware"),
        "actions": [_action(a) for a in step.actions],
    }


def _action(action: Action) -> dict[str, Any]:
    out: dict[str, Any] = {"op": action.op, "side": action.side}
    if action.changes:
        out["changes"] = _jsonable(action.changes)
    if action.conflicts:
        out["conflicts"] = {k: {"crm": _jsonable(v[0]), "groupware": _jsonable(v[1])}
                            for k, v in action.conflicts.items()}
        out["choices"] = list(action.choices)
        out["choose"] = None
    if action.reason:
        out["reason"] = action.reason
    if action.failed:
        out["failed"] = True
    return out


def _jsonable(value: Any) -> Any:
    """Values as JSON has them, so that a loaded file compares equal to a fresh plan."""
    return json.loads(json.dumps(value, default=str))


# --- reading ----------------------------------------------------------------------------


@dataclass
class SavedStep:
    key: str
    versions: dict[Side, str | None]
    # (op, side, changes as JSON) of each action the file keeps.
    actions: list[tuple[str, str | None, Any]]
    # The user's pick for the step's conflict: "crm", "groupware" or "skip".
    choose: str | None = None


@dataclass
class PlanFile:
    profile: str
    profile_id: int | None
    created: str
    steps: dict[ObjectKind, dict[str, SavedStep]] = field(default_factory=dict)

    @property
    def kinds(self) -> list[ObjectKind]:
        return list(self.steps)


def load(text: str, where: str = "plan file") -> PlanFile:
    """Read and validate a plan file; PlanFileError says what is wrong and where."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PlanFileError(f"{where}: not a crmsync plan file (no \"format\": \"{FORMAT}\"); "
                            "make one with 'crmsync sync NAME --plan-out FILE'")
    if data.get("version") != VERSION:
        raise PlanFileError(f"{where}: plan file version {data.get('version')!r} is not "
                            f"supported (this crmsync reads version {VERSION}); make it again")
    profile, profile_id = data.get("profile"), data.get("profile_id")
    if not isinstance(profile, str) or not isinstance(profile_id, int | None):
        raise PlanFileError(f"{where}: \"profile\" must be the profile's name")
    objects = _expect(data.get("objects"), dict, f"{where}: \"objects\"")
    out = PlanFile(profile, profile_id, str(data.get("created") or ""))
    for kind, body in objects.items():
        if kind not in OBJECT_KINDS:
            raise PlanFileError(f"{where}: unknown object {kind!r}; objects are "
                                f"{', '.join(OBJECT_KINDS)}")
        steps = _expect(_expect(body, dict, f"{where}: {kind}").get("steps"), list,
                        f"{where}: {kind}: \"steps\"")
        saved: dict[str, SavedStep] = {}
        for n, raw in enumerate(steps, 1):
            step = _saved_step(raw, f"{where}: {kind} step {n}")
            if step.key in saved:
                raise PlanFileError(f"{where}: {kind} step {n}: step {step.key!r} appears twice")
            saved[step.key] = step
        out.steps[kind] = saved  # type: ignore[index]
    return out


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise PlanFileError(f"{what} must be a JSON {'object' if kind is dict else 'list'}")
    return value


def _saved_step(raw: Any, what: str) -> SavedStep:
    raw = _expect(raw, dict, what)
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise PlanFileError(f"{what}: \"key\" is missing")
    versions: dict[Side, str | None] = {}
    for side in SIDES:
        item = raw.get(_SIDE_KEY[side])
        if item is not None:
            item = _expect(item, dict, f"{what} ({key}): \"{side}\"")
        versions[side] = item.get("version") if item else None
    actions, choose = [], None
    for m, action in enumerate(_expect(raw.get("actions", []), list,
                                       f"{what} ({key}): \"actions\""), 1):
        action = _expect(action, dict, f"{what} ({key}) action {m}")
        op, side = action.get("op"), action.get("side")
        if op not in ("create", "update", "delete", "conflict", "skip", "link"):
            raise PlanFileError(f"{what} ({key}) action {m}: unknown op {op!r}")
        if side not in (None, *SIDES):
            raise PlanFileError(f"{what} ({key}) action {m}: unknown side {side!r}")
        if op == "conflict" and action.get("choose") is not None:
            choose = action["choose"]
            if choose not in CONFLICT_CHOICES:
                raise PlanFileError(f"{what} ({key}): \"choose\" must be one of "
                                    f"{', '.join(CONFLICT_CHOICES)}, not {choose!r}")
        actions.append((op, side, action.get("changes") or {}))
    return SavedStep(key, versions, actions, choose)


# --- applying ---------------------------------------------------------------------------

# Plans one step again: (the step, the conflict winner chosen, or None) -> the new step.
Replan = Callable[[Step, str | None], Step]


@dataclass
class Outcome:
    """What re-checking a plan file against a fresh plan found, per object."""

    plan: Plan
    # Steps applied as the file says (versions unchanged).
    kept: list[str] = field(default_factory=list)
    # key -> why it was planned again (its items changed, or the file's step no longer
    # matches what crmsync would do); the step in ``plan`` is the new one.
    replanned: dict[str, str] = field(default_factory=dict)
    # Steps of the fresh plan the file does not have: left for the next run.
    held: list[str] = field(default_factory=list)

    def replanned_writes(self) -> list[Step]:
        """The re-planned steps that would write: nobody has seen what they do now."""
        return [s for s in self.plan.steps if s.key in self.replanned
                and any(a.op in WRITES for a in s.actions)]

    def hold_replanned(self) -> list[str]:
        """Leave the re-planned steps that would write for the next run (unconfirmed)."""
        held = {s.key for s in self.replanned_writes()}
        self.plan.steps = [_held(s) if s.key in held else s for s in self.plan.steps]
        self.plan.guard = {side: g for side, g in self.plan.guard.items()
                           if any(a.op == "delete" and a.side == side
                                  for _, a in self.plan.actions())}
        self.held += sorted(held)
        return sorted(held)


def reconcile(fresh: Plan, saved: dict[str, SavedStep], replan: Replan) -> Outcome:
    """The plan to apply: ``fresh`` (planned now) filtered and decided by the file.

    A held step (not in the file) stays in the plan with no actions and state "retry",
    so that its items are looked at again on the next run rather than passed over.
    """
    out = Outcome(Plan(fresh.kind, [], lapsed=fresh.lapsed))
    by_key = {s.key: s for s in fresh.steps}
    for key, step in by_key.items():
        if key not in saved:
            out.held.append(key)
            out.plan.steps.append(_held(step))
    for key, want in saved.items():
        step = by_key.get(key)
        if step is None:
            out.replanned[key] = "nothing to do for it any more (already in step, or gone)"
            continue
        now = {s: (i.version if (i := step.item(s)) else None) for s in SIDES}
        if now != want.versions:
            changed = [s for s in SIDES if now[s] != want.versions[s]]
            out.replanned[key] = f"changed in {' and '.join(changed)} since the plan was made"
            out.plan.steps.append(step)
            continue
        chosen = _choose(step, want, replan)
        if chosen is None:
            out.replanned[key] = ("the file's actions are not what crmsync plans for it now "
                                  "(settings changed, or the file was edited beyond "
                                  "removing steps and actions)")
            out.plan.steps.append(step)
            continue
        out.kept.append(key)
        out.plan.steps.append(chosen)
    out.plan.guard = _guard(fresh, out.plan)
    return out


def _held(step: Step) -> Step:
    """The step left for the next run: nothing written, its items looked at again."""
    return Step(step.kind, step.pair, step.crm, step.gw, [], state="retry")


def _choose(step: Step, want: SavedStep, replan: Replan) -> Step | None:
    """The fresh step narrowed to the file's actions; None when they do not match."""
    conflict = next((a for a in step.actions if a.op == "conflict"), None)
    if want.choose is not None and conflict is not None:
        if want.choose not in conflict.choices:
            return None
        decided = replan(step, want.choose)
        if want.choose == "skip":
            decided.state = "retry"  # skipped this time: presented again next run
        return decided
    kept: list[Action] = []
    pool = list(step.actions)
    for op, side, changes in want.actions:
        match = next((a for a in pool if a.op == op and a.side == side
                      and _jsonable(a.changes) == changes), None)
        if match is None:
            return None
        pool.remove(match)
        kept.append(match)
    dropped = [a for a in pool if a.op in WRITES or a.op == "conflict"]
    state = step.state
    if dropped:
        # Part of the step is left out this time: its items are presented again next run
        # instead of being recorded as in step.
        state = "retry"
    return Step(step.kind, step.pair, step.crm, step.gw, kept, state=state)


def _guard(fresh: Plan, kept: Plan) -> dict[Side, tuple[int, int]]:
    """The fresh plan's mass-delete guard, counting only the deletes still in the plan."""
    out = {}
    for side, (_, total) in fresh.guard.items():
        n = sum(1 for _, a in kept.actions() if a.op == "delete" and a.side == side)
        if n:
            out[side] = (n, total)
    return out
