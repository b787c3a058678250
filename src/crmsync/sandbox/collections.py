"""sObject Collections: create, update and delete up to 200 records in one API call.

The answer is 200 with one SaveResult per record, in order: ``{"id", "success": true,
"errors": []}`` or ``{"success": false, "errors": [{"statusCode", "message", "fields"}]}``
(update and delete results keep the ``id`` they were given). With ``allOrNone`` true, one
failure rolls every record back and the others report ALL_OR_NONE_OPERATION_ROLLED_BACK.
More than 200 records fail the whole call with EXCEEDED_ID_LIMIT.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_create.htm
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_update.htm
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections_delete.htm
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from crmsync.sandbox import records
from crmsync.sandbox.errors import ApiError, RecordError
from crmsync.sandbox.schema import sobject

if TYPE_CHECKING:
    from crmsync.sandbox.state import State

MAX_RECORDS = 200
ROLLED_BACK = RecordError("ALL_OR_NONE_OPERATION_ROLLED_BACK",
                          "Record rolled back because not all records were valid and the "
                          "request was using AllOrNone header")


def _too_many() -> ApiError:
    return ApiError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than "
                    f"{MAX_RECORDS} records into this call")


def _run(state: State, items: list[Any], all_or_none: bool,
         action: Callable[[Any], str], given_id: Callable[[Any], str | None]
         ) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with state.org.savepoint() as outer:
        for item in items:
            try:
                with state.org.savepoint():
                    results.append({"id": action(item), "success": True, "errors": []})
            except RecordError as exc:
                failed: dict[str, Any] = {"success": False,
                                          "errors": [exc.collection_error()]}
                if given_id(item) is not None:
                    failed = {"id": given_id(item)} | failed
                results.append(failed)
        if all_or_none and not all(r["success"] for r in results):
            outer.rollback()
            results = [r if not r["success"] else
                       {"id": r["id"], "success": False,
                        "errors": [ROLLED_BACK.collection_error()]} for r in results]
    return results


def _type_of(record: Any) -> str:
    if not isinstance(record, dict):
        raise RecordError("JSON_PARSER_ERROR", "each record must be a JSON object")
    name = (record.get("attributes") or {}).get("type")
    obj = sobject(name) if isinstance(name, str) else None
    if obj is None:
        raise RecordError("INVALID_TYPE", "Must send a concrete entity type.")
    return obj.name


async def _body(request: Request) -> tuple[list[Any], bool]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise ApiError(400, "JSON_PARSER_ERROR", "Expected {\"records\": [...]}")
    if len(body["records"]) > MAX_RECORDS:
        raise _too_many()
    return body["records"], bool(body.get("allOrNone", False))


def add_routes(app: FastAPI, state: State, base: str) -> None:
    path = base + "/composite/sobjects"

    @app.post(path)
    async def create_many(version: str, request: Request) -> list[dict[str, Any]]:
        items, all_or_none = await _body(request)

        def create(record: Any) -> str:
            values = {k: v for k, v in record.items() if k != "attributes"} \
                if isinstance(record, dict) else {}
            return records.create(state, _type_of(record), values)

        return _run(state, items, all_or_none, create, lambda r: None)

    @app.patch(path)
    async def update_many(version: str, request: Request) -> list[dict[str, Any]]:
        items, all_or_none = await _body(request)

        def update(record: Any) -> str:
            name = _type_of(record)
            record_id = record.get("Id") or record.get("id")
            if not record_id:
                raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call")
            return records.update(state, record_id, record, name)

        return _run(state, items, all_or_none, update,
                    lambda r: r.get("Id") if isinstance(r, dict) else None)

    @app.delete(path)
    async def delete_many(version: str, ids: str = "",
                          allOrNone: str = "false") -> list[dict[str, Any]]:  # noqa: N803
        id_list = [i.strip() for i in ids.split(",") if i.strip()]
        if not id_list:
            raise ApiError(400, "MISSING_ARGUMENT", "ids is required")
        if len(id_list) > MAX_RECORDS:
            raise _too_many()
        return _run(state, id_list, allOrNone.lower() == "true",
                    lambda i: records.delete(state, i), lambda i: i)
