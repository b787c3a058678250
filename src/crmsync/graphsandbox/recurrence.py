"""Expanding a patternedRecurrence into occurrence starts, as Exchange does.

The pattern is expanded in its ``recurrenceTimeZone`` (the start's zone), so a weekly
10:00 stays at 10:00 across a DST change. This is the sandbox's own reading of the Graph
documentation, written apart from the connector's RRULE mapping, so that a mistake in one
shows up as a failing round trip instead of being shared.
https://learn.microsoft.com/en-us/graph/api/resources/recurrencepattern
https://learn.microsoft.com/en-us/graph/api/resources/recurrencerange
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date, datetime, time
from typing import Any

from dateutil import rrule

DAYS = {"monday": rrule.MO, "tuesday": rrule.TU, "wednesday": rrule.WE,
        "thursday": rrule.TH, "friday": rrule.FR, "saturday": rrule.SA, "sunday": rrule.SU}
INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
LIMIT = 1000


def starts(recurrence: Mapping[str, Any], first: datetime) -> Iterator[datetime]:
    """Local start times of the series whose first occurrence is at ``first`` (local,
    naive), in order, at most LIMIT."""
    pattern = recurrence.get("pattern") or {}
    span = recurrence.get("range") or {}
    kind = pattern.get("type")
    days = [DAYS[d.lower()] for d in pattern.get("daysOfWeek") or []]
    args: dict[str, Any] = {"interval": int(pattern.get("interval") or 1), "dtstart": first}
    if kind == "daily":
        freq = rrule.DAILY
    elif kind == "weekly":
        freq = rrule.WEEKLY
        args["byweekday"] = days or None
        args["wkst"] = DAYS[(pattern.get("firstDayOfWeek") or "sunday").lower()]
    elif kind in ("absoluteMonthly", "absoluteYearly"):
        freq = rrule.MONTHLY if kind == "absoluteMonthly" else rrule.YEARLY
        args["bymonthday"] = int(pattern.get("dayOfMonth") or first.day)
        if kind == "absoluteYearly":
            args["bymonth"] = int(pattern.get("month") or first.month)
    elif kind in ("relativeMonthly", "relativeYearly"):
        freq = rrule.MONTHLY if kind == "relativeMonthly" else rrule.YEARLY
        args["byweekday"] = days
        args["bysetpos"] = INDEX[(pattern.get("index") or "first").lower()]
        if kind == "relativeYearly":
            args["bymonth"] = int(pattern.get("month") or first.month)
    else:
        raise ValueError(f"unknown recurrence pattern type {kind!r}")
    if span.get("type") == "numbered":
        args["count"] = int(span.get("numberOfOccurrences") or 1)
    elif span.get("type") == "endDate":
        args["until"] = datetime.combine(date.fromisoformat(span["endDate"]), time(23, 59, 59))
    for n, when in enumerate(rrule.rrule(freq, **args)):
        if n >= LIMIT:
            return
        yield when
