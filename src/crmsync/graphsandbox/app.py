"""The FastAPI app: Graph v1.0 under /v1.0, the identity platform, the control API.

Every Graph call needs a bearer token from the token endpoint (401
``InvalidAuthenticationToken`` otherwise). Errors have Graph's shape, ``{"error":
{"code", "message", "innerError": {"date", "request-id", "client-request-id"}}}``;
throttling is ``429`` (or ``503``) with ``Retry-After``, as Graph answers.
https://learn.microsoft.com/en-us/graph/errors
https://learn.microsoft.com/en-us/graph/throttling

JSON batching (``POST /v1.0/$batch``): at most 20 requests, each answered on its own
(a throttled one gets its own 429 and Retry-After inside the batch answer).
https://learn.microsoft.com/en-us/graph/json-batching
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from crmsync.graphsandbox import control, oauth
from crmsync.graphsandbox.control import Controls
from crmsync.graphsandbox.oauth import Identity
from crmsync.graphsandbox.resources import Answer, Call, GraphError, Mailboxes, Principal, handle

BATCH_LIMIT = 20
_STATUS_CODES = {429: "TooManyRequests", 503: "ServiceUnavailable", 500: "InternalServerError",
                 504: "GatewayTimeout", 401: "InvalidAuthenticationToken"}


def error_body(status: int, code: str, message: str, request_id: str | None = None
               ) -> dict[str, Any]:
    rid = request_id or str(uuid.uuid4())
    return {"error": {"code": code, "message": message, "innerError": {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": rid,
        "client-request-id": rid}}}


def _fault_answer(fault: control.Fault) -> Answer:
    body = fault.body
    if body is None:
        code = _STATUS_CODES.get(fault.status, "UnknownError")
        body = error_body(fault.status, code, "Application is over its MailboxConcurrency "
                          "limit." if fault.status == 429 else f"Injected {fault.status}.")
    return Answer(fault.status, body, dict(fault.headers))


def _run(app: FastAPI, call: Call) -> Answer:
    """One Graph request, with faults, as the HTTP route or a $batch runs it."""
    controls: Controls = app.state.controls
    fault = controls.take(call.method, "/v1.0" + call.path)
    if fault is not None and not fault.after:
        return _fault_answer(fault)
    try:
        answer = handle(app.state.boxes, call)
    except GraphError as exc:
        answer = Answer(exc.status, error_body(exc.status, exc.code, exc.message), exc.headers)
    if fault is not None:
        return _fault_answer(fault)
    return answer


def _response(answer: Answer) -> Response:
    if answer.body is None:
        return Response(status_code=answer.status, headers=answer.headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def create_app(boxes: Mailboxes, identity: Identity) -> FastAPI:
    app = FastAPI(title="crmsync Graph sandbox", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.boxes = boxes
    app.state.identity = identity
    app.state.controls = Controls()
    app.include_router(control.router)
    app.include_router(oauth.router)

    def principal(request: Request) -> Principal | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return identity.principal(token.strip()) if scheme.lower() == "bearer" else None

    @app.api_route("/v1.0/{path:path}", methods=["GET", "POST", "PATCH", "DELETE", "PUT"])
    async def graph(path: str, request: Request) -> Response:
        app.state.controls.count("requests")
        who = principal(request)
        if who is None:
            return JSONResponse(error_body(401, "InvalidAuthenticationToken",
                                           "Access token is empty or has expired."),
                                status_code=401)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return JSONResponse(error_body(400, "BadRequest", "Unable to read JSON request "
                                           "payload."), status_code=400)
        base = str(request.base_url).rstrip("/") + "/v1.0"
        headers = {k.lower(): v for k, v in request.headers.items()}
        if path == "$batch" and request.method == "POST":
            return _batch(app, body, headers, who, base)
        call = Call(request.method, "/" + path, dict(request.query_params), headers, body,
                    who, base)
        return _response(_run(app, call))

    return app


def _batch(app: FastAPI, body: Any, headers: dict[str, str], who: Principal,
           base: str) -> Response:
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return JSONResponse(error_body(400, "BadRequest", "Invalid batch payload format."),
                            status_code=400)
    if len(requests) > BATCH_LIMIT:
        return JSONResponse(error_body(400, "BadRequest", "The number of batch requests "
                                       f"cannot exceed {BATCH_LIMIT}."), status_code=400)
    app.state.controls.count("batches")
    app.state.controls.count("subrequests", len(requests))
    responses = []
    for sub in requests:
        url = urlsplit(str(sub.get("url") or ""))
        sub_headers = {**{k: v for k, v in headers.items() if k == "prefer"},
                       **{str(k).lower(): str(v) for k, v in (sub.get("headers") or {}).items()}}
        call = Call(str(sub.get("method") or "GET").upper(), "/" + url.path.lstrip("/"),
                    dict(parse_qsl(url.query)), sub_headers, sub.get("body"), who, base)
        answer = _run(app, call)
        out: dict[str, Any] = {"id": sub.get("id"), "status": answer.status,
                               "headers": answer.headers}
        if answer.body is not None:
            out["body"] = answer.body
            out["headers"] = {**answer.headers, "Content-Type": "application/json"}
        responses.append(out)
    return JSONResponse({"responses": responses})
