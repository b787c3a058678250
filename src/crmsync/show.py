"""Views of a plan and a report: JSON for scripts, tables for people.

A plan shown to a person reads left to right like the sync summary of the products we
replace: the CRM item, the action (an arrow pointing at the side that is written), the
groupware item.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from crmsync.plan import SIDE_NAME, Action, Plan, Step

ARROWS = {
    "create:crm": "◀ create",
    "create:groupware": "create ▶",
    "update:crm": "◀ update",
    "update:groupware": "update ▶",
    "delete:crm": "◀ delete",
    "delete:groupware": "delete ▶",
    "conflict": "conflict ?",
    "skip": "skip",
    "link": "link =",
    "failed": "failed !",
}
STYLE = {"create": "green", "update": "yellow", "delete": "red", "conflict": "magenta",
         "skip": "dim", "link": "cyan"}


def _item(item) -> dict[str, Any] | None:
    return None if item is None else {"id": item.id, "label": item.label()}


def action_dict(step: Step, action: Action) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": "failed" if action.failed else action.code,
        "crm": _item(step.crm),
        "groupware": _item(step.gw),
    }
    if action.changes:
        out["changes"] = action.changes
    if action.conflicts:
        out["conflicts"] = {k: {"crm": v[0], "groupware": v[1]}
                            for k, v in action.conflicts.items()}
    if action.reason:
        out["reason"] = action.reason
    if action.lossy:
        out["lossy"] = action.lossy
    if action.choices:
        out["choices"] = list(action.choices)
    return out


def plan_dict(plan: Plan) -> dict[str, Any]:
    return {
        "counts": plan.counts(),
        "mass_delete_guard": {side: {"deletes": n, "items": total}
                              for side, (n, total) in plan.guard.items()},
        "actions": [action_dict(s, a) for s, a in plan.actions()],
    }


def summary(plans: Sequence[Plan]) -> str:
    """ "12 create in CRM, 3 update in groupware, 1 conflict" """
    return ", ".join(count_parts(plans)) or "nothing to do"


def count_parts(plans: Sequence[Plan], words: dict[str, tuple[str, str]] | None = None,
                leave_out: Collection[str] = ()) -> list[str]:
    """The plans' action counts as ``["12 create in CRM", ...]``; ``words`` names an
    operation (singular, plural), ``leave_out`` are operations not counted."""
    totals: dict[str, int] = defaultdict(int)
    for plan in plans:
        for code, n in plan.counts().items():
            totals[code] += n
    return parts_of(totals, words, leave_out)


def parts_of(totals: Mapping[str, int], words: dict[str, tuple[str, str]] | None = None,
             leave_out: Collection[str] = ()) -> list[str]:
    """Action counts by code (``"create:crm"``, ``"conflict"``) as words, in code order;
    for plans at hand and for the server's saved plans alike."""
    parts = []
    for code, n in sorted(totals.items()):
        op, _, side = code.partition(":")
        if op in leave_out or not n:
            continue
        where = f" in {SIDE_NAME[side]}" if side in SIDE_NAME else ""
        parts.append(f"{n} {(words or {}).get(op, (op, op))[n != 1]}{where}")
    return parts


# How a review's summary names n actions of one kind: (one, several).
REVIEW_WORDS = {"create": ("create", "creates"), "update": ("update", "updates"),
                "delete": ("delete", "deletes"), "failed": ("failure", "failures"),
                "conflict": ("conflict left for later", "conflicts left for later")}


def review_summary(totals: Mapping[str, int], choices: Iterable[str]) -> str:
    """What a reviewed plan writes, with the rows left out by a choice:
    "12 creates in CRM, 3 updates in groupware, 1 delete in groupware; 2 excluded".

    ``totals``: action counts once the choices are applied; ``choices``: every row's
    choice (include and the conflict winners count as nothing here)."""
    parts = parts_of(totals, REVIEW_WORDS, leave_out=("skip", "link"))
    chosen: dict[str, int] = defaultdict(int)
    for choice in choices:
        chosen[choice] += 1
    notes = [f"{chosen[c]} {what}" for c, what in (
        ("exclude", "excluded"), ("ignore-until-change", "ignored until a change"),
        ("ignore-forever", "ignored forever")) if chosen[c]]
    text = ", ".join(parts) or "nothing to write"
    return f"{text}; {', '.join(notes)}" if notes else text


def plan_table(plan: Plan, limit: int = 100):
    from rich.table import Table

    table = Table(title=f"{plan.kind}: {summary([plan])}", title_justify="left",
                  show_lines=False, expand=False)
    table.add_column("CRM", overflow="fold", max_width=48)
    table.add_column("action", justify="center", no_wrap=True)
    table.add_column("groupware", overflow="fold", max_width=48)
    table.add_column("why", overflow="fold", style="dim", max_width=60)
    shown = 0
    for step, action in plan.actions():
        if shown == limit:
            table.add_row("…", f"{sum(1 for _ in plan.actions()) - limit} more", "…",
                          "use --json to see every row")
            break
        code = "failed" if action.failed else action.code
        style = "red" if action.failed else STYLE.get(action.op, "")
        why = action.reason
        if action.changes and not why:
            why = ", ".join(action.changes)
        if action.lossy:
            why = "; ".join(filter(None, [why, *action.lossy]))
        table.add_row(step.crm.label() if step.crm else "",
                      f"[{style}]{ARROWS.get(code, code)}[/]",
                      step.gw.label() if step.gw else "", why)
        shown += 1
    return table


def report_table(report) -> Any:
    from rich.table import Table

    table = Table(title=f"run {report.run_id}: {report.status}", title_justify="left")
    table.add_column("object")
    table.add_column("result")
    for kind, obj in report.objects.items():
        counts = ", ".join(f"{n} {code}" for code, n in sorted(obj.counts.items())) or "in step"
        table.add_row(kind, counts)
    notes = []
    for side in ("crm", "groupware"):
        api, requests = report.api.get(side, {}), report.requests.get(side)
        if "api_calls" in api:
            org = f" (the org has used {api['api_usage']} of {api['api_limit']} today)" \
                if api.get("api_limit") else ""
            notes.append(f"{SIDE_NAME[side]}: {api['api_calls']} API calls{org}")
        elif requests:
            notes.append(f"{SIDE_NAME[side]}: {requests} requests")
    if notes:
        table.caption = "; ".join(notes)
        table.caption_justify = "left"
    return table
