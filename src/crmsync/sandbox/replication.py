"""sObject Get Updated / Get Deleted: which records changed or went in a time span.

Salesforce ignores the seconds of start and end; ``latestDateCovered`` is where the next
call must start. Deleted records stay in the delete log for 15 days; asking for an earlier
start than ``earliestDateAvailable`` (the last purge, or the org's creation) fails with
INVALID_REPLICATION_DATE and the client must reconcile in full. Get Updated looks back at
most 30 days.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getupdated.htm
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_getdeleted_getdeletedresult.htm
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crmsync.sandbox.db import format_datetime, parse_datetime
from crmsync.sandbox.errors import ApiError

if TYPE_CHECKING:
    from crmsync.sandbox.state import State

DELETED_RETENTION = timedelta(days=15)
UPDATED_LOOKBACK = timedelta(days=30)


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_REPLICATION_DATE", message)


def _span(state: State, start: str | None, end: str | None) -> tuple[datetime, datetime]:
    if not start or not end:
        raise ApiError(400, "MISSING_ARGUMENT", "start and end are both required")
    try:
        first = parse_datetime(start).replace(second=0, microsecond=0)
        last = parse_datetime(end).replace(second=0, microsecond=0)
    except ValueError:
        raise ApiError(400, "INVALID_REPLICATION_DATE",
                       "start and end must be ISO 8601 date-times, e.g. "
                       "2026-11-22T10:00:00+00:00") from None
    if last <= first:
        raise _bad("endDate must chronologically follow startDate")
    now = state.org.now().replace(second=0, microsecond=0)
    return first, min(last, now)


def updated(state: State, sobject: str, start: str | None, end: str | None) -> dict[str, Any]:
    first, covered = _span(state, start, end)
    if first < state.org.now() - UPDATED_LOOKBACK:
        raise _bad("startDate cannot be more than 30 days ago")
    ids = state.org.updated_ids(sobject, format_datetime(first), format_datetime(covered))
    return {"ids": ids, "latestDateCovered": format_datetime(covered)}


def deleted(state: State, sobject: str, start: str | None, end: str | None) -> dict[str, Any]:
    first, covered = _span(state, start, end)
    org = state.org
    org.purge_deleted(format_datetime(org.now() - DELETED_RETENTION))
    earliest = org.meta("purged_until") or org.meta("created") or ""
    if first < org.now() - DELETED_RETENTION or format_datetime(first) < earliest:
        raise _bad(f"startDate cannot be before the earliest date available, {earliest}")
    rows = org.deleted_between(sobject, format_datetime(first), format_datetime(covered))
    return {"deletedRecords": [{"id": i, "deletedDate": d} for i, d in rows],
            "earliestDateAvailable": earliest, "latestDateCovered": format_datetime(covered)}
