"""What a run considers (SPEC 3): pure rules on one record, its object's Policy and ``now``.

The planner asks two questions of every item before anything else:

* :func:`in_range`: does the item overlap [now - past_days, now + future_days)? A recurring
  series counts by its occurrences (and moved instances), a task by its due date (an
  undated task always), a contact always. Days and floating times are the user's: an
  all-day event on the 5th spans the 5th in the user's time zone (``Policy.timezone``).
* :func:`exclusion`: is the item excluded in every mode? Private items (unless
  ``include_private``; in a shared calendar, always), a ``DoNotSync`` category, a
  ``DoNotRecord`` smart address among the attendees. The answer is the reason to show.

An item that fails either question is left alone: never created, updated or deleted
because of it. :func:`shared_overrides_selection` tells selection rules (crmsync's
"only matching" and "only designated" calendar modes) to stand aside in a shared
calendar, where every item not marked private syncs.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmsync.model import Contact, Event, Record, Task, is_all_day, rule_in_zone
from crmsync.policy import Policy

_MAX_OCCURRENCES = 100_000


def in_range(policy: Policy, record: Record, now: datetime) -> bool:
    """Whether ``record`` overlaps the policy's sync range around ``now`` (aware)."""
    start, end = policy.window(now)
    zone = policy.zone()
    if isinstance(record, Contact):
        return True
    if isinstance(record, Task):
        if record.due is None:
            return True
        if record.rrule:  # a repeating task counts by its due dates, as a series
            series = Event(start=record.due, end=record.due, rrule=record.rrule)
            return _event_in_range(series, start, end, zone)
        due = instant(record.due, zone)
        until = due + timedelta(days=1) if is_all_day(record.due) else due
        return _overlaps(due, until, start, end)
    if isinstance(record, Event):
        return _event_in_range(record, start, end, zone)
    return True


def exclusion(policy: Policy, record: Record) -> str | None:
    """Why ``record`` is excluded from syncing in every mode, or None."""
    if getattr(record, "private", False):
        if policy.shared:
            return "private (private items in a shared calendar never sync)"
        if not policy.include_private:
            return "private (setting include_private is off)"
    wanted = policy.exclude_category.strip().casefold()
    categories = getattr(record, "categories", [])
    if wanted and any(c.strip().casefold() == wanted for c in categories):
        return f"category {policy.exclude_category}"
    if isinstance(record, Event) and policy.exclude_attendee.strip():
        for attendee in record.attendees:
            if smart_address(policy.exclude_attendee, attendee.email):
                return f"attendee {attendee.email} (smart address {policy.exclude_attendee})"
    return None


def smart_address(setting: str, email: str) -> bool:
    """Whether ``email`` is the smart address ``setting``: its local part at any domain
    (``DoNotRecord`` matches ``donotrecord@crm.example``), or the whole address when the
    setting holds an ``@``; case-insensitive."""
    wanted, email = setting.strip().casefold(), email.strip().casefold()
    if email.startswith("mailto:"):
        email = email[7:]
    if "@" in wanted:
        return email == wanted
    return email.partition("@")[0] == wanted


def shared_overrides_selection(policy: Policy) -> bool:
    """True when selection rules (only matching / only designated items) must not apply:
    in a shared calendar every item not marked private syncs (SPEC 1, 3)."""
    return policy.shared


def describe(policy: Policy, record: Record) -> str:
    """``Tue 2026-11-24 10:00 Pricing call``: an item's date in the user's time zone and
    its subject, for conflict reasons and skips."""
    when = getattr(record, "start", None) or getattr(record, "due", None)
    subject = record.label() if isinstance(record, Contact) else getattr(record, "summary", "")
    if when is None:
        return subject
    if is_all_day(when):
        text = date.fromisoformat(when).strftime("%a %Y-%m-%d")
    else:
        text = instant(when, policy.zone()).astimezone(policy.zone()).strftime(
            "%a %Y-%m-%d %H:%M")
    return f"{text} {subject}".strip()


# --- time ----------------------------------------------------------------------------------


def instant(m: str, zone: tzinfo) -> datetime:
    """A MOMENT as an aware datetime: a day starts at midnight and a floating time is
    read in ``zone`` (the user's); a UTC instant is itself."""
    if not is_all_day(m):
        if m.endswith("Z"):
            return datetime.fromisoformat(m[:-1] + "+00:00")
        return datetime.fromisoformat(m).replace(tzinfo=zone)
    return datetime.combine(date.fromisoformat(m), time(0), tzinfo=zone)


def _overlaps(start: datetime, end: datetime, lo: datetime, hi: datetime) -> bool:
    # An instant (end == start) counts when it lies inside [lo, hi).
    return start < hi and (end > lo or lo <= start)


def _event_zone(event: Event, user: tzinfo) -> tzinfo:
    """Where a series repeats: its own zone when zoned, else the user's (days, floating)."""
    if event.tz and event.start and event.start.endswith("Z"):
        try:
            return ZoneInfo(event.tz)
        except (ZoneInfoNotFoundError, ValueError):
            return user
    return user


def _event_in_range(event: Event, lo: datetime, hi: datetime, user: tzinfo) -> bool:
    if event.start is None:
        return True
    first = instant(event.start, user)
    end = instant(event.end, user) if event.end else (
        first + timedelta(days=1) if event.all_day else first)
    span = max(end - first, timedelta(0))
    for moved in event.overrides.values():
        if moved.start and moved.status != "cancelled":
            s = instant(moved.start, user)
            e = instant(moved.end, user) if moved.end else s + span
            if _overlaps(s, e, lo, hi):
                return True
    if not event.rrule and not event.rdates:
        return _overlaps(first, first + span, lo, hi)
    if first >= hi:
        return False
    try:
        return _occurs(event, first, span, lo, hi, _event_zone(event, user), user)
    except (ValueError, TypeError, OverflowError):
        # A rule dateutil cannot expand (RSCALE, SKIP, a misspelt or unknown part): it may
        # repeat into the range, so the series counts from its first start on, until an
        # UNTIL that can be read. Leaving it out would hide an item that may occur in the
        # range; the sides that cannot hold such a rule say so per item.
        until = _until(event.rrule or "", user)
        return until is None or _overlaps(first, max(until, first) + span, lo, hi)


def _until(rrule: str, user: tzinfo) -> datetime | None:
    """The UNTIL of a rule as an instant (a day: its end), None when absent or unreadable."""
    for part in rrule.split(";"):
        name, _, value = part.partition("=")
        if name.strip().upper() != "UNTIL":
            continue
        value = value.strip().upper()
        try:
            if len(value) == 8:
                return instant(date(int(value[:4]), int(value[4:6]), int(value[6:])).isoformat(),
                               user) + timedelta(days=1)
            when = datetime.strptime(value.rstrip("Z"), "%Y%m%dT%H%M%S")
        except ValueError:
            return None
        return when.replace(tzinfo=UTC if value.endswith("Z") else user)
    return None


def _occurs(event: Event, first: datetime, span: timedelta, lo: datetime, hi: datetime,
            zone: tzinfo, user: tzinfo) -> bool:
    """Whether an occurrence of the series overlaps [lo, hi). Expanded on local wall
    times in the series' zone, so that 10:00 stays 10:00 across a DST change. Raises
    ValueError (or TypeError, OverflowError) for a rule dateutil cannot expand."""
    from dateutil.rrule import rruleset, rrulestr

    def local(m: str) -> datetime:
        return instant(m, user).astimezone(zone).replace(tzinfo=None)

    start = first.astimezone(zone).replace(tzinfo=None)
    rules = rruleset()
    if event.rrule:
        rules.rrule(rrulestr(rule_in_zone(event.rrule, zone), dtstart=start,  # type: ignore[arg-type]
                             ignoretz=True))
    rules.rdate(start)
    for m in event.rdates:
        rules.rdate(local(m))
    for m in [*event.exdates, *event.overrides]:
        rules.exdate(local(m))  # moved instances were checked at their new time
    after = (lo - span).astimezone(zone).replace(tzinfo=None) - timedelta(days=1)
    before = hi.astimezone(zone).replace(tzinfo=None) + timedelta(days=1)
    for n, when in enumerate(rules.xafter(after, inc=True)):
        if when > before or n > _MAX_OCCURRENCES:
            return False
        s = when.replace(tzinfo=zone)
        if _overlaps(s, s + span, lo, hi):
            return True
    return False
