"""Create, update and delete one record the way Salesforce checks and fills it in.

Checks, in Salesforce's order of surprise: unknown fields (INVALID_FIELD), read-only fields
(INVALID_FIELD_FOR_INSERT_UPDATE), types (JSON_PARSER_ERROR for the whole call), lengths
(STRING_TOO_LONG, counted in UTF-16 units like Salesforce's Java strings), restricted
picklists, references, required fields, then the org's validation rules
(FIELD_CUSTOM_VALIDATION_EXCEPTION). Derived fields (Event times and dates, Task IsClosed,
Contact Name) are filled in the way the Object Reference describes them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crmsync.sandbox import recurrence
from crmsync.sandbox.db import (
    format_datetime,
    parse_date,
    parse_datetime,
    to_id18,
    valid_id,
)
from crmsync.sandbox.errors import ApiError, RecordError
from crmsync.sandbox.schema import (
    CLOSED_TASK_STATUS,
    KEY_PREFIXES,
    OBJECT_BY_PREFIX,
    OBJECTS,
    REQUIRED,
    Field,
    SObject,
)

if TYPE_CHECKING:
    from crmsync.sandbox.state import State

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EVENT_MINUTES = 14 * 24 * 60  # "an event can't last longer than 14 days"


def public(data: dict[str, Any]) -> dict[str, Any]:
    """The record without the sandbox's own bookkeeping keys (they start with ``_``)."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _coerce(f: Field, value: Any) -> Any:
    """The stored form of a JSON value, or ApiError(JSON_PARSER_ERROR) like Salesforce."""
    if value is None:
        return None
    try:
        if f.type == "boolean":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if f.type == "int":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError
            return int(value)
        if f.type == "datetime":
            return format_datetime(parse_datetime(str(value)))
        if f.type == "date":
            return parse_date(str(value)).isoformat()
        if isinstance(value, bool | dict | list):
            raise ValueError
        return str(value)
    except ValueError:
        raise ApiError(400, "JSON_PARSER_ERROR",
                       f"Cannot deserialize instance of {f.type} from value {value!r} "
                       f"for field {f.name}") from None


def _check_values(state: State, obj: SObject, values: dict[str, Any],
                  creating: bool) -> dict[str, Any]:
    """Canonical field names -> stored values, or RecordError."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "attributes":
            continue
        f = obj.field(name)
        if f is None:
            raise RecordError("INVALID_FIELD",
                              f"No such column '{name}' on sobject of type {obj.name}", [name])
        if not (f.createable if creating else f.updateable):
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {f.name}. Please check the security "
                "settings of this field and verify that it is read/write for your user "
                "profile or permission set on the customer setup screen.", [f.name])
        out[f.name] = _coerce(f, value)
    for name, value in out.items():
        f = obj.fields[name]
        if value is None:
            if not f.nillable and f.type != "boolean":
                raise RecordError("REQUIRED_FIELD_MISSING",
                                  f"Required fields are missing: [{name}]", [name])
            continue
        if f.type == "boolean":
            continue
        if f.length and isinstance(value, str) and f.type in (
                "string", "textarea", "email", "phone", "picklist") \
                and _utf16_len(value) > f.length:
            raise RecordError("STRING_TOO_LONG",
                              f"{name}: data value too large: {value[:f.length + 10]}"
                              f" (max length={f.length})", [name])
        if f.type == "email" and not _EMAIL.match(value):
            raise RecordError("INVALID_EMAIL_ADDRESS",
                              f"{name}: invalid email address: {value}", [name])
        if f.type == "picklist" and f.restricted and value not in f.picklist:
            raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{name}: bad value for restricted picklist field: {value}",
                              [name])
        if f.type == "reference":
            out[name] = _check_reference(state, f, value)
    return out


def _check_reference(state: State, f: Field, value: str) -> str:
    if not valid_id(value):
        raise RecordError("MALFORMED_ID", f"{f.name}: id value of incorrect type: {value}",
                          [f.name])
    target = OBJECT_BY_PREFIX.get(value[:3])
    if target not in f.references:
        raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                          f"{f.name}: id value of incorrect type: {value}", [f.name])
    found = state.org.get(value)
    if found is None or found[2] is not None:
        raise RecordError("INVALID_CROSS_REFERENCE_KEY",
                          f"invalid cross reference id: {value}", [f.name])
    return to_id18(value)


def _derive_event(data: dict[str, Any], given: set[str], before: dict[str, Any]) -> None:
    """Keep an Event's start/end, dates and duration consistent (Object Reference)."""
    if data.get("IsAllDayEvent") and "ActivityDate" in given and "EndDate" not in given \
            and before.get("IsAllDayEvent") and before.get("EndDate"):
        span = parse_date(before["EndDate"]) - parse_date(before["ActivityDate"])
        data["EndDate"] = (parse_date(data["ActivityDate"]) + span).isoformat()  # moved
        given = given | {"EndDate"}
    if data.get("IsAllDayEvent"):
        day = data.get("ActivityDate")
        if day is None and data.get("StartDateTime"):
            day = data["StartDateTime"][:10]
        if day is None:
            raise RecordError("REQUIRED_FIELD_MISSING",
                              "Required fields are missing: [ActivityDate]", ["ActivityDate"])
        end_day = data.get("EndDate") if "EndDate" in given or data.get("EndDate") else day
        if "ActivityDate" in given and "EndDate" not in given and "DurationInMinutes" in given:
            days = max(1, (data.get("DurationInMinutes") or 1440) // 1440)
            end_day = (parse_date(day) + timedelta(days=days - 1)).isoformat()
        end_day = end_day or day
        if end_day < day:
            raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                              "EndDate: End Date can't be earlier than Start Date", ["EndDate"])
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        end = datetime.fromisoformat(end_day).replace(tzinfo=UTC)
        data.update(ActivityDate=day, EndDate=end_day, StartDateTime=format_datetime(start),
                    ActivityDateTime=format_datetime(start),
                    EndDateTime=format_datetime(end),
                    DurationInMinutes=((end - start).days + 1) * 1440)
        return
    start_text = data.get("StartDateTime")
    if "ActivityDateTime" in given and "StartDateTime" not in given:
        start_text = data.get("ActivityDateTime")
    start_text = start_text or data.get("ActivityDateTime")
    if not start_text:
        raise RecordError("REQUIRED_FIELD_MISSING",
                          "Required fields are missing: [StartDateTime]", ["StartDateTime"])
    start = parse_datetime(start_text)
    if "EndDateTime" in given and data.get("EndDateTime"):
        end = parse_datetime(data["EndDateTime"])
    elif "DurationInMinutes" in given and data.get("DurationInMinutes") is not None:
        end = start + timedelta(minutes=data["DurationInMinutes"])
    elif data.get("EndDateTime") and data.get("DurationInMinutes") is not None:
        end = start + timedelta(minutes=data["DurationInMinutes"])  # moved: keep duration
    else:
        raise RecordError("REQUIRED_FIELD_MISSING",
                          "Required fields are missing: [DurationInMinutes]",
                          ["DurationInMinutes"])
    minutes = int((end - start).total_seconds() // 60)
    if minutes < 0:
        raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                          "EndDateTime: End Date/Time can't be earlier than Start Date/Time",
                          ["EndDateTime"])
    if minutes > MAX_EVENT_MINUTES:
        raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                          "Event duration can't exceed 14 days", ["DurationInMinutes"])
    data.update(StartDateTime=format_datetime(start), ActivityDateTime=format_datetime(start),
                EndDateTime=format_datetime(end), DurationInMinutes=minutes,
                ActivityDate=start.date().isoformat(), EndDate=end.date().isoformat())


def _derive(state: State, obj: SObject, data: dict[str, Any], given: set[str],
            now: str, before: dict[str, Any] | None = None) -> None:
    if obj.name == "Event":
        _derive_event(data, given, before or {})
    elif obj.name == "Task":
        closed = data.get("Status") in CLOSED_TASK_STATUS
        if closed and not data.get("IsClosed"):
            data["CompletedDateTime"] = now
        elif not closed:
            data["CompletedDateTime"] = None
        data["IsClosed"] = closed
    elif obj.name in ("Contact", "Lead"):
        data["Name"] = " ".join(p for p in (data.get("FirstName"), data.get("LastName")) if p)


def _check_required(obj: SObject, data: dict[str, Any]) -> None:
    missing = [f for f in REQUIRED.get(obj.name, ()) if data.get(f) in (None, "")]
    if missing:
        raise RecordError("REQUIRED_FIELD_MISSING",
                          f"Required fields are missing: [{', '.join(missing)}]", missing)


def _defaults(state: State, obj: SObject) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in obj.fields.values():
        if f.type == "boolean":
            data[f.name] = False
        elif f.type == "picklist" and f.default:
            data[f.name] = f.default
        else:
            data[f.name] = None
    if "OwnerId" in obj.fields:
        data["OwnerId"] = state.user_id
    return data


def create(state: State, sobject: str, values: dict[str, Any]) -> str:
    """Insert one record and return its Id; RecordError when Salesforce would refuse it."""
    obj = OBJECTS[sobject]
    if not obj.createable:
        raise RecordError("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                          f"{sobject}: the sandbox serves this object read-only")
    if "Id" in values or "id" in values:
        raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                          "cannot specify Id in an insert call", ["Id"])
    checked = _check_values(state, obj, values, creating=True)
    state.controls.take_record_error("create", sobject)
    now = state.org.next_stamp()
    data = _defaults(state, obj) | checked
    _derive(state, obj, data, set(checked), now)
    _check_required(obj, data)
    state.controls.validate(sobject, data)
    data.update(Id=state.org.new_id(sobject), IsDeleted=False, CreatedDate=now,
                LastModifiedDate=now, SystemModstamp=now)
    if sobject == "Event" and data.get("IsRecurrence2"):
        recurrence.create_series(state, data)
    else:
        state.org.insert(sobject, data)
    if sobject == "EventRelation" and data.get("IsParent"):
        _promote_who(state, data)
    return data["Id"]


def _promote_who(state: State, relation: dict[str, Any]) -> None:
    """Shared Activities: a Contact or Lead related to an event (IsParent) becomes its
    WhoId when it has none (EventRelation in the object reference)."""
    if relation["RelationId"][:3] not in (KEY_PREFIXES["Contact"], KEY_PREFIXES["Lead"]):
        return
    found = state.org.get(relation["EventId"])
    if found is None or found[2] is not None or found[1].get("WhoId"):
        return
    event = dict(found[1])
    stamp = state.org.next_stamp()
    event.update(WhoId=relation["RelationId"], LastModifiedDate=stamp, SystemModstamp=stamp)
    state.org.save(event)


def find(state: State, record_id: Any, sobject: str | None = None) -> tuple[str, dict]:
    """(object, fields) of a live record; RecordError(MALFORMED_ID / NOT_FOUND /
    ENTITY_IS_DELETED) otherwise."""
    if not isinstance(record_id, str) or not valid_id(record_id) \
            or (sobject is not None and record_id[:3] != KEY_PREFIXES[sobject]) \
            or record_id[:3] not in OBJECT_BY_PREFIX:
        label = f"{sobject} ID" if sobject else "Id"
        raise RecordError("MALFORMED_ID", f"{label}: id value of incorrect type: {record_id}",
                          ["Id"])
    found = state.org.get(record_id)
    if found is None:
        raise RecordError("NOT_FOUND", "The requested resource does not exist", status=404)
    if found[2] is not None:
        raise RecordError("ENTITY_IS_DELETED", "entity is deleted", [], status=404)
    return found[0], found[1]


def update(state: State, record_id: Any, values: dict[str, Any],
           sobject: str | None = None) -> str:
    name, current = find(state, record_id, sobject)
    obj = OBJECTS[name]
    if not obj.createable:
        raise RecordError("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
                          f"{name}: the sandbox serves this object read-only")
    values = {k: v for k, v in values.items() if k not in ("Id", "id", "attributes")}
    checked = _check_values(state, obj, values, creating=False)
    state.controls.take_record_error("update", name)
    now = state.org.next_stamp()
    data = current | checked
    _derive(state, obj, data, set(checked), now, current)
    _check_required(obj, data)
    state.controls.validate(name, data)
    data.update(LastModifiedDate=now, SystemModstamp=now)
    if name == "Event" and recurrence.in_series(current):
        recurrence.update(state, current, data, set(checked))
    else:
        state.org.save(data)
    return data["Id"]


def delete(state: State, record_id: Any, sobject: str | None = None) -> str:
    name, current = find(state, record_id, sobject)
    if not OBJECTS[name].createable:
        raise RecordError("INSUFFICIENT_ACCESS_OR_READONLY",
                          "insufficient access rights on object id")
    state.controls.take_record_error("delete", name)
    if name == "Event" and recurrence.in_series(current):
        recurrence.delete(state, current)
    else:
        state.org.mark_deleted(current["Id"])
    if name == "Event":  # invitee rows go with their event
        for rel in state.org.records("EventRelation"):
            if rel["EventId"] == current["Id"]:
                state.org.mark_deleted(rel["Id"])
    return current["Id"]
