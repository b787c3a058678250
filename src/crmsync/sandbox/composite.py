"""Composite: up to 25 subrequests in one call that counts as ONE API call.

Request ``{"allOrNone": false, "compositeRequest": [{"method", "url", "referenceId"[,
"body"]}]}``; answer ``{"compositeResponse": [{"body", "httpHeaders", "httpStatusCode",
"referenceId"}]}`` in order. A later subrequest may use an earlier result as
``@{referenceId.field}`` (``@{ref.records[0].Id}`` too). With ``allOrNone`` true the first
failure rolls back everything and every other subrequest answers PROCESSING_HALTED.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_composite.htm

Subrequests run through the app itself (in-process), marked so that they are not counted
again. While an allOrNone composite runs, other clients' writes are not isolated from it.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI, Request

from crmsync.sandbox.errors import ApiError

if TYPE_CHECKING:
    from crmsync.sandbox.state import State

MAX_SUBREQUESTS = 25
SUBREQUEST_HEADER = "x-sandbox-subrequest"
SUBREQUEST_MARK = secrets.token_hex(16)
_REFERENCE = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")
_HALTED = {"errorCode": "PROCESSING_HALTED",
           "message": "The transaction was rolled back since another operation in the same "
                      "transaction failed."}


def _resolve(text: str, results: dict[str, Any]) -> str:
    def lookup(match: re.Match[str]) -> str:
        ref, path = match.group(1), match.group(2)
        if ref not in results:
            raise ApiError(400, "PROCESSING_HALTED", f"Invalid reference specified. No value "
                           f"for {ref} found in the previous subrequests.")
        value: Any = results[ref]
        for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
            try:
                value = value[step[0]] if step[0] else value[int(step[1])]
            except (KeyError, IndexError, TypeError):
                raise ApiError(400, "PROCESSING_HALTED",
                               f"Invalid reference specified: {match.group(0)}") from None
        return str(value)

    return _REFERENCE.sub(lookup, text)


def add_routes(app: FastAPI, state: State, base: str) -> None:
    @app.post(base + "/composite")
    async def composite(version: str, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None
        subrequests = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(subrequests, list) or not subrequests:
            raise ApiError(400, "JSON_PARSER_ERROR", "compositeRequest is required")
        if len(subrequests) > MAX_SUBREQUESTS:
            raise ApiError(400, "LIMIT_EXCEEDED", "Limit Exceeded: compositeRequest contains "
                           f"more than {MAX_SUBREQUESTS} subrequests")
        all_or_none = bool(body.get("allOrNone", False))
        headers = {"Authorization": request.headers.get("authorization", ""),
                   SUBREQUEST_HEADER: SUBREQUEST_MARK}
        transport = httpx.ASGITransport(app=app)
        answers: list[dict[str, Any]] = []
        results: dict[str, Any] = {}
        with state.org.savepoint() as transaction:
            async with httpx.AsyncClient(transport=transport, base_url=state.url,
                                         headers=headers) as client:
                for sub in subrequests:
                    answers.append(await _one(client, sub, results,
                                              halted=all_or_none and transaction.rolled_back))
                    if all_or_none and answers[-1]["httpStatusCode"] >= 400 \
                            and not transaction.rolled_back:
                        transaction.rollback()
        if all_or_none and transaction.rolled_back:
            answers = [a if a["httpStatusCode"] >= 400 else
                       a | {"body": [_HALTED], "httpStatusCode": 400} for a in answers]
        return {"compositeResponse": answers}


async def _one(client: httpx.AsyncClient, sub: Any, results: dict[str, Any],
               halted: bool) -> dict[str, Any]:
    ref = sub.get("referenceId") if isinstance(sub, dict) else None
    answer: dict[str, Any] = {"body": [_HALTED], "httpHeaders": {}, "httpStatusCode": 400,
                              "referenceId": ref}
    if halted or not isinstance(sub, dict):
        return answer
    try:
        url = _resolve(str(sub.get("url", "")), results)
        content = None
        if sub.get("body") is not None:
            content = _resolve(json.dumps(sub["body"]), results).encode()
    except ApiError as exc:
        return answer | {"body": exc.body()}
    response = await client.request(str(sub.get("method", "GET")).upper(), url,
                                    content=content,
                                    headers={"Content-Type": "application/json"})
    body = response.json() if response.content else None
    if response.status_code < 400 and ref:
        results[ref] = body
    answer.update(body=body, httpStatusCode=response.status_code,
                  httpHeaders={k: v for k, v in response.headers.items()
                               if k.lower() in ("location", "last-modified")})
    return answer
