"""Run a parsed SOQL query against the org and shape the result like the REST API.

Results come 2000 records per page; the rest waits behind ``nextRecordsUrl``
(``/services/data/vXX.X/query/01g...-2000``).
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_query.htm
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from crmsync.sandbox.db import parse_date, parse_datetime, to_id18, valid_id
from crmsync.sandbox.errors import ApiError, malformed_query
from crmsync.sandbox.records import public
from crmsync.sandbox.schema import OBJECT_BY_PREFIX, OBJECTS, RELATIONSHIPS, SObject, sobject
from crmsync.sandbox.soql import BoolOp, Condition, Query, parse

if TYPE_CHECKING:
    from crmsync.sandbox.state import State

API = "/services/data/v62.0"
PAGE_SIZE = 2000
_TEXT_TYPES = ("string", "textarea", "email", "phone", "picklist", "id", "reference")


def _invalid_field(name: str, obj: str) -> ApiError:
    return ApiError(400, "INVALID_FIELD",
                    f"No such column '{name}' on entity '{obj}'. If you are attempting to use "
                    "a custom field, be sure to append the '__c' after the custom field name.")


class _Resolver:
    """Field paths of one query (``Name``, ``Account.Name``) checked against the schema."""

    def __init__(self, state: State, obj: SObject) -> None:
        self.state, self.obj = state, obj

    def check(self, path: str) -> tuple[str, ...]:
        parts = path.split(".")
        if len(parts) == 1:
            f = self.obj.field(path)
            if f is None:
                raise _invalid_field(path, self.obj.name)
            return (f.name,)
        if len(parts) == 2:
            ref = RELATIONSHIPS[self.obj.name].get(parts[0].lower())
            if ref is None:
                raise ApiError(400, "INVALID_FIELD",
                               f"Didn't understand relationship '{parts[0]}' in field path.")
            targets = self.obj.fields[ref].references
            for target in targets:
                f = OBJECTS[target].field(parts[1])
                if f is not None:
                    return (ref, self.obj.fields[ref].relationship or "", f.name)
            raise _invalid_field(parts[1], targets[0])
        raise malformed_query(f"field path too deep: {path}")

    def value(self, record: dict[str, Any], path: tuple[str, ...]) -> Any:
        if len(path) == 1:
            return record.get(path[0])
        parent = self.parent(record, path[0])
        return parent.get(path[2]) if parent else None

    def parent(self, record: dict[str, Any], ref: str) -> dict[str, Any] | None:
        target_id = record.get(ref)
        if not target_id:
            return None
        found = self.state.org.get(target_id)
        return found[1] if found and found[2] is None else None


def _field_type(resolver: _Resolver, path: tuple[str, ...]) -> tuple[str, bool]:
    if len(path) == 1:
        f = resolver.obj.fields[path[0]]
    else:
        ref = resolver.obj.fields[path[0]]
        f = next(OBJECTS[t].field(path[2]) for t in ref.references
                 if OBJECTS[t].field(path[2]))  # type: ignore[misc]
    return f.type, f.filterable


def _typed(kind: str, value: Any) -> Any:
    """A record's stored value as a comparable Python value."""
    if value is None:
        return None
    if kind == "datetime":
        return parse_datetime(value)
    if kind == "date":
        return parse_date(value)
    if kind in ("id", "reference"):
        return value
    if kind in _TEXT_TYPES:
        return value.lower()
    return value


def _literal(kind: str, name: str, value: Any) -> Any:
    """Check that a literal suits the field (Salesforce refuses '2026-01-01' for a
    datetime, 5 for a string, ...) and make it comparable."""
    if value is None:
        return None
    ok = {
        "datetime": isinstance(value, datetime),
        "date": isinstance(value, date) and not isinstance(value, datetime),
        "boolean": isinstance(value, bool),
        "int": isinstance(value, int | float) and not isinstance(value, bool),
    }.get(kind, isinstance(value, str))
    if not ok:
        raise malformed_query(f"value of filter criterion for field '{name}' must be of type "
                              f"{kind} and should not be enclosed in quotes"
                              if isinstance(value, str) else
                              f"value of filter criterion for field '{name}' must be of type "
                              f"{kind}")
    if kind in ("id", "reference"):
        return to_id18(value) if valid_id(value) else value
    if kind in _TEXT_TYPES:
        return value.lower()
    return value


def _like(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out += re.escape(pattern[i + 1])
            i += 2
            continue
        out += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.compile(out, re.IGNORECASE | re.DOTALL)


def _compile(resolver: _Resolver, cond: Condition | BoolOp) -> Any:
    """A predicate record -> bool; checks field names and literal types up front."""
    if isinstance(cond, BoolOp):
        parts = [_compile(resolver, c) for c in cond.items]
        if cond.op == "not":
            return lambda r: not parts[0](r)
        if cond.op == "and":
            return lambda r: all(p(r) for p in parts)
        return lambda r: any(p(r) for p in parts)
    path = resolver.check(cond.field)
    kind, filterable = _field_type(resolver, path)
    if not filterable:
        raise ApiError(400, "INVALID_FIELD",
                       f"field '{path[-1]}' can not be filtered in a query call")
    if cond.op == "like":
        regex = _like(cond.value)
        return lambda r: (v := resolver.value(r, path)) is not None \
            and regex.fullmatch(str(v)) is not None
    if cond.op in ("in", "notin"):
        wanted = [_literal(kind, cond.field, v) for v in cond.value]
        inside = cond.op == "in"
        return lambda r: (_typed(kind, resolver.value(r, path)) in wanted) == inside
    literal = _literal(kind, cond.field, cond.value)
    op = cond.op

    def test(record: dict[str, Any]) -> bool:
        value = _typed(kind, resolver.value(record, path))
        if op == "=":
            return value == literal
        if op == "!=":
            return value != literal
        if value is None or literal is None:
            return False
        return {"<": value < literal, "<=": value <= literal, ">": value > literal,
                ">=": value >= literal}[op]

    return test


def _sort(resolver: _Resolver, rows: list[dict[str, Any]],
          order: list[tuple[str, bool, bool]]) -> list[dict[str, Any]]:
    for name, desc, nulls_last in reversed(order):
        path = resolver.check(name)
        kind, _ = _field_type(resolver, path)
        present = [r for r in rows if resolver.value(r, path) is not None]
        missing = [r for r in rows if resolver.value(r, path) is None]
        present.sort(key=lambda r: _typed(kind, resolver.value(r, path)), reverse=desc)
        rows = present + missing if nulls_last else missing + present
    return rows


def attributes(sobject_name: str, record_id: str) -> dict[str, str]:
    return {"type": sobject_name, "url": f"{API}/sobjects/{sobject_name}/{record_id}"}


def _shape(resolver: _Resolver, record: dict[str, Any], paths: list[tuple[str, ...]],
           children: list[tuple[Query, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"attributes": attributes(resolver.obj.name, record["Id"])}
    for path in paths:
        if len(path) == 1:
            out[path[0]] = record.get(path[0])
            continue
        parent = resolver.parent(record, path[0])
        rel = path[1]
        if parent is None:
            out[rel] = None
            continue
        target = OBJECT_BY_PREFIX[parent["Id"][:3]]
        node = out.get(rel) or {"attributes": attributes(target, parent["Id"])}
        node[path[2]] = parent.get(path[2])
        out[rel] = node
    for sub, run in children:
        found = run(record)
        out[sub.sobject] = None if not found else {
            "totalSize": len(found), "done": True, "records": found}
    return out


def _child(state: State, obj: SObject, sub: Query) -> Any:
    match = [(rel, child) for rel, child in obj.children.items()
             if rel.lower() == sub.sobject.lower()]
    if not match:
        raise ApiError(400, "INVALID_TYPE",
                       f"Didn't understand relationship '{sub.sobject}' in FROM part of "
                       "query call.")
    rel, (child_name, key) = match[0]
    sub.sobject = rel
    child_resolver = _Resolver(state, OBJECTS[child_name])
    paths = [child_resolver.check(f) for f in sub.fields]
    where = _compile(child_resolver, sub.where) if sub.where else None

    def run(parent: dict[str, Any]) -> list[dict[str, Any]]:
        rows = [r for r in state.org.records(child_name)
                if r.get(key) == parent["Id"] and (where is None or where(r))]
        rows = _sort(child_resolver, rows, sub.order_by)[sub.offset:]
        if sub.limit is not None:
            rows = rows[:sub.limit]
        return [_shape(child_resolver, r, paths, []) for r in rows]

    return run


def run_query(state: State, text: str, include_deleted: bool = False) -> dict[str, Any]:
    query = parse(text)
    obj = sobject(query.sobject)
    if obj is None:
        raise ApiError(400, "INVALID_TYPE",
                       f"sObject type '{query.sobject}' is not supported. If you are "
                       "attempting to use a custom object, be sure to append the '__c' "
                       "after the entity name.")
    resolver = _Resolver(state, obj)
    paths = [resolver.check(f) for f in query.fields]
    children = [(sub, _child(state, obj, sub)) for sub in query.subqueries]
    where = _compile(resolver, query.where) if query.where else None
    narrow = _narrowing(query.where)
    stored = state.org.records_with(obj.name, narrow[0], narrow[1], include_deleted) \
        if narrow else state.org.records(obj.name, include_deleted)
    rows = [public(r) for r in stored]
    rows = [r for r in rows if where is None or where(r)]
    if query.offset > 2000:
        raise ApiError(400, "NUMBER_OUTSIDE_VALID_RANGE",
                       "Maximum SOQL offset allowed is 2000")
    rows = _sort(resolver, rows, query.order_by)[query.offset:]
    if query.limit is not None:
        rows = rows[:query.limit]
    if query.count:
        return {"totalSize": len(rows), "done": True, "records": []}
    shaped = [_shape(resolver, r, paths, children) for r in rows]
    return page(state, shaped, 0)


def _narrowing(where: Condition | BoolOp | None) -> tuple[str, list[str]] | None:
    """An ``Id``/``ActivityRecurrence2Id`` ``=``/``IN`` condition every row must meet, as
    (field, values): the rows worth reading (the whole WHERE still decides)."""
    conditions = [where] if isinstance(where, Condition) else \
        where.items if isinstance(where, BoolOp) and where.op == "and" else []
    for c in conditions:
        name = {"id": "Id", "activityrecurrence2id": "ActivityRecurrence2Id"}.get(
            c.field.lower()) if isinstance(c, Condition) else None
        if name and c.op in ("=", "in"):
            values = c.value if c.op == "in" else [c.value]
            if all(isinstance(v, str) for v in values):
                return name, [to_id18(v) if valid_id(v) else v for v in values]
    return None


def page(state: State, rows: list[dict[str, Any]], start: int) -> dict[str, Any]:
    """One page of a result; keeps the rest behind a query locator."""
    result: dict[str, Any] = {"totalSize": len(rows), "done": True,
                              "records": rows[start:start + PAGE_SIZE]}
    if start + PAGE_SIZE < len(rows):
        locator = state.org.new_id_with_prefix("01g")
        state.cursors[locator] = (rows, start + PAGE_SIZE)
        result["done"] = False
        result["nextRecordsUrl"] = f"{API}/query/{locator}-{start + PAGE_SIZE}"
    return result


def next_page(state: State, locator: str) -> dict[str, Any]:
    key, _, offset = locator.partition("-")
    cursor = state.cursors.get(key)
    if cursor is None or not offset.isdigit() or int(offset) != cursor[1]:
        raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    del state.cursors[key]
    return page(state, cursor[0], cursor[1])
