"""The sandbox's own control API under /_sandbox/ (not Salesforce): for tests and the demo.

    POST /_sandbox/faults      {"path_regex", "method", "status", "body", "times"[, "headers",
                               "after"]} ("after": do the request, then answer with the
                               fault, as when an answer is lost on the way; "method" may
                               list several: "POST,PATCH"; "skip": let N matching requests
                               pass first; "hold": keep the answer until /release)
                               or {"record_error": {"errorCode", "times"[, "message",
                               "operation", "object", "fields"]}}
    POST /_sandbox/release     let held requests answer (stats' "holding" counts them)
    POST /_sandbox/limits      {"daily": N, "used": M}
    POST /_sandbox/clock       {"offset_days": D}
    POST /_sandbox/validation  {"object", "field", "contains", "message"}
    POST /_sandbox/expire-tokens
    POST /_sandbox/reset       {"records": false} - drop faults, rules and clock offset;
                               usage back to 0 of the configured daily limit; with
                               "records": true also every record but the user
    GET  /_sandbox/stats       {"api_calls", "api_used", "daily_limit", "now", ...}
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from crmsync.sandbox.db import format_datetime
from crmsync.sandbox.schema import sobject
from crmsync.sandbox.state import (
    RECORD_ERROR_MESSAGES,
    Fault,
    InjectedRecordError,
    State,
    ValidationRule,
)

router = APIRouter(prefix="/_sandbox")


def _state(request: Request) -> State:
    return request.app.state.sandbox


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


@router.post("/faults")
async def faults(request: Request) -> JSONResponse:
    body, controls = await _body(request), _state(request).controls
    if "record_error" in body:
        spec = body["record_error"]
        code = spec.get("errorCode")
        if not code:
            return _bad("record_error needs an errorCode")
        with controls.lock:
            controls.record_errors.append(InjectedRecordError(
                code, spec.get("message") or RECORD_ERROR_MESSAGES.get(code, code),
                int(spec.get("times", 1)), spec.get("operation"), spec.get("object"),
                list(spec.get("fields") or [])))
        return JSONResponse({"ok": True})
    if "status" not in body:
        return _bad("a fault needs a status (or a record_error)")
    with controls.lock:
        controls.faults.append(Fault(
            body.get("path_regex", ""), (body.get("method") or "").upper() or None,
            int(body["status"]), body.get("body", ""), int(body.get("times", 1)),
            {str(k): str(v) for k, v in (body.get("headers") or {}).items()},
            bool(body.get("after")), bool(body.get("hold")), int(body.get("skip", 0))))
        if body.get("hold"):
            controls.released.clear()
    return JSONResponse({"ok": True})


@router.post("/release")
async def release(request: Request) -> JSONResponse:
    _state(request).controls.released.set()
    return JSONResponse({"ok": True})


@router.post("/limits")
async def limits(request: Request) -> JSONResponse:
    body, org = await _body(request), _state(request).org
    with org.lock:
        if "daily" in body:
            org.daily_limit = int(body["daily"])
        if "used" in body:
            org.api_used = int(body["used"])
            org.set_meta("api_window", format_datetime(org.now()))
    return JSONResponse({"daily": org.daily_limit, "used": org.api_used})


@router.post("/clock")
async def clock(request: Request) -> JSONResponse:
    body, state = await _body(request), _state(request)
    state.org.clock_offset = timedelta(days=float(body.get("offset_days", 0)))
    return JSONResponse(state.stats())


@router.post("/validation")
async def validation(request: Request) -> JSONResponse:
    body, state = await _body(request), _state(request)
    obj = sobject(str(body.get("object", "")))
    if obj is None or obj.field(str(body.get("field", ""))) is None or not body.get("contains"):
        return _bad("a validation rule needs a known object, field and 'contains'")
    field = obj.field(body["field"])
    assert field is not None
    state.controls.rules.append(ValidationRule(
        obj.name, field.name, str(body["contains"]),
        str(body.get("message") or f"{field.name} may not contain {body['contains']}")))
    return JSONResponse({"ok": True})


@router.post("/expire-tokens")
async def expire_tokens(request: Request) -> JSONResponse:
    _state(request).org.revoke(kind="access")
    return JSONResponse({"ok": True})


@router.post("/reset")
async def reset(request: Request) -> JSONResponse:
    body, state = await _body(request), _state(request)
    state.controls.reset()
    state.org.clock_offset = timedelta(0)
    state.org.api_used = 0
    state.org.daily_limit = state.org.configured_daily_limit
    state.org.set_meta("api_window", format_datetime(state.org.now()))
    if body.get("records"):
        state.org.clear_records()
    return JSONResponse(state.stats())


@router.get("/stats")
async def stats(request: Request) -> JSONResponse:
    return JSONResponse(_state(request).stats())
