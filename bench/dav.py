"""Benchmark crmsync against vdirsyncer 0.21 syncing a CalDAV calendar with a local folder.

    python bench/dav.py [--events 10000] [--changed 100] [--upload 1000] [--repeat 3]
                        [--workdir DIR] [--json bench/dav-results.json]
                        [--tools vdirsyncer,crmsync,floor] [--crmsync CMD]

The harness starts Radicale (``python -m radicale`` of the Python running the harness, no
authentication, storage under the work folder) on a free loopback port, behind a small
counting proxy of its own. Every timed request of every tool goes through the proxy, which
passes the bytes on unchanged and notes each request's method (a REPORT by its kind:
sync-collection, multiget, calendar-query), the response status, and when the request was
open; "server busy" is the time during which at least one request was open. The counts
are the server's view, independent of what a tool says about itself.

Each tool gets its own calendar, ``/bench/<tool>/``, holding the same N generated events
(10% recurring with overridden instances and an EXDATE, see ``bench/generate.py``).
Scenarios, per tool and repeat:

1. ``initial``  - sync the calendar into an empty local folder (new folder and state);
2. ``nochange`` - sync again;
3. ``changed``  - sync after ``--changed`` events got a new SUMMARY/LOCATION on the server
                  (plain PUTs by the harness, untimed; other events each repeat);
4. ``upload``   - a new local folder holding ``--upload`` new events (not among the N), a
                  new empty calendar and new state: sync, the events go to the server.
                  The floor is a bare ``httpx.Client`` (keep-alive, sequential) in a child
                  process of its own, PUTting the same files to another new calendar.

crmsync: ``crmsync --home H profile add b --crm vdir:LOCAL --groupware caldav:URL
--objects calendar`` (untimed), then ``crmsync --home H sync b --yes --json`` (timed);
LOCAL/calendar/ holds the files. vdirsyncer: a ``caldav`` and a ``filesystem`` storage in
one pair, ``collections = null``; ``vdirsyncer discover`` untimed, ``vdirsyncer sync``
timed. Both get the username and password "bench" (Radicale accepts any).

Measured per sync: wall time of the whole process, peak memory (max RSS from ``wait4``),
the requests the proxy saw and the server busy time. The table shows medians over
``--repeat`` runs and the targets: initial crmsync <= 0.7x vdirsyncer; no change: crmsync
<= 0.1x vdirsyncer and exactly 1 request; changed: exactly 1 sync-collection REPORT and
ceil(changed / B) multigets (B = ``--multiget-batch``, crmsync's default 100); upload:
crmsync <= 1.2x the floor; crmsync's peak RSS < 300 MB. Checks after each sync: the local
folder holds what the server holds (count; UIDs, SUMMARYs and recurrences after 1 and 3;
the changed SUMMARY/LOCATION arrived after 3); after 4 the server calendar holds exactly
the uploaded UIDs with their SUMMARYs; for crmsync, the ``requests.groupware`` of its JSON
report equals the proxy's count.

Loading and what is reused. Radicale checks a new item's UID against every item already
in the calendar (reading each from its cache), so a PUT of a new item costs ~10 ms plus
~0.06 ms per item present: 10,000 PUTs would take about an hour, and one PUT of the whole
calendar is no faster (~20 ms per event, time zone handling). So the N events are written
once as files into Radicale's storage folder, ``<UID>.ics`` each plus the calendar's
``.Radicale.props`` (what Radicale itself stores), one untimed PROPFIND builds Radicale's
item cache (~4 ms per event), and the calendar (with its cache) is copied for each tool.
Each tool keeps its calendar across repeats: scenario 1 downloads it again into a new
folder with new state, scenario 3 changes other events each repeat, and a mirror folder
of what the server holds is what the checks compare with. The upload calendars (the
tools' and the floor's) are new and empty every repeat; PUTs into them include the
growing UID check above (~30 s for 1000 items), the same for every client.

Radicale's built-in server speaks HTTP/1.0 and closes the connection after every
response, so no client gets keep-alive here: every request opens a new loopback
connection, for every tool alike. Radicale's limit of 10,000 VEVENTs per REPORT answer
(``[reporting] max_expand_occurrence``) is lifted: vdirsyncer fetches all hrefs in one
multiget, which that limit turns into a 400 from about 8,000 of these events on.

Reading the numbers: Radicale is slow and sets floors of its own, which the "server
busy" times show. On the dev VM, with 10,000 events, it takes ~0.55 s to answer a
sync-collection REPORT when nothing changed and ~1.2 s for a PROPFIND of all etags. A
run with N=10,000 and --repeat 1 takes about 5 minutes, most of it in Radicale: building
its cache (~50 s) and the three uploads (~35 s each).

For stable numbers use ``--workdir /dev/shm`` (tmpfs; see ``bench/run.py`` on ext4 with
``discard``) on a quiet machine. vdirsyncer is installed on first use into
``bench/.venv-vdirsyncer`` (needs pip access). By default crmsync is this checkout's
(``python -m crmsync`` with ``src/`` first on PYTHONPATH), not whatever ``crmsync`` the
venv has installed; ``--crmsync CMD`` runs another.

Exit status: 0 all good; 1 a correctness check failed; 3 a tool could not run or a sync
failed, the floor's included (no correctness failure); 4 targets missed (only with
--strict); 5 the benchmark's own setup failed (data, Radicale, loading the calendars).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from generate import Change, ItemInfo, generate, modify_items, read_item
from run import (
    RSS_TARGET_MB,
    VDIRSYNCER_VENV,
    Check,
    ProcResult,
    ToolError,
    Vdirsyncer,
    base_env,
    configure_vdirsyncer,
    exit_status,
    machine_meta,
    require_ok,
    run_measured,
    snapshot,
    verify,
    warn_if_busy,
    write_results,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OBJECT = "calendar"  # subfolder of LOCAL, as crmsync's vdir: connector expects
PRINCIPAL = "/bench/"
USERNAME = PASSWORD = "bench"
ICS_TYPE = "text/calendar; charset=utf-8"
XML_TYPE = "application/xml; charset=utf-8"

CHAIN = ("initial", "nochange", "changed")  # one local folder and state, in this order
SCENARIOS = (*CHAIN, "upload")
TARGET_INITIAL = 0.7  # crmsync / vdirsyncer wall time
TARGET_NOCHANGE = 0.1  # crmsync / vdirsyncer wall time
TARGET_UPLOAD = 1.2  # crmsync / floor wall time
TOOLS = ("vdirsyncer", "crmsync", "floor")

EXIT_SETUP_FAILED = 5


class SetupError(Exception):
    """The benchmark itself could not be set up (data, server, loading, floor)."""


def child_env() -> dict[str, str]:
    """The children's environment: a user's (bytecode cached), loopback never proxied."""
    env = base_env()
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = ",".join(x for x in (env.get(name), "127.0.0.1", "localhost") if x)
    return env


# --- the counting proxy -----------------------------------------------------------------


@dataclass
class Exchange:
    """One request through the proxy and its response."""

    method: str
    kind: str  # the method; for a REPORT its kind: sync-collection, multiget, ...
    start: float
    end: float | None = None
    status: int | None = None  # None: no (complete) response


MAX_HEAD = 1 << 16


class _Framer:
    """Finds the message boundaries in one direction of an HTTP/1.x byte stream.

    Fed the bytes as they pass. A subclass's ``head(bytes)`` returns how the body is
    framed: ("length", n), ("chunked", 0) or ("close", 0); ``body`` gets the first
    ``capture`` body bytes (set by ``head``); ``end`` is called when a message is complete.
    Only heads and chunk-size lines are looked at, so passing large bodies costs nothing.
    """

    def __init__(self) -> None:
        self.state = "head"  # head, length, size, chunk, trailer, close, broken
        self.buf = bytearray()
        self.left = 0
        self.capture = 0

    def head(self, head: bytes) -> tuple[str, int]:
        raise NotImplementedError

    def body(self, data: bytes) -> None:
        pass

    def end(self) -> None:
        pass

    def feed(self, data: bytes) -> None:
        try:
            self._feed(data)
        except Exception:  # noqa: BLE001 - never let parsing break the forwarding
            self.state = "broken"

    def eof(self) -> None:
        if self.state == "close":
            self._finish()

    def _feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size:
            state = self.state
            if state in ("length", "chunk"):
                take = min(self.left, size - pos)
                if self.capture > 0:
                    piece = data[pos : pos + min(take, self.capture)]
                    self.capture -= len(piece)
                    self.body(piece)
                self.left -= take
                pos += take
                if self.left == 0:
                    if state == "length":
                        self._finish()
                    else:
                        self.state = "size"
            elif state in ("head", "size", "trailer"):
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self.buf += data[pos:]
                    if len(self.buf) > MAX_HEAD:
                        self.state = "broken"
                    return
                self.buf += data[pos : nl + 1]
                pos = nl + 1
                self._line()
            else:  # close: the rest is body until EOF; broken: give up counting
                return

    def _line(self) -> None:
        buf = self.buf
        blank = buf == b"\r\n" or buf == b"\n"
        if self.state == "head":
            if blank:  # a stray empty line between messages
                buf.clear()
            elif buf.endswith(b"\n\r\n") or buf.endswith(b"\n\n"):
                head = bytes(buf)
                buf.clear()
                mode, length = self.head(head)
                if mode == "length" and length == 0:
                    self._finish()
                else:
                    self.state, self.left = ("size" if mode == "chunked" else mode), length
        elif self.state == "size":
            size = int(bytes(buf).split(b";")[0].strip(), 16)
            buf.clear()
            self.state, self.left = ("chunk", size + 2) if size else ("trailer", 0)
        else:  # trailer: lines until an empty one
            buf.clear()
            if blank:
                self._finish()

    def _finish(self) -> None:
        self.state = "head"
        self.capture = 0
        self.end()


def _parse_head(head: bytes) -> tuple[list[str], dict[str, str]]:
    lines = head.decode("latin-1").splitlines()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0].split(), headers


def _framing(headers: dict[str, str], default: str) -> tuple[str, int]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in headers:
        return "length", int(headers["content-length"])
    return default, 0


REPORT_KINDS = (
    (b"sync-collection", "sync-collection"),
    (b"multiget", "multiget"),
    (b"calendar-query", "calendar-query"),
    (b"addressbook-query", "addressbook-query"),
)


class _Requests(_Framer):
    def __init__(self, proxy: CountingProxy, pending: deque[Exchange]) -> None:
        super().__init__()
        self.proxy = proxy
        self.pending = pending
        self.current: Exchange | None = None
        self.captured = bytearray()

    def head(self, head: bytes) -> tuple[str, int]:
        first, headers = _parse_head(head)
        method = first[0].upper() if first else "?"
        self.current = Exchange(method, method, time.perf_counter())
        self.pending.append(self.current)
        self.proxy.record(self.current)
        if method == "REPORT":
            self.captured.clear()
            self.capture = 2048
        return _framing(headers, "length")  # a request without a length has no body

    def body(self, data: bytes) -> None:
        self.captured += data

    def end(self) -> None:
        ex = self.current
        if ex is not None and ex.method == "REPORT":
            ex.kind = next((k for tag, k in REPORT_KINDS if tag in self.captured), "REPORT")


class _Responses(_Framer):
    def __init__(self, pending: deque[Exchange]) -> None:
        super().__init__()
        self.pending = pending
        self.interim = False

    def head(self, head: bytes) -> tuple[str, int]:
        first, headers = _parse_head(head)
        status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
        ex = self.pending[0] if self.pending else None
        self.interim = 100 <= status < 200 and status != 101
        if self.interim:
            return "length", 0
        if ex is not None:
            ex.status = status
        if (ex is not None and ex.method == "HEAD") or status in (204, 304):
            return "length", 0
        return _framing(headers, "close")

    def end(self) -> None:
        if self.interim:
            self.interim = False
        elif self.pending:
            self.pending.popleft().end = time.perf_counter()


class _Side:
    """One socket of a proxied connection, and the bytes waiting to be written to it."""

    def __init__(self, sock: socket.socket, framer: _Framer) -> None:
        self.sock = sock
        self.framer = framer  # parses what is read from this socket
        self.peer: _Side = self
        self.out = bytearray()
        self.connecting = False
        self.eof = False  # nothing more to read
        self.shut = False  # our writing side is shut down
        self.events = 0


class _Conn:
    def __init__(self, proxy: CountingProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.pending: deque[Exchange] = deque()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = _Side(client, _Requests(proxy, self.pending))
        self.upstream = _Side(upstream, _Responses(self.pending))
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.upstream.connecting = True
        self.closed = False
        upstream.connect_ex(proxy.upstream)
        self.update()

    def handle(self, side: _Side, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                if side.connecting:
                    side.connecting = False
                    err = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                self.flush(side)
            if events & selectors.EVENT_READ:
                try:
                    data = side.sock.recv(1 << 17)
                except BlockingIOError:
                    data = None
                if data:
                    # Parse first: a request's record exists before the server can answer.
                    side.framer.feed(data)
                    side.peer.out += data
                    self.flush(side.peer)
                elif data is not None:
                    side.eof = True
                    side.framer.eof()
                    self.flush(side.peer)
        except OSError:
            self.close()
            return
        if self.client.eof and self.upstream.eof and not self.client.out and not (
            self.upstream.out
        ):
            self.close()
        else:
            self.update()

    def flush(self, side: _Side) -> None:
        if side.connecting:
            return
        while side.out:
            try:
                n = side.sock.send(side.out)
            except BlockingIOError:
                return
            del side.out[:n]
        if side.peer.eof and not side.shut:
            side.shut = True
            with contextlib.suppress(OSError):
                side.sock.shutdown(socket.SHUT_WR)

    def update(self) -> None:
        sel = self.proxy.selector
        for side in (self.client, self.upstream):
            events = (0 if side.eof else selectors.EVENT_READ) | (
                selectors.EVENT_WRITE if side.out or side.connecting else 0
            )
            if events != side.events:
                if not side.events:
                    sel.register(side.sock, events, (self, side))
                elif not events:
                    sel.unregister(side.sock)
                else:
                    sel.modify(side.sock, events, (self, side))
                side.events = events

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.upstream):
            if side.events:
                self.proxy.selector.unregister(side.sock)
                side.events = 0
            side.sock.close()
        now = time.perf_counter()
        for ex in self.pending:  # no complete response: status stays None
            ex.end = now


class CountingProxy:
    """A loopback TCP proxy that passes bytes on unchanged and logs every HTTP exchange.

    One thread with a selector loop for all connections (no thread per connection, no
    copies beyond a send buffer); the harness's main thread sleeps in ``waitid`` while a
    tool runs, so the loop has this process's CPU to itself. Measured on the dev VM: 0.2 to
    0.6 ms per request on top of Radicale's own 2-3 ms for its cheapest request (a thread
    pair per connection cost 1-1.5 ms: Radicale closes every connection after a response).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "stop")
        self._lock = threading.Lock()
        self._log: list[Exchange] = []
        self._thread = threading.Thread(target=self._loop, name="proxy", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def record(self, ex: Exchange) -> None:
        with self._lock:
            self._log.append(ex)

    def take(self) -> list[Exchange]:
        """The exchanges since the last take()."""
        with self._lock:
            log, self._log = self._log, []
        return log

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)

    def _loop(self) -> None:
        conns: set[_Conn] = set()
        try:
            while True:
                for key, events in self.selector.select():
                    if key.data == "stop":
                        return
                    if key.data == "accept":
                        with contextlib.suppress(BlockingIOError):
                            client, _ = self.listener.accept()
                            conns.add(_Conn(self, client))
                        continue
                    conn, side = key.data
                    if not conn.closed:
                        conn.handle(side, events)
                        if conn.closed:
                            conns.discard(conn)
        finally:
            for conn in list(conns):
                conn.close()
            for s in (self.listener, self._wake_r, self._wake_w):
                s.close()
            self.selector.close()


@dataclass
class Traffic:
    """What the proxy saw during one run."""

    requests: int
    kinds: dict[str, int]  # in order of first appearance: "sync-collection": 1, ...
    statuses: dict[str, int]  # "201": 1000; "none": no complete response
    busy_s: float

    @classmethod
    def of(cls, log: list[Exchange]) -> Traffic:
        kinds = Counter(e.kind for e in log)
        statuses = Counter(str(e.status) if e.status else "none" for e in log)
        return cls(len(log), dict(kinds), dict(sorted(statuses.items())),
                   busy_time(log))  # fmt: skip

    def describe(self) -> str:
        if not self.requests:
            return "no requests"
        return " + ".join(f"{n} {kind}" for kind, n in self.kinds.items())

    def bad_statuses(self) -> str:
        bad = {s: n for s, n in self.statuses.items() if not s.startswith("2")}
        return ", ".join(f"{n}x {s}" for s, n in bad.items())


def busy_time(log: Iterable[Exchange]) -> float:
    """Length of the union of the exchanges' [start, end] intervals."""
    total = 0.0
    lo = hi = None
    for start, end in sorted((e.start, e.end) for e in log if e.end is not None):
        if hi is None or start > hi:
            if lo is not None and hi is not None:
                total += hi - lo
            lo, hi = start, end
        else:
            hi = max(hi, end)
    if lo is not None and hi is not None:
        total += hi - lo
    return total


# --- Radicale ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CALENDAR_QUERY = b"""<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop><D:getetag/><C:calendar-data/></D:prop>
  <C:filter><C:comp-filter name="VCALENDAR"/></C:filter>
</C:calendar-query>"""
PROPFIND_ETAGS = b"""<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>"""
DAV_NS = "{DAV:}"
CALDAV_NS = "{urn:ietf:params:xml:ns:caldav}"


class Radicale:
    """A Radicale process on a free loopback port, and a direct (unproxied) client for setup."""

    def __init__(self, store: Path, log_dir: Path, timeout: float) -> None:
        self.store = store
        self.log_dir = log_dir
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client: httpx.Client | None = None
        try:
            self.version = metadata.version("radicale")
        except metadata.PackageNotFoundError:
            raise SetupError(f"Radicale is not installed for {sys.executable}") from None

    @property
    def root(self) -> Path:
        return self.store / "collection-root"

    def folder(self, path: str) -> Path:
        return self.root / path.strip("/")

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        last = ""
        for attempt in range(3):  # the free port may be taken before Radicale binds it
            self.port = free_port()
            argv = [
                sys.executable, "-m", "radicale", "--config", "",
                "--server-hosts", f"127.0.0.1:{self.port}",
                "--storage-filesystem-folder", str(self.store),
                "--auth-type", "none", "--logging-level", "warning",
                # Radicale answers 400 to a REPORT whose answer holds more than 10,000
                # VEVENTs (an anti-DoS limit), which vdirsyncer's one multiget of all
                # hrefs hits from about 8,000 of these events on.
                "--reporting-max-expand-occurrence", str(10**9),
            ]  # fmt: skip
            log = self.log_dir / f"radicale-{attempt}.log"
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=child_env(), start_new_session=True,
                )  # fmt: skip
            self.client = httpx.Client(
                base_url=f"http://127.0.0.1:{self.port}",
                auth=(USERNAME, PASSWORD),
                timeout=self.timeout,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.client.request("OPTIONS", "/", timeout=2)
                    return
                except httpx.TransportError:
                    time.sleep(0.05)
            last = log.read_text(errors="replace")[-2000:]
            self.stop()
        raise SetupError(f"Radicale did not start: {' '.join(argv)}\n{last}")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _http(self) -> httpx.Client:
        if self.client is None:
            raise SetupError("Radicale is not running")
        return self.client

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http().request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise SetupError(f"{method} {path}: {exc!r}") from exc

    def mkcalendar(self, path: str) -> None:
        r = self.request("MKCALENDAR", path)
        if r.status_code != 201:
            raise SetupError(f"MKCALENDAR {path}: {r.status_code} {r.text[:300]}")

    def put(self, path: str, data: bytes) -> None:
        r = self.request("PUT", path, content=data, headers={"Content-Type": ICS_TYPE})
        if r.status_code not in (200, 201, 204):
            raise SetupError(f"PUT {path}: {r.status_code} {r.text[:300]}")

    def hrefs(self, path: str) -> list[str]:
        """The member hrefs of a collection (PROPFIND, Depth 1)."""
        r = self.request(
            "PROPFIND", path, content=PROPFIND_ETAGS,
            headers={"Depth": "1", "Content-Type": XML_TYPE},
        )  # fmt: skip
        if r.status_code != 207:
            raise SetupError(f"PROPFIND {path}: {r.status_code} {r.text[:300]}")
        hrefs = [h.text or "" for h in ET.fromstring(r.content).iter(f"{DAV_NS}href")]
        return [h for h in hrefs if h.rstrip("/") != path.rstrip("/")]

    def items(self, path: str) -> dict[str, ItemInfo]:
        """UID -> summary of every item in a calendar (calendar-query REPORT)."""
        r = self.request(
            "REPORT", path, content=CALENDAR_QUERY,
            headers={"Depth": "1", "Content-Type": XML_TYPE},
        )  # fmt: skip
        if r.status_code != 207:
            raise SetupError(f"REPORT {path}: {r.status_code} {r.text[:300]}")
        items: dict[str, ItemInfo] = {}
        for data in ET.fromstring(r.content).iter(f"{CALDAV_NS}calendar-data"):
            info = read_item((data.text or "").encode())
            items[info.uid or f"<no UID #{len(items)}>"] = info
        return items


# --- tools ------------------------------------------------------------------------------


@dataclass
class Run:
    """One local folder with a tool's state, synced with the calendar at ``url``."""

    root: Path
    url: str  # through the proxy

    @property
    def local(self) -> Path:  # crmsync: --crm vdir:LOCAL
        return self.root / "local"

    @property
    def items(self) -> Path:
        return self.local / OBJECT

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self, items_from: Path | None = None) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if items_from is None:
            self.items.mkdir(parents=True)
        else:
            shutil.copytree(items_from, self.items)
        self.state.mkdir()
        self.logs.mkdir()


class DavTool:
    name = "tool"
    version = ""

    def setup(self, log_dir: Path, timeout: float) -> None:
        """Once, before any run: install/check the tool; raise ToolError if unusable."""

    def prepare(self, run: Run, timeout: float) -> None:
        """Per new run folder, untimed (configuration, discovery)."""

    def sync_argv(self, run: Run) -> list[str]:
        raise NotImplementedError

    def env(self, run: Run | None = None) -> dict[str, str]:
        return child_env()

    def parse_report(self, result: ProcResult) -> tuple[Any, str | None]:
        """(report, warning) from a sync's stdout."""
        return None, None

    def describe_failure(self, result: ProcResult) -> str:
        return result.describe_failure()


class VdirsyncerDav(DavTool):
    name = "vdirsyncer"

    def __init__(self) -> None:
        self.installer = Vdirsyncer(VDIRSYNCER_VENV)  # bench/run.py's: installs on demand
        self.exe = self.installer.exe

    def setup(self, log_dir: Path, timeout: float) -> None:
        self.installer.setup(log_dir, timeout)
        self.version = self.installer.version

    def config_path(self, run: Run) -> Path:
        return run.state / "vdirsyncer.conf"

    def env(self, run: Run | None = None) -> dict[str, str]:
        assert run is not None
        return {**child_env(), "VDIRSYNCER_CONFIG": str(self.config_path(run))}

    def prepare(self, run: Run, timeout: float) -> None:
        configure_vdirsyncer(
            self.exe, run.state, run.logs, self.env(run), timeout,
            {"bench_dav": {"type": "caldav", "url": run.url,
                           "username": USERNAME, "password": PASSWORD},
             "bench_local": {"type": "filesystem", "path": str(run.items),
                             "fileext": ".ics"}},
        )  # fmt: skip

    def sync_argv(self, run: Run) -> list[str]:
        return [str(self.exe), "-v", "ERROR", "sync"]


def groupware_requests(report: Any) -> int | None:
    """``requests.groupware`` of a crmsync run report, if it has one."""
    if isinstance(report, dict) and isinstance(report.get("requests"), dict):
        n = report["requests"].get("groupware")
        return n if isinstance(n, int) else None
    return None


class CrmsyncDav(DavTool):
    name = "crmsync"

    def __init__(self, command: list[str], pythonpath: str | None) -> None:
        self.command = command
        self.pythonpath = pythonpath  # this checkout's src/, put first

    def env(self, run: Run | None = None) -> dict[str, str]:
        env = {k: v for k, v in child_env().items() if not k.startswith("CRMSYNC_")}
        env["CRMSYNC_GROUPWARE_USERNAME"] = USERNAME
        env["CRMSYNC_GROUPWARE_PASSWORD"] = PASSWORD
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (self.pythonpath, env.get("PYTHONPATH")) if p
            )
        return env

    def setup(self, log_dir: Path, timeout: float) -> None:
        timeout = min(timeout, 120.0)
        result = run_measured(
            [*self.command, "--help"], log_dir=log_dir, tag="crmsync-help",
            env=self.env(), timeout=timeout,
        )  # fmt: skip
        require_ok(result, "crmsync --help")
        result = run_measured(
            [*self.command, "--version"], log_dir=log_dir, tag="crmsync-version",
            env=self.env(), timeout=timeout,
        )  # fmt: skip
        self.version = result.stdout.strip()[:200] if result.returncode == 0 else ""
        if not self.version and self.pythonpath:
            self.version = git_describe(REPO_DIR)

    def _base(self, run: Run) -> list[str]:
        return [*self.command, "--home", str(run.state / "home")]

    def prepare(self, run: Run, timeout: float) -> None:
        argv = [
            *self._base(run),
            "profile", "add", "b",
            "--crm", f"vdir:{run.local}",
            "--groupware", f"caldav:{run.url}",
            "--objects", OBJECT,
        ]  # fmt: skip
        result = run_measured(
            argv, log_dir=run.logs, tag="profile-add", env=self.env(run), timeout=timeout
        )
        require_ok(result, "crmsync profile add")

    def sync_argv(self, run: Run) -> list[str]:
        return [*self._base(run), "sync", "b", "--yes", "--json"]

    def parse_report(self, result: ProcResult) -> tuple[Any, str | None]:
        text = result.stdout.strip()
        try:
            report = json.loads(text)
        except ValueError:
            return None, f"stdout is not a JSON report: {text[:200]!r}"
        if groupware_requests(report) is None:
            return report, "the JSON report has no requests.groupware count"
        return report, None

    def describe_failure(self, result: ProcResult) -> str:
        """The exit status and stderr's tail, plus the JSON report's gist if there is one."""
        text = result.describe_failure()
        report, _ = self.parse_report(result)
        if isinstance(report, dict):
            gist = {k: report.get(k) for k in ("status", "error", "requests")}
            objects = report.get("objects")
            if isinstance(objects, dict):
                for kind, obj in objects.items():
                    if isinstance(obj, dict):
                        gist[f"{kind} counts"] = obj.get("counts")
                        failed = [i for i in obj.get("items", []) if isinstance(i, dict)]
                        gist[f"{kind} first failures"] = [
                            f"{i.get('action')} {i.get('label')}: {i.get('reason')}"
                            for i in failed[:3]
                        ]
            text += "\n    report: " + json.dumps(gist, ensure_ascii=False)[:1500]
        return text


def git_describe(repo: Path) -> str:
    """'<branch>@<short commit>' of a checkout; '+dirty': src/ has uncommitted changes."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()

        head, branch = git("rev-parse", "--short", "HEAD"), git("branch", "--show-current")
        dirty = "+dirty" if git("status", "--porcelain", "--", "src") else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{branch or 'HEAD'}@{head}{dirty}" if head else ""


def default_crmsync() -> tuple[list[str], str | None]:
    """This checkout's crmsync: ``python -m crmsync`` with its src/ first on PYTHONPATH.

    The venv's ``crmsync`` script may be an editable install of another worktree.
    """
    src = REPO_DIR / "src"
    if (src / "crmsync" / "__main__.py").exists():
        return [sys.executable, "-m", "crmsync"], str(src)
    exe = Path(sys.executable).parent / "crmsync"
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "crmsync"]), None


# The upload floor: what any client has to do, and nothing else. A child process like the
# tools (its interpreter start and httpx import are in the time, ~0.2 s).
FLOOR_SCRIPT = """\
import json, sys, time
from pathlib import Path
import httpx
url, folder = sys.argv[1], Path(sys.argv[2])
statuses = {}
t0 = time.perf_counter()
with httpx.Client(auth=(sys.argv[3], sys.argv[4]), timeout=600) as client:
    for path in sorted(folder.glob("*.ics")):
        r = client.put(url + path.name, content=path.read_bytes(),
                       headers={"Content-Type": "text/calendar; charset=utf-8",
                                "If-None-Match": "*"})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
print(json.dumps({"put_s": time.perf_counter() - t0, "statuses": statuses}))
"""


# --- the benchmark ---------------------------------------------------------------------


@dataclass
class Sample:
    tool: str
    repeat: int
    scenario: str
    wall_s: float
    max_rss_mb: float
    user_s: float
    sys_s: float
    traffic: Traffic
    local_files_written: int | None = None
    claimed_requests: int | None = None
    report: Any = None


@dataclass
class ToolState:
    name: str
    tool: DavTool | None  # None: the floor
    error: str | None = None  # setup failed: skipped altogether
    failures: dict[str, str] = field(default_factory=dict)  # "download"/"upload" -> error
    warnings: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            print(f"WARNING {self.name}: {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, tools: list[DavTool]) -> None:
        self.args = args
        self.work = work
        self.states = {t.name: ToolState(t.name, t) for t in tools}
        if "floor" in args.tools and args.upload:
            self.states["floor"] = ToolState("floor", None)
        self.checks: list[Check] = []
        self.data = work / "data" / OBJECT
        self.upload_data = work / "upload" / OBJECT
        self.data_stats: dict[str, Any] = {}
        self.upload_items: dict[str, ItemInfo] = {}
        self.server = Radicale(work / "radicale", work / "logs", args.timeout)
        self.proxy: CountingProxy | None = None
        self.load_s: float | None = None

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def chain_tools(self) -> list[ToolState]:
        return [st for st in self.states.values() if st.tool is not None and st.error is None]

    # --- setup ---

    def generate_data(self) -> None:
        t0 = time.perf_counter()
        a = self.args
        generate(self.data, a.events, seed=a.seed)
        files = list(self.data.glob("*.ics"))
        infos = [read_item(p.read_bytes()) for p in files]
        self.data_stats = {
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "recurring": sum(1 for i in infos if i.overrides),
        }
        if a.upload:
            generate(self.upload_data, a.upload, seed=a.seed + 1)
            self.upload_items = {
                i.uid: i for i in (read_item(p.read_bytes()) for p in self.upload_data.iterdir())
            }
            clash = self.upload_items.keys() & {i.uid for i in infos}
            if clash or len(self.upload_items) != a.upload:
                raise SetupError(f"upload events are not {a.upload} new UIDs: {sorted(clash)[:3]}")
        self.log(
            f"generated {len(files)} events ({self.data_stats['recurring']} recurring, "
            f"{self.data_stats['bytes'] / 1e6:.1f} MB) and {a.upload} to upload "
            f"in {time.perf_counter() - t0:.1f} s"
        )

    def setup_tools(self) -> None:
        for st in self.states.values():
            if st.tool is None:
                continue
            try:
                st.tool.setup(self.work / "setup-logs", self.args.timeout)
                self.log(f"{st.name}: ready {st.tool.version}".rstrip())
            except ToolError as exc:
                st.error = str(exc)
                self.log(f"ERROR {st.name}: {exc}\n  ({st.name} is skipped)")

    def start_server(self) -> None:
        """Radicale with one loaded calendar per tool (see the module docstring), the proxy."""
        srv = self.server
        template = srv.folder(PRINCIPAL + "template/")
        shutil.copytree(self.data, template)
        (template / ".Radicale.props").write_text(json.dumps({"tag": "VCALENDAR"}))
        srv.start()
        self.proxy = CountingProxy(srv.port)
        self.log(
            f"Radicale {srv.version} on 127.0.0.1:{srv.port} (pid {srv.proc and srv.proc.pid}), "
            f"proxy on :{self.proxy.port}; building its cache of {self.args.events} events ..."
        )
        t0 = time.perf_counter()
        n = len(srv.hrefs(PRINCIPAL + "template/"))
        if n != self.args.events:
            raise SetupError(f"Radicale lists {n} items in the loaded calendar, not "
                             f"{self.args.events}; see {srv.log_dir}")  # fmt: skip
        for st in self.chain_tools():
            path = f"{PRINCIPAL}{st.name}/"
            shutil.copytree(template, srv.folder(path))
            shutil.copytree(self.data, self.mirror(st.name))
            n = len(srv.hrefs(path))
            if n != self.args.events:
                raise SetupError(f"Radicale lists {n} items in {path}, not {self.args.events}")
        self.load_s = time.perf_counter() - t0
        self.log(f"loaded the calendars in {self.load_s:.1f} s")

    def stop_server(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.server.stop()

    def mirror(self, name: str) -> Path:
        """What the server holds in ``name``'s calendar, as files (for the checks)."""
        return self.work / f"mirror-{name}" / OBJECT

    # --- running ---

    def measure(self, argv: list[str], env: dict[str, str], log_dir: Path, tag: str
                ) -> tuple[ProcResult, Traffic]:  # fmt: skip
        assert self.proxy is not None
        os.sync()  # flush earlier writes now, not while the run is timed
        self.proxy.take()
        result = run_measured(argv, log_dir=log_dir, tag=tag, env=env, timeout=self.args.timeout)
        return result, Traffic.of(self.proxy.take())

    def run(self) -> None:
        names = [st.name for st in self.chain_tools()]
        for rep in range(1, self.args.repeat + 1):
            order = names if rep % 2 else names[::-1]  # alternate to spread any drift
            for name in order:
                self.download_chain(self.states[name], rep)
            if self.args.upload:
                ups = [*order, "floor"] if rep % 2 else ["floor", *order]
                for name in ups:
                    if name in self.states and self.states[name].error is None:
                        self.upload(self.states[name], rep)

    def add_checks(self, st: ToolState, rep: int, scenario: str,
                   checks: list[tuple[str, bool, str]]) -> str:  # fmt: skip
        for name, ok, detail in checks:
            self.checks.append(Check(st.name, rep, scenario, name, ok, detail))
        failed = [c for c in checks if not c[1]]
        return "ok" if not failed else "CHECK FAILED: " + "; ".join(
            f"{n}: {d}" for n, _, d in failed
        )

    def sample(self, st: ToolState, rep: int, scenario: str, result: ProcResult,
               traffic: Traffic) -> Sample:  # fmt: skip
        s = Sample(st.name, rep, scenario, result.wall_s, result.max_rss_mb,
                   result.user_s, result.sys_s, traffic)  # fmt: skip
        st.samples.append(s)
        return s

    def report_checks(self, st: ToolState, s: Sample) -> list[tuple[str, bool, str]]:
        """crmsync's own request count against the proxy's."""
        if st.name != "crmsync":
            return []
        claimed = s.claimed_requests
        detail = f"report says {claimed}, the proxy saw {s.traffic.requests}"
        if claimed is None:
            detail = "no requests.groupware in the JSON report"
        return [("requests-reported", claimed == s.traffic.requests, detail)]

    def line(self, st: ToolState, rep: int, scenario: str, s: Sample, status: str) -> None:
        bad = s.traffic.bad_statuses()
        self.log(
            f"[{st.name} r{rep}] {scenario:<8} {s.wall_s:7.2f} s {s.max_rss_mb:5.0f} MB  "
            f"{s.traffic.describe()} [server {s.traffic.busy_s:.2f} s]"
            + (f" (responses {bad})" if bad else "")
            + f"  {status}"
        )

    def failed(self, st: ToolState, chain: str, message: str) -> None:
        st.failures[chain] = message
        self.log(f"ERROR {st.name} ({chain}): {message}\n  (not run again)")

    def download_chain(self, st: ToolState, rep: int) -> None:
        """Scenarios 1-3 in one new local folder against the tool's loaded calendar."""
        tool = st.tool
        assert tool is not None
        if "download" in st.failures:
            return
        scenario = "prepare"
        try:
            run = Run(self.work / f"{st.name}-r{rep}", self.proxy_url(f"{PRINCIPAL}{st.name}/"))
            run.create()
            tool.prepare(run, self.args.timeout)
            for scenario in CHAIN:
                changes: list[Change] = []
                if scenario == "changed":
                    changes = self.change_on_server(st.name, rep)
                before = snapshot(run.items)
                result, traffic = self.measure(
                    tool.sync_argv(run), tool.env(run), run.logs, f"sync-{scenario}"
                )
                if result.returncode != 0 or result.timed_out:
                    raise ToolError(
                        f"sync failed: {tool.describe_failure(result)}\n"
                        f"    the server saw: {traffic.describe()}"
                        + (f" (responses {traffic.bad_statuses()})" if traffic.bad_statuses()
                           else "")
                    )  # fmt: skip
                after = snapshot(run.items)
                s = self.sample(st, rep, scenario, result, traffic)
                s.local_files_written = sum(
                    1 for k, v in after.items() if before.get(k) != v
                ) + sum(1 for k in before if k not in after)
                s.report, warning = tool.parse_report(result)
                s.claimed_requests = groupware_requests(s.report)
                if warning:
                    st.warn(warning)
                # bench/run.py's verify compares a "source" and a "destination" folder:
                # here the server's items (the mirror) and the local folder.
                pair: Any = _Folders(self.mirror(st.name), run.items)
                checks = verify(pair, changes, deep=scenario != "nochange")
                status = self.add_checks(st, rep, scenario, checks + self.report_checks(st, s))
                self.line(st, rep, scenario, s, status)
        except ToolError as exc:
            self.failed(st, "download", f"{scenario}, repeat {rep}: {exc}")

    def proxy_url(self, path: str) -> str:
        assert self.proxy is not None
        return self.proxy.url(path)

    def change_on_server(self, name: str, rep: int) -> list[Change]:
        """New SUMMARY/LOCATION for --changed events: in the mirror, then PUT (untimed)."""
        mirror = self.mirror(name)
        changes = modify_items(mirror, self.args.changed, seed=self.args.seed, round_no=rep)
        for c in changes:
            self.server.put(f"{PRINCIPAL}{name}/{c.file}", (mirror / c.file).read_bytes())
        return changes

    def upload(self, st: ToolState, rep: int) -> None:
        """Scenario 4: --upload new events from a new folder into a new, empty calendar."""
        if "upload" in st.failures:
            return
        path = f"{PRINCIPAL}{st.name}-up-r{rep}/"
        self.server.mkcalendar(path)
        url = self.proxy_url(path)
        try:
            if st.tool is None:  # the floor
                logs = self.work / f"floor-r{rep}"
                argv = [sys.executable, "-c", FLOOR_SCRIPT, url, str(self.upload_data),
                        USERNAME, PASSWORD]  # fmt: skip
                result, traffic = self.measure(argv, child_env(), logs, "floor")
                if result.returncode != 0 or result.timed_out:
                    raise ToolError(f"the floor failed: {result.describe_failure()}")
                s = self.sample(st, rep, "upload", result, traffic)
                with contextlib.suppress(ValueError):
                    s.report = json.loads(result.stdout)
            else:
                tool = st.tool
                run = Run(self.work / f"{st.name}-up-r{rep}", url)
                run.create(self.upload_data)
                tool.prepare(run, self.args.timeout)
                result, traffic = self.measure(
                    tool.sync_argv(run), tool.env(run), run.logs, "sync-upload"
                )
                if result.returncode != 0 or result.timed_out:
                    raise ToolError(
                        f"sync failed: {tool.describe_failure(result)}\n"
                        f"    the server saw: {traffic.describe()}"
                    )
                s = self.sample(st, rep, "upload", result, traffic)
                s.report, warning = tool.parse_report(result)
                s.claimed_requests = groupware_requests(s.report)
                if warning:
                    st.warn(warning)
        except ToolError as exc:
            self.failed(st, "upload", f"repeat {rep}: {exc}")
            return
        checks = self.verify_upload(path) + self.report_checks(st, s)
        self.line(st, rep, "upload", s, self.add_checks(st, rep, "upload", checks))

    def verify_upload(self, path: str) -> list[tuple[str, bool, str]]:
        got, want = self.server.items(path), self.upload_items
        missing = sorted(want.keys() - got.keys())
        extra = sorted(got.keys() - want.keys())
        bad = [u for u in want.keys() & got.keys() if got[u].summary != want[u].summary]
        return [
            ("server-count", len(got) == len(want),
             f"{len(got)} items on the server, {len(want)} uploaded"),
            ("server-uids", not missing and not extra,
             f"missing {_some(missing)}; extra {_some(extra)}" if missing or extra else ""),
            ("server-summaries", not bad, _some(bad)),
        ]  # fmt: skip

    # --- results ---

    def tool_summary(self, st: ToolState) -> dict[str, Any]:
        scen: dict[str, Any] = {}
        for scenario in SCENARIOS:
            samples = [s for s in st.samples if s.scenario == scenario]
            if not samples:
                continue
            last = samples[-1]
            scen[scenario] = {
                "median_s": statistics.median(s.wall_s for s in samples),
                "wall_s": [s.wall_s for s in samples],
                "peak_rss_mb": max(s.max_rss_mb for s in samples),
                "max_rss_mb": [s.max_rss_mb for s in samples],
                "user_s": [s.user_s for s in samples],
                "sys_s": [s.sys_s for s in samples],
                "server_busy_s": [s.traffic.busy_s for s in samples],
                # wall time minus server busy time: the client's own work and start-up
                "median_rest_s": statistics.median(s.wall_s - s.traffic.busy_s for s in samples),
                "requests": [s.traffic.requests for s in samples],
                "request_kinds": [s.traffic.kinds for s in samples],
                "statuses": [s.traffic.statuses for s in samples],
                "claimed_requests": [s.claimed_requests for s in samples],
                "local_files_written": [s.local_files_written for s in samples],
                "last_report": _shorten(last.report),
            }
        complete = st.error is None and not st.failures
        return {
            "version": st.tool.version if st.tool else "httpx " + metadata.version("httpx"),
            "ok": complete,
            "error": st.error,
            "failures": st.failures,
            "warnings": st.warnings,
            "scenarios": scen,
            "peak_rss_mb": max((s.max_rss_mb for s in st.samples), default=None),
        }

    def summary(self) -> dict[str, Any]:
        tools = {name: self.tool_summary(st) for name, st in self.states.items()}

        def scen(tool: str, scenario: str) -> dict[str, Any] | None:
            return tools.get(tool, {}).get("scenarios", {}).get(scenario)

        def ratio(a: str, b: str, scenario: str, target: float | None) -> dict[str, Any]:
            x, y = scen(a, scenario), scen(b, scenario)
            r = x["median_s"] / y["median_s"] if x and y and y["median_s"] else None
            met = None if r is None or target is None else r <= target
            return {"of": f"{a}/{b}", "ratio": r, "target": target, "met": met}

        crm = self.states["crmsync"].samples if "crmsync" in self.states else []
        nochange = [s.traffic for s in crm if s.scenario == "nochange"]
        changed = [s.traffic for s in crm if s.scenario == "changed"]
        batches = math.ceil(self.args.changed / self.args.multiget_batch)
        want = {"sync-collection": 1, "multiget": batches} if batches else {"sync-collection": 1}
        crm_rss = tools.get("crmsync", {}).get("peak_rss_mb")
        comparison: dict[str, Any] = {
            "initial": ratio("crmsync", "vdirsyncer", "initial", TARGET_INITIAL),
            "nochange": ratio("crmsync", "vdirsyncer", "nochange", TARGET_NOCHANGE),
            "nochange_requests": {
                "counts": [t.requests for t in nochange],
                "target": 1,
                "met": all(t.requests == 1 for t in nochange) if nochange else None,
            },
            "changed": ratio("crmsync", "vdirsyncer", "changed", None),
            "changed_requests": {
                "kinds": [t.kinds for t in changed],
                "target": want,
                "met": all(t.kinds == want for t in changed) if changed else None,
            },
            "upload": ratio("crmsync", "floor", "upload", TARGET_UPLOAD),
            "upload_vdirsyncer": ratio("vdirsyncer", "floor", "upload", None),
            "crmsync_peak_rss": {
                "mb": crm_rss,
                "target_mb": RSS_TARGET_MB,
                "met": None if crm_rss is None else crm_rss < RSS_TARGET_MB,
            },
        }
        return {"tools": tools, "comparison": comparison}

    def print_table(self, summary: dict[str, Any]) -> None:
        a = self.args
        tools, cmp_ = summary["tools"], summary["comparison"]
        verdict = {True: "ok", False: "MISSED", None: "n/a"}
        labels = {"initial": "initial", "nochange": "no change",
                  "changed": f"{a.changed} changed", "upload": f"upload {a.upload}"}  # fmt: skip
        names = [n for n in ("vdirsyncer", "crmsync", "floor") if n in tools]
        print()
        print(
            f"CalDAV (Radicale {self.server.version}) <-> vdir: {self.data_stats.get('files')} "
            f"events ({self.data_stats.get('recurring')} recurring), {a.changed} changed, "
            f"{a.upload} uploaded; wall time median of {a.repeat} run(s), peak RSS max"
        )
        rows: list[list[str]] = [["scenario", *names, "ratio", "target", "result"]]
        targets = {
            "initial": (cmp_["initial"], f"<= {TARGET_INITIAL:.2f}x"),
            "nochange": (cmp_["nochange"], f"<= {TARGET_NOCHANGE:.2f}x"),
            "changed": (cmp_["changed"], "-"),
            "upload": (cmp_["upload"], f"<= {TARGET_UPLOAD:.2f}x"),
        }
        for scenario in SCENARIOS:
            if scenario == "upload" and not a.upload:
                continue
            cells = [labels[scenario]]
            for n in names:
                s = tools[n]["scenarios"].get(scenario)
                cells.append(f"{s['median_s']:.2f} s {s['peak_rss_mb']:4.0f} MB" if s else "-")
            c, target = targets[scenario]
            r = c["ratio"]
            cells += [f"{r:.2f}x {c['of'].replace('crmsync', 'crm').replace('vdirsyncer', 'vdir')}"
                      if r is not None else "-", target,
                      verdict[c["met"]] if c["target"] is not None else ""]  # fmt: skip
            rows.append(cells)
        rss = cmp_["crmsync_peak_rss"]
        cells = ["peak RSS"]
        for n in names:
            peak = tools[n]["peak_rss_mb"]
            cells.append(f"{peak:.0f} MB" if peak is not None else "-")
        rows.append([*cells, "", f"< {RSS_TARGET_MB:.0f} MB", verdict[rss["met"]]])
        _print_rows(rows)

        print()
        print("requests the server saw (last run) [server busy time + the rest of the wall time]:")
        req_targets = {
            "nochange": ("1 request", cmp_["nochange_requests"]["met"]),
            "changed": (
                " + ".join(f"{n} {k}" for k, n in cmp_["changed_requests"]["target"].items()),
                cmp_["changed_requests"]["met"],
            ),
        }
        for scenario in SCENARIOS:
            first = True
            for n in names:
                samples = [s for s in self.states[n].samples if s.scenario == scenario]
                if not samples:
                    continue
                s = samples[-1]
                t = s.traffic
                text = f"{t.describe()} [{t.busy_s:.2f} s + {s.wall_s - t.busy_s:.2f} s]"
                if t.bad_statuses():
                    text += f" responses {t.bad_statuses()}"
                if n == "crmsync":
                    text += f" (report says {s.claimed_requests})"
                    if scenario in req_targets:
                        want, met = req_targets[scenario]
                        text += f"; target {want}: {verdict[met]}"
                print(f"  {labels[scenario] if first else '':<12} {n:<10} {text}")
                first = False
        print()
        for name, t in tools.items():
            if t["error"]:
                print(f"{name} FAILED: {t['error']}")
            for chain, msg in t["failures"].items():
                print(f"{name} FAILED ({chain}): {msg}")
            for w in t["warnings"]:
                print(f"{name} warning: {w}")
        failed = [c for c in self.checks if not c.ok]
        if failed:
            print(f"correctness: {len(failed)} of {len(self.checks)} checks FAILED")
            for c in failed:
                print(f"  {c.tool} r{c.repeat} {c.scenario} {c.name}: {c.detail}")
        else:
            print(f"correctness: all {len(self.checks)} checks passed")


@dataclass
class _Folders:
    """The two folders bench/run.py's ``verify`` compares (it reads only these fields)."""

    src_items: Path
    dst_items: Path


def _some(values: list[str], n: int = 3) -> str:
    shown = ", ".join(values[:n])
    return f"{shown}, ... ({len(values)} in all)" if len(values) > n else shown


def _shorten(report: Any) -> Any:
    if report is not None and len(json.dumps(report)) > 20_000 and isinstance(report, dict):
        return {"_truncated": True, "keys": sorted(report)}
    return report


def _print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        line = f"{r[0]:<{widths[0]}}" + "".join(
            f"  {c:>{w}}" for c, w in zip(r[1:-1], widths[1:-1], strict=True)
        )
        print(f"{line}  {r[-1]}")
        if i == 0:
            print("-" * (len(line) + 8))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Exit status: 0 ok; 1 correctness check failed; 3 a tool failed; "
        "4 targets missed (with --strict); 5 the benchmark's setup failed.",
    )
    ap.add_argument("--events", type=int, default=10000, help="events on the server (10000)")
    ap.add_argument("--changed", type=int, default=100, help="events changed in scenario 3")
    ap.add_argument("--upload", type=int, default=1000,
                    help="new events uploaded in scenario 4 (1000; 0 skips it)")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool and scenario (3)")
    ap.add_argument(
        "--json",
        type=Path,
        default=BENCH_DIR / "dav-results.json",
        help="where to write the results (bench/dav-results.json; '-' for none)",
    )
    ap.add_argument(
        "--crmsync",
        type=shlex.split,
        default=None,
        metavar="CMD",
        help="command that runs crmsync (default: this checkout's, `python -m crmsync` "
        "with src/ first on PYTHONPATH)",
    )
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help="comma-separated tools to run (vdirsyncer,crmsync,floor)")  # fmt: skip
    ap.add_argument("--multiget-batch", type=int, default=100, metavar="B",
                    help="crmsync's multiget batch size, for the request target (100)")  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where temporary folders go (default: system temp dir; "
                    "/dev/shm for stable numbers)")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--seed", type=int, default=42, help="data generator seed (42)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per process, seconds")
    ap.add_argument("--strict", action="store_true", help="exit 4 if a target is missed")
    args = ap.parse_args(argv)
    if (args.events < 1 or args.repeat < 1 or args.upload < 0 or args.multiget_batch < 1
            or not 0 <= args.changed <= args.events):  # fmt: skip
        ap.error("need --events >= 1, --repeat >= 1, --upload >= 0, --multiget-batch >= 1 "
                 "and 0 <= --changed <= --events")  # fmt: skip
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown or not args.tools:
        ap.error(f"unknown tools: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.crmsync:
        crmsync_cmd, pythonpath = args.crmsync, None
    else:
        crmsync_cmd, pythonpath = default_crmsync()
    factories: dict[str, Callable[[], DavTool]] = {
        "vdirsyncer": VdirsyncerDav,
        "crmsync": lambda: CrmsyncDav(crmsync_cmd, pythonpath),
    }
    tools = [factories[name]() for name in args.tools if name in factories]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="crmsync-davbench-", dir=args.workdir))
    started = datetime.now(UTC)
    load_before = warn_if_busy()
    setup_error: str | None = None
    bench: Bench | None = None
    try:
        bench = Bench(args, work, tools)
        bench.generate_data()
        bench.setup_tools()
        bench.start_server()
        bench.run()
    except SetupError as exc:
        setup_error = str(exc)
        print(f"ERROR: benchmark setup failed: {exc}", file=sys.stderr)
    finally:
        if bench is not None:
            bench.stop_server()
        if args.keep:
            print(f"kept temporary folders in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if bench is None:
        return EXIT_SETUP_FAILED

    summary = bench.summary()
    bench.print_table(summary)
    if setup_error:
        print(f"SETUP FAILED: {setup_error}")

    missed = [k for k, v in summary["comparison"].items()
              if v.get("target", v.get("target_mb")) is not None and v["met"] is not True]
    code = EXIT_SETUP_FAILED if setup_error else exit_status(
        check_failed=any(not c.ok for c in bench.checks),
        tool_failed=any(t["error"] or t["failures"] for t in summary["tools"].values()),
        missed=missed, strict=args.strict)

    if str(args.json) != "-":
        doc = {
            "meta": {
                **machine_meta(started, load_before, work),
                "radicale": bench.server.version,
                "load_s": bench.load_s,
                "args": {
                    "events": args.events,
                    "changed": args.changed,
                    "upload": args.upload,
                    "repeat": args.repeat,
                    "seed": args.seed,
                    "tools": args.tools,
                    "multiget_batch": args.multiget_batch,
                },
                "crmsync_command": crmsync_cmd,
                "crmsync_pythonpath": pythonpath,
                "data": bench.data_stats,
            },
            "setup_error": setup_error,
            **summary,
            "targets": {
                "initial_ratio": TARGET_INITIAL,
                "nochange_ratio": TARGET_NOCHANGE,
                "nochange_requests": 1,
                "upload_ratio_to_floor": TARGET_UPLOAD,
                "crmsync_peak_rss_mb": RSS_TARGET_MB,
            },
            "missed": missed,
            "checks": [asdict(c) for c in bench.checks],
            "samples": [
                {k: v for k, v in asdict(s).items() if k != "report"}
                for st in bench.states.values()
                for s in st.samples
            ],
            "exit_status": code,
        }
        write_results(args.json, doc)
    return code


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind: stop Radicale and the tool's process, remove folders


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
