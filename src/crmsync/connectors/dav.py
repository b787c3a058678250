"""``caldav:URL`` and ``carddav:URL``: one calendar or address book on a DAV server.

The URL names one COLLECTION: a calendar (CalDAV, RFC 4791) serves the objects
``calendar`` (its VEVENT items) and ``tasks`` (its VTODO items), an address book (CardDAV,
RFC 6352) serves ``contacts``. In the vocabulary of :mod:`crmsync.connectors.base`:

ID
    The item's href path as the server lists it, percent-decoded (``/ana/work/x.ics``).
VERSION
    Its ETag, exactly as the server sends it (quotes included): it goes back verbatim in
    ``If-Match``.
CURSOR
    A small JSON object: ``{"v": 1, "token": ...}`` holds an RFC 6578 sync token; servers
    without sync-collection get ``{"v": 1, "ctag": ..., "etags": {href: etag}}`` instead.
    Both may carry ``"kinds"``, the objects the collection holds, so that an incremental
    listing needs no extra request to learn it, and ``"rewrites"``: whether the server
    stores something else than what it is sent (SOGo does), learnt from the first write
    to the collection (read back and compared); where it does, written items are read
    back (one multiget per batch) so that the pair's base is the server's copy. A token
    that is a Unix time in seconds (SOGo's) is kept one second early (see settled()).

A listing with nothing changed costs one request. A calendar holding both events and
tasks is listed once for both: sync-collection cannot tell a VEVENT from a VTODO, so the
changed items are read (multiget) and sorted by component, and the listing is kept for
the other object. A first listing with a sync range asks for the events in it (a
time-range query) but for every task (RFC 4791 9.9 leaves servers room in how a task
matches a time range, and DAViCal's misses tasks without DTSTART). Writes carry
preconditions (``If-None-Match: *`` to create, ``If-Match`` to update or delete), so a
write never overwrites an item that changed since it was planned, and a retried write
never applies twice.

Three layers, top to bottom: :class:`DavConnector` (the Connector), the WebDAV request
bodies and multistatus parsing (module functions), and :class:`Http` (one keep-alive
httpx client with retries, request counts and credential errors).
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import random
import re
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote, unquote, urljoin, urlsplit
from xml.sax.saxutils import escape

import httpx

from crmsync import formats
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
from crmsync.connectors.vdir import EXTENSION, FORMAT, file_name
from crmsync.errors import (
    ConfigError,
    ConnectionFailed,
    CrmsyncError,
    FormatError,
    unexpected,
)
from crmsync.model import RECORD_TYPES, ObjectKind

log = logging.getLogger(__name__)

DavProtocol = Literal["caldav", "carddav"]
CollectionKind = Literal["calendar", "addressbook"]

KINDS: dict[DavProtocol, tuple[ObjectKind, ...]] = {
    "caldav": ("calendar", "tasks"),
    "carddav": ("contacts",),
}
# The iCalendar component each calendar object is stored as.
COMPONENT: dict[ObjectKind, str] = {"calendar": "VEVENT", "tasks": "VTODO"}

# --- HTTP ------------------------------------------------------------------------------

Sleep = Callable[[float], None]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Errors where the request may not have reached the server or its answer was lost. DAV
# writes carry preconditions, so they are safe to repeat; a request that is not (a
# Salesforce insert) is repeated only where it surely was not done (see Http.send).
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
MAX_TRIES = 4
MAX_WAIT = 30.0
FIRST_WAIT = 1.0


def public_url(url: str | httpx.URL) -> str:
    """``url`` without user info, fit for messages and logs."""
    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


class ServerError(ConnectionFailed):
    """The server is up but kept failing one request (5xx, retries included): another
    way of asking, e.g. another kind of listing, may still work. ``status``: its HTTP
    status (500: the server failed on this request; 502-504: it is unavailable)."""

    status: int = 500


class _BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class Http:
    """One keep-alive client for one server.

    Retries 5xx/429 answers and lost connections with exponential backoff and full
    jitter (or the wait the server asks for in Retry-After), counts every request sent
    (redirects and retries included), and turns an unreachable server or refused
    credentials into :class:`ConnectionFailed`. Other answers go back to the caller.
    """

    def __init__(self, credentials: Credentials | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, sleep: Sleep = time.sleep,
                 max_tries: int = MAX_TRIES) -> None:
        creds = credentials or Credentials()
        auth: httpx.Auth | None = None
        if creds.token:
            auth = _BearerAuth(creds.token)
        elif creds.username is not None:
            auth = httpx.BasicAuth(creds.username, creds.password or "")
        self.has_credentials = auth is not None
        self.username = creds.username if not creds.token else None
        verify: ssl.SSLContext | bool = creds.verify
        if creds.verify and creds.ca_bundle:
            try:
                verify = ssl.create_default_context(cafile=creds.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"the CA bundle {creds.ca_bundle} cannot be used: "
                                  f"{exc}") from exc
        self.client = httpx.Client(
            auth=auth, verify=verify, timeout=timeout, transport=transport,
            follow_redirects=True, headers={"User-Agent": "crmsync"},
            event_hooks={"request": [self._count]},
        )
        self.sleep = sleep
        self.max_tries = max_tries
        self.requests = 0
        self.retries = 0
        self._random = random.Random()

    def _count(self, request: httpx.Request) -> None:
        self.requests += 1

    def send(self, method: str, url: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, *,
             accept_401: bool = False, repeatable: bool = True) -> httpx.Response:
        """Send a request; ``accept_401`` hands a 401 answer back instead of raising.

        A request that is not ``repeatable`` (doing it twice does it twice) is sent again
        only when it surely was not done: the connection was never made, or the server
        answered 429. Else a lost answer raises ConnectionFailed, and the next run finds
        what was done (the core pairs it by content) rather than doing it twice.
        """
        for attempt in range(1, self.max_tries + 1):
            last = attempt == self.max_tries
            try:
                response = self.client.request(method, url, content=body, headers=headers)
            except RETRY_ERRORS as exc:
                if last or not (repeatable or isinstance(exc, NOT_SENT)):
                    raise ConnectionFailed(
                        f"{public_url(url)} is unreachable after {attempt} tries: "
                        f"{_reason(exc)}") from exc
                self._retrying(method, url, attempt, _reason(exc))
                self.sleep(self._backoff(attempt))
                continue
            log.debug("%s %s -> %d", method, unquote(public_url(url)), response.status_code)
            if response.status_code == 401 and not accept_401:
                raise ConnectionFailed(self.refused(url, response))
            if response.status_code not in RETRY_STATUSES:
                return response
            if not repeatable and response.status_code != 429:
                raise ConnectionFailed(
                    f"{public_url(url)} answered HTTP {response.status_code} "
                    f"{response.reason_phrase} to a {method} that may have been done; not "
                    f"sent again, so nothing is written twice")
            asked = _retry_after(response.headers.get("Retry-After"))
            if last or (asked is not None and asked > MAX_WAIT):
                wait = "" if asked is None else f", asks to retry in {asked:.0f} s"
                error = ServerError if response.status_code >= 500 else ConnectionFailed
                failure = error(
                    f"{public_url(url)} is unavailable: HTTP {response.status_code} "
                    f"{response.reason_phrase} after {attempt} tries{wait}")
                if isinstance(failure, ServerError):
                    failure.status = response.status_code
                raise failure
            self._retrying(method, url, attempt, f"HTTP {response.status_code} "
                           f"{response.reason_phrase}")
            self.sleep(asked if asked is not None else self._backoff(attempt))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _retrying(self, method: str, url: str, attempt: int, reason: str) -> None:
        # Every try is a request (counted in ``requests``); a retry shows with -v.
        self.retries += 1
        log.info("%s %s failed (%s); sending it again (try %d of %d)", method,
                 unquote(public_url(url)), reason, attempt + 1, self.max_tries)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: many clients failing together do not come back together.
        return self._random.uniform(0, min(MAX_WAIT, FIRST_WAIT * 2 ** (attempt - 1)))

    def refused(self, url: str, response: httpx.Response) -> str:
        status = f"HTTP {response.status_code} {response.reason_phrase}"
        if not self.has_credentials:
            return f"{public_url(url)} asks for credentials ({status}); none were given"
        return f"{public_url(url)} refused the credentials ({status})"

    def close(self) -> None:
        self.client.close()


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    return None if when is None else max(0.0, (when - datetime.now(UTC)).total_seconds())


def _http_date(value: str) -> datetime | None:
    """An HTTP-date (RFC 9110) as an aware datetime, None when it is not one."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# --- WebDAV requests and answers -------------------------------------------------------

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
CARDDAV = "{urn:ietf:params:xml:ns:carddav}"
CALSERVER = "{http://calendarserver.org/ns/}"

_NAMESPACES = ('xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav" '
               'xmlns:CR="urn:ietf:params:xml:ns:carddav" '
               'xmlns:CS="http://calendarserver.org/ns/"')
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}

# The properties a probe of the collection asks for (prefixes as in _NAMESPACES).
PROBE_PROPS = ("D:resourcetype", "D:displayname", "D:supported-report-set",
               "C:supported-calendar-component-set", "CS:getctag", "D:sync-token")
# A home's listing asks for no principal properties: Radicale refuses those to anonymous
# users (401) while it lists their collections.
LISTING_PROPS = ("D:resourcetype", "D:displayname", "C:supported-calendar-component-set")
DISCOVERY_PROPS = (*LISTING_PROPS, "D:current-user-principal", "C:calendar-home-set",
                   "CR:addressbook-home-set")
_DATA = {"caldav": "C:calendar-data", "carddav": "CR:address-data"}
# How servers refuse a REPORT they do not support (multiget, time-range query): the
# connector then reads another way.
NO_SUCH_REPORT = (400, 403, 405, 415, 501)


def _xml(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="utf-8"?>\n<{root} {_NAMESPACES}>{inner}</{root}>' \
        .encode()


def _props(names: Iterable[str]) -> str:
    return "<D:prop>" + "".join(f"<{name}/>" for name in names) + "</D:prop>"


def _hrefs(paths: Iterable[str]) -> str:
    return "".join(f"<D:href>{escape(quote_path(p))}</D:href>" for p in paths)


def propfind_body(props: Iterable[str]) -> bytes:
    return _xml("D:propfind", _props(props))


def sync_collection_body(token: str, data: str | None = None) -> bytes:
    """A sync-collection REPORT; ``data`` (e.g. "C:calendar-data") asks for the content."""
    props = ["D:getetag", data] if data else ["D:getetag"]
    return _xml("D:sync-collection", f"<D:sync-token>{escape(token)}</D:sync-token>"
                "<D:sync-level>1</D:sync-level>" + _props(props))


def multiget_body(protocol: DavProtocol, paths: Iterable[str]) -> bytes:
    root = "C:calendar-multiget" if protocol == "caldav" else "CR:addressbook-multiget"
    props = _props(["D:getetag", "D:getlastmodified", _DATA[protocol]])
    return _xml(root, props + _hrefs(paths))


def component_query_body(component: str) -> bytes:
    """Every item with a ``component`` (VEVENT, VTODO), with its content: no time range."""
    filters = (f'<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="{component}"/>'
               "</C:comp-filter></C:filter>")
    props = _props(["D:getetag", "D:getlastmodified", _DATA["caldav"]])
    return _xml("C:calendar-query", props + filters)


def uid_query_body(protocol: DavProtocol, component: str, uid: str) -> bytes:
    """Items whose UID contains ``uid`` (CalDAV matches substrings), with their content."""
    props = _props(["D:getetag", _DATA[protocol]])
    if protocol == "carddav":
        match = (f'<CR:text-match collation="i;octet" match-type="equals">{escape(uid)}'
                 "</CR:text-match>")
        return _xml("CR:addressbook-query",
                    f'{props}<CR:filter><CR:prop-filter name="UID">{match}'
                    "</CR:prop-filter></CR:filter>")
    match = f'<C:text-match collation="i;octet">{escape(uid)}</C:text-match>'
    return _xml("C:calendar-query",
                f'{props}<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter '
                f'name="{component}"><C:prop-filter name="UID">{match}</C:prop-filter>'
                "</C:comp-filter></C:comp-filter></C:filter>")


def quote_path(path: str) -> str:
    return quote(path, safe="/:@!$&'()*+,;=-._~")


def href_path(href: str, base: str) -> str:
    """An href as the ID of what it names: its path, percent-decoded.

    Servers differ in what they quote (``@``, ``+``, spaces); decoding makes one item
    keep one ID whichever form a response uses.
    """
    return unquote(urlsplit(urljoin(base, href.strip())).path)


@dataclass
class DavResponse:
    """One DAV:response of a multistatus."""

    path: str
    # The response's own status (404 for a deleted member, 507 for a truncated listing),
    # else 200.
    status: int
    # Properties the server returned with a 2xx propstat, by Clark name ({DAV:}getetag).
    props: dict[str, ET.Element] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        element = self.props.get(name)
        return None if element is None else (element.text or "")

    def hrefs(self, name: str, base: str) -> list[str]:
        """The paths a property like DAV:current-user-principal names."""
        element = self.props.get(name)
        if element is None:
            return []
        return [href_path(h.text, base) for h in element.iter(DAV + "href") if h.text]

    def has(self, name: str, child: str) -> bool:
        """Whether property ``name`` holds element ``child`` (e.g. a resourcetype)."""
        element = self.props.get(name)
        return element is not None and element.find(".//" + child) is not None


@dataclass
class Multistatus:
    responses: list[DavResponse]
    sync_token: str | None = None


def parse_multistatus(data: bytes, base: str) -> Multistatus:
    """Parse a 207 body; raises ValueError when it is not a DAV:multistatus."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from exc
    if root.tag != DAV + "multistatus":
        raise ValueError(f"expected DAV:multistatus, got {root.tag}")
    responses = []
    for element in root.findall(DAV + "response"):
        href = element.findtext(DAV + "href")
        if not href:
            continue
        response = DavResponse(href_path(href, base), _status(element.findtext(DAV + "status")))
        for propstat in element.findall(DAV + "propstat"):
            prop = propstat.find(DAV + "prop")
            if prop is not None and 200 <= _status(propstat.findtext(DAV + "status")) < 300:
                response.props.update((p.tag, p) for p in prop)
        responses.append(response)
    return Multistatus(responses, root.findtext(DAV + "sync-token"))


def _status(line: str | None) -> int:
    """The code in ``HTTP/1.1 404 Not Found``; 200 when there is no status line."""
    if not line:
        return 200
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 500


def preconditions(response: httpx.Response) -> dict[str, ET.Element]:
    """The failed WebDAV, CalDAV or CardDAV preconditions a DAV:error body names.

    Servers also put their own elements there (SabreDAV its exception name): those name
    no precondition.
    """
    try:
        root = ET.fromstring(response.content)
    except ET.ParseError:
        return {}
    if root.tag != DAV + "error":
        return {}
    return {child.tag: child for child in root
            if child.tag.startswith((DAV, CALDAV, CARDDAV))
            and child.tag != DAV + "responsedescription"}


# What DAViCal's 412 names when the If-Match or If-None-Match header failed: not a
# WebDAV precondition of the content, the header's own.
_HEADER_CONDITIONS = frozenset({DAV + "if-match", DAV + "if-none-match"})


def stale(response: httpx.Response) -> bool:
    """Whether a write failed because the item changed: If-Match or If-None-Match.

    A 412 naming another precondition is something else: Xandikos refuses invalid content
    with 412 valid-calendar-data. DAViCal names the header that failed (``<DAV:if-match/>``
    or ``<DAV:if-none-match/>``): that is the item's version, a stale write.
    """
    return response.status_code == 412 \
        and not preconditions(response).keys() - _HEADER_CONDITIONS


# SOGo's answer to a second resource with a UID the calendar holds: 409 and
# <D:error xmlns:D="DAV">Event UID already in use. (uid)</D:error>, no precondition.
_UID_IN_USE = re.compile(rb"UID already in use", re.IGNORECASE)


def uid_conflict(response: httpx.Response) -> ET.Element | None:
    """The error element of a create refused because another item has its UID, else None.

    CalDAV and CardDAV's no-uid-conflict (Radicale, Xandikos); Cyrus's
    unique-scheduling-object-resource (RFC 6638 3.2.4.1), which names the item's href;
    SOGo's 409 with its own text, which names nothing.
    """
    conditions = preconditions(response)
    for name in (CALDAV + "no-uid-conflict", CARDDAV + "no-uid-conflict",
                 CALDAV + "unique-scheduling-object-resource"):
        if name in conditions:
            return conditions[name]
    if response.status_code == 409 and _UID_IN_USE.search(response.content):
        return ET.Element(DAV + "error")
    return None


def _refusal(response: httpx.Response) -> str:
    """``HTTP 403 Forbidden (no-uid-conflict)``: a status for an error message."""
    names = [tag.rpartition("}")[2] for tag in preconditions(response)]
    detail = f" ({', '.join(names)})" if names else ""
    return f"HTTP {response.status_code} {response.reason_phrase}{detail}"


# --- discovery -------------------------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    """A calendar or address book found by :func:`discover`."""

    url: str
    name: str
    kind: CollectionKind
    # The iCalendar components a calendar accepts (empty: any); {"VCARD"} for a book.
    components: frozenset[str]


_COLLECTION: dict[DavProtocol, tuple[CollectionKind, str, str, str]] = {
    # protocol: (collection kind, resourcetype element, home-set property, as requested)
    "caldav": ("calendar", CALDAV + "calendar", CALDAV + "calendar-home-set",
               "C:calendar-home-set"),
    "carddav": ("addressbook", CARDDAV + "addressbook", CARDDAV + "addressbook-home-set",
                "CR:addressbook-home-set"),
}


def discover(url: str, protocol: DavProtocol, credentials: Credentials | None = None,
             transport: httpx.BaseTransport | None = None) -> list[Collection]:
    """The user's calendars (caldav) or address books (carddav), from any URL of the server.

    The URL may name the server root, a principal, a home or a collection itself. Tried in
    order: the URL's own properties, the well-known URI (RFC 6764), the current user's
    principal, its home set, and a Depth:1 listing of each home.
    """
    http = Http(credentials, transport=transport)
    try:
        return _discover(http, url, protocol)
    finally:
        http.close()


def _discover(http: Http, url: str, protocol: DavProtocol) -> list[Collection]:
    kind, resourcetype, home_set, home_set_prop = _COLLECTION[protocol]
    pages: list[str] = []
    here = _propfind_one(http, url, DISCOVERY_PROPS, pages)
    if here is not None and here.has(DAV + "resourcetype", resourcetype):
        return [_collection(here, url, kind)]
    homes = here.hrefs(home_set, url) if here is not None else []
    if not homes:
        principals = here.hrefs(DAV + "current-user-principal", url) if here else []
        if not principals:
            well_known = urljoin(url, f"/.well-known/{protocol}")
            found = _propfind_one(http, well_known, ["D:current-user-principal"])
            principals = found.hrefs(DAV + "current-user-principal", url) if found else []
        for principal in principals:
            found = _propfind_one(http, urljoin(url, quote_path(principal)), [home_set_prop])
            homes += found.hrefs(home_set, url) if found else []
    # A server without principals keeps its collections right below the URL.
    homes = homes or [href_path(url, url)]
    collections: dict[str, Collection] = {}
    for home in dict.fromkeys(homes):
        home_url = urljoin(url, quote_path(home))
        response = http.send("PROPFIND", home_url, propfind_body(LISTING_PROPS),
                             {"Depth": "1", **XML_HEADERS})
        if response.status_code != 207:
            continue
        for member in _multistatus(response, home_url).responses:
            if member.has(DAV + "resourcetype", resourcetype):
                found_one = _collection(member, url, kind)
                collections[found_one.url] = found_one
    if not collections and pages:
        # SOGo's root (/SOGo/) answers PROPFIND with its login page, 200 text/html.
        user = http.username
        hint = urljoin(pages[0], f"dav/{quote(user)}/" if user else "dav/USER/")
        raise ConfigError(f"{public_url(pages[0])} answered with an HTML page (a login "
                          f"page?), not a DAV collection; try {public_url(hint)} (SOGo), or "
                          "the CalDAV/CardDAV URL the server's documentation gives")
    return sorted(collections.values(), key=lambda c: c.url)


def _propfind_one(http: Http, url: str, props: Iterable[str],
                  pages: list[str] | None = None) -> DavResponse | None:
    """The properties of the resource at ``url`` itself; None if it has none to give.
    An answer that is a web page adds its URL to ``pages``."""
    # Without credentials a 401 here is no answer, not an error (see LISTING_PROPS).
    response = http.send("PROPFIND", url, propfind_body(props), {"Depth": "0", **XML_HEADERS},
                         accept_401=not http.has_credentials)
    if response.status_code == 403 or response.status_code == 401 and http.has_credentials:
        raise ConnectionFailed(http.refused(url, response))
    if response.status_code != 207:
        if pages is not None and response.is_success and response.headers.get(
                "Content-Type", "").lower().startswith(("text/html", "application/xhtml")):
            pages.append(str(response.url))
        return None
    path = href_path(str(response.url), str(response.url))
    found = _multistatus(response, str(response.url)).responses
    return next((r for r in found if _same_path(r.path, path)), found[0] if found else None)


def _multistatus(response: httpx.Response, base: str) -> Multistatus:
    try:
        return parse_multistatus(response.content, base)
    except ValueError as exc:
        raise ConnectionFailed(
            f"{public_url(response.request.url)} sent an unreadable answer to "
            f"{response.request.method}: {exc}") from exc


def _collection(response: DavResponse, base: str, kind: CollectionKind) -> Collection:
    url = urljoin(base, quote_path(response.path))
    name = response.text(DAV + "displayname") or response.path.rstrip("/").rpartition("/")[2]
    components = frozenset({"VCARD"}) if kind == "addressbook" else _components(response)
    return Collection(url, name, kind, components)


def _components(response: DavResponse) -> frozenset[str]:
    element = response.props.get(CALDAV + "supported-calendar-component-set")
    if element is None:
        return frozenset()
    return frozenset(c.get("name", "").upper() for c in element.iter(CALDAV + "comp"))


def _same_path(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# --- content -----------------------------------------------------------------------------

_COMPONENT_LINE = re.compile(r"^BEGIN:(VEVENT|VTODO|VJOURNAL|VFREEBUSY|VAVAILABILITY)\r?$",
                             re.MULTILINE | re.IGNORECASE)
# Where an item says it last changed, best first.
_CHANGED_AT = tuple(re.compile(rf"^{name}(?:;[^:\r\n]*)?:([0-9TZ:-]{{15,20}})\r?$",
                               re.MULTILINE | re.IGNORECASE)
                    for name in ("LAST-MODIFIED", "REV", "DTSTAMP"))
_SCHEDULING_LINE = re.compile(r"^(?:[A-Za-z0-9-]+\.)?(?:ORGANIZER|ATTENDEE)[;:]",
                              re.MULTILINE | re.IGNORECASE)
_PARAMS = re.compile(r'(?:[^":]|"[^"]*")*')
_CLIENT_AGENT = ";SCHEDULE-AGENT=CLIENT"
BOTH: frozenset[ObjectKind] = frozenset({"calendar", "tasks"})


def calendar_objects(raw: str) -> tuple[frozenset[ObjectKind], int]:
    """The objects a calendar item belongs to, and where its first component starts.

    A VEVENT is an event, a VTODO a task; other components (VJOURNAL, ...) belong to no
    object. An item without any component is broken: it belongs to both, so that its
    parse error surfaces instead of the item silently looking deleted.
    """
    match = _COMPONENT_LINE.search(raw)
    if match is None:
        return BOTH, 0
    name = match[1].upper()
    objects: frozenset[ObjectKind] = frozenset(
        {"calendar"} if name == "VEVENT" else {"tasks"} if name == "VTODO" else ())
    return objects, match.start()


def changed_at(raw: str, start: int = 0) -> str | None:
    """The MOMENT an item says it last changed (LAST-MODIFIED, vCard REV or DTSTAMP)."""
    match = next((m for p in _CHANGED_AT if (m := p.search(raw, start))), None)
    if match is None:
        return None
    digits = match[1].replace("-", "").replace(":", "")
    try:
        when = datetime.strptime(digits, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def client_scheduling(raw: str) -> str:
    """``raw`` with ``SCHEDULE-AGENT=CLIENT`` on each ORGANIZER and ATTENDEE lacking one.

    A scheduling server (RFC 6638) mails invitations for the attendees of what a client
    writes, unless told the client handles scheduling itself: a sync must never do that.
    Only those lines change; every other byte, folding included, stays as it was.
    """
    if _SCHEDULING_LINE.search(raw) is None:
        return raw
    physical = re.split(r"(?<=\n)", raw)
    out: list[str] = []
    at = 0
    while at < len(physical):
        end = at + 1
        while end < len(physical) and physical[end][:1] in (" ", "\t"):
            end += 1
        lines = physical[at:end]
        name = _SCHEDULING_LINE.match(lines[0])
        out += _with_client_agent(lines, name.end() - 1) if name else lines
        at = end
    return "".join(out)


def _with_client_agent(lines: list[str], name_end: int) -> list[str]:
    """One content line (its physical lines) with the parameter added after its name."""
    first = lines[0]
    eol = first[len(first.rstrip("\r\n")):] or "\r\n"
    text = "".join([first.rstrip("\r\n"), *(line.rstrip("\r\n")[1:] for line in lines[1:])])
    params = _PARAMS.match(text, name_end)
    assert params is not None  # the pattern matches the empty string
    if "SCHEDULE-AGENT=" in params[0].upper():
        return lines
    head = first[:name_end] + _CLIENT_AGENT + first[name_end:]
    if len(head.rstrip("\r\n").encode()) <= 75:
        return [head, *lines[1:]]
    return _fold(text[:name_end] + _CLIENT_AGENT + text[name_end:], eol)


def _fold(text: str, eol: str) -> list[str]:
    """Physical lines of at most 75 octets, never splitting a UTF-8 character."""
    out: list[str] = []
    line, size = "", 0
    for char in text:
        width = len(char.encode())
        if size + width > 75:
            out.append(line + eol)
            line, size = " ", 1
        line += char
        size += width
    out.append(line + eol)
    return out


def settled(token: str) -> str:
    """A sync token to keep: one second earlier when it is a Unix time in seconds.

    SOGo's token is the time of its answer in whole seconds, and a later sync-collection
    lists what changed after that second: a change made in the same second, after the
    answer, would never be listed. Kept one second earlier, what changed in that second
    is listed again instead (unchanged items, which the core skips): never missed. Other
    servers' tokens (URLs, data: URIs, counters) are opaque and kept as they are.
    """
    if len(token) == 10 and token.isdigit() and int(token) >= 1_000_000_000:
        return str(int(token) - 1)
    return token


def _etag(value: str | None) -> str | None:
    """An ETag in the one form used everywhere: strong and quoted, as If-Match wants it.

    Cyrus answers a gzipped GET with a weak ``W/"x"`` where PUT, PROPFIND and REPORT give
    the strong ``"x"`` of the same item: the weak prefix is dropped, so that one version has
    one form (compared as a string) and If-Match never carries a weak ETag, which RFC 9110
    13.1.1 makes never match.
    """
    value = (value or "").strip()
    if value[:2].upper() == "W/":
        value = value[2:].strip()
    if not value:
        return None
    return value if value.startswith('"') else f'"{value}"'


def _http_moment(value: str | None) -> str | None:
    """An HTTP-date (Last-Modified, getlastmodified) as a MOMENT."""
    when = _http_date(value) if value else None
    return None if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


# --- the connector -----------------------------------------------------------------------


@dataclass
class _Cursor:
    """What a CURSOR string holds; see the module docstring."""

    token: str | None = None
    ctag: str | None = None
    etags: dict[str, str] | None = None
    kinds: tuple[str, ...] = ()
    # Whether the server stores something else than what it is sent (None: not known
    # yet); see DavConnector._read_back.
    rewrites: bool | None = None

    def encode(self) -> str:
        data: dict[str, object] = {"v": 1}
        if self.token is not None:
            data["token"] = self.token
        else:
            data["ctag"] = self.ctag
            data["etags"] = self.etags or {}
        if self.kinds:
            data["kinds"] = list(self.kinds)
        if self.rewrites is not None:
            data["rewrites"] = self.rewrites
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> _Cursor | None:
        """None for no cursor or one this version cannot read: a full listing is safe."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        kinds = tuple(k for k in data.get("kinds", ()) if isinstance(k, str))
        rewrites = data.get("rewrites") if isinstance(data.get("rewrites"), bool) else None
        if isinstance(data.get("token"), str):
            return cls(token=data["token"], kinds=kinds, rewrites=rewrites)
        if isinstance(data.get("etags"), dict):
            ctag = data.get("ctag") if isinstance(data.get("ctag"), str) else None
            return cls(ctag=ctag, etags=data["etags"], kinds=kinds, rewrites=rewrites)
        return None


@dataclass
class _Probe:
    """What one PROPFIND of the collection told about it."""

    kinds: tuple[ObjectKind, ...]
    sync: bool
    token: str | None
    ctag: str | None


@dataclass
class _Listing:
    """The collection's changes since one cursor, shared by the objects it holds."""

    key: str  # the cursor it was listed from
    changed: dict[str, str]  # path -> etag
    deleted: list[str]
    cursor: _Cursor
    complete: bool
    # The objects each changed calendar item belongs to, and the items read to learn it.
    objects: dict[str, frozenset[ObjectKind]] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    served: set[ObjectKind] = field(default_factory=set)
    # A time-range listing names one object's items only: never one for the other.
    shared: bool = True
    # For the run report: a listing that fell back to another way, items it cannot see.
    notes: list[str] = field(default_factory=list)


class DavConnector(Connector):
    """One CalDAV calendar or CardDAV address book; see the module docstring."""

    def __init__(self, url: str, side: Side, *, protocol: DavProtocol,
                 credentials: Credentials | None = None, multiget_batch: int = 100,
                 timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Sleep = time.sleep) -> None:
        if protocol not in KINDS:
            raise ConfigError(f"unknown DAV protocol {protocol!r}; use caldav or carddav")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{protocol} endpoint {public_url(url)!r} must be an http(s) URL, "
                              f"e.g. {protocol}:https://example.com/dav/ana/work/")
        # Members are named relative to the collection: its URL ends with a slash.
        self.url = parts._replace(path=parts.path.rstrip("/") + "/").geturl()
        self.path = href_path(self.url, self.url)
        self.side = side
        self.protocol = protocol
        self.multiget_batch = max(1, multiget_batch)
        self.capabilities = Capabilities(
            fields={k: frozenset(RECORD_TYPES[k]().fields()) for k in KINDS[protocol]},
            batch_size=100,
            keeps_uid=True,
        )
        self._http = Http(credentials, timeout=timeout, transport=transport, sleep=sleep)
        self._listing: _Listing | None = None
        # The ways of listing the server failed with a server error: not tried again by
        # this connector (one run), each costs its retries once.
        self._failed: set[str] = set()
        # Notes for the next listing's report (a multiget that fell back to GETs).
        self._notes: list[str] = []
        # Whether the server rewrites what it stores (None: not known yet), kept in the
        # cursor; and the items of the current apply() to read back, with what was sent.
        self._rewrites: bool | None = None
        self._read_later: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"DavConnector({self.protocol}:{public_url(self.url)})"

    def stats(self) -> dict[str, int]:
        return {"requests": self._http.requests}

    @property
    def retries(self) -> int:
        """How many of the requests were sent again (a lost connection, a 5xx): SOGo
        closes idle keep-alive connections, and a request on one is sent again."""
        return self._http.retries

    def close(self) -> None:
        self._http.close()

    # --- requests ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return urljoin(self.url, quote_path(path))

    def _send(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
        return self._http.send(method, self._url(path), body, headers)

    def _report(self, body: bytes, depth: str | None = None) -> httpx.Response:
        headers = dict(XML_HEADERS)
        if depth is not None:
            headers["Depth"] = depth
        return self._send("REPORT", self.path, body, headers)

    def _members(self, response: httpx.Response) -> list[DavResponse]:
        """The responses of a multistatus about the collection's members."""
        return [m for m in _multistatus(response, self.url).responses
                if not _same_path(m.path, self.path)]

    @property
    def _noun(self) -> str:
        return "calendar" if self.protocol == "caldav" else "address book"

    def _collection_error(self, response: httpx.Response, what: str) -> CrmsyncError:
        """The error for a request on the collection that the server refused."""
        if response.status_code == 403:
            return ConnectionFailed(self._http.refused(self.url, response))
        if response.status_code in (404, 405, 410):
            return self._not_a_collection()
        if response.status_code >= 500:
            return ServerError(f"{public_url(self.url)} failed {what}: {_refusal(response)}")
        return ConnectionFailed(f"{public_url(self.url)} refused {what}: {_refusal(response)}")

    def _not_a_collection(self) -> ConfigError:
        """A ConfigError listing the collections discovery finds, to pick one from."""
        message = f"{self.protocol}:{public_url(self.url)} is not a {self._noun}"
        try:
            found = _discover(self._http, self.url, self.protocol)
        except CrmsyncError:
            found = []
        if not found:
            return ConfigError(f"{message}, and no {self._noun} was found from it")
        lines = "\n".join(f"  {self.protocol}:{public_url(c.url)}  ({c.name})" for c in found)
        return ConfigError(f"{message}; use one of the {self._noun}s found there:\n{lines}")

    def _check_kind(self, kind: ObjectKind) -> None:
        if kind not in KINDS[self.protocol]:
            raise ConfigError(
                f"a {self.protocol} endpoint serves {' and '.join(KINDS[self.protocol])}, "
                f"not {kind}; use a {'carddav' if kind == 'contacts' else 'caldav'} "
                "endpoint for it")

    def _objects(self, item: Item) -> frozenset[ObjectKind]:
        if self.protocol == "carddav":
            return frozenset({"contacts"})
        return calendar_objects(item.raw)[0]

    # --- listing -------------------------------------------------------------------------

    def list_changes(self, kind: ObjectKind, cursor: str | None, *,
                     window: Window | None = None,
                     checkpoint: Checkpoint | None = None,
                     progress: ReadProgress | None = None) -> Changes:
        self._check_kind(kind)
        key = cursor or ""
        known = _Cursor.decode(key)
        if self._rewrites is None and known is not None:
            self._rewrites = known.rewrites
        listing = self._listing
        # Events and tasks in one calendar: the second object's listing from the same
        # cursor reuses the first one's (once: a later listing asks the server again).
        if listing is None or not listing.shared or listing.key != key \
                or kind in listing.served:
            listing = self._list(kind, key, window, checkpoint)
            self._listing = listing
        listing.served.add(kind)
        return self._changes(kind, listing, progress)

    def _list(self, kind: ObjectKind, key: str, window: Window | None,
              checkpoint: Checkpoint | None) -> _Listing:
        notes: list[str] = []
        listing = self._list_some_way(kind, key, window, checkpoint, notes)
        listing.notes[:0] = notes
        return listing

    def _list_some_way(self, kind: ObjectKind, key: str, window: Window | None,
                       checkpoint: Checkpoint | None, notes: list[str]) -> _Listing:
        """The first way of listing that works, best first: since the cursor, the sync
        range only (a first listing), sync-collection, every etag by PROPFIND. A way the
        server fails with a server error (after the retries) is noted in ``notes`` and
        the next one is tried; the last one's errors stop the run."""
        state = _Cursor.decode(key)
        if state is not None:
            how = "sync-collection" if state.token is not None else "ctag"
            listing = self._unless_failing(how, notes,
                                           lambda: self._since(key, state, checkpoint))
            if listing is not None:
                return listing
        # No cursor, or one the server no longer knows: list everything.
        probe = self._probe(kind)
        if window is not None and not key and self.protocol == "caldav":
            ranged = self._unless_failing("calendar-query", notes,
                                          lambda: self._list_kind(kind, key, probe))
            if ranged is not None:
                return ranged
        if probe.sync:
            listing = self._unless_failing(
                "sync-collection", notes,
                lambda: self._sync(key, "", probe.kinds, checkpoint))
            if listing is not None:
                return listing
        return self._list_etags(key, _Cursor(ctag=probe.ctag, kinds=probe.kinds))

    def _unless_failing(self, how: str, notes: list[str],
                        listing: Callable[[], _Listing | None]) -> _Listing | None:
        """``listing()``; None when it failed with a server error (noted) or failed so
        before in this run."""
        if how in self._failed:
            return None
        try:
            return listing()
        except ServerError as exc:
            self._failed.add(how)
            notes.append(f"the server failed the {how} listing ({exc}); listed another "
                         "way instead")
            return None

    def _since(self, key: str, state: _Cursor,
               checkpoint: Checkpoint | None) -> _Listing | None:
        """The changes since ``state``; None when a full listing is needed."""
        if state.token is not None:
            return self._sync(key, state.token, state.kinds, checkpoint)
        # Servers without sync tokens: an unchanged ctag means an unchanged collection.
        ctag = self._propfind_collection(["CS:getctag"]).text(CALSERVER + "getctag")
        if ctag is not None and ctag == state.ctag:
            return _Listing(key, {}, [], state, complete=False)
        return self._list_etags(key, _Cursor(ctag=ctag, kinds=state.kinds), state.etags)

    def _probe(self, kind: ObjectKind) -> _Probe:
        """Check that the URL is a collection holding ``kind``; learn how to list it."""
        found = self._propfind_collection(PROBE_PROPS)
        if not found.has(DAV + "resourcetype", _COLLECTION[self.protocol][1]):
            raise self._not_a_collection()
        kinds = KINDS[self.protocol]
        if self.protocol == "caldav":
            components = _components(found)
            # No component set means any component (RFC 4791 5.2.3).
            if components:
                kinds = tuple(k for k in kinds if COMPONENT[k] in components)
            if kind not in kinds:
                raise ConfigError(
                    f"the calendar {public_url(self.url)} cannot hold {kind} "
                    f"({COMPONENT[kind]}); it holds {', '.join(sorted(components))}")
        reports = found.props.get(DAV + "supported-report-set")
        token = found.text(DAV + "sync-token")
        if reports is not None:
            sync = reports.find(".//" + DAV + "sync-collection") is not None
        else:
            sync = token is not None
        return _Probe(kinds, sync, token, found.text(CALSERVER + "getctag"))

    def _propfind_collection(self, props: Iterable[str]) -> DavResponse:
        response = self._send("PROPFIND", self.path, propfind_body(props),
                              {"Depth": "0", **XML_HEADERS})
        if response.status_code != 207:
            raise self._collection_error(response, "PROPFIND")
        found = _multistatus(response, self.url).responses
        mine = next((r for r in found if _same_path(r.path, self.path)), None)
        if mine is None:
            raise ConnectionFailed(f"{public_url(self.url)} answered PROPFIND without "
                                   "the collection's own properties")
        return mine

    def _sync(self, key: str, token: str, kinds: Sequence[str],
              checkpoint: Checkpoint | None = None) -> _Listing | None:
        """A sync-collection listing (RFC 6578) since ``token``, "" for everything.

        Follows truncated answers (507 on the collection itself) until complete, passing
        each intermediate token to ``checkpoint``. None when the server refuses: an expired
        or foreign token (DAV:valid-sync-token; Radicale answers 403, Xandikos 412), or no
        sync-collection support at all.
        """
        full = not token
        changed: dict[str, str] = {}
        deleted: dict[str, None] = {}
        items: dict[str, Item] = {}
        # A full listing asks for the content too: one request instead of one listing and
        # N/B multigets, where the server obliges (Radicale does; Xandikos answers the
        # content with a 404 propstat, and those items are read by multiget as usual).
        data = _DATA[self.protocol] if full else None
        truncated = True
        while truncated:
            response = self._report(sync_collection_body(token, data))
            status = response.status_code
            if status != 207:
                if status == 501 or 400 <= status < 500 and status != 404:
                    return None
                raise self._collection_error(response, "sync-collection")
            result = _multistatus(response, self.url)
            truncated = False
            if data is not None:
                self._items_of(result.responses, None, items)
            for member in result.responses:
                if _same_path(member.path, self.path):
                    truncated = truncated or member.status == 507
                elif member.status == 404:
                    changed.pop(member.path, None)
                    deleted[member.path] = None
                elif (etag := _etag(member.text(DAV + "getetag"))) is not None:
                    deleted.pop(member.path, None)
                    changed[member.path] = etag
            if not result.sync_token or (truncated and result.sync_token == token):
                raise ConnectionFailed(f"{public_url(self.url)} answered sync-collection "
                                       "without a (new) sync token")
            token = result.sync_token
            if truncated and checkpoint is not None:
                checkpoint(_Cursor(token=settled(token), kinds=tuple(kinds)).encode(),
                           [*changed, *deleted], full)
        # A full listing names no deletions: what it misses is gone.
        listing = _Listing(key, changed, [] if full else list(deleted),
                           _Cursor(token=settled(token), kinds=tuple(kinds)), complete=full)
        for path, item in items.items():
            if changed.get(path) == item.version:
                listing.items[path] = item
                listing.objects[path] = self._objects(item)
        return listing

    def _list_etags(self, key: str, cursor: _Cursor,
                    old: dict[str, str] | None = None) -> _Listing:
        """Every member's etag by PROPFIND; compared with ``old`` when given."""
        response = self._send("PROPFIND", self.path, propfind_body(["D:getetag"]),
                              {"Depth": "1", **XML_HEADERS})
        if response.status_code != 207:
            raise self._collection_error(response, "PROPFIND")
        cursor.etags = {}
        for member in self._members(response):
            etag = _etag(member.text(DAV + "getetag"))
            if etag is not None and member.status < 300 \
                    and not member.has(DAV + "resourcetype", DAV + "collection"):
                cursor.etags[member.path] = etag
        if old is None:
            return _Listing(key, dict(cursor.etags), [], cursor, complete=True)
        changed = {p: e for p, e in cursor.etags.items() if old.get(p) != e}
        return _Listing(key, changed, sorted(old.keys() - cursor.etags.keys()), cursor,
                        complete=False)

    def _list_kind(self, kind: ObjectKind, key: str, probe: _Probe) -> _Listing | None:
        """Every ``kind`` item, with its content, by one calendar-query without a time
        range; None when the server has no calendar-query.

        A server's time range is never trusted to find every item in the sync range: RFC
        4791 9.9 leaves servers room, and they use it. DAViCal matches a VTODO only by
        its DTSTART, so a task with only a DUE, or none, was never listed; Radicale
        leaves out a series with both COUNT and UNTIL and an event with EXDATEs but no
        RRULE; no range matches an event without DTSTART. With the sync token saved,
        such an item was never listed again until it changed. The core leaves out what
        lies outside the sync range, by its own reading of each item.

        The token (or ctag) is the probe's, taken before the query: what changes in
        between is listed again next time rather than missed.
        """
        response = self._report(component_query_body(COMPONENT[kind]), "1")
        if response.status_code in NO_SUCH_REPORT:
            return None
        if response.status_code != 207:
            raise self._collection_error(response, "calendar-query")
        # (A server ignoring the filter answers every item: only this kind's are kept.)
        members = [m for m in self._members(response)
                   if kind in calendar_objects(m.text(CALDAV + "calendar-data") or "")[0]]
        return self._query_listing(kind, key, probe, members)

    def _query_listing(self, kind: ObjectKind, key: str, probe: _Probe,
                       members: list[DavResponse]) -> _Listing:
        """The listing of a calendar-query's answer (items with their content)."""
        changed = {m.path: etag for m in members
                   if (etag := _etag(m.text(DAV + "getetag"))) is not None}
        if probe.sync and probe.token is not None:
            cursor = _Cursor(token=settled(probe.token), kinds=probe.kinds)
        else:
            # The next listing compares every etag with these and reports the other kind's
            # items (a shared calendar) as new: harmless.
            cursor = _Cursor(ctag=probe.ctag, etags=dict(changed), kinds=probe.kinds)
        # Not complete: the other kind's items are missing from it, and the engine never
        # takes a missing item for a deleted one on a query's word.
        listing = _Listing(key, changed, [], cursor, complete=False, shared=False,
                           objects=dict.fromkeys(changed, frozenset({kind})))
        self._items_of(members, None, listing.items)
        return listing

    def _changes(self, kind: ObjectKind, listing: _Listing,
                 progress: ReadProgress | None = None) -> Changes:
        """The listing's share for ``kind``."""
        if len(listing.cursor.kinds or KINDS[self.protocol]) > 1:
            self._sort(listing, progress)
        upserts: list[tuple[str, str, Item | None]] = []
        for path in sorted(listing.changed):
            if kind not in listing.objects.get(path, (kind,)):
                continue
            item = listing.items.get(path)
            if item is None:
                upserts.append((path, listing.changed[path], None))
            else:
                upserts.append((path, item.version, _as_kind(item, kind)))
        notes, self._notes = [*listing.notes, *self._notes], []
        listing.cursor.rewrites = self._rewrites
        return Changes(upserts, sorted(listing.deleted), listing.cursor.encode(),
                       listing.complete, notes=notes)

    def _sort(self, listing: _Listing, progress: ReadProgress | None = None) -> None:
        """Read the changed items whose object is unknown: sync-collection and etag
        listings cannot tell an event from a task."""
        todo = [p for p in listing.changed if p not in listing.objects]
        if not todo:
            return
        found = self._read(todo, progress)
        for path in todo:
            item = found.get(path)
            if item is None:  # deleted since it was listed
                del listing.changed[path]
                if not listing.complete:
                    listing.deleted.append(path)
                continue
            listing.items[path] = item
            # (One the server failed to serve is shown to every object: reported, not lost.)
            listing.objects[path] = self._objects(item) if item.error is None \
                else frozenset(KINDS[self.protocol])

    def cursor(self, kind: ObjectKind, listed: str | None) -> str | None:
        # Our own writes come back in the next listing; the core knows their versions and
        # skips them, which costs nothing beyond that listing's one request. What the
        # writes taught about the server (it rewrites what it stores) is kept.
        state = _Cursor.decode(listed)
        if state is None or self._rewrites is None or state.rewrites == self._rewrites:
            return listed
        state.rewrites = self._rewrites
        return state.encode()

    # --- reading -------------------------------------------------------------------------

    def fetch(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, Item]:
        self._check_kind(kind)
        # (An item the server failed to serve is that item's failure, of any kind: never
        # taken for gone.)
        return {path: _as_kind(item, kind) for path, item in self._read(ids).items()
                if item.error is not None or kind in self._objects(item)}

    def _read(self, paths: Sequence[str],
              progress: ReadProgress | None = None) -> dict[str, Item]:
        """The items at ``paths`` (absent when gone), by multiget in batches.

        Some servers answer a multiget with fewer items than asked for, silently: each
        path missing from the answer is fetched on its own.
        """
        out: dict[str, Item] = {}
        unique = list(dict.fromkeys(paths))
        for start in range(0, len(unique), self.multiget_batch):
            batch = unique[start:start + self.multiget_batch]
            try:
                response = self._report(multiget_body(self.protocol, batch))
            except ServerError as exc:
                if "multiget" not in self._failed:
                    self._notes.append(f"the server failed a multiget ({exc}); its items "
                                       "were read one by one instead")
                self._failed.add("multiget")
                response = None
            if response is None:
                answered = set()  # the multiget failed: each item is fetched on its own
            elif response.status_code == 207:
                answered = self._items(response, set(batch), out)
            elif response.status_code in NO_SUCH_REPORT:
                answered = set()  # no multiget here: each item is fetched on its own
            else:
                raise self._collection_error(response, "multiget")
            for path in batch:
                if path in answered:
                    continue
                try:
                    item = self._get(path)
                except ServerError as exc:
                    # The server fails this one item (DAViCal answers 500 for some), the
                    # others it serves: that item's failure, not the run's.
                    item = Item(path, "", "", "text/calendar" if self.protocol == "caldav"
                                else "text/vcard", KINDS[self.protocol][0],
                                error=f"the server fails to read it back: {exc}")
                if item is not None:
                    out[path] = item
            if progress is not None:
                progress(start + len(batch), len(unique))
        return out

    def _items(self, response: httpx.Response, wanted: set[str] | None,
               out: dict[str, Item]) -> set[str]:
        """Add the items in a multiget or query answer to ``out``; returns the paths it
        answered for, gone (404) or not."""
        return self._items_of(self._members(response), wanted, out)

    def _items_of(self, members: Iterable[DavResponse], wanted: set[str] | None,
                  out: dict[str, Item]) -> set[str]:
        data = CALDAV + "calendar-data" if self.protocol == "caldav" \
            else CARDDAV + "address-data"
        answered = set()
        for member in members:
            if wanted is not None and member.path not in wanted:
                continue
            raw, etag = member.text(data), _etag(member.text(DAV + "getetag"))
            if member.status in (404, 410):
                answered.add(member.path)
            elif raw is not None and etag is not None:
                out[member.path] = self._item(member.path, etag, raw,
                                              member.text(DAV + "getlastmodified"))
                answered.add(member.path)
        return answered

    def _get(self, path: str) -> Item | None:
        response = self._send("GET", path)
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise ConnectionFailed(f"{public_url(self._url(path))} could not be read: "
                                   f"{_refusal(response)}")
        etag = _etag(response.headers.get("ETag")) or self._etag_of(path)
        if etag is None:
            return None  # deleted between the two requests
        try:
            raw = response.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            kind = KINDS[self.protocol][0]
            return Item(path, etag, "", FORMAT[kind], kind,
                        error=f"{path} is not valid UTF-8 (byte {exc.start})")
        return self._item(path, etag, raw, response.headers.get("Last-Modified"))

    def _etag_of(self, path: str) -> str | None:
        """The ETag by PROPFIND, for servers whose GET does not send it."""
        response = self._send("PROPFIND", path, propfind_body(["D:getetag"]),
                              {"Depth": "0", **XML_HEADERS})
        if response.status_code != 207:
            return None
        found = _multistatus(response, self.url).responses
        return next((e for r in found if (e := _etag(r.text(DAV + "getetag")))), None)

    def _item(self, path: str, etag: str, raw: str, last_modified: str | None) -> Item:
        if self.protocol == "carddav":
            kind: ObjectKind = "contacts"
            start = 0
        else:
            objects, start = calendar_objects(raw)
            kind = "tasks" if objects == {"tasks"} else "calendar"
        # The server's clock when it tells, else the item's own stamp.
        modified = _http_moment(last_modified) or changed_at(raw, start)
        return Item(path, etag, raw, FORMAT[kind], kind, modified=modified)

    # --- writing -------------------------------------------------------------------------

    def apply(self, kind: ObjectKind, writes: Sequence[Write]) -> list[Result]:
        self._check_kind(kind)
        results = []
        self._read_later = {}
        for write in writes:
            try:
                if isinstance(write, Create):
                    result = self._create(kind, write)
                elif isinstance(write, Update):
                    result = self._update(kind, write)
                else:
                    result = self._delete(write)
            except ServerError as exc:
                # An internal error on this item after the retries (DAViCal fails some
                # items with 500 and takes the others): that item's failure. 502-504 say
                # the server itself is unavailable: the run stops.
                if exc.status != 500:
                    raise
                result = Result("failed", error=f"the server failed to store it: {exc}")
            except ConnectionFailed:
                raise  # the server is gone: the run stops, nothing is lost
            except CrmsyncError as exc:
                result = Result("failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - a rendering bug fails this item only
                result = Result("failed", error=unexpected(exc))
            if self.protocol == "caldav" and result.status == "ok" \
                    and result.item is not None and _undated(result.item.raw):
                result = dataclasses.replace(result, note=(
                    f"written to {result.item.id} without a DTSTART: the server takes it, "
                    "but calendar views of a date range (other clients') never show it"))
            results.append(result)
        if self._read_later:
            results = self._read_back(kind, results)
        return results

    def _read_back(self, kind: ObjectKind, results: list[Result]) -> list[Result]:
        """The written items as the server stores them, read in multigets of a batch.

        Read back: items a PUT answered without an ETag (RFC 4791 5.3.4: the server
        changed them; Cyrus answers an event with an ORGANIZER with a Schedule-Tag only),
        and every item while the server is known to rewrite what it stores (SOGo adds
        ORGANIZER;CN=, PARTSTAT, CLASS:PUBLIC, trims N) or not known yet: the first batch
        written to a collection tells, and the cursor keeps the answer. Pairing on what
        was sent would otherwise bring each rewrite to the other side as a change.
        """
        sent, self._read_later = self._read_later, {}
        stored = self._read(list(sent))
        if self._rewrites is None:
            self._rewrites = any(_lines(stored[p].raw) != _lines(raw)
                                 for p, raw in sent.items()
                                 if p in stored and stored[p].error is None)
            log.info("%s %s what it is sent", public_url(self.url),
                     "rewrites" if self._rewrites else "keeps")
        out = []
        for result in results:
            written = result.item
            if written is None or written.id not in sent or result.status != "ok":
                out.append(result)
                continue
            found = stored.get(written.id)
            if found is None and not written.version:
                raise ConnectionFailed(f"{public_url(self._url(written.id))} vanished right "
                                       "after it was written")
            if found is None or written.version and found.version != written.version:
                # Gone or changed again since our write: the next listing shows it.
                out.append(result)
                continue
            changed = _changed_meaning(kind, sent[written.id], found.raw)
            note = result.note
            if changed:
                note = "; ".join(filter(None, [note, (
                    f"the server changed {', '.join(changed)} as it stored the item: synced "
                    "as the server keeps it")]))
            out.append(dataclasses.replace(result, item=_as_kind(found, kind), note=note))
        return out

    def _put(self, path: str, raw: str, precondition: dict[str, str]) -> httpx.Response:
        if self.protocol == "caldav":
            raw = client_scheduling(raw)
        media = "text/calendar" if self.protocol == "caldav" else "text/vcard"
        return self._send("PUT", path, raw.encode("utf-8"),
                          {"Content-Type": f"{media}; charset=utf-8", **precondition})

    def _create(self, kind: ObjectKind, write: Create) -> Result:
        source = write.source
        if write.record is None and source.fmt == FORMAT[kind] and source.error is None:
            # Same format on both sides: copy the item verbatim, nothing is lost.
            raw, uid = source.raw, source.uid or ""
            if write.crm_id:
                raw = formats.render(FORMAT[kind], kind, write.content(), raw)
        else:
            record = write.content()
            raw, uid = formats.render(FORMAT[kind], kind, record), record.uid
        ext = EXTENSION[kind]
        name = file_name(uid, ext) if uid else _digest(raw.encode()) + ext
        for _ in range(2):
            path = self.path + name
            response = self._put(path, raw, {"If-None-Match": "*"})
            if response.is_success:
                return Result("ok", self._stored(path, kind, response))
            conflict = uid_conflict(response)
            if conflict is not None:
                return self._existing(kind, uid, conflict, response)
            if not stale(response):
                break
            existing = self._get(path)
            if existing is not None and _has_uid(existing, uid):
                return self._exists(kind, uid, existing)
            if existing is not None:
                # The name is another item's: take one of our own.
                name = f"{name[:-len(ext)]}-{_digest(raw.encode())[:8]}{ext}"
            # else the name was freed meanwhile: try it again
        return Result("failed", error=f"the server refused to create {path}: "
                      f"{_refusal(response)}")

    def _existing(self, kind: ObjectKind, uid: str, conflict: ET.Element,
                  response: httpx.Response) -> Result:
        """The item a UID conflict is about: named in the error, else searched for.

        Radicale (409), Xandikos (412) and SOGo (409, its own text) do not name it. Cyrus
        (unique-scheduling-object-resource) names it, and keeps a UID unique across all of
        the user's calendars: an item in another collection is not this one's to pair.
        """
        hrefs = [href_path(h.text, self.url) for h in conflict.iter(DAV + "href") if h.text]
        elsewhere = [h for h in hrefs if not h.startswith(self.path)]
        if elsewhere:
            return Result("failed", error=(
                f"the server keeps UID {uid!r} unique across the user's calendars, and "
                f"another collection holds it: {elsewhere[0]} ({_refusal(response)}); "
                "an item is synced with one collection only"))
        existing = self._get(hrefs[0]) if hrefs else self._find_uid(kind, uid)
        if existing is None:
            return Result("failed", error=f"the server has another item with UID {uid!r} "
                          f"but it cannot be found: {_refusal(response)}")
        return self._exists(kind, uid, existing)

    def _exists(self, kind: ObjectKind, uid: str, existing: Item) -> Result:
        """A create found ``existing`` with its UID: the same item, made before (a run
        stopped before it learned the answer), unless it holds another kind (an event
        where a task was to go, both with one UID in one calendar). Paired to that, the
        task would seem deleted on the next run, and the deletion would be carried back."""
        if kind not in self._objects(existing):
            held = ", ".join(sorted(self._objects(existing))) or "nothing crmsync syncs"
            return Result("failed", error=f"the server holds {existing.id} with UID {uid!r} "
                          f"({held}, not {kind}): one UID cannot name two items in one "
                          "collection; give one of them another UID")
        return Result("exists", _as_kind(existing, kind))

    def _find_uid(self, kind: ObjectKind, uid: str) -> Item | None:
        body = uid_query_body(self.protocol, COMPONENT.get(kind, "VCARD"), uid)
        response = self._report(body, "1")
        if response.status_code != 207:
            return None
        found: dict[str, Item] = {}
        self._items(response, None, found)
        # CalDAV text-match finds substrings: keep the exact UID only.
        return next((item for item in found.values() if _has_uid(item, uid)), None)

    def _update(self, kind: ObjectKind, write: Update) -> Result:
        current = write.planned
        if current is None or current.version != write.version or current.error is not None:
            current = self._get(write.id)
            if current is None:
                return Result("changed", error="the item was deleted meanwhile")
            if current.version != write.version:
                return Result("changed", _as_kind(current, kind))
        # Same version, same bytes: the planner's parse of the item is as good as ours.
        record = write.over(current.record())
        raw = formats.render(FORMAT[kind], kind, record, current.raw)
        if write.uid and write.uid != current.uid:
            return self._renew_uid(kind, write, raw)
        response = self._put(write.id, raw, {"If-Match": write.version})
        if response.is_success:
            return Result("ok", self._stored(write.id, kind, response))
        if response.status_code in (404, 410) or stale(response):
            return Result("changed", error="the item changed since it was planned")
        return Result("failed", error=f"the server refused to update {write.id}: "
                      f"{_refusal(response)}")

    def _renew_uid(self, kind: ObjectKind, write: Update, raw: str) -> Result:
        """An item under a new UID (``crmsync repair``). CalDAV and CardDAV servers refuse
        to change a resource's UID (no-uid-conflict), so the item is created anew under it,
        then the old resource is deleted (If-Match). Done again after a stop, the create
        finds its item already there (same UID) and the delete goes on."""
        created = self._create(kind, Create(source=Item("", "", raw, FORMAT[kind], kind,
                                                        uid=write.uid)))
        if created.status not in ("ok", "exists") or created.item is None:
            return created
        deleted = self._delete(Delete(write.id, write.version))
        if deleted.status != "ok":
            return Result(deleted.status, created.item, error=(
                f"copied under its new UID to {created.item.id}, but the old item was not "
                f"deleted: {deleted.error}"))
        return Result("ok", created.item)

    def _delete(self, write: Delete) -> Result:
        response = self._send("DELETE", write.id, headers={"If-Match": write.version})
        if response.is_success or response.status_code in (404, 410):
            return Result("ok")  # already gone: deleting again is a no-op
        if stale(response):
            return Result("changed", error="the item changed since it was planned")
        return Result("failed", error=f"the server refused to delete {write.id}: "
                      f"{_refusal(response)}")

    def _stored(self, path: str, kind: ObjectKind, response: httpx.Response) -> Item:
        """The item a successful PUT left on the server: what was sent, with the ETag
        the server gave ("" when none), to be read back at the end of apply() when the
        server gave none or rewrites what it stores (see _read_back)."""
        etag = _etag(response.headers.get("ETag"))
        raw = response.request.content.decode("utf-8")
        if etag is None or self._rewrites is not False:
            self._read_later[path] = raw
        modified = _http_moment(response.headers.get("Last-Modified")) or _now()
        return Item(path, etag or "", raw, FORMAT[kind], kind, modified=modified)


_DATED = re.compile(r"^(?:DTSTART|DUE)[;:]", re.MULTILINE | re.IGNORECASE)


# The fields whose change by a server changes what an item means (a server adding an
# organizer's name or a PARTSTAT does not).
_MEANING: dict[ObjectKind, tuple[str, ...]] = {
    "calendar": ("summary", "start", "end", "location", "description", "rrule", "rdates",
                 "exdates", "overrides"),
    "tasks": ("summary", "start", "due", "status", "description", "rrule"),
    "contacts": ("given_name", "family_name", "emails", "phones"),
}


def _changed_meaning(kind: ObjectKind, sent: str, stored: str) -> list[str]:
    """The fields of meaning in which what a server stores differs from what it was sent
    (SOGo makes an all-day event timed, or gives a zero-length one an hour): said in the
    run report, never silent."""
    try:
        before = formats.parse(FORMAT[kind], kind, sent)
        after = formats.parse(FORMAT[kind], kind, stored)
    except Exception:  # noqa: BLE001 - the item's own reading reports what is unreadable
        return []
    return [name for name in _MEANING[kind]
            if getattr(before, name, None) != getattr(after, name, None)]


def _undated(raw: str) -> bool:
    """Whether a calendar item's first component has no DTSTART (for a VTODO: nor DUE):
    no time-range query matches it (other clients' views of a range never show it)."""
    objects, start = calendar_objects(raw)
    if objects not in ({"calendar"}, {"tasks"}):
        return False
    end = raw.find("END:" + ("VEVENT" if "calendar" in objects else "VTODO"), start)
    first = raw[start:end if end >= 0 else len(raw)]
    dated = {m[0].rstrip(";:").upper() for m in _DATED.finditer(first)}
    return "DTSTART" not in dated and ("tasks" not in objects or "DUE" not in dated)


def _lines(raw: str) -> list[str]:
    """An item's content lines, unfolded and sorted, for telling whether a server changed
    what it stores: Radicale and Xandikos reorder the properties (no change to the item),
    SOGo adds and changes some."""
    text = re.sub(r"\r?\n[ \t]", "", raw)
    return sorted(line for line in (x.rstrip() for x in text.splitlines()) if line)


def _has_uid(item: Item, uid: str) -> bool:
    """Whether ``item`` has UID ``uid``: read cheaply from the text, else parsed."""
    if item.uid == uid:
        return True
    try:
        return item.record().uid == uid
    except FormatError:
        return False


def _as_kind(item: Item, kind: ObjectKind) -> Item:
    """``item`` as an item of ``kind`` (a calendar item is read before its object is known)."""
    if item.kind == kind:
        return item
    return Item(item.id, item.version, item.raw, item.fmt, kind, modified=item.modified,
                error=item.error)
