"""The FastAPI app: Salesforce's REST data API (the subset crmsync uses) over the org.

Every call under /services/data is authenticated (401 INVALID_SESSION_ID), counted
against the daily allowance (403 REQUEST_LIMIT_EXCEEDED once used up) and answered with
``Sforce-Limit-Info: api-usage=USED/MAX``, USED counting this call.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm
The allowance is a rolling 24 hours, like Salesforce's: usage falls back to 0 once 24
hours (of the sandbox's clock) have passed since the window opened.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from crmsync.sandbox import collections, composite, control, oauth, records, replication
from crmsync.sandbox.db import format_datetime, parse_datetime
from crmsync.sandbox.errors import ApiError, RecordError
from crmsync.sandbox.query import API, attributes, next_page, run_query
from crmsync.sandbox.schema import OBJECTS, SObject, sobject
from crmsync.sandbox.state import State

DATA = "/services/data"
VERSION = "62.0"
RETENTION = timedelta(days=15)


def _limit_header(state: State) -> str:
    return f"api-usage={state.org.api_used}/{state.org.daily_limit}"


def _error(exc: ApiError, state: State | None = None) -> JSONResponse:
    headers = {"Sforce-Limit-Info": _limit_header(state)} if state else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "oauth") else ""


def _roll_window(state: State) -> None:
    org = state.org
    opened = org.meta("api_window")
    now = org.now()
    # A clock moved back (the control API) also opens a new window.
    if opened is None or not timedelta(0) <= now - parse_datetime(opened) < timedelta(hours=24):
        org.set_meta("api_window", format_datetime(now))
        org.api_used = 0


async def _hold(state: State) -> None:
    controls = state.controls
    controls.holding += 1
    try:
        while not controls.released.is_set():
            await asyncio.sleep(0.02)
    finally:
        controls.holding -= 1


def create_app(state: State) -> FastAPI:
    app = FastAPI(title="crmsync Salesforce sandbox", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.sandbox = state
    app.include_router(oauth.router)
    app.include_router(control.router)

    @app.middleware("http")
    async def gate(request: Request,
                   call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path.startswith("/_sandbox"):
            return await call_next(request)
        data_call = path.startswith(DATA)
        fault = state.controls.take_fault(request.method, path)
        if fault is not None:
            if fault.after:
                await call_next(request)
            if fault.hold:
                await _hold(state)
            body = fault.body if isinstance(fault.body, str | bytes) else json.dumps(fault.body)
            headers = dict(fault.headers)
            if data_call:
                headers["Sforce-Limit-Info"] = _limit_header(state)
            return Response(body, status_code=fault.status, headers=headers,
                            media_type="application/json")
        if not data_call or path.rstrip("/") == DATA:
            # The versions list needs no session and is not an API call (limits doc).
            return await call_next(request)
        if state.org.token_user(_bearer(request), "access") is None:
            return _error(ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid"),
                          state)
        if request.headers.get(composite.SUBREQUEST_HEADER) == composite.SUBREQUEST_MARK:
            return await call_next(request)  # part of a composite call, counted once
        with state.org.lock:
            _roll_window(state)
            if state.org.api_used >= state.org.daily_limit:
                return _error(ApiError(403, "REQUEST_LIMIT_EXCEEDED",
                                       "TotalRequests Limit exceeded."), state)
            state.org.api_used += 1
            state.org.api_calls += 1
            kind = _call_kind(request.method, path)
            state.org.api_calls_by[kind] = state.org.api_calls_by.get(kind, 0) + 1
            state.org.purge_deleted(format_datetime(state.org.now() - RETENTION))
        response = await call_next(request)
        response.headers["Sforce-Limit-Info"] = _limit_header(state)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc, state if request.url.path.startswith(DATA) else None)

    @app.exception_handler(RecordError)
    async def record_error(request: Request, exc: RecordError) -> Response:
        return _error(exc.api_error(), state)

    _data_routes(app, state)
    return app


def _object(name: str) -> SObject:
    obj = sobject(name)
    if obj is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return obj


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None


def _data_routes(app: FastAPI, state: State) -> None:  # noqa: C901 - one route table
    base = DATA + "/{version}"

    @app.get(DATA)
    async def versions() -> list[dict[str, str]]:
        return [{"label": "Winter '25", "url": f"{DATA}/v{VERSION}", "version": VERSION}]

    @app.get(base)
    async def resources(version: str) -> dict[str, str]:
        names = ("sobjects", "query", "queryAll", "composite", "limits")
        return {n: f"{DATA}/{version}/{n}" for n in names}

    @app.get(base + "/limits")
    async def limits(version: str) -> dict[str, Any]:
        org = state.org
        return {"DailyApiRequests": {"Max": org.daily_limit,
                                     "Remaining": max(0, org.daily_limit - org.api_used)}}

    @app.get(base + "/sobjects")
    async def global_describe(version: str) -> dict[str, Any]:
        return {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
            {"name": o.name, "label": o.name, "keyPrefix": o.key_prefix, "custom": False,
             "createable": o.createable, "queryable": True,
             "urls": {"sobject": f"{API}/sobjects/{o.name}"}} for o in OBJECTS.values()]}

    @app.get(base + "/sobjects/{name}/describe")
    async def describe(version: str, name: str) -> dict[str, Any]:
        return _object(name).describe()

    @app.get(base + "/sobjects/{name}")
    async def basic_info(version: str, name: str) -> dict[str, Any]:
        obj = _object(name)
        return {"objectDescribe": {k: v for k, v in obj.describe().items() if k != "fields"},
                "recentItems": []}

    @app.post(base + "/sobjects/{name}")
    async def create(version: str, name: str, request: Request) -> Response:
        obj = _object(name)
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Expected a JSON object")
        with state.org.savepoint():
            record_id = records.create(state, obj.name, body)
        return JSONResponse({"id": record_id, "success": True, "errors": []}, status_code=201)

    for kind in ("updated", "deleted"):
        for suffix in ("", "/"):
            app.add_api_route(base + "/sobjects/{name}/" + kind + suffix,
                              _replication_route(state, kind), methods=["GET"])

    @app.get(base + "/sobjects/{name}/{record_id}")
    async def retrieve(version: str, name: str, record_id: str,
                       fields: str | None = None) -> dict[str, Any]:
        obj = _object(name)
        try:
            _, data = records.find(state, record_id, obj.name)
        except RecordError as exc:
            if exc.code == "ENTITY_IS_DELETED":
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist") \
                    from None
            raise
        wanted = [f.strip() for f in fields.split(",")] if fields else list(obj.fields)
        out: dict[str, Any] = {"attributes": attributes(obj.name, data["Id"])}
        for name_ in wanted:
            f = obj.field(name_)
            if f is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name_}' on sobject "
                               f"of type {obj.name}")
            out[f.name] = data.get(f.name)
        return out

    @app.patch(base + "/sobjects/{name}/{record_id}")
    async def update(version: str, name: str, record_id: str, request: Request) -> Response:
        obj = _object(name)
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "Expected a JSON object")
        with state.org.savepoint():
            records.update(state, record_id, body, obj.name)
        return Response(status_code=204)

    @app.delete(base + "/sobjects/{name}/{record_id}")
    async def delete(version: str, name: str, record_id: str) -> Response:
        obj = _object(name)
        with state.org.savepoint():
            records.delete(state, record_id, obj.name)
        return Response(status_code=204)

    for resource, include_deleted in (("query", False), ("queryAll", True)):
        app.add_api_route(base + "/" + resource, _query_route(state, include_deleted),
                          methods=["GET"])
        app.add_api_route(base + "/" + resource + "/{locator}", _next_route(state),
                          methods=["GET"])

    collections.add_routes(app, state, base)
    composite.add_routes(app, state, base)


def _query_route(state: State, include_deleted: bool) -> Callable[..., Awaitable[Any]]:
    async def query(version: str, q: str | None = None) -> dict[str, Any]:
        if q is None:
            raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        with state.org.lock:
            return run_query(state, q, include_deleted)

    return query


def _next_route(state: State) -> Callable[..., Awaitable[Any]]:
    async def more(version: str, locator: str) -> dict[str, Any]:
        return next_page(state, locator)

    return more


def _replication_route(state: State, kind: str) -> Callable[..., Awaitable[Any]]:
    async def replicate(version: str, name: str, start: str | None = None,
                        end: str | None = None) -> dict[str, Any]:
        obj = _object(name)
        if kind == "updated":
            return replication.updated(state, obj.name, start, end)
        return replication.deleted(state, obj.name, start, end)

    return replicate


def _call_kind(method: str, path: str) -> str:
    """``POST composite/sobjects``, ``GET query``, ``GET sobjects/Event``: what a call did,
    for the ledger in /_sandbox/stats (record Ids and query locators left out)."""
    rest = path.split("/services/data/", 1)[-1].split("/")[1:]
    head = rest[:2] if rest[:1] == ["sobjects"] or rest[:1] == ["composite"] else rest[:1]
    return f"{method} {'/'.join(p for p in head if p)}"
