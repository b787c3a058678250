"""The connector interface: the one contract between the sync core and a system.

A connector lists what changed, fetches items and writes them. It does no sync logic.
Every connector speaks the same vocabulary:

ID
    An item's identifier on its side: a file name (vdir), an href (CalDAV), a record Id
    (Salesforce). Stable for the item's life.
VERSION
    An opaque string that changes whenever the item changes: an etag, a SystemModstamp,
    a content hash. Writes carry the version they were planned from (a precondition).
ITEM
    An item's native content (``raw``) in a FORMAT (see :mod:`crmsync.formats`), with its
    id and version. Its record, the canonical model, is parsed on demand.
CURSOR
    An opaque string returned by :meth:`Connector.list_changes`; handed back next time,
    it asks for only what changed since. ``None`` asks for a full listing.
SIDE
    ``"crm"`` or ``"groupware"``: which end of a profile a connector serves.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from crmsync import formats
from crmsync.errors import ConfigError, FormatError, unexpected
from crmsync.merge import apply_changes
from crmsync.model import ObjectKind, Record

Side = Literal["crm", "groupware"]
SIDES: tuple[Side, Side] = ("crm", "groupware")

# UID, optional parameters, then the value, which may itself hold colons (urn:uuid:...).
_UID_LINE = re.compile(r"^UID(?:;[^:\r\n]*)?:([^\r\n]*)", re.MULTILINE)


def other(side: Side) -> Side:
    return "groupware" if side == "crm" else "crm"


class Item:
    """One item as a side stores it. ``record()`` parses it once, on first use."""

    __slots__ = ("id", "version", "raw", "fmt", "kind", "modified", "error", "_uid", "_record")

    def __init__(
        self,
        id: str,
        version: str,
        raw: str,
        fmt: str,
        kind: ObjectKind,
        *,
        modified: str | None = None,
        uid: str | None = None,
        error: str | None = None,
    ) -> None:
        self.id = id
        self.version = version
        self.raw = raw
        self.fmt = fmt
        self.kind = kind
        # MOMENT of the last change as the side reports it; decides "newest wins".
        self.modified = modified
        # Set when the item could not even be read (e.g. invalid UTF-8): it is reported
        # and skipped, never written over or deleted.
        self.error = error
        self._uid = uid
        self._record: Record | None = None

    def record(self) -> Record:
        if self.error is not None:
            raise FormatError(self.error, self.id)
        if self._record is None:
            try:
                self._record = formats.parse(self.fmt, self.kind, self.raw)
            except FormatError as exc:
                exc.item_id = self.id
                raise
            except Exception as exc:  # noqa: BLE001 - a reader's bug fails this item only
                raise FormatError(f"cannot be read ({unexpected(exc)})", self.id) from exc
        return self._record

    @property
    def uid(self) -> str | None:
        """The item's UID; read from the text without a full parse where possible."""
        if self._uid is None and self.error is None:
            if self._record is not None:
                self._uid = self._record.uid
            else:
                m = _UID_LINE.search(self.raw)
                self._uid = m.group(1).strip() if m else ""
        return self._uid or None

    def label(self, parse: bool = True) -> str:
        if self._record is None and not parse:
            return self.id
        try:
            return self.record().label() or self.id  # a contact without a name, ...
        except Exception:  # noqa: BLE001 - a label never fails: the id stands in
            return self.id

    def __repr__(self) -> str:
        return f"Item({self.kind}:{self.id}@{self.version})"


@dataclass
class Changes:
    """What :meth:`Connector.list_changes` found since a cursor."""

    # Items created or changed since the cursor. The connector may hand the content
    # along when it had to read it anyway; otherwise the core fetches what it needs.
    upserts: list[tuple[str, str, Item | None]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    cursor: str | None = None
    # True when this is a full listing: every existing item is among the upserts.
    complete: bool = False
    # Warnings for the run report, not failures: a listing that fell back to another way
    # of asking (the server failed the first), items a listing can only find another way.
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Create:
    # The item this one is copied from; a side storing the same format may copy it
    # verbatim, which keeps everything the model does not know.
    source: Item
    # What to write when not the source's record as it is.
    record: Record | None = None
    # CRM record Ids to relate the new item to (people, an account, ...) and extra CRM
    # fields to set, e.g. by `crmsync record`; a side that cannot fails the write.
    relate: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # On the groupware side: the CRM Id the new item keeps (Record.crm_id).
    crm_id: str = ""

    def content(self) -> Record:
        return _keep(self.record if self.record is not None else self.source.record(),
                     self.crm_id)


@dataclass(frozen=True)
class Update:
    id: str
    version: str
    # Flattened field changes (see :mod:`crmsync.merge`) to write over the item.
    changes: dict[str, Any]
    # The item as planned (at ``version``): a connector may reuse its parsed record.
    planned: Item | None = None
    # On the groupware side: a CRM Id for the item to keep from now on (Record.crm_id),
    # written along with the changes.
    crm_id: str = ""
    # On the groupware side: a new UID for the item (`crmsync repair`, duplicate UIDs);
    # sides without UIDs ignore it.
    uid: str = ""

    def over(self, record: Record) -> Record:
        """``record`` (the item's current content) as this update leaves it."""
        record = _keep(apply_changes(record, self.changes), self.crm_id)
        return dataclasses.replace(record, uid=self.uid) if self.uid else record  # type: ignore[type-var]


def _keep(record: Record, crm_id: str) -> Record:
    return dataclasses.replace(record, crm_id=crm_id) if crm_id else record  # type: ignore[type-var]


@dataclass(frozen=True)
class Delete:
    id: str
    version: str


Write = Create | Update | Delete

# The sync range as UTC datetimes [start, end).
Window = tuple[datetime, datetime]

# Progress through a long listing (e.g. sync-collection pages): the cursor reached so far,
# the ids listed before it (changed or deleted), and whether the listing is a full one.
# The core saves the cursor with those ids marked pending, so that a run cut off part-way
# resumes from there and looks at those ids again instead of listing everything anew.
Checkpoint = Callable[[str, Sequence[str], bool], None]
# Reading items while listing: (items read so far, items to read), for progress bars.
ReadProgress = Callable[[int, int], None]

WriteStatus = Literal["ok", "changed", "exists", "failed"]


@dataclass(frozen=True)
class Result:
    """The outcome of one write, in the order the writes were given.

    ``ok``: done; ``item`` is the item as now stored (None after a delete).
    ``changed``: the precondition failed, the item changed since it was planned.
    ``exists``: a create found the same item (same UID) already there; ``item`` is it.
    ``failed``: the side refused this item; ``error`` says why. Other items go on.
    ``note``: with any status, what the user should know about the item as written (a
    warning in the run report), e.g. that the server's listings will not show it.
    """

    status: WriteStatus
    item: Item | None = None
    error: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Credentials:
    """How a connector authenticates. Secrets never appear in repr() or logs."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    # TLS: verification is on unless turned off; ca_bundle names a PEM file to trust.
    verify: bool = True
    ca_bundle: str | None = None
    # OAuth 2.0 (Salesforce): the connected app, and a refresh token (web-server flow) or
    # a private key, PEM text or a file name (JWT bearer flow, with ``username``).
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    # Where to log in; the instance itself when unset.
    login_url: str | None = None
    # Called with the new refresh token when the identity provider rotates it (Microsoft
    # does), so that it is stored for the next run; None: nobody keeps it.
    renewed: Callable[[str], None] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Capabilities:
    # The record fields this side stores, per object; only fields both sides store
    # are compared and synced.
    fields: dict[ObjectKind, frozenset[str]]
    # How many writes one apply() call should carry.
    batch_size: int = 200
    # True if created items keep the UID they are given, so that items re-pair by UID
    # after the state store is lost.
    keeps_uid: bool = True
    # False if the side keeps instants only (Salesforce): floating local times are pinned
    # to the user's zone (the policy's ``timezone``) before they are written there.
    floating: bool = True
    # True if creates honour ``Create.relate`` and ``Create.extra`` (`crmsync record`).
    relations: bool = False


class Connector(ABC):
    """One side of a profile. Construct from an endpoint, see :mod:`crmsync.connectors`."""

    side: Side
    capabilities: Capabilities

    @abstractmethod
    def list_changes(self, kind: ObjectKind, cursor: str | None, *,
                     window: Window | None = None,
                     checkpoint: Checkpoint | None = None,
                     progress: ReadProgress | None = None) -> Changes:
        """Items changed or deleted since ``cursor`` (all items when it is None).

        ``window``, given with no cursor, allows leaving out items wholly outside the sync
        range (the listing is then not complete). ``checkpoint`` is called as a long
        listing progresses; a connector that lists in one step never calls it.
        ``progress`` is told how many items were read so far when a listing reads them
        one by one or in batches (a listing that gets them in one answer need not).
        """

    @abstractmethod
    def fetch(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, Item]:
        """The current items for ``ids``; ids no longer there are absent from the result."""

    @abstractmethod
    def apply(self, kind: ObjectKind, writes: Sequence[Write]) -> list[Result]:
        """Write a batch; one Result per write, in order. Writes are idempotent."""

    def find_people(self, emails: Iterable[str], objects: Sequence[str] = ("Contact", "Lead"),
                    *, alternates: bool = False) -> dict[str, list[dict[str, str]]]:
        """A CRM's people having each email: lower-cased email -> [{"Id", "type", "Name",
        "Email"}]; ``alternates`` searches secondary email fields too. For selection
        "matched" and for relating events to people."""
        raise ConfigError(f"{self!r} cannot look people up by email (needed by selection "
                          "'matched' and by 'record --relate EMAIL')")

    def refuses(self, kind: ObjectKind, record: Record) -> str | None:
        """Why this side would certainly refuse to store ``record`` (a field over its
        length, a required field missing), None when it would take it. The planner asks
        before a create or update, so that such an item shows as a skip with the reason
        in the review and dry run instead of failing at apply on every run."""
        return None

    def lossy(self, kind: ObjectKind, record: Record) -> list[str]:
        """What this side will not keep of ``record`` when it writes it (a body cut to
        its field length, ...), one phrase each: shown per item in the review, the dry
        run and the report, so that nothing is lost without a word. Empty by default."""
        return []

    def image(self, kind: ObjectKind) -> Callable[[Record], Record] | None:
        """How a record written here reads back, as a pure function (no I/O: what it needs,
        e.g. field lengths, the connector looks up now): the side's lossy IMAGE of it.
        The planner compares through it, so that a value this side cut (a body, a
        location) is taken as equal to its original and never written over it. None:
        this side keeps what it is given (the default)."""
        return None

    def cursor(self, kind: ObjectKind, listed: str | None) -> str | None:
        """The cursor to store after this run's writes; by default the listing's."""
        return listed

    def stats(self) -> dict[str, int]:
        """Counters for the run report, e.g. {"requests": 12}."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
