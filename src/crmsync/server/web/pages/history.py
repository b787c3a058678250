"""Run history: every run of the user's objects, and each run's report (counts per
object, each item skipped, failed or in conflict with its reason). A run that failed
because a connection was refused says so and links to the reconnect page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from crmsync.server import service
from crmsync.server.web import server
from crmsync.server.web.pages.common import page_session, render
from crmsync.show import REVIEW_WORDS, parts_of

router = APIRouter()


def counts_text(counts: dict[str, Any]) -> str:
    """ "calendar: 2 creates in CRM, 1 update in groupware" for a run's counts."""
    parts = []
    for kind, by_code in counts.items():
        if isinstance(by_code, dict):
            words = parts_of({k: v for k, v in by_code.items() if isinstance(v, int)},
                             REVIEW_WORDS, leave_out=("link",))
            parts.append(f"{kind}: {', '.join(words) or 'nothing to do'}")
    return "; ".join(parts)


@router.get("/history", response_class=HTMLResponse)
def history(request: Request) -> HTMLResponse:
    session = page_session(request)
    runs = service.list_runs(server(request), session.user, 100)
    return render(request, "history.html", page="history", runs=runs,
                  counts_text=counts_text)


@router.get("/history/{run_id}", response_class=HTMLResponse)
def report(request: Request, run_id: int) -> HTMLResponse:
    session = page_session(request)
    srv = server(request)
    run = service.get_run(srv, session.user, run_id)
    # A failed run while a connection stands refused: that is the likely cause.
    refused = [c for c in service.connections(srv, session.user)
               if c.needs_reconnect and run.get("error")] if run["status"] != "ok" else []
    return render(request, "run.html", page="history", run=run, refused=refused,
                  counts_text=counts_text)
