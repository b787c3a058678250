"""Real CalDAV/CardDAV servers for tests, and an HTTP proxy that injects faults.

Radicale and Xandikos run as subprocesses on free loopback ports, one process per variant
and test session, started the first time a test asks for that variant:

- ``radicale``: no authentication; the user path ``/ana/`` is created at start-up.
- ``radicale-auth``: htpasswd (plain) with the user ``ana`` / ``s3cret``.
- ``xandikos``: no authentication (Xandikos has none of its own over plain HTTP).
- ``xandikos-auth``: Xandikos behind a :class:`FaultProxy` that demands Basic credentials
  ``ana`` / ``s3cret``; the principal stays ``/user/`` as Xandikos names it.

Three more come from Debian's packages, set up by the modules in ``tests/servers/`` (each
says how): ``cyrus`` (Cyrus IMAP's httpd, the engine behind Fastmail), ``davical``
(DAViCal on Apache and PostgreSQL) and ``sogo`` (sogod with memcached and PostgreSQL), all
with ``ana`` / ``s3cret``. They are in ``DEBIAN_VARIANTS``, not in ``VARIANTS``, so the
``dav_server`` fixture does not run every test over them; ask for them by name with
``@pytest.mark.parametrize("dav_server", DEBIAN_VARIANTS, indirect=True)`` or
``dav_server_pool.get("cyrus")``. Without the packages (or PostgreSQL, for DAViCal and
SOGo) they skip with the reason, or fail under ``CRMSYNC_REQUIRE_SERVICES=1``.

Every test should get its own collection from :meth:`DavServer.make_collection`, so that
tests never see each other's items while sharing the server processes.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import importlib.util
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpx
import pytest

import servers
from crmsync.embedded import free_port
from servers import ServerStartError, Started, cyrus, davical, sogo

from conftest import require_service

USERNAME = "ana"
PASSWORD = "s3cret"
VARIANTS = ("radicale", "xandikos", "radicale-auth", "xandikos-auth")
# Real servers from Debian's packages (tests/servers/), asked for by name.
DEBIAN_SERVERS = {"cyrus": cyrus, "davical": davical, "sogo": sogo}
DEBIAN_VARIANTS = tuple(DEBIAN_SERVERS)
ALL_VARIANTS = VARIANTS + DEBIAN_VARIANTS

STARTUP_TIMEOUT = 15.0
# Ports come from binding port 0 and releasing it, so another process can grab one in
# between; a few attempts make that race harmless.
STARTUP_ATTEMPTS = 3

XML_CONTENT_TYPE = "application/xml; charset=utf-8"

_MKCALENDAR = """<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:set><D:prop>
    <D:displayname>{name}</D:displayname>
    <C:supported-calendar-component-set>{components}</C:supported-calendar-component-set>
  </D:prop></D:set>
</C:mkcalendar>"""

_MKCOL_ADDRESSBOOK = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav">
  <D:set><D:prop>
    <D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>
    <D:displayname>{name}</D:displayname>
  </D:prop></D:set>
</D:mkcol>"""

COMPONENTS = {"calendar": ("VEVENT", "VTODO"), "tasks": ("VTODO",)}


@dataclass
class DavServer:
    """A running DAV server as a client sees it; URLs are absolute and end with ``/``.

    ``calendar_url`` and ``addressbook_url`` are the collections the server made for the
    user by itself (the Debian servers have them; None where there are none)."""

    name: str
    base_url: str
    username: str | None
    password: str | None
    principal_url: str
    calendar_home_url: str
    addressbook_home_url: str
    calendar_url: str | None = None
    addressbook_url: str | None = None
    started_in: float | None = None  # seconds its start took (Debian servers)

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """An httpx client with this server's credentials (use it as a context manager)."""
        return httpx.Client(auth=self.auth, timeout=timeout)

    def make_collection(self, kind: str, name: str | None = None) -> str:
        """Create a fresh collection and return its absolute URL.

        ``kind`` is "calendar" (VEVENT and VTODO), "tasks" (VTODO only; all servers honour
        the restriction but SOGo, whose calendars all take VEVENT, VTODO and VFREEBUSY) or
        "addressbook".
        """
        name = name or f"{kind}-{uuid.uuid4().hex[:12]}"
        if kind in COMPONENTS:
            method, home = "MKCALENDAR", self.calendar_home_url
            components = "".join(f'<C:comp name="{c}"/>' for c in COMPONENTS[kind])
            body = _MKCALENDAR.format(name=name, components=components)
        elif kind == "addressbook":
            method, home = "MKCOL", self.addressbook_home_url
            body = _MKCOL_ADDRESSBOOK.format(name=name)
        else:
            raise ValueError(f"unknown collection kind {kind!r}")
        url = urljoin(home, quote(name) + "/")
        # Xandikos silently ignores a MKCALENDAR/MKCOL body sent without a Content-Type
        # (an address book then becomes a plain collection), so always send one.
        with self.client() as client:
            response = client.request(method, url, content=body.encode(),
                                      headers={"Content-Type": XML_CONTENT_TYPE})
        if response.status_code != 201:
            raise RuntimeError(f"{self.name}: {method} {url} -> {response.status_code} "
                               f"{response.text[:500]}")
        return url


# --- server processes -------------------------------------------------------------------


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no output captured)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


@dataclass
class _Process:
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, deadline: float) -> bool:
    """True once the server answers HTTP at all; False if the process died first."""
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                client.get(base_url)
                return True
            except httpx.TransportError:
                time.sleep(0.02)
    raise TimeoutError


def _spawn(label: str, workdir: Path, argv: Callable[[int], list[str]]) -> _Process:
    """Start ``argv(port)`` and wait until it serves HTTP on 127.0.0.1:port."""
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID")}
    failure = ""
    for attempt in range(STARTUP_ATTEMPTS):
        port = free_port()
        log = workdir / f"{label}-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv(port), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=workdir, env=env)
        base_url = f"http://127.0.0.1:{port}/"
        running = _Process(proc, base_url, log)
        try:
            if _wait_ready(proc, base_url, time.monotonic() + STARTUP_TIMEOUT):
                return running
        except TimeoutError:
            running.stop()
            raise ServerStartError(f"{label} did not answer on {base_url} within "
                                   f"{STARTUP_TIMEOUT:.0f} s; output:\n{_tail(log)}") from None
        failure = f"{label} exited with status {proc.returncode}; output:\n{_tail(log)}"
        if "in use" not in failure:
            break
    raise ServerStartError(failure)


def _start_radicale(workdir: Path, with_auth: bool) -> _Process:
    storage = workdir / "collections"
    htpasswd = workdir / "users"
    htpasswd.write_text(f"{USERNAME}:{PASSWORD}\n", encoding="utf-8")
    # Without credentials Radicale's default rights (owner_only) refuse everything, so
    # the no-auth variant grants anonymous access; delays are off to keep tests fast.
    auth = (f"type = htpasswd\nhtpasswd_filename = {htpasswd}\nhtpasswd_encryption = plain\n"
            if with_auth else "type = none\n")
    rights = "owner_only" if with_auth else "authenticated"

    def argv(port: int) -> list[str]:
        config = workdir / "config"
        config.write_text(
            f"[server]\nhosts = 127.0.0.1:{port}\ndelay_on_error = 0\n"
            f"[auth]\n{auth}delay = 0\n"
            f"[rights]\ntype = {rights}\n"
            f"[storage]\nfilesystem_folder = {storage}\n"
            "[web]\ntype = none\n"
            "[logging]\nlevel = warning\n", encoding="utf-8")
        # -C replaces the default /etc and ~/.config paths, so no local config leaks in.
        return [sys.executable, "-m", "radicale", "-C", str(config)]

    return _spawn("radicale", workdir, argv)


def _start_xandikos(workdir: Path) -> _Process:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "xandikos", "serve", "-d", str(workdir / "data"),
                "--defaults", "-l", "127.0.0.1", "-p", str(port), "--no-detect-systemd",
                "--state-dir", str(workdir / "state")]

    return _spawn("xandikos", workdir, argv)


class DavServerPool:
    """Starts each variant on first use and stops everything at the end of the session."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()
        self._servers: dict[str, DavServer] = {}
        self._errors: dict[str, str] = {}
        self._processes: list[_Process] = []
        self._proxies: list[FaultProxy] = []
        self._stops: list[Callable[[], None]] = []
        # Session teardown normally stops the servers; this covers a crashed pytest.
        atexit.register(self.close)

    def get(self, name: str) -> DavServer:
        if name not in ALL_VARIANTS:
            raise ValueError(f"unknown DAV server variant {name!r}; known: {ALL_VARIANTS}")
        if name in DEBIAN_SERVERS:
            reason = DEBIAN_SERVERS[name].missing()
            if reason is not None:
                require_service(name, reason)
            if name != "cyrus":
                unreachable = servers.Postgres.from_env().reachable()
                if unreachable is not None:
                    require_service(name, unreachable)
        else:
            package = name.split("-")[0]
            if importlib.util.find_spec(package) is None:
                require_service(name, f"the {package} package is not installed")
        with self._lock:
            if name in self._errors:
                # Retrying a broken start-up for every test would only multiply the wait.
                raise ServerStartError(self._errors[name])
            if name not in self._servers:
                try:
                    self._servers[name] = self._start(name)
                except ServerStartError as exc:
                    self._errors[name] = str(exc)
                    raise
            return self._servers[name]

    def _start(self, name: str) -> DavServer:
        if name in DEBIAN_SERVERS:
            started: Started = DEBIAN_SERVERS[name].start()
            self._stops.append(started.stop)
            return DavServer(name, started.base_url, USERNAME, PASSWORD,
                             started.principal_url, started.calendar_home_url,
                             started.addressbook_home_url, started.calendar_url,
                             started.addressbook_url, started.seconds)
        workdir = self._root / name
        workdir.mkdir(parents=True, exist_ok=True)
        if name.startswith("radicale"):
            with_auth = name == "radicale-auth"
            process = _start_radicale(workdir, with_auth)
            self._processes.append(process)
            base = process.base_url
            principal = urljoin(base, f"{USERNAME}/")
            auth = (USERNAME, PASSWORD) if with_auth else None
            with httpx.Client(auth=auth, timeout=10.0) as client:
                if with_auth:
                    # Radicale creates a user's principal collection on their first request.
                    response = client.request("PROPFIND", principal, headers={"Depth": "0"})
                else:
                    response = client.request("MKCOL", principal)
            if response.status_code not in (201, 207):
                raise ServerStartError(f"{name}: creating {principal} -> "
                                       f"{response.status_code} {response.text[:300]}")
            return DavServer(name, base, auth[0] if auth else None, auth[1] if auth else None,
                             principal, principal, principal)
        process = _start_xandikos(workdir)
        self._processes.append(process)
        base = process.base_url
        username = password = None
        if name == "xandikos-auth":
            proxy = FaultProxy(base, require_auth=(USERNAME, PASSWORD))
            self._proxies.append(proxy)
            base, username, password = proxy.url, USERNAME, PASSWORD
        return DavServer(name, base, username, password, urljoin(base, "user/"),
                         urljoin(base, "user/calendars/"), urljoin(base, "user/contacts/"))

    def close(self) -> None:
        for proxy in self._proxies:
            proxy.close()
        for process in self._processes:
            process.stop()
        while self._stops:
            self._stops.pop()()


@pytest.fixture(scope="session")
def dav_server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DavServerPool]:
    pool = DavServerPool(tmp_path_factory.mktemp("davservers"))
    yield pool
    pool.close()


@pytest.fixture(scope="session", params=VARIANTS, ids=list(VARIANTS))
def dav_server(request: pytest.FixtureRequest, dav_server_pool: DavServerPool) -> DavServer:
    """Each DAV server variant in turn; narrow it with
    ``@pytest.mark.parametrize("dav_server", ["radicale-auth"], indirect=True)``."""
    return dav_server_pool.get(request.param)


@pytest.fixture(scope="session")
def radicale_server(dav_server_pool: DavServerPool) -> DavServer:
    return dav_server_pool.get("radicale")


@pytest.fixture(scope="session")
def xandikos_server(dav_server_pool: DavServerPool) -> DavServer:
    return dav_server_pool.get("xandikos")


@pytest.fixture
def fault_proxy(dav_server: DavServer) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the current ``dav_server`` (credentials pass
    through unchanged); map the server's URLs onto it with ``fault_proxy.translate``."""
    with FaultProxy(dav_server.base_url) as proxy:
        yield proxy


# --- fault-injecting proxy --------------------------------------------------------------

# RFC 9110 section 7.6.1: these describe one connection and must not be forwarded.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                         "proxy-authorization", "te", "trailer", "transfer-encoding",
                         "upgrade"})


@dataclass
class _Fault:
    action: str  # "fail", "drop", "delay" or "truncate"
    remaining: int
    methods: frozenset[str] | None
    status: int = 503
    retry_after: int | None = None
    seconds: float = 0.0
    after_forward: bool = False
    # Only requests whose body contains these bytes (e.g. b"time-range"), when set.
    body: bytes | None = None

    def matches(self, method: str, body: bytes) -> bool:
        return ((self.methods is None or method in self.methods)
                and (self.body is None or self.body in body))

    @property
    def name(self) -> str:
        if self.action == "fail":
            return f"fail-{self.status}"
        return self.action + ("-after-forward" if self.after_forward else "")


# The faults chaos mode picks from (timeouts show up as drops: the client sees no answer).
_CHAOS = (_Fault("fail", 1, None, status=503), _Fault("fail", 1, None, status=500),
          _Fault("fail", 1, None, status=429, retry_after=0), _Fault("drop", 1, None),
          _Fault("drop", 1, None, after_forward=True), _Fault("truncate", 1, None))


class FaultProxy:
    """A threaded HTTP/1.1 reverse proxy on a free loopback port that can misbehave.

    Everything is forwarded to ``target_base_url`` with the same path, so hrefs in DAV
    responses stay valid; faults armed with :meth:`fail`, :meth:`drop` and :meth:`delay`
    are consumed in the order they were armed, one per matching request. With
    ``require_auth`` the proxy answers 401 unless the request carries those Basic
    credentials (faults come first, as from a load balancer in front of the server).
    With ``upstream_tls`` (an SSL context trusting the target) it forwards to an https://
    target such as the sandboxes, still listening on plain http on loopback unless
    ``server_tls`` (a server SSL context, e.g. with the sandbox's own certificate) makes it
    listen with TLS too, for clients that only speak https (Graph). With
    ``chaos`` (a seeded ``random.Random``) every request no armed fault is waiting for
    gets a random fault with probability ``rate``; ``injected`` counts them by name.
    """

    def __init__(self, target_base_url: str, *,
                 require_auth: tuple[str, str] | None = None,
                 chaos: random.Random | None = None, rate: float = 0.2,
                 upstream_tls: ssl.SSLContext | None = None,
                 server_tls: ssl.SSLContext | None = None) -> None:
        target = urlsplit(target_base_url)
        scheme = "https" if upstream_tls is not None else "http"
        if target.scheme != scheme or not target.hostname:
            raise ValueError(f"FaultProxy forwards to {scheme}:// URLs only (https with "
                             f"upstream_tls), not {target_base_url}")
        self._upstream_tls = upstream_tls
        self.target_base_url = target_base_url
        self._target = target
        self._expected_auth: str | None = None
        if require_auth is not None:
            token = base64.b64encode(":".join(require_auth).encode()).decode("ascii")
            self._expected_auth = f"Basic {token}"
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._requests: list[tuple[str, str]] = []
        # Chaos mode: with no armed fault, each request gets a random one with ``rate``.
        self.chaos = chaos
        self.rate = rate
        self.injected: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._closed = False
        self._hold: _Hold | None = None
        self.holding = 0
        self.released = threading.Event()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self
        if server_tls is not None:
            self._server.socket = server_tls.wrap_socket(self._server.socket, server_side=True,
                                                         do_handshake_on_connect=False)
        port = self._server.server_address[1]
        self._scheme = "https" if server_tls is not None else "http"
        self.origin = f"{self._scheme}://127.0.0.1:{port}"
        self.url = self.origin + (target.path or "/")
        self._thread = threading.Thread(target=self._server.serve_forever,
                                         kwargs={"poll_interval": 0.05},
                                         name=f"FaultProxy:{port}", daemon=True)
        self._thread.start()

    # -- arming faults

    def fail(self, status: int = 503, times: int = 2, retry_after: int | None = None,
             methods: set[str] | None = None, body: bytes | None = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` and don't forward;
        ``body`` matches only requests whose body contains it (one kind of REPORT)."""
        self._arm(_Fault("fail", times, _methods(methods), status=status,
                         retry_after=retry_after, body=body))

    def drop(self, times: int = 1, methods: set[str] | None = None,
             after_forward: bool = False) -> None:
        """Close the connection without answering the next ``times`` matching requests.

        With ``after_forward`` the request reaches the server first and only the answer is
        lost: the case where a client cannot know whether its PUT or DELETE happened.
        """
        self._arm(_Fault("drop", times, _methods(methods), after_forward=after_forward))

    def delay(self, seconds: float, times: int = 1, methods: set[str] | None = None) -> None:
        """Wait ``seconds`` before forwarding the next ``times`` matching requests."""
        self._arm(_Fault("delay", times, _methods(methods), seconds=seconds))

    def truncate(self, times: int = 1, methods: set[str] | None = None) -> None:
        """Forward the next ``times`` matching requests, then send the answer's headers
        with its full Content-Length but only half of its body, and close."""
        self._arm(_Fault("truncate", times, _methods(methods)))

    def _arm(self, fault: _Fault) -> None:
        if fault.remaining > 0:
            with self._lock:
                self._faults.append(fault)

    def _take_fault(self, method: str, body: bytes = b"") -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, body):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
            if self.chaos is None or self.chaos.random() >= self.rate:
                return None
            fault = self.chaos.choice(_CHAOS)
            self.injected[fault.name] += 1
            return fault

    def hold(self, skip: int = 0, methods: set[str] | None = None,
             after_forward: bool = False) -> None:
        """Let ``skip`` matching requests through, then keep the next one unanswered
        (forwarded first with ``after_forward``) until :meth:`release`; :attr:`holding`
        counts the requests held. For killing a client at that very moment."""
        self.released.clear()
        with self._lock:
            self._hold = _Hold(skip, _methods(methods), after_forward)

    def release(self) -> None:
        """Close the held requests' connections, unanswered; disarm a hold not reached."""
        with self._lock:
            self._hold = None
        self.released.set()

    def _take_hold(self, method: str) -> _Hold | None:
        with self._lock:
            hold = self._hold
            if hold is None or (hold.methods is not None and method not in hold.methods):
                return None
            if hold.skip > 0:
                hold.skip -= 1
                return None
            self._hold = None
            return hold

    # -- observing

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request received so far, faulted ones included."""
        with self._lock:
            return list(self._requests)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched ``method`` and ``path`` (None matches anything)."""
        return sum(1 for m, p in self.requests
                   if (method is None or m == method) and (path is None or p == path))

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))

    def reset(self) -> None:
        """Forget recorded requests and disarm every fault."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    # -- URLs

    def translate(self, url: str) -> str:
        """The proxy URL for ``url`` on the target (absolute, or a path like ``/ana/x/``)."""
        parts = urlsplit(url)
        if not parts.scheme and not parts.netloc:
            return self.origin + url
        if (parts.scheme, parts.netloc) != (self._target.scheme, self._target.netloc):
            raise ValueError(f"{url} is not on the proxied server {self.target_base_url}")
        return urlunsplit((self._scheme, urlsplit(self.origin).netloc, parts.path,
                           parts.query, parts.fragment))

    # -- lifecycle

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close(self) -> None:
        self.released.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections)
        self._server.shutdown()
        self._server.server_close()
        # Handler threads sit in a read on idle keep-alive connections; wake them up.
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy({self.url} -> {self.target_base_url})"


@dataclass
class _Hold:
    skip: int
    methods: frozenset[str] | None
    after_forward: bool


def _methods(methods: set[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    proxy: FaultProxy


class _BadRequest(Exception):
    pass


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections end eventually instead of pinning a thread forever.
    timeout = 60
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, False)
        if self._upstream is not None:
            self._upstream.close()
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # test output stays readable; FaultProxy.requests is the record

    def handle_one_request(self) -> None:
        # Same as the standard library's, but every method (PROPFIND, REPORT, ...) goes to
        # one place instead of needing a do_<METHOD> for each.
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._handle()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, OSError):
            self.close_connection = True

    def _handle(self) -> None:
        proxy = self.server.proxy
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._reply(400, str(exc))
            return
        proxy._record(self.command, self.path)
        authorized = (proxy._expected_auth is None
                      or self.headers.get("Authorization") == proxy._expected_auth)
        hold = proxy._take_hold(self.command)
        if hold is not None and authorized:
            self._held(hold, body)
            return
        fault = proxy._take_fault(self.command, body)
        if fault is not None:
            if fault.action == "drop":
                if fault.after_forward and authorized:
                    with contextlib.suppress(OSError, http.client.HTTPException):
                        self._exchange(self._upstream_headers(body), body)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.action == "fail":
                headers = (() if fault.retry_after is None
                           else (("Retry-After", str(fault.retry_after)),))
                self._reply(fault.status, f"injected fault: {fault.status}", headers)
                return
            if fault.action == "delay":
                time.sleep(fault.seconds)
        if not authorized:
            self._reply(401, "authentication required",
                        (("WWW-Authenticate", 'Basic realm="crmsync-test", charset="UTF-8"'),))
            return
        self._forward(body, truncate=fault is not None and fault.action == "truncate")

    def _held(self, hold: _Hold, body: bytes) -> None:
        proxy = self.server.proxy
        if hold.after_forward:
            with contextlib.suppress(OSError, http.client.HTTPException):
                self._exchange(self._upstream_headers(body), body)
        with proxy._lock:
            proxy.holding += 1
        proxy.released.wait()
        with proxy._lock:
            proxy.holding -= 1
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in encoding:
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise _BadRequest(f"bad Content-Length {length!r}") from None
        body = self.rfile.read(size)
        if len(body) != size:
            raise _BadRequest("request body ended early")
        return body

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(f"bad chunk size line {line!r}") from None
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadRequest("chunked body ended early")
            chunks.append(chunk)
            self.rfile.readline(3)  # the CRLF after each chunk
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields carry nothing the servers need
        return b"".join(chunks)

    def _reply(self, status: int, text: str,
               headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = (text + "\n").encode()
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _upstream_headers(self, body: bytes) -> list[tuple[str, str]]:
        proxy = self.server.proxy
        target = proxy._target
        listed = {token.strip().lower()
                  for token in self.headers.get("Connection", "").split(",")}
        headers = []
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in listed or lower in ("host", "content-length"):
                continue
            if lower == "destination" and value.startswith(proxy.origin):
                value = f"{target.scheme}://{target.netloc}{value[len(proxy.origin):]}"
            headers.append((name, value))
        headers.append(("Host", target.netloc))
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            headers.append(("Content-Length", str(len(body))))
        return headers

    def _forward(self, body: bytes, truncate: bool = False) -> None:
        proxy = self.server.proxy
        target = proxy._target
        try:
            response, data = self._exchange(self._upstream_headers(body), body)
        except (OSError, http.client.HTTPException) as exc:
            self._reply(502, f"upstream {proxy.target_base_url} failed: {exc!r}")
            return
        self.send_response_only(response.status, response.reason)
        upstream = f"{target.scheme}://{target.netloc}"
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower == "content-length":
                continue
            if lower in ("location", "content-location") and value.startswith(upstream):
                value = proxy.origin + value[len(upstream):]
            self.send_header(name, value)
        bodiless = response.status in (204, 304) or 100 <= response.status < 200
        if self.command == "HEAD":
            length = response.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        elif not bodiless:
            # The body was read whole, so it is re-framed with a length whether the server
            # sent one, chunked it, or closed the connection to end it.
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if truncate:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if data and self.command != "HEAD" and not bodiless:
            self.wfile.write(data)

    def _exchange(self, headers: list[tuple[str, str]],
                  body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        # One upstream connection per client connection; a reused one may have been closed
        # by the server while idle, which shows up before any response byte: retry once.
        for attempt in (0, 1):
            reused = self._upstream is not None
            if self._upstream is None:
                target = self.server.proxy._target
                tls = self.server.proxy._upstream_tls
                self._upstream = (
                    http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
                    if tls is None else http.client.HTTPSConnection(
                        target.hostname, target.port or 443, timeout=60, context=tls))
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self._upstream = None
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                self._upstream = None
                raise
            if response.will_close:
                conn.close()
                self._upstream = None
            return response, data
        raise AssertionError("unreachable")
