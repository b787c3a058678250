"""``salesforce:https://INSTANCE.my.salesforce.com``: one user's Events, Tasks and Contacts.

In the vocabulary of :mod:`crmsync.connectors.base`:

ID
    A record Id: an Event (``00U...``), a Task (``00T...``), a Contact (``003...``). A
    recurring event series is one item whose ID is its series Id (``ActivityRecurrence2Id``,
    ``828...``), since its occurrences are separate Event records.
ITEM
    A JSON document of the record(s) as read, FORMAT ``application/vnd.crmsync.salesforce
    +json`` (see :mod:`crmsync.formats.salesforce`): an Event with its invitees (each
    EventRelation with the Contact/Lead/User email it names), a Contact with its Account's
    name, a Task.
VERSION
    ``MODSTAMP/N``: the latest SystemModstamp among the item's records (the Event, its
    EventRelations, a series' occurrences) and how many records that is, so that a deleted
    occurrence or invitee changes it too. Checked with one query per batch before writing.
CURSOR
    JSON: ``since`` (server time the next listing starts from), ``describe`` (field lengths
    and flags learned from ``describe``, with the time they were read: refreshed after 24 h,
    inside the listing's composite call, so it costs no call of its own), ``series`` (each
    series' occurrence Ids, to tell which series a deleted occurrence belonged to) and
    ``expanded`` (see the fallback below). The describe lives there rather than in a file
    or the store because the cursor is already per object, per org, saved atomically with
    the run's progress, and dropped when the profile is: no cache to invalidate.

Listing. One ``composite`` call per object (composite counts as one API call): the
deleted records since the cursor (``sobjects/X/deleted``), the records with a newer
SystemModstamp, for events the EventRelations changed since, and when due the describe.
A listing with nothing changed costs that one call. When the cursor is older than the
15 days deleted records are kept, or the server answers INVALID_REPLICATION_DATE, the
listing is a full one (``complete``), from which the core infers deletions.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm

Writing. sObject Collections, 200 records per call, ``allOrNone=false``: per-record
errors become the item's Result (STRING_TOO_LONG, FIELD_CUSTOM_VALIDATION_EXCEPTION,
ENTITY_IS_DELETED, ... with Salesforce's message); UNABLE_TO_LOCK_ROW records are sent
again after a jittered wait. Invitees are EventRelations, written the same way, for the
attendees a Contact, Lead or User has the email of. What was written is read back (one
query per batch) so that the stored version is the server's.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_sobjects_collections.htm

Recurrence (Lightning "event series", the Recurrence2 fields). Salesforce stores a series
as one Event record per occurrence, all sharing an ActivityRecurrence2Id and the pattern
(Recurrence2PatternText, an RFC 5545 RRULE; Recurrence2PatternStartDate;
Recurrence2PatternTimeZone). A series is created by inserting its first occurrence with
IsRecurrence2 and the pattern; an occurrence edited on its own is flagged
IsRecurrence2Exception; deleting one occurrence deletes its record.
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_event_series_create.htm
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_event_series_delete.htm
crmsync maps: RRULE <-> the pattern; an occurrence record that is an exception or
differs from the series <-> an override (matched to its slot of the pattern; a moved one to
the nearest slot left without a record, as Salesforce keeps no RECURRENCE-ID); a slot
without a record <-> an EXDATE. Writing a series: create it, then delete the records of
its EXDATEs and update those of its overrides. A change to a series' pattern or
times, or an EXDATE taken back, re-creates the series (Salesforce cannot add an
occurrence back); other changes update the occurrences in place.
Fallback, for orgs without the Recurrence2 fields (describe does not list them, or
``recurrence=expand``): a series is written as separate Events, one per occurrence inside
the connector's ``time_range`` (default: 30 days back, 365 ahead, as SPEC section 3). The
CURSOR remembers which Events were written for which series (``expanded``), so they are
read back as one item, the first occurrence's (its document lists the others under
``Expanded``), never as strangers to copy back; deleting or re-writing the series takes
them all. Recurrence is one-way there: Salesforce shows occurrences, a change made to one
of them in Salesforce does not reach the groupware's series.

Settings (the endpoint's query string, e.g.
``salesforce:https://x.my.salesforce.com?event_type=Meeting&invitees_in_description=1``):

``event_type``
    The Event Type of events crmsync creates (Call, Email, Meeting, Other); unset: the
    org's default.
``invitees``
    1 (default): attendees are written as EventRelations where Salesforce knows the email.
``invitees_in_description``
    1: the attendee list is also written into the Description (and removed on the way
    back); 0 (default).
``attachments_in_description``
    1 (default): the file names of an event's attachments are listed in the Description.
``truncate_body``
    1 (default): a Description over its limit is cut to fit; 0: the item fails instead.
``api_share``
    The share of the org's daily API allowance crmsync may use, 0 < x <= 1 (default 0.5):
    a run stops cleanly before the org's usage passes it.
``recurrence``
    ``auto`` (default: Recurrence2 when the org has it) or ``expand`` (the fallback).
``past_days``, ``future_days``
    The event range read and expanded (defaults 30 and 365).
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from crmsync.connectors.base import (
    Capabilities,
    Changes,
    Checkpoint,
    Connector,
    Create,
    Credentials,
    Delete,
    Item,
    ReadProgress,
    Result,
    Side,
    Update,
    Window,
    Write,
)
from crmsync.connectors.dav import public_url
from crmsync.connectors.sfapi import (
    COLLECTION_SIZE,
    LOCK_RETRIES,
    Client,
    SalesforceError,
    Sleep,
    describe_errors,
    soql_datetime,
    soql_list,
    soql_quote,
)
from crmsync.errors import ConfigError, ConnectionFailed, CrmsyncError, ItemError, unexpected
from crmsync.formats import salesforce as sf
from crmsync.merge import apply_changes
from crmsync.model import Attendee, Event, ObjectKind, Occurrence, Record

FORMAT = sf.FORMAT
SOBJECT: dict[ObjectKind, str] = {"calendar": "Event", "tasks": "Task", "contacts": "Contact"}
DESCRIBE_TTL = 24 * 3600
# Salesforce keeps deleted records for 15 days; a cursor older than that (less a margin)
# cannot tell what was deleted since.
RETENTION = 15 * 86400 - 3600
CHUNK_IDS = 200

FIELDS: dict[str, tuple[str, ...]] = {
    "Event": ("Id", "SystemModstamp", "LastModifiedDate", "OwnerId", "Subject",
              "StartDateTime", "EndDateTime", "ActivityDate", "EndDate", "IsAllDayEvent",
              "Location", "Description", "IsPrivate", "ShowAs", "Type", "WhoId", "WhatId",
              "IsReminderSet", "ReminderDateTime"),
    "Task": ("Id", "SystemModstamp", "LastModifiedDate", "OwnerId", "Subject",
             "ActivityDate", "Status", "Priority", "Description", "IsClosed",
             "CompletedDateTime", "WhoId", "WhatId"),
    "Contact": ("Id", "SystemModstamp", "LastModifiedDate", "OwnerId", "FirstName",
                "LastName", "Email", "Phone", "MobilePhone", "HomePhone", "OtherPhone", "Fax",
                "Title", "Department", "AccountId", "MailingStreet", "MailingCity",
                "MailingState", "MailingPostalCode", "MailingCountry", "OtherStreet",
                "OtherCity", "OtherState", "OtherPostalCode", "OtherCountry", "Birthdate",
                "Description"),
}
RELATIONSHIP_FIELDS = {"Event": ("Owner.Email",), "Task": (), "Contact": ("Account.Name",)}
RECURRENCE_FIELDS = ("IsRecurrence2", "Recurrence2PatternText", "Recurrence2PatternVersion",
                     "Recurrence2PatternTimeZone", "Recurrence2PatternStartDate",
                     "IsRecurrence2Exception", "IsRecurrence2Exclusion",
                     "ActivityRecurrence2Id")
RELATION_FIELDS = ("Id", "RelationId", "Status", "Response", "IsInvitee", "SystemModstamp")
SERIES_PREFIX = "828"
# Ids of people an activity relates to (WhoId): Contacts and Leads.
PEOPLE_PREFIXES = ("003", "00Q")

CAPABILITY_FIELDS: dict[ObjectKind, frozenset[str]] = {
    "calendar": frozenset({"summary", "start", "end", "location", "description", "private",
                           "show_as", "attendees", "reminders", "rrule", "exdates",
                           "overrides"}),
    "tasks": frozenset({"summary", "description", "due", "status", "priority"}),
    "contacts": frozenset({"full_name", "given_name", "family_name", "emails", "phones",
                           "company", "title", "addresses", "birthday", "note"}),
}


@dataclass(frozen=True)
class _Shape:
    """The occurrence work of one series written: delete the occurrences of ``exdates``,
    write ``overrides`` over theirs. ``record_id`` is the series Id, or the record just
    inserted for a new series; ``item`` the series as read, when its occurrences are
    known and stay where they are."""

    index: int
    record_id: str
    exdates: list[str]
    overrides: dict[str, Occurrence]
    item: Item | None = None


@dataclass(frozen=True)
class Settings:
    """The endpoint's options; see the module docstring."""

    event_type: str | None = None
    invitees: bool = True
    invitees_in_description: bool = False
    attachments_in_description: bool = True
    truncate_body: bool = True
    api_share: float = 0.5
    recurrence: str = "auto"
    past_days: int = 30
    future_days: int = 365

    @classmethod
    def from_query(cls, query: str) -> Settings:
        values: dict[str, Any] = {}
        known = {f for f in cls.__dataclass_fields__}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in known:
                raise ConfigError(f"unknown Salesforce setting {name!r}; known: "
                                  f"{', '.join(sorted(known))}")
            kind = cls.__dataclass_fields__[name].type
            try:
                if kind == "bool":
                    if value not in ("0", "1", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    values[name] = value in ("1", "true", "yes")
                elif kind == "float":
                    values[name] = float(value)
                    if not 0 < values[name] <= 1:
                        raise ValueError(value)
                elif kind == "int":
                    values[name] = int(value)
                else:
                    values[name] = value or None
            except ValueError:
                raise ConfigError(f"Salesforce setting {name}={value!r} is not valid "
                                  f"({kind})") from None
        if values.get("recurrence", "auto") not in ("auto", "expand"):
            raise ConfigError("Salesforce setting recurrence must be auto or expand")
        return cls(**values)


def split_endpoint(location: str) -> tuple[str, Settings]:
    """``https://x.my.salesforce.com?event_type=Meeting`` -> (instance URL, settings)."""
    parts = urlsplit(location)
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost") \
            or not parts.netloc:
        raise ConfigError(f"salesforce endpoint {public_url(location)!r} must be the https URL "
                          "of the org, e.g. salesforce:https://example.my.salesforce.com")
    instance = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return instance, Settings.from_query(parts.query)


# --- cursor ------------------------------------------------------------------------------


@dataclass
class _Cursor:
    since: str | None = None
    described: float | None = None
    describe: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: dict[str, list[str]] = field(default_factory=dict)
    # The expand fallback: first occurrence's Id -> the other occurrences' Ids.
    expanded: dict[str, list[str]] = field(default_factory=dict)

    def encode(self) -> str:
        return json.dumps({"v": 1, "since": self.since, "described": self.described,
                           "describe": self.describe, "series": self.series,
                           "expanded": self.expanded},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> _Cursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        return cls(data.get("since"), data.get("described"), data.get("describe") or {},
                   data.get("series") or {}, data.get("expanded") or {})


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(sf.sf_datetime(stamp).rstrip("Z")).replace(  # type: ignore[union-attr]
        tzinfo=UTC).timestamp()


def _version(records: Iterable[dict[str, Any]]) -> str:
    stamps = [r.get("SystemModstamp") or "" for r in records]
    newest = max((_stamp(s) for s in stamps if s), default="")
    return f"{newest}/{len(stamps)}"


def _stamp(value: str) -> str:
    """A SystemModstamp in one form, milliseconds kept: two writes in one second differ."""
    return sf.parse_sf_datetime(value).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if key in ("attributes", "EventRelations"):
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "attributes"}
        out[key] = value
    return out


_ATTACH = re.compile(r"^ATTACH((?:;[^:\r\n]*)?):(.*)$", re.MULTILINE | re.IGNORECASE)
_FILENAME = re.compile(r';(?:X-)?(?:FILENAME|X-APPLE-FILENAME|X-ORACLE-FILENAME)="?([^";:]+)',
                       re.IGNORECASE)


def attachment_names(raw: str) -> list[str]:
    """The file names of an iCalendar item's ATTACH properties (unfolded)."""
    text = raw.replace("\r\n ", "").replace("\n ", "")
    names = []
    for params, value in _ATTACH.findall(text):
        named = _FILENAME.search(params)
        if named:
            names.append(named[1])
        elif "VALUE=BINARY" not in params.upper():
            names.append(value.strip().rstrip("/").rpartition("/")[2] or value.strip())
    return names


# --- the connector -----------------------------------------------------------------------


class SalesforceConnector(Connector):
    """One user's records in one Salesforce org; see the module docstring."""

    def __init__(self, location: str, side: Side = "crm", *,
                 credentials: Credentials | None = None, settings: Settings | None = None,
                 time_range: tuple[datetime, datetime] | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Sleep = time.sleep) -> None:
        instance, parsed = split_endpoint(location)
        self.settings = settings or parsed
        self.side = side
        self.client = Client(instance, credentials, api_share=self.settings.api_share,
                             timeout=timeout, transport=transport, sleep=sleep)
        if time_range is None:
            today = datetime.now(UTC)
            time_range = (today - timedelta(days=self.settings.past_days),
                          today + timedelta(days=self.settings.future_days))
        self.time_range = time_range
        fields = dict(CAPABILITY_FIELDS)
        if not (self.settings.invitees or self.settings.invitees_in_description):
            fields["calendar"] = fields["calendar"] - {"attendees"}
        self.capabilities = Capabilities(fields=fields, batch_size=COLLECTION_SIZE,
                                         keeps_uid=False, floating=False, relations=True)
        self._cursor: dict[ObjectKind, _Cursor] = {}
        # This run's people lookups: (objects, alternates) -> email -> people (or []).
        self._people: dict[tuple[tuple[str, ...], bool], dict[str, list[dict[str, str]]]] = {}
        # Email fields per Contact/Lead/User (the alternates too), from describe.
        self._email_fields: dict[str, list[str]] = {}
        self._shared: bool | None = None  # see _shared_activities
        # The emails of the people read as invitees (Salesforce knows them): an attendee
        # not among them may be one it cannot relate (see image).
        self._invitees: set[str] = set()

    def __repr__(self) -> str:
        return f"SalesforceConnector({public_url(self.client.instance_url)})"

    def stats(self) -> dict[str, int]:
        out = {"requests": self.client.http.requests, "api_calls": self.client.api_calls}
        if self.client.api_limit is not None:
            out["api_usage"] = self.client.api_usage or 0
            out["api_limit"] = self.client.api_limit
        return out

    def close(self) -> None:
        self.client.close()

    # --- describe ------------------------------------------------------------------------

    def _state(self, kind: ObjectKind) -> _Cursor:
        return self._cursor.setdefault(kind, _Cursor())

    def _describe(self, kind: ObjectKind) -> dict[str, dict[str, Any]]:
        """Field name -> {length, createable, updateable} for ``kind``; read when unknown."""
        state = self._state(kind)
        if not state.describe:
            self._take_describe(kind, self.client.call("GET", f"sobjects/{SOBJECT[kind]}/describe"))
        return state.describe

    def _take_describe(self, kind: ObjectKind, answer: dict[str, Any]) -> None:
        state = self._state(kind)
        state.describe = {
            f["name"]: {"length": f.get("length") or 0, "c": bool(f.get("createable")),
                        "u": bool(f.get("updateable"))}
            for f in answer.get("fields", []) if isinstance(f, dict) and "name" in f}
        state.described = self.client.server_now()

    def lengths(self, kind: ObjectKind) -> dict[str, int]:
        described = self._describe(kind)
        lengths = dict(sf.DEFAULT_LENGTHS.get(SOBJECT[kind], {}))
        lengths.update({n: f["length"] for n, f in described.items() if f["length"]})
        return lengths

    def recurrence2(self) -> bool:
        """Whether events are written as Recurrence2 series (else the expand fallback)."""
        return self.settings.recurrence == "auto" and \
            "IsRecurrence2" in self._describe("calendar")

    def _fields(self, kind: ObjectKind) -> list[str]:
        obj = SOBJECT[kind]
        described = self._describe(kind)
        names = [f for f in FIELDS[obj] if f in described]
        if kind == "calendar" and self.settings.recurrence == "auto":
            names += [f for f in RECURRENCE_FIELDS if f in described]
        return names + list(RELATIONSHIP_FIELDS[obj])

    def _select(self, kind: ObjectKind) -> str:
        fields = self._fields(kind)
        if kind == "calendar":
            fields.append(f"(SELECT {', '.join(RELATION_FIELDS)} FROM EventRelations)")
        return f"SELECT {', '.join(fields)} FROM {SOBJECT[kind]}"

    def _owner(self) -> str:
        user = self.client.whoami()
        return f"OwnerId = {soql_quote(user)}" if user else ""

    # --- listing -------------------------------------------------------------------------

    def list_changes(self, kind: ObjectKind, cursor: str | None, *,
                     window: Window | None = None,
                     checkpoint: Checkpoint | None = None,
                     progress: ReadProgress | None = None) -> Changes:
        # One composite call lists an object: there is no progress to save part-way, and
        # SOQL by SystemModstamp cannot leave out what lies outside the sync range.
        obj = SOBJECT[kind]
        old = _Cursor.decode(cursor)
        state = self._state(kind)
        self._people.clear()  # a listing starts a run: people are looked up afresh
        if old is not None:
            state.describe = state.describe or old.describe
            state.described = state.described or old.described
            state.series = dict(old.series)
            state.expanded = dict(old.expanded)
        self._describe(kind)  # a first listing learns the fields before it asks for them
        now = self.client.server_now()
        since = old.since if old is not None else None
        if since is not None and now - _seconds(since) > RETENTION:
            since = None  # deletions are no longer known that far back
        requests: list[tuple[str, str, Any]] = []
        if since is not None:
            # Salesforce covers deletions up to the earlier of ``end`` and its own last
            # whole minute. ``now`` is only our estimate of its clock, which lags it by up
            # to a round trip (more when the clock moved since we last saw a stamp): an
            # end at ``now`` would stop the coverage a minute early around each minute's
            # turn. A minute more lets the server decide; the end is never before the start.
            end = soql_datetime(max(now, _seconds(since)) + 60)
            requests.append(("GET", f"sobjects/{obj}/deleted/?start={since}&end={end}", None))
        where = [w for w in (self._owner(),) if w]
        if since is not None:
            where.append(f"SystemModstamp > {since}")
        elif kind == "calendar":
            start, stop = (soql_datetime(t.timestamp()) for t in self.time_range)
            # A series that began before the range may have no occurrence record in it
            # (Salesforce materializes occurrences for a bounded span), yet repeat into
            # it: its records come too, and the rules place the series by its pattern.
            where.append(f"((EndDateTime >= {start} AND StartDateTime <= {stop}) OR "
                         f"(IsRecurrence2 = true AND StartDateTime <= {stop}))")
        soql = self._select(kind) + (f" WHERE {' AND '.join(where)}" if where else "")
        requests.append(("GET", "query?q=" + _q(soql), None))
        if kind == "calendar" and since is not None:
            requests.append(("GET", "query?q=" + _q(
                f"SELECT EventId FROM EventRelation WHERE SystemModstamp > {since}"), None))
        if state.described is None or now - state.described > DESCRIBE_TTL:
            requests.append(("GET", f"sobjects/{obj}/describe", None))
        answers = self.client.composite(requests)
        if requests[-1][1].endswith("/describe"):
            status, body = answers.pop()
            if status == 200 and isinstance(body, dict):
                self._take_describe(kind, body)

        deleted: list[str] = []
        new_since = None
        if since is not None:
            status, body = answers.pop(0)
            if status != 200:
                code = _code(body)
                if code != "INVALID_REPLICATION_DATE":
                    raise ConnectionFailed(f"Salesforce refused the deleted {obj} listing: "
                                           f"{describe_errors(_list(body))}")
                # Too far back: reconcile everything instead.
                return self._full_after(kind, cursor)
            earliest = body.get("earliestDateAvailable")
            if earliest and (sf.sf_datetime(earliest) or "") > (sf.sf_datetime(since) or ""):
                return self._full_after(kind, cursor)
            deleted = [d["id"] for d in body.get("deletedRecords", []) if d.get("id")]
            new_since = body.get("latestDateCovered")
        status, body = answers.pop(0)
        records = self.client.more(_ok(body, status, f"the {obj} listing"))
        extra_events: set[str] = set()
        if kind == "calendar" and since is not None:
            status, body = answers.pop(0)
            relations = self.client.more(_ok(body, status, "the EventRelation listing"))
            known = {r["Id"] for r in records}
            extra_events = {r["EventId"] for r in relations if r.get("EventId")} - known
        # A series all of whose records known are listed (changed) or deleted needs no
        # reading again: a record added to it since would be listed too. So the listing
        # after a run that wrote many series costs no more than its pages.
        seen = {r["Id"] for r in records} | extra_events | set(deleted)
        whole = [s for s, ms in state.series.items() if ms and seen.issuperset(ms)] \
            if since is not None else []
        items = self._items(kind, records, extra_events, whole)

        changes = Changes(complete=since is None)
        if kind == "calendar":
            # A deleted occurrence changes its series; a series with none left is deleted.
            members = {m: s for s, ms in [*state.series.items(), *state.expanded.items()]
                       for m in ms}
            touched = {members[d] for d in deleted if d in members}
            missing = touched - items.keys()
            if missing:
                items.update(self._fetch_events(sorted(missing)))
            deleted = [d for d in deleted if d not in members] + sorted(missing - items.keys())
            for series_id in missing - items.keys():
                state.series.pop(series_id, None)
        for item in sorted(items.values(), key=lambda i: i.id):
            changes.upserts.append((item.id, item.version, item))
        changes.deleted = sorted(set(deleted) - items.keys())
        stamps = [r.get("SystemModstamp") for r in records if r.get("SystemModstamp")]
        for stamp in [*stamps, new_since]:
            if stamp:
                self.client.saw(_seconds(stamp))
        if new_since is None:
            # A full listing: from when it started (the server's clock, a little early),
            # or its newest record if that is later; both are before the query ran.
            newest = max((sf.sf_datetime(s) or "" for s in stamps), default="")
            new_since = max(newest, soql_datetime(now - 5))
        state.since = sf.sf_datetime(new_since)
        changes.cursor = state.encode()
        return changes

    def _full_after(self, kind: ObjectKind, cursor: str | None) -> Changes:
        data = json.loads(cursor or "{}")
        data["since"] = None
        return self.list_changes(kind, json.dumps(data))

    def image(self, kind: ObjectKind) -> Callable[[Record], Record]:
        """A record as written here and read back (see formats.salesforce.image), with
        this org's field lengths (describe, read once a run) and this endpoint's
        settings."""
        lengths = self.lengths(kind)
        s = self.settings
        # Without the invitee block, only people Salesforce knows stay attendees: those
        # seen as invitees this run are known, others may not be.
        known = None if s.invitees_in_description else frozenset(self._invitees)
        return lambda record: sf.image(record,  # type: ignore[arg-type, return-value]
                                       lengths,
                                       invitees_in_description=s.invitees_in_description,
                                       truncate_body=s.truncate_body, known=known)

    def cursor(self, kind: ObjectKind, listed: str | None) -> str | None:
        state = self._cursor.get(kind)
        if state is None or listed is None:
            return listed
        # The listing's time; the describe and series map as they are now.
        since = (_Cursor.decode(listed) or _Cursor()).since
        return replace(state, since=since).encode()

    # --- reading -------------------------------------------------------------------------

    def fetch(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, Item]:
        if not ids:
            return {}
        if kind == "calendar":
            return self._fetch_events(ids)
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), CHUNK_IDS):
            for record in self.client.query(f"{self._select(kind)} WHERE Id IN {soql_list(chunk)}"):
                found[record["Id"]] = record
        return {i: it for i, it in self._items(kind, list(found.values()), set()).items()
                if i in set(ids)}

    def _fetch_events(self, ids: Sequence[str]) -> dict[str, Item]:
        series = [i for i in ids if i.startswith(SERIES_PREFIX)]
        single = [i for i in ids if not i.startswith(SERIES_PREFIX)]
        requests = []
        base = self._select("calendar")
        for chunk in _chunks(single, CHUNK_IDS):
            requests.append(("GET", "query?q=" + _q(f"{base} WHERE Id IN {soql_list(chunk)}"),
                             None))
        for chunk in _chunks(series, CHUNK_IDS):
            requests.append(("GET", "query?q=" + _q(
                f"{base} WHERE ActivityRecurrence2Id IN {soql_list(chunk)}"), None))
        records: list[dict[str, Any]] = []
        for status, body in self.client.composite(requests):
            records += self.client.more(_ok(body, status, "the Event query"))
        items = self._items("calendar", records, set(), whole=series)
        return {i: items[i] for i in ids if i in items}

    def _items(self, kind: ObjectKind, records: list[dict[str, Any]],
               more_events: set[str], whole: Iterable[str] = ()) -> dict[str, Item]:
        """Items from records as queried; ``whole``: series all of whose records are
        among them already."""
        if kind != "calendar":
            return {r["Id"]: _guarded(kind, r["Id"], lambda r=r: self._item(
                kind, r["Id"], {SOBJECT[kind]: _clean(r)}, [r])) for r in records}
        if more_events:
            records = records + self._query_events("Id", sorted(more_events))
        # The expand fallback's occurrences belong to the item of their first one.
        expanded = self._state("calendar").expanded
        member_of = {m: h for h, ms in expanded.items() for m in ms}
        have = {r["Id"] for r in records}
        heads = {member_of[i] for i in have if i in member_of} | (have & expanded.keys())
        wanted = (heads | {m for h in heads for m in expanded[h]}) - have
        if wanted:
            records = records + self._query_events("Id", sorted(wanted))
        # Occurrences of a series listed as changed: read the whole series.
        series_ids = {r["ActivityRecurrence2Id"] for r in records
                      if r.get("ActivityRecurrence2Id")} - set(whole)
        if series_ids:
            have = {r["Id"] for r in records}
            records += [r for r in self._query_events("ActivityRecurrence2Id", sorted(series_ids))
                        if r["Id"] not in have]
        people = self._people_by_id({rel["RelationId"] for r in records
                                     for rel in _children(r) if rel.get("RelationId")})
        items: dict[str, Item] = {}
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        folded: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            if record["Id"] in member_of:
                folded[member_of[record["Id"]]].append(record)
        for record in records:
            series = record.get("ActivityRecurrence2Id")
            if series:
                groups[series].append(record)
            elif record["Id"] not in member_of:
                items[record["Id"]] = _guarded(kind, record["Id"], lambda r=record: (
                    self._event_item(r["Id"], r, [r], people, expanded=folded.get(r["Id"]))))
        state = self._state("calendar")
        for series, members in groups.items():
            def series_item(series: str = series, members: list = members) -> Item:
                members.sort(key=lambda rec: sf._when(rec)[0] or "")
                head = _series_head(members)
                occurrences = [m for m in members if m["Id"] != head.get("Id")
                               or not m.get("Recurrence2PatternText")]
                return self._event_item(series, head, occurrences, people,
                                        everything=members)

            items[series] = _guarded(kind, series, series_item)
            state.series[series] = sorted(r["Id"] for r in members)
        return items

    def _query_events(self, field_name: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        base = self._select("calendar")
        requests = [("GET", "query?q=" + _q(f"{base} WHERE {field_name} IN {soql_list(c)}"),
                     None) for c in _chunks(list(ids), CHUNK_IDS)]
        for status, body in self.client.composite(requests):
            out += self.client.more(_ok(body, status, "the Event query"))
        return out

    def _event_item(self, item_id: str, head: dict[str, Any], members: list[dict[str, Any]],
                    people: dict[str, dict[str, str]],
                    everything: list[dict[str, Any]] | None = None,
                    expanded: list[dict[str, Any]] | None = None) -> Item:
        relations = _children(head)
        invitees = []
        for rel in relations:
            if not rel.get("IsInvitee", True):
                continue
            person = people.get(rel.get("RelationId") or "", {})
            if person.get("Email"):
                self._invitees.add(person["Email"].lower())
            invitees.append({"Id": rel.get("Id"), "RelationId": rel.get("RelationId"),
                             "Email": person.get("Email"), "Name": person.get("Name"),
                             "Status": rel.get("Status") or "New"})
        doc: dict[str, Any] = {"Event": _clean(head), "Invitees": invitees}
        if everything is not None:
            doc["Occurrences"] = [_clean(r) for r in members]
        if expanded:
            # Written by the expand fallback: kept as Ids (parse ignores them) so that the
            # item's version and deletion cover every occurrence written for it.
            doc["Expanded"] = sorted(r["Id"] for r in expanded)
        return self._item("calendar", item_id, doc,
                          [*(everything or members), *(expanded or []), *relations])

    def _item(self, kind: ObjectKind, item_id: str, doc: dict[str, Any],
              records: list[dict[str, Any]]) -> Item:
        main = doc[SOBJECT[kind]]
        modified = sf.sf_datetime(main.get("LastModifiedDate") or main.get("SystemModstamp"))
        version = _version(records)
        if version[0] != "/":
            self.client.saw(_seconds(version.partition("/")[0]))
        return Item(item_id, version, sf.dump(doc), FORMAT, kind, modified=modified)

    def _people_by_id(self, ids: set[str]) -> dict[str, dict[str, str]]:
        """Contact/Lead/User Id -> {"Email", "Name"}, one composite call."""
        if not ids:
            return {}
        by_object: dict[str, list[str]] = defaultdict(list)
        for rid in sorted(ids):
            obj = {"003": "Contact", "00Q": "Lead", "005": "User"}.get(rid[:3])
            if obj:
                by_object[obj].append(rid)
        requests = [("GET", "query?q=" + _q(
            f"SELECT Id, Name, Email FROM {obj} WHERE Id IN {soql_list(chunk)}"), None)
            for obj, rids in by_object.items() for chunk in _chunks(rids, CHUNK_IDS)]
        out: dict[str, dict[str, str]] = {}
        for status, body in self.client.composite(requests):
            for r in self.client.more(_ok(body, status, "the invitee query")):
                out[r["Id"]] = {"Email": r.get("Email") or "", "Name": r.get("Name") or ""}
        return out

    def find_people(self, emails: Iterable[str], objects: Sequence[str] = ("Contact", "Lead"),
                    *, alternates: bool = False) -> dict[str, list[dict[str, str]]]:
        """The Contacts and Leads (or Users) having each email, for matching attendees.

        Lower-cased email -> [{"Id", "type", "Name", "Email"}]: one composite call per
        200 emails, and each email is looked up once per run (a listing starts a run).
        Converted Leads are left out (their Contact stands for them). ``alternates``:
        every field of type email counts, not only ``Email``. Standard Contacts and Leads
        have no other (https://developer.salesforce.com/docs/atlas.en-us.object_reference
        .meta/object_reference/sforce_api_objects_contact.htm); orgs add them as custom
        fields, e.g. the Nonprofit Success Pack's npe01__AlternateEmail__c, and describe
        names them: "Email" is the one that matches them, whatever they are called.
        """
        wanted = sorted({e.strip().lower() for e in emails if e and e.strip()})
        cache = self._people.setdefault((tuple(objects), alternates), {})
        todo = [e for e in wanted if e not in cache]
        if todo:
            fields = {obj: self._emails_of(obj) if alternates else ["Email"] for obj in objects}
            requests, objs = [], []
            for obj in objects:
                cond = " AND IsConverted = false" if obj == "Lead" else ""
                for chunk in _chunks(todo, CHUNK_IDS):
                    where = " OR ".join(f"{f} IN {soql_list(chunk)}" for f in fields[obj])
                    requests.append(("GET", "query?q=" + _q(
                        f"SELECT Id, Name, {', '.join(fields[obj])} FROM {obj} "
                        f"WHERE ({where}){cond}"), None))
                    objs.append(obj)
            found: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
            for obj, (status, body) in zip(objs, self.client.composite(requests), strict=True):
                for r in self.client.more(_ok(body, status, f"the {obj} lookup")):
                    for name in fields[obj]:
                        email = (r.get(name) or "").lower()
                        if email:
                            found[email].setdefault(r["Id"], {
                                "Id": r["Id"], "type": obj, "Name": r.get("Name") or "",
                                "Email": r.get("Email") or ""})
            for email in todo:
                cache[email] = list(found.get(email, {}).values())
        return {e: cache[e] for e in wanted if cache[e]}

    def _emails_of(self, obj: str) -> list[str]:
        """The email fields of Contact, Lead or User (filterable ones), Email first."""
        if obj not in self._email_fields:
            answer = self.client.call("GET", f"sobjects/{obj}/describe")
            names = [f["name"] for f in answer.get("fields", []) if isinstance(f, dict)
                     and f.get("type") == "email" and f.get("filterable", True)]
            self._email_fields[obj] = ["Email"] + sorted(n for n in names if n != "Email")
        return self._email_fields[obj]

    # --- writing -------------------------------------------------------------------------

    def refuses(self, kind: ObjectKind, record: Record) -> str | None:
        # What Salesforce certainly refuses, found as apply would: the fields as they would
        # be written, within the lengths describe gives (the listing read it already).
        try:
            values = self._values(kind, record, None, [])
        except ItemError as exc:
            return str(exc)
        if kind == "contacts" and not values.get("LastName"):
            return ("a Salesforce Contact needs a last name (Contact.LastName) and this "
                    "contact has no name at all: not synced (give it a name)")
        if kind == "calendar" and isinstance(record, Event) and record.start is None:
            return ("a Salesforce Event needs a start (Event.StartDateTime) and this event "
                    "has none: not synced (give it a start)")
        return None

    def apply(self, kind: ObjectKind, writes: Sequence[Write]) -> list[Result]:
        results: list[Result | None] = [None] * len(writes)
        self._describe(kind)
        current = self._check_versions(kind, [(i, w) for i, w in enumerate(writes)
                                              if not isinstance(w, Create)], results)
        creates: list[tuple[int, Record, dict[str, Any], list[str]]] = []
        whos: dict[int, list[str]] = {}
        updates: list[tuple[int, Update, Item, Record]] = []
        deletes: list[tuple[int, list[str]]] = []
        for i, write in enumerate(writes):
            if results[i] is not None:
                continue
            try:
                if isinstance(write, Create):
                    record = write.content()
                    files = attachment_names(write.source.raw) \
                        if self.settings.attachments_in_description and kind == "calendar" \
                        and write.source.fmt == "text/calendar" else []
                    values = self._values(kind, record, None, files)
                    whos[i] = self._related(kind, write, values)
                    creates.append((i, record, values, files))
                elif isinstance(write, Update):
                    item = current[write.id]
                    planned = write.planned if write.planned is not None \
                        and write.planned.version == item.version else item
                    record = apply_changes(planned.record(), write.changes)
                    updates.append((i, write, item, record))
                else:
                    deletes.append((i, _record_ids(current[write.id])))
            except CrmsyncError as exc:
                results[i] = Result("failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - a mapping bug fails this item only
                results[i] = Result("failed", error=f"cannot be mapped to Salesforce "
                                                    f"fields: {unexpected(exc)}")
        done, notes = self._create(kind, [(i, r, v) for i, r, v, _ in creates], results,
                                   whos)
        done.update(self._update_many(kind, updates, results))
        self._delete(deletes, results)
        self._read_back(kind, done, results)
        for i, note in notes.items():
            result = results[i]
            if result is not None and result.status == "ok":
                # Created all the same: failing it would create it again next time.
                results[i] = replace(result, error=note)
        return [r if r is not None else Result("failed", error="not written") for r in results]

    def _create(self, kind: ObjectKind, creates: list[tuple[int, Record, dict[str, Any]]],
                results: list[Result | None], whos: dict[int, list[str]] | None = None
                ) -> tuple[dict[int, str], dict[int, str]]:
        """Insert records, series too, with the people related (``whos``) and invitees,
        all in one batch: a series' own record, then one more batch for the occurrences
        its exceptions delete or change. Index -> Id to read back, and index -> what
        went wrong relating people to a record created all the same."""
        if kind == "calendar" and not self.recurrence2():
            for i, record, values in creates:
                if _is_series(record):
                    results[i] = self._create_expanded(record, values)  # type: ignore[arg-type]
        todo = [(i, r, v) for i, r, v in creates if results[i] is None]
        created = self._insert(kind, [(i, v) for i, _, v in todo], results)
        todo = [(i, r) for i, r, _ in todo if i in created]
        notes: dict[int, str] = {}
        if kind == "calendar":
            unrelated = self._relate([(created[i], r, (whos or {}).get(i, [])) for i, r in todo])
            notes = {i: unrelated[created[i]] for i, _ in todo if created[i] in unrelated}
            self._write_invitees([(created[i], r, None) for i, r in todo])  # type: ignore[misc]
        shapes = [_Shape(i, created[i], list(r.exdates), dict(r.overrides))  # type: ignore[attr-defined]
                  for i, r in todo if _is_series(r)]
        done = {i: created[i] for i, r in todo if not _is_series(r)}
        done.update(self._shape(shapes, results))
        return done, notes

    def _values(self, kind: ObjectKind, record: Record, template: dict[str, Any] | None,
                files: Sequence[str]) -> dict[str, Any]:
        """The sObject fields to write for ``record``, within Salesforce's limits."""
        return self._fitted(kind, record, template, files)[0]

    def _fitted(self, kind: ObjectKind, record: Record, template: dict[str, Any] | None,
                files: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """:meth:`_values`, and the names of the fields cut to fit."""
        s = self.settings
        if kind == "calendar":
            assert isinstance(record, Event)
            values = sf.event_fields(record, invitees_in_description=s.invitees_in_description,
                                     attachments=files, event_type=s.event_type,
                                     template=template)
        elif kind == "tasks":
            values = sf.task_fields(record, template)  # type: ignore[arg-type]
        else:
            values = sf.contact_fields(record, template)  # type: ignore[arg-type]
        cut = sf.fit(SOBJECT[kind], values, self.lengths(kind), truncate_body=s.truncate_body)
        return values, cut

    def lossy(self, kind: ObjectKind, record: Record) -> list[str]:
        try:
            _, cut = self._fitted(kind, record, None, [])
        except ItemError:
            return []  # refused, not cut: refuses() says why
        lengths = self.lengths(kind)
        return [f"{SOBJECT[kind]}.{name} cut to {lengths[name]:,} characters (Salesforce "
                "keeps no more)" for name in cut]

    def _related(self, kind: ObjectKind, write: Create, values: dict[str, Any]) -> list[str]:
        """Apply a create's extra fields and relations to ``values``; the people (Contact,
        Lead Ids) left to relate once it exists. ItemError for what cannot be set."""
        described = self._describe(kind)
        obj = SOBJECT[kind]
        for name, value in write.extra.items():
            spec = described.get(name)
            if spec is None:
                raise ItemError(f"{obj} has no field {name!r}")
            if not spec["c"]:
                raise ItemError(f"{obj}.{name} cannot be set on a new {obj}")
            values[name] = value
        people = [r for r in write.relate if r[:3] in PEOPLE_PREFIXES]
        others = [r for r in write.relate if r[:3] not in PEOPLE_PREFIXES]
        if len(others) > 1:
            raise ItemError(f"an {obj} relates to one record besides people (WhatId), "
                            f"not {len(others)}: {', '.join(others)}")
        if others:
            values["WhatId"] = others[0]
        if people and (kind != "calendar" or not self._shared_activities()):
            # Without Shared Activities an activity relates to one person: its WhoId.
            if len(people) > 1:
                raise ItemError(f"this org relates an {obj} to one person, not "
                                f"{len(people)} (Shared Activities is off)")
            values["WhoId"] = people[0]
            return []
        return people

    def _shared_activities(self) -> bool:
        """Whether the org relates events to several people (Shared Activities): its
        EventRelation then has a createable IsParent. One describe per connector."""
        if self._shared is None:
            answer = self.client.call("GET", "sobjects/EventRelation/describe")
            self._shared = any(f.get("name") == "IsParent" and f.get("createable")
                               for f in answer.get("fields", []) if isinstance(f, dict))
        return self._shared

    def _relate(self, events: list[tuple[str, Record, list[str]]]) -> dict[str, str]:
        """Relate new events to people who are not among their attendees (Shared
        Activities: an EventRelation with IsParent, not an invitee). The first such
        person becomes the event's WhoId, so these go in before the invitees. Returns the
        events some relation failed for, with Salesforce's message."""
        todo = [(event_id, record, people) for event_id, record, people in events if people]
        if not todo:
            return {}
        emails = {a.email for _, r, _ in todo for a in getattr(r, "attendees", [])}
        found = self.find_people(emails, ("Contact", "Lead", "User")) if emails else {}
        attending = {_best(p)["Id"] for p in found.values()}
        records = [(n, {"attributes": {"type": "EventRelation"}, "EventId": event_id,
                        "RelationId": rid, "IsParent": True, "IsInvitee": False})
                   for n, (event_id, _, people) in enumerate(todo)
                   for rid in people if rid not in attending]
        errors: dict[str, str] = {}
        for n, answer in self._collection("POST", records) if records else []:
            if not answer.get("success"):
                errors.setdefault(todo[n][0], _failure("EventRelation", answer))
        return errors

    def _writable(self, kind: ObjectKind, values: dict[str, Any], create: bool,
                  before: dict[str, Any] | None = None) -> dict[str, Any]:
        described = self._describe(kind)
        flag = "c" if create else "u"
        out = {}
        for name, value in values.items():
            spec = described.get(name)
            if spec is None or not spec[flag]:
                continue
            if create and value is None:
                continue
            if before is not None and _same(before.get(name), value):
                continue
            out[name] = value
        return out

    def _check_versions(self, kind: ObjectKind, writes: list[tuple[int, Write]],
                        results: list[Result | None]) -> dict[str, Item]:
        """The current items of updates and deletes; "changed" for those that moved."""
        if not writes:
            return {}
        current = self.fetch(kind, [w.id for _, w in writes])  # type: ignore[union-attr]
        for i, write in writes:
            assert isinstance(write, Update | Delete)
            item = current.get(write.id)
            if item is None:
                results[i] = Result("ok") if isinstance(write, Delete) else \
                    Result("changed", error="the item was deleted meanwhile")
            elif item.version != write.version:
                results[i] = Result("changed", item,
                                    error="the item changed since it was planned")
        return current

    def _insert(self, kind: ObjectKind, values: list[tuple[int, dict[str, Any]]],
                results: list[Result | None]) -> dict[int, str]:
        """Create records; index -> new Id. Failures go into ``results``."""
        obj = SOBJECT[kind]
        if kind == "contacts":
            self._resolve_accounts([(v, {}) for _, v in values])
        records = [(i, {"attributes": {"type": obj}, **self._writable(kind, v, True)})
                   for i, v in values]
        created: dict[int, str] = {}
        for i, answer in self._collection("POST", records):
            if answer.get("success"):
                created[i] = answer["id"]
            else:
                results[i] = Result("failed", error=_failure(obj, answer))
        return created

    def _collection(self, method: str, records: list[tuple[int, dict[str, Any]]]
                    ) -> list[tuple[int, dict[str, Any]]]:
        """POST or PATCH composite/sobjects, 200 a call; rows locked are sent again."""
        out: list[tuple[int, dict[str, Any]]] = []
        todo = records
        for attempt in range(LOCK_RETRIES + 1):
            locked = []
            for chunk in _chunks(todo, COLLECTION_SIZE):
                answers = self.client.call(method, "composite/sobjects", {
                    "allOrNone": False, "records": [r for _, r in chunk]})
                for (i, record), answer in zip(chunk, answers, strict=True):
                    if not answer.get("success") and _code(answer.get("errors")) == \
                            "UNABLE_TO_LOCK_ROW" and attempt < LOCK_RETRIES:
                        locked.append((i, record))
                    else:
                        out.append((i, answer))
            if not locked:
                break
            self.client.sleep(self.client.lock_wait(attempt + 1))
            todo = locked
        return out

    def _delete_ids(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """DELETE composite/sobjects; the Ids refused -> Salesforce's answer. Locked rows
        are tried again; a record already gone is no refusal: that is what a delete wants,
        and deleting again is a no-op."""
        out: dict[str, dict[str, Any]] = {}
        todo = ids
        for attempt in range(LOCK_RETRIES + 1):
            locked = []
            for chunk in _chunks(todo, COLLECTION_SIZE):
                answers = self.client.call("DELETE", "composite/sobjects",
                                           params={"ids": ",".join(chunk), "allOrNone": "false"})
                for rid, answer in zip(chunk, answers, strict=True):
                    if not answer.get("success") and _code(answer.get("errors")) == \
                            "UNABLE_TO_LOCK_ROW" and attempt < LOCK_RETRIES:
                        locked.append(rid)
                    elif not answer.get("success") and _code(answer.get("errors")) not in (
                            "ENTITY_IS_DELETED", "NOT_FOUND"):
                        out[rid] = answer
            if not locked:
                break
            self.client.sleep(self.client.lock_wait(attempt + 1))
            todo = locked
        return out

    def _delete(self, deletes: list[tuple[int, list[str]]],
                results: list[Result | None]) -> None:
        if not deletes:
            return
        refused = self._delete_ids([rid for _, ids in deletes for rid in ids])
        for i, ids in deletes:
            errors = [refused[rid] for rid in ids if rid in refused]
            results[i] = Result("failed", error=_failure("record", errors[0])) if errors \
                else Result("ok")

    def _update_many(self, kind: ObjectKind, updates: list[tuple[int, Update, Item, Record]],
                     results: list[Result | None]) -> dict[int, str]:
        """Write each record over its item (versions checked): one PATCH collection for
        all (series' records too), then the invitees of all, then the occurrences the
        series' new exceptions delete or change. Index -> Id to read back."""
        obj = SOBJECT[kind]
        planned: list[tuple[int, Record, dict[str, Any], dict[str, Any]]] = []
        patches: list[tuple[int, dict[str, Any]]] = []
        shapes: list[_Shape] = []
        for i, _write, item, record in updates:
            doc = json.loads(item.raw)
            try:
                if kind == "calendar" and (item.id.startswith(SERIES_PREFIX)
                                           or _is_series(record)):
                    work = self._update_series(i, item, record, doc)  # type: ignore[arg-type]
                    if isinstance(work, Result):
                        results[i] = work
                        continue
                    patches += [(i, patch) for patch in work[0]]
                    shapes.append(work[1])
                    planned.append((i, record, doc, {}))
                    continue
                values = self._values(kind, record, doc[obj], ())
            except ItemError as exc:
                results[i] = Result("failed", error=str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a mapping bug fails this item only
                results[i] = Result("failed", error=f"cannot be mapped to Salesforce "
                                                    f"fields: {unexpected(exc)}")
                continue
            planned.append((i, record, doc, values))
        if kind == "contacts":
            self._resolve_accounts([(values, doc[obj]) for _, _, doc, values in planned])
        for i, _record, doc, values in planned:
            changed = self._writable(kind, values, False, before=doc[obj])
            if changed:
                patches.append((i, {"attributes": {"type": obj}, "Id": doc[obj]["Id"],
                                    **changed}))
        for i, answer in self._collection("PATCH", patches) if patches else []:
            if not answer.get("success") and results[i] is None:
                results[i] = Result("failed", error=_failure(obj, answer))
        written = [(i, record, doc) for i, record, doc, _ in planned if results[i] is None]
        if kind == "calendar":
            errors = self._write_invitees([(doc[obj]["Id"], record, doc.get("Invitees") or [])
                                           for _, record, doc in written])  # type: ignore[misc]
            for i, _, doc in written:
                if doc[obj]["Id"] in errors:
                    results[i] = Result("failed", error=errors[doc[obj]["Id"]])
        ids = {i: item.id for i, _, item, _ in updates}
        series = {s.index for s in shapes}
        done = {i: ids[i] for i, _, _ in written if results[i] is None and i not in series}
        done.update(self._shape([s for s in shapes if results[s.index] is None], results))
        return done

    def _read_back(self, kind: ObjectKind, written: dict[int, str],
                   results: list[Result | None]) -> None:
        """Give the writes done the items as now stored (one query per 200). A write that
        failed part-way (a series whose exception was refused) gets its item too, so the
        core knows it is there."""
        if not written:
            return
        items = self.fetch(kind, sorted(set(written.values())))
        for i, rid in written.items():
            item = items.get(rid)
            result = results[i]
            if result is not None:
                results[i] = replace(result, item=item)
            else:
                results[i] = Result("ok", item) if item is not None else Result(
                    "failed", error="written, but Salesforce did not return it when read back")

    # --- invitees ------------------------------------------------------------------------

    def _write_invitees(self, events: list[tuple[str, Event, list[dict[str, Any]] | None]]
                        ) -> dict[str, str]:
        """Create/delete/update EventRelations so each event's invitees match its attendees.

        Only attendees whose email a Contact, Lead or User has can be invitees; the others
        stay in the groupware (and in the Description block when that is on).
        """
        if not self.settings.invitees or not events:
            return {}
        known = {(o.get("Email") or "").lower() for _, _, old in events for o in old or []}
        emails = {a.email for _, e, _ in events for a in e.attendees
                  if a.email.lower() not in known}
        found = self.find_people(emails, ("Contact", "Lead", "User")) if emails else {}
        owner: list[str] = []  # the event of each write below, by position
        creates: list[tuple[int, dict[str, Any]]] = []
        patches: list[tuple[int, dict[str, Any]]] = []
        drops: dict[str, str] = {}
        shared = self._shared_activities() if found else False
        for event_id, event, old in events:
            have = {(o.get("Email") or "").lower(): o for o in old or []}
            want: dict[str, Attendee] = {a.email.lower(): a for a in event.attendees}
            parents = _parents([_best(found[e]) for e in want if e not in have and e in found],
                               new=old is None) if shared else set()
            for email, attendee in want.items():
                status = sf.invitee_status(attendee)
                if email in have:
                    if have[email].get("Status") != status and have[email].get("Id"):
                        patches.append((len(owner), {
                            "attributes": {"type": "EventRelation"},
                            "Id": have[email]["Id"], "Status": status}))
                        owner.append(event_id)
                    continue
                people = found.get(email)
                if not people:
                    continue
                person = _best(people)
                # A Contact (or Lead) invited is also related to the event (IsParent, one
                # record for both, with Shared Activities): the CRM shows the meeting on
                # their record, and the first one becomes the event's WhoId.
                creates.append((len(owner), {
                    "attributes": {"type": "EventRelation"}, "EventId": event_id,
                    "RelationId": person["Id"], "IsInvitee": True, "Status": status,
                    **({"IsParent": True} if person["Id"] in parents else {})}))
                owner.append(event_id)
            drops.update({o["Id"]: event_id for email, o in have.items()
                          if email not in want and o.get("Id")})
        errors: dict[str, str] = {}
        for method, batch in (("POST", creates), ("PATCH", patches)):
            for n, answer in self._collection(method, batch) if batch else []:
                if not answer.get("success"):
                    errors.setdefault(owner[n], _failure("EventRelation", answer))
        for rid, answer in (self._delete_ids(list(drops)) if drops else {}).items():
            errors.setdefault(drops[rid], _failure("EventRelation", answer))
        return errors

    # --- series --------------------------------------------------------------------------

    def _shape(self, shapes: list[_Shape], results: list[Result | None]) -> dict[int, str]:
        """For every series written, delete the occurrences of its new EXDATEs and write
        its changed overrides over theirs, all series in one batch of each. Index -> the
        series Id to read back; a series read here already and left as it was gets its
        result at once."""
        found = self._series_of([s.record_id for s in shapes if s.item is None])
        done: dict[int, str] = {}
        drops: dict[str, int] = {}
        patches: list[tuple[int, dict[str, Any]]] = []
        for s in shapes:
            item = s.item or found.get(s.record_id)
            if item is None:
                results[s.index] = Result("failed", error="the series vanished while it "
                                                          "was written")
                continue
            try:
                gone, changed = self._occurrence_writes(item, s.exdates, s.overrides)
            except Exception as exc:  # noqa: BLE001 - this series' failure only
                error = str(exc) if isinstance(exc, ItemError) else unexpected(exc)
                results[s.index] = Result("failed", error=error)
                done[s.index] = item.id
                continue
            if s.item is None and not gone and not changed:
                results[s.index] = Result("ok", item)
                continue
            done[s.index] = item.id
            drops.update(dict.fromkeys(gone, s.index))
            patches += [(s.index, patch) for patch in changed]
        for i, answer in self._collection("PATCH", patches) if patches else []:
            if not answer.get("success") and results[i] is None:
                results[i] = Result("failed", error=_failure("Event occurrence", answer))
        for rid, answer in (self._delete_ids(list(drops)) if drops else {}).items():
            if results[drops[rid]] is None:
                results[drops[rid]] = Result("failed",
                                             error=_failure("Event occurrence", answer))
        return done

    def _series_of(self, ids: list[str]) -> dict[str, Item]:
        """The series items of series Ids or of their own records (a series just created
        is known by the record inserted), keyed by what was asked."""
        if not ids:
            return {}
        records = [i for i in ids if not i.startswith(SERIES_PREFIX)]
        found = self.fetch("calendar", [i for i in ids if i.startswith(SERIES_PREFIX)])
        heads = self._query_events("Id", records) if records else []
        items = self._items("calendar", heads, set()) if heads else {}
        for head in heads:
            series = head.get("ActivityRecurrence2Id") or head["Id"]
            if series in items:
                found[head["Id"]] = items[series]
        return found

    def _occurrence_writes(self, item: Item, exdates: Iterable[str],
                           overrides: dict[str, Occurrence]
                           ) -> tuple[list[str], list[dict[str, Any]]]:
        """The occurrence records to delete and the patches to write for a series'
        EXDATEs and overrides (matched to the occurrences of ``item``)."""
        index = sf.occurrence_index(item.raw)
        drops = [index[d]["Id"] for d in exdates if d in index]
        patches = []
        for slot, occurrence in overrides.items():
            record = index.get(slot)
            if record is None:
                continue
            if occurrence.status == "cancelled":
                drops.append(record["Id"])
                continue
            one = Event(summary=occurrence.summary, start=occurrence.start or slot,
                        end=occurrence.end, location=occurrence.location,
                        description=occurrence.description)
            values = sf.event_fields(one, template={})
            # An all-day occurrence moves by its dates: Salesforce derives its times
            fields = {k: values[k] for k in ("Subject", "IsAllDayEvent", "StartDateTime",
                                             "EndDateTime", "ActivityDate", "EndDate",
                                             "Location", "Description") if k in values}
            sf.fit("Event", fields, self.lengths("calendar"),
                   truncate_body=self.settings.truncate_body)
            patches.append({"attributes": {"type": "Event"}, "Id": record["Id"], **fields})
        return drops, patches

    def _update_series(self, index: int, item: Item, record: Event, doc: dict[str, Any]
                       ) -> Result | tuple[list[dict[str, Any]], _Shape]:
        """What updating a series takes: the patches to its records and the occurrence
        work after them; or, where the series has to be made anew, the result of that."""
        old = item.record()
        assert isinstance(old, Event)
        head = doc["Event"]
        own = bool(head.get("Recurrence2PatternText")) and bool(doc.get("Occurrences")) \
            and head.get("Id") not in {o.get("Id") for o in doc["Occurrences"]}
        timing = (old.rrule, old.start, old.end, old.tz) != \
            (record.rrule, record.start, record.end, record.tz)
        if not record.rrule or not old.rrule or not set(old.exdates) <= set(record.exdates) \
                or timing and not own:
            return self._recreate(item, record, doc)
        values = self._values("calendar", record, head, ())
        patches = []
        if own:
            # The series' own record: Salesforce passes plain fields on to the occurrences
            # that are no exceptions, and lays the occurrences out anew for new timing.
            changed = self._writable("calendar", values, False, before=head)
            if changed:
                patches.append({"attributes": {"type": "Event"}, "Id": head["Id"], **changed})
        else:
            series_fields = ("Subject", "Location", "Description", "IsPrivate", "ShowAs")
            overridden = {o.start for o in old.overrides.values()} | set(record.overrides)
            for occurrence in doc.get("Occurrences") or []:
                if sf._when(occurrence)[0] in overridden:
                    continue
                changed = {k: values[k] for k in series_fields
                           if k in values and not _same(occurrence.get(k), values[k])}
                if changed:
                    patches.append({"attributes": {"type": "Event"}, "Id": occurrence["Id"],
                                    **changed})
        # New timing lays the occurrences out anew: the exceptions apply to the new ones.
        return patches, _Shape(index, item.id, sorted(set(record.exdates) - set(old.exdates)),
                               {k: v for k, v in record.overrides.items()
                                if old.overrides.get(k) != v},
                               None if timing else item)

    def _recreate(self, item: Item, record: Event, doc: dict[str, Any]) -> Result:
        """Make the event anew (Salesforce cannot bring an occurrence back, nor turn an
        event into a series), then delete the old records."""
        try:
            values = self._values("calendar", record, _series_template(doc["Event"]), ())
        except ItemError as exc:
            return Result("failed", error=str(exc))
        results: list[Result | None] = [None]
        self._read_back("calendar", self._create("calendar", [(0, record, values)], results)[0],
                        results)
        result = results[0] or Result("failed", error="not written")
        if result.status == "ok":
            self._delete_ids(_record_ids(item))
            self._state("calendar").series.pop(item.id, None)
            self._state("calendar").expanded.pop(item.id, None)
        return result

    def _create_expanded(self, event: Event, values: dict[str, Any]) -> Result:
        """The fallback: one Event per occurrence inside the time range."""
        start, stop = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in self.time_range)
        span = sf._span(event.start, event.end) or 0
        records = []
        for slot in sf.slots(event, stop):
            if slot < start[:len(slot)] or slot in event.exdates:
                continue
            occurrence = event.overrides.get(slot)
            one = Event(summary=event.summary, start=slot,
                        end=_shift(slot, span), location=event.location,
                        description=event.description, private=event.private,
                        show_as=event.show_as)
            if occurrence is not None:
                if occurrence.status == "cancelled":
                    continue
                one.summary = occurrence.summary or one.summary
                one.start, one.end = occurrence.start or one.start, occurrence.end or one.end
            try:
                fields = {**values, **sf.event_fields(one, template={})}
            except ItemError as exc:  # a moved occurrence Salesforce cannot hold
                return Result("failed", error=f"occurrence {slot}: {exc}")
            for name in RECURRENCE_FIELDS:
                fields.pop(name, None)
            records.append((len(records), fields))
        results: list[Result | None] = [None] * len(records)
        created = self._insert("calendar", records, results)
        if not created:
            return Result("failed", error=next((r.error for r in results if r), None)
                          or "no occurrence inside the sync range")
        first = created[min(created)]
        self._state("calendar").expanded[first] = [created[i] for i in sorted(created)
                                                   if created[i] != first]
        return Result("ok", self.fetch("calendar", [first]).get(first))

    # --- contacts ------------------------------------------------------------------------

    def _resolve_accounts(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Set AccountId from the company name where an Account has it (none is created).

        ``pairs``: (values to write, the record as it is; {} for a new one).
        """
        def name_of(values: dict[str, Any]) -> str | None:
            account = values.get("Account")
            return account.get("Name") if isinstance(account, dict) else None

        names = {n for v, before in pairs if (n := name_of(v)) and n != name_of(before)}
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(names), CHUNK_IDS):
            for r in self.client.query(f"SELECT Id, Name FROM Account WHERE Name IN "
                                       f"{soql_list(chunk)}"):
                found.setdefault(r["Name"], r["Id"])
        for values, before in pairs:
            name, old = name_of(values), name_of(before)
            values.pop("Account", None)
            if name and name != old and name in found:
                values["AccountId"] = found[name]
            elif not name and old:
                values["AccountId"] = None


# --- helpers -----------------------------------------------------------------------------


def _guarded(kind: ObjectKind, item_id: str, build: Callable[[], Item]) -> Item:
    """The item ``build`` makes of Salesforce's records; should that fail on odd records,
    an item carrying the reason (reported, never written over or deleted)."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - one record's trouble, not the listing's
        return Item(item_id, f"unreadable:{item_id}", "", FORMAT, kind,
                    error=f"Salesforce record {item_id} cannot be read: {unexpected(exc)}")


def _q(soql: str) -> str:
    from urllib.parse import quote

    return quote(soql, safe="")


def _chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def _children(record: dict[str, Any]) -> list[dict[str, Any]]:
    sub = record.get("EventRelations")
    if isinstance(sub, dict):
        return list(sub.get("records") or [])
    return list(sub or []) if isinstance(sub, list) else []


def _list(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return [b for b in body if isinstance(b, dict)]
    return [body] if isinstance(body, dict) else []


def _code(body: Any) -> str | None:
    errors = _list(body)
    if not errors:
        return None
    return errors[0].get("errorCode") or errors[0].get("statusCode")


def _ok(body: Any, status: int, what: str) -> dict[str, Any]:
    if status >= 400 or not isinstance(body, dict):
        error = SalesforceError(status, _list(body))
        raise ConnectionFailed(f"Salesforce refused {what}: {error}")
    return body


def _failure(obj: str, answer: dict[str, Any]) -> str:
    errors = answer.get("errors") or []
    return f"Salesforce refused the {obj}: {describe_errors(errors) or 'unknown error'}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str) and re.match(r"\d{4}-\d\d-\d\dT", a):
        return sf.sf_datetime(a) == sf.sf_datetime(b)
    return (a if a not in ("", None) else None) == (b if b not in ("", None) else None)


def _parents(people: list[dict[str, str]], new: bool) -> set[str]:
    """Which of an event's newly invited people to relate (IsParent): up to 50 Contacts,
    or, on a new event without any, one Lead (Shared Activities allows no more)."""
    contacts = [p["Id"] for p in people if p["type"] == "Contact"]
    if contacts:
        return set(contacts[:50])
    leads = [p["Id"] for p in people if p["type"] == "Lead"]
    return {leads[0]} if leads and new else set()


def _best(people: list[dict[str, str]]) -> dict[str, str]:
    order = {"Contact": 0, "Lead": 1, "User": 2}
    return min(people, key=lambda p: order.get(p["type"], 3))


def _is_series(record: Record) -> bool:
    return isinstance(record, Event) and bool(record.rrule)


def _record_ids(item: Item) -> list[str]:
    doc = json.loads(item.raw)
    head = doc[next(iter(k for k in ("Event", "Task", "Contact") if k in doc))]
    # A series' own record first: deleting it deletes its occurrences with it.
    ids = [head["Id"]] if head.get("Id") else []
    return ids + [o["Id"] for o in doc.get("Occurrences") or []
                  if o.get("Id") and o["Id"] not in ids] + list(doc.get("Expanded") or [])


def _series_head(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The series as one record: its own record where it has one (the one holding the
    pattern text), else the first regular occurrence's content at the pattern's start."""
    own = [r for r in members if r.get("Recurrence2PatternText")]
    ordered = sorted(own or members, key=lambda r: sf._when(r)[0] or "")
    head = next((r for r in ordered if not r.get("IsRecurrence2Exception")), ordered[0])
    head = dict(head)
    if not head.get("Recurrence2PatternText"):
        pattern = next((r for r in members if r.get("Recurrence2PatternText")), None)
        if pattern is not None:
            head["Recurrence2PatternText"] = pattern["Recurrence2PatternText"]
    start = head.get("Recurrence2PatternStartDate")
    if start and not head.get("IsAllDayEvent") and head.get("StartDateTime") and \
            sf.sf_datetime(start) != sf.sf_datetime(head["StartDateTime"]):
        span = sf._span(sf.sf_datetime(head["StartDateTime"]),
                        sf.sf_datetime(head.get("EndDateTime"))) or 0
        first = sf.sf_datetime(start) or ""
        head["StartDateTime"] = sf.to_sf_datetime(first)
        head["EndDateTime"] = sf.to_sf_datetime(_shift(first, span))
    return head


def _series_template(head: dict[str, Any]) -> dict[str, Any]:
    keep = ("Type", "WhoId", "WhatId", "ShowAs", "Recurrence2PatternVersion")
    return {k: head[k] for k in keep if k in head}


def _shift(m: str, seconds: float) -> str:
    if "T" not in m:
        from datetime import date

        return (date.fromisoformat(m) + timedelta(seconds=seconds)).isoformat()
    when = datetime.fromisoformat(m.rstrip("Z")) + timedelta(seconds=seconds)
    return when.isoformat() + ("Z" if m.endswith("Z") else "")
