"""Lightning event series (``IsRecurrence2``): a series record plus one Event per occurrence.

What Salesforce documents, and what the sandbox therefore does:

* Creating an Event with ``IsRecurrence2 = true`` and an RFC 5545 RRULE in
  ``Recurrence2PatternText`` (API 52.0+) creates an event series.
  https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_event.htm
* The series record and *each occurrence* are separate Event records (Change Data Capture
  sends one change event for the series record and one per occurrence), and they share
  an ``ActivityRecurrence2Id``.
  https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_standard_objects_task_event_recurring.htm

The sandbox's model (written down in /work/notes/sf-contract.md, "Sandbox notes"):

* The series record is the Id the create returns. It keeps the pattern fields
  (``Recurrence2PatternText``, ``...Version`` (default "1"), ``...TimeZone`` (default the
  user's time zone), ``...StartDate`` = its start) and ``IsRecurrence2 = true``.
* Occurrences are materialized as Event records for a bounded horizon: starts within
  ``HORIZON`` of the series start and at most ``MAX_OCCURRENCES``, expanded with
  dateutil.rrule in the pattern's time zone (so 09:00 stays 09:00 across DST). They carry
  ``IsRecurrence2 = true``, the series' ``ActivityRecurrence2Id`` and a null
  ``Recurrence2PatternText``: the pattern text is what tells the series record apart.
* Updating an occurrence makes it an exception (``IsRecurrence2Exception = true``); the
  series no longer touches it.
* Deleting an occurrence deletes that record (it shows in getDeleted) and excludes its
  start from the series, so a later change of the series does not bring it back.
* Updating the series record: plain fields (Subject, Location, ...) are copied to every
  occurrence that is not an exception; a changed pattern or time deletes the
  non-exception occurrences and materializes new ones (new Ids).
* Deleting the series record deletes every occurrence, exceptions included.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrulestr

from crmsync.sandbox.db import format_datetime, parse_datetime
from crmsync.sandbox.errors import RecordError

if TYPE_CHECKING:
    from crmsync.sandbox.state import State

HORIZON = timedelta(days=365)
MAX_OCCURRENCES = 200
SERIES_PREFIX = "828"
# Fields that define when occurrences happen; changing one re-materializes the series.
TIMING = {"StartDateTime", "ActivityDateTime", "EndDateTime", "DurationInMinutes",
          "ActivityDate", "EndDate", "IsAllDayEvent", "Recurrence2PatternText",
          "Recurrence2PatternTimeZone"}
_NOT_COPIED = TIMING | {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp",
                        "IsDeleted", "Recurrence2PatternVersion",
                        "Recurrence2PatternStartDate", "IsRecurrence2Exception",
                        "IsRecurrence2Exclusion", "ActivityRecurrence2Id"}


def in_series(data: dict[str, Any]) -> bool:
    return bool(data.get("ActivityRecurrence2Id"))


def is_series_record(data: dict[str, Any]) -> bool:
    return in_series(data) and bool(data.get("Recurrence2PatternText"))


def _starts(data: dict[str, Any]) -> list[datetime]:
    pattern = (data.get("Recurrence2PatternText") or "").strip()
    if not pattern.upper().startswith("RRULE:"):
        raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                          "Recurrence2PatternText: enter an RRULE (RFC 5545), e.g. "
                          "RRULE:FREQ=WEEKLY;COUNT=8", ["Recurrence2PatternText"])
    try:
        zone = ZoneInfo(data["Recurrence2PatternTimeZone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                          f"Recurrence2PatternTimeZone: invalid time zone "
                          f"{data['Recurrence2PatternTimeZone']}",
                          ["Recurrence2PatternTimeZone"]) from None
    first = parse_datetime(data["StartDateTime"])
    # In the pattern's zone, so wall-clock times hold across DST. Aware when UNTIL is in
    # UTC (as RFC 5545 requires with a zoned start), naive for a date-only UNTIL (all-day).
    if data.get("IsAllDayEvent"):
        zone = ZoneInfo("UTC")  # all-day times are midnight UTC: days stay days
    local = first.astimezone(zone)
    if not re.search(r"UNTIL=\d{8}T\d{6}Z", pattern.upper()):
        local = local.replace(tzinfo=None)
    try:
        rule = rrulestr(pattern, dtstart=local, forceset=True)
    except (ValueError, TypeError) as exc:
        raise RecordError("FIELD_INTEGRITY_EXCEPTION", f"Recurrence2PatternText: {exc}",
                          ["Recurrence2PatternText"]) from None
    starts = []
    for occurrence in rule:
        moment = (occurrence if occurrence.tzinfo else occurrence.replace(tzinfo=zone)
                  ).astimezone(first.tzinfo)
        if moment - first > HORIZON or len(starts) >= MAX_OCCURRENCES:
            break
        starts.append(moment)
    return starts


def _occurrences(state: State, series: dict[str, Any], skip: set[str]) -> None:
    length = parse_datetime(series["EndDateTime"]) - parse_datetime(series["StartDateTime"])
    for start in _starts(series):
        key = format_datetime(start)
        if key in skip:
            continue
        now = state.org.next_stamp()
        occ = dict(series)
        occ.update(
            Id=state.org.new_id("Event"), CreatedDate=now, LastModifiedDate=now,
            SystemModstamp=now, Recurrence2PatternText=None, Recurrence2PatternVersion=None,
            Recurrence2PatternTimeZone=None, Recurrence2PatternStartDate=None,
            IsRecurrence2Exception=False, StartDateTime=key, ActivityDateTime=key,
            EndDateTime=format_datetime(start + length),
            ActivityDate=start.date().isoformat(),
            EndDate=(start + length).date().isoformat(), _original=key, _excluded=None)
        if series.get("IsAllDayEvent"):
            # EndDate is inclusive, and so is the series' EndDateTime the length is from
            occ["EndDate"] = (start + length).date().isoformat()
            occ["EndDateTime"] = occ["EndDate"] + "T00:00:00.000+0000"
        state.org.insert("Event", occ)


def create_series(state: State, series: dict[str, Any]) -> None:
    if not series.get("Recurrence2PatternText"):
        raise RecordError("REQUIRED_FIELD_MISSING",
                          "Required fields are missing: [Recurrence2PatternText]",
                          ["Recurrence2PatternText"])
    series["Recurrence2PatternVersion"] = series.get("Recurrence2PatternVersion") or "1"
    series["Recurrence2PatternTimeZone"] = (series.get("Recurrence2PatternTimeZone")
                                            or state.user_time_zone)
    series["Recurrence2PatternStartDate"] = series["StartDateTime"]
    series["ActivityRecurrence2Id"] = state.org.new_id_with_prefix(SERIES_PREFIX)
    series["_excluded"] = []
    _starts(series)  # validate before anything is written
    state.org.insert("Event", series)
    _occurrences(state, series, set())


def _members(state: State, series_id: str) -> list[dict[str, Any]]:
    return [e for e in state.org.series_records(series_id) if not is_series_record(e)]


def _series_of(state: State, occurrence: dict[str, Any]) -> dict[str, Any] | None:
    return next((e for e in state.org.series_records(occurrence["ActivityRecurrence2Id"])
                 if is_series_record(e)), None)


def update(state: State, current: dict[str, Any], data: dict[str, Any],
           given: set[str]) -> None:
    if not is_series_record(current):
        if {"Recurrence2PatternText", "Recurrence2PatternTimeZone"} & given:
            raise RecordError("FIELD_INTEGRITY_EXCEPTION",
                              "An occurrence's recurrence pattern can't be changed; update "
                              "the series record instead", ["Recurrence2PatternText"])
        data["Recurrence2PatternText"] = None
        data["IsRecurrence2Exception"] = True
        state.org.save(data)
        return
    if not data.get("Recurrence2PatternText"):
        raise RecordError("REQUIRED_FIELD_MISSING",
                          "Required fields are missing: [Recurrence2PatternText]",
                          ["Recurrence2PatternText"])
    timing = bool(TIMING & given) and any(current.get(f) != data.get(f) for f in TIMING)
    if timing:
        data["Recurrence2PatternStartDate"] = data["StartDateTime"]
        _starts(data)  # validate the new pattern before changing anything
    state.org.save(data)
    members = _members(state, data["ActivityRecurrence2Id"])
    if timing:
        keep = set(data.get("_excluded") or [])
        for occ in members:
            if occ.get("IsRecurrence2Exception"):
                keep.add(occ["_original"])
            else:
                state.org.mark_deleted(occ["Id"])
        _occurrences(state, data, keep)
        return
    copied = {k: data[k] for k in given if k not in _NOT_COPIED}
    for occ in members:
        if not occ.get("IsRecurrence2Exception") and any(occ.get(k) != v
                                                         for k, v in copied.items()):
            stamp = state.org.next_stamp()
            state.org.save(occ | copied | {"LastModifiedDate": stamp, "SystemModstamp": stamp})


def delete(state: State, current: dict[str, Any]) -> None:
    if is_series_record(current):
        for occ in _members(state, current["ActivityRecurrence2Id"]):
            state.org.mark_deleted(occ["Id"])
        state.org.mark_deleted(current["Id"])
        return
    series = _series_of(state, current)
    if series is not None:
        series["_excluded"] = [*(series.get("_excluded") or []), current.get("_original")]
        state.org.save(series)  # bookkeeping only: the series' SystemModstamp stays
    state.org.mark_deleted(current["Id"])
