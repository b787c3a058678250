"""The sandbox's own control API under /_sandbox/ (not Graph): for tests and the demo.

    POST /_sandbox/faults        {"path_regex", "method", "status", "times"[, "headers",
                                 "body", "after"]}: answer matching requests (also requests
                                 inside a $batch) with ``status``; a 429/503 without a body
                                 gets Graph's error body. "after": do it, then lose the answer.
    POST /_sandbox/reset         {"items": false}: drop faults; with "items" also every
                                 event, contact, task, delta state and logged mail
    POST /_sandbox/expire-deltas every delta/skip token now answers 410 Gone
    POST /_sandbox/expire-tokens every access token now answers 401
    POST /_sandbox/device/approve {"user_code"}: the user approves a device-code login
    POST /_sandbox/seed/{mailbox}/events  an event stored as given (a meeting someone else
                                 organizes, say): no mail, read-only fields kept
    GET  /_sandbox/mail          the messages Exchange would have sent
    GET  /_sandbox/stats         {"requests", "batches", "subrequests", "throttled"}
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from crmsync.graphsandbox.resources import Mailboxes

router = APIRouter(prefix="/_sandbox")


@dataclass
class Fault:
    path_regex: str
    method: str | None
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    after: bool = False


@dataclass
class Controls:
    faults: list[Fault] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests", "batches", "subrequests", "throttled"), 0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and (fault.method in (None, method)) \
                        and re.search(fault.path_regex, path):
                    fault.times -= 1
                    if fault.status in (429, 503):
                        self.stats["throttled"] += 1
                    return fault
        return None

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.stats[name] += n


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@router.post("/faults")
async def faults(request: Request) -> JSONResponse:
    body = await _json(request)
    if "status" not in body:
        return JSONResponse({"error": "a fault needs a status"}, status_code=400)
    controls: Controls = request.app.state.controls
    with controls.lock:
        controls.faults.append(Fault(
            body.get("path_regex", ""), (body.get("method") or "").upper() or None,
            int(body["status"]), int(body.get("times", 1)),
            {str(k): str(v) for k, v in (body.get("headers") or {}).items()},
            body.get("body"), bool(body.get("after"))))
    return JSONResponse({"ok": True})


@router.post("/reset")
async def reset(request: Request) -> JSONResponse:
    body = await _json(request)
    controls: Controls = request.app.state.controls
    with controls.lock:
        controls.faults.clear()
        for key in controls.stats:
            controls.stats[key] = 0
    if body.get("items"):
        request.app.state.boxes.store.wipe()
    return JSONResponse({"ok": True})


@router.post("/expire-deltas")
async def expire_deltas(request: Request) -> JSONResponse:
    return JSONResponse({"expired": request.app.state.boxes.store.expire_deltas()})


@router.post("/single-use-refresh")
async def single_use_refresh(request: Request) -> JSONResponse:
    """Redeemed refresh tokens stop working from now on (body: {"on": bool})."""
    request.app.state.identity.single_use_refresh = bool((await _json(request)).get("on", True))
    return JSONResponse({"ok": True})


@router.post("/expire-tokens")
async def expire_tokens(request: Request) -> JSONResponse:
    request.app.state.identity.expire_all()
    return JSONResponse({"ok": True})


@router.post("/device/approve")
async def approve(request: Request) -> JSONResponse:
    body = await _json(request)
    ok = request.app.state.identity.approve(str(body.get("user_code") or ""))
    return JSONResponse({"ok": ok}, status_code=200 if ok else 404)


@router.post("/seed/{mailbox}/events")
async def seed_event(mailbox: str, request: Request) -> JSONResponse:
    boxes: Mailboxes = request.app.state.boxes
    body = await _json(request)
    boxes.ensure(mailbox)
    cal = boxes.calendar(mailbox, body.pop("calendarId", None))
    body.setdefault("type", "seriesMaster" if body.get("recurrence") else "singleInstance")
    body.setdefault("iCalUId", "seeded-" + str(len(boxes.store.children(mailbox, "event", cal))))
    body.setdefault("originalStartTimeZone", (body.get("start") or {}).get("timeZone", "UTC"))
    body.setdefault("x_cancelled", [])
    saved = boxes.store.put(mailbox, "event", cal, body)
    return JSONResponse({"id": saved["id"]}, status_code=201)


@router.get("/mail")
async def mail(request: Request) -> JSONResponse:
    return JSONResponse({"value": request.app.state.boxes.store.mail()})


@router.get("/stats")
async def stats(request: Request) -> JSONResponse:
    controls: Controls = request.app.state.controls
    with controls.lock:
        return JSONResponse(dict(controls.stats))
