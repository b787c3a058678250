"""Review: a manual sync's plan, decided row by row as in the terminal review.

One row per step: the CRM item on the left, the action between (an arrow pointing at the
side that is written), the groupware item on the right. Rows are chosen one by one (the
row's own choice) or several at once (tick them, then one button): include, exclude,
ignore until a change, ignore forever, and for a conflict the side that wins. Confirm
shows what will be written ("12 creates in CRM, 3 updates in groupware; 2 excluded") and
asks once more; then a job applies the plan, re-checked against both sides.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from crmsync.errors import ConfigError
from crmsync.server import service
from crmsync.server.service import PlanView
from crmsync.server.web import server
from crmsync.server.web.pages.common import back, page_session, posted, render
from crmsync.show import ARROWS, review_summary

router = APIRouter()

SKIPPED = ("exclude", "ignore-until-change", "ignore-forever")
CHOICE_LABEL = {"include": "Include", "exclude": "Exclude (skip this time)",
                "ignore-until-change": "Ignore until a change",
                "ignore-forever": "Ignore forever",
                "crm": "Keep the CRM's (CRM wins)",
                "groupware": "Keep the groupware's (groupware wins)",
                "both": "Keep both (each copied to the other side)"}
FILTERS = ("all", "create", "update", "delete", "conflict", "skip")


def code_of(action: dict[str, Any]) -> str:
    if action.get("failed"):
        return "failed"
    if action["op"] in ("create", "update", "delete"):
        return f"{action['op']}:{action['side']}"
    return action["op"]


def summary(plan: PlanView) -> str:
    """What confirming writes, with the rows' choices: the terminal review's words."""
    totals: dict[str, int] = defaultdict(int)
    chosen = []
    for step in plan.steps:
        choice = step["choice"]
        if choice in SKIPPED:
            chosen.append(choice)
            continue
        for action in step["actions"]:
            code = code_of(action)
            if action["op"] == "conflict" and choice == "both":
                # Each item is copied to the other side.
                totals["create:crm"] += 1
                totals["create:groupware"] += 1
                continue
            if action["op"] == "conflict" and choice in ("crm", "groupware"):
                # The winner's values are written to the other side.
                code = "update:" + ("groupware" if choice == "crm" else "crm")
            totals[code] += 1
    return review_summary(totals, chosen)


def _visible(step: dict[str, Any], show: str) -> bool:
    return show == "all" or any(a["op"] == show for a in step["actions"])


def _plan_page(request: Request, plan_id: int, status: int = 200,
               error: str | None = None, confirm: bool = False) -> HTMLResponse:
    session = page_session(request)
    plan = service.get_plan(server(request), session.user, plan_id)
    show = request.query_params.get("show", "all")
    show = show if show in FILTERS else "all"
    rows = [s for s in plan.steps if _visible(s, show)]
    return render(request, "plan.html", status, page="review", plan=plan, rows=rows,
                  show=show, filters=FILTERS, summary=summary(plan), arrows=ARROWS,
                  code_of=code_of, labels=CHOICE_LABEL, error=error, confirm=confirm,
                  poll=2)


@router.get("/review", response_class=HTMLResponse)
def reviews(request: Request) -> HTMLResponse:
    """The plans waiting for a review, and the latest ones decided."""
    session = page_session(request)
    srv = server(request)
    plans = service.list_plans(srv, session.user)
    return render(request, "review.html", page="review", plans=plans,
                  ignores=service.list_ignores(srv, session.user),
                  jobs=service.jobs_overview(srv, session.user))


@router.get("/review/{plan_id}", response_class=HTMLResponse)
def plan_page(request: Request, plan_id: int) -> HTMLResponse:
    return _plan_page(request, plan_id)


@router.post("/review/{plan_id}/choose")
async def choose(request: Request, plan_id: int) -> Response:
    """The toolbar's choice for the ticked rows, or (buttons "rows" and "confirm") each
    row's own; "confirm" then asks to apply."""
    form, session = await posted(request)
    srv = server(request)
    choice = str(form.get("choice") or "")
    try:
        if choice in ("rows", "confirm"):
            current = {s["key"]: s["choice"]
                       for s in service.get_plan(srv, session.user, plan_id).steps}
            by_choice: dict[str, list[str]] = defaultdict(list)
            for name, value in form.multi_items():
                key = name.removeprefix("row:")
                if name.startswith("row:") and current.get(key) not in (None, value):
                    by_choice[str(value)].append(key)
            for picked, keys in by_choice.items():
                service.choose(srv, session.user, plan_id, keys, picked)
        else:
            keys = [str(k) for k in form.getlist("keys")]
            if not keys:
                raise ConfigError("tick the rows to apply this choice to first")
            service.choose(srv, session.user, plan_id, keys, choice)
    except ConfigError as exc:
        return _plan_page(request, plan_id, 400, str(exc))
    if choice == "confirm":
        return back(f"/review/{plan_id}/confirm#confirm-h")
    show = str(form.get("show") or "all")
    return back(f"/review/{plan_id}" + (f"?show={show}" if show != "all" else ""))


@router.get("/review/{plan_id}/confirm", response_class=HTMLResponse)
def confirm_page(request: Request, plan_id: int) -> HTMLResponse:
    """The summary of what will be written: apply, or go back."""
    return _plan_page(request, plan_id, confirm=True)


@router.post("/review/{plan_id}/confirm")
async def confirm(request: Request, plan_id: int) -> Response:
    _, session = await posted(request)
    try:
        service.confirm_plan(server(request), session.user, plan_id)
    except ConfigError as exc:
        return _plan_page(request, plan_id, 400, str(exc))
    return back(f"/review/{plan_id}")


@router.post("/review/{plan_id}/discard")
async def discard(request: Request, plan_id: int) -> Response:
    _, session = await posted(request)
    service.discard_plan(server(request), session.user, plan_id)
    return back("/review")


@router.post("/ignores/remove")
async def unignore(request: Request) -> Response:
    form, session = await posted(request)
    service.remove_ignore(server(request), session.user, str(form.get("kind")),
                          str(form.get("side")), str(form.get("item_id")))
    return back("/review#ignored")
