"""The test DAV servers and the fault proxy themselves."""

from __future__ import annotations

import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from davservers import PASSWORD, USERNAME, DavServer, FaultProxy

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
CARDDAV = "{urn:ietf:params:xml:ns:carddav}"

PROPFIND = b"""<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop><D:resourcetype/><C:supported-calendar-component-set/></D:prop>
</D:propfind>"""
XML = {"Content-Type": "application/xml; charset=utf-8"}

ICS = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//crmsync//tests//EN\r
BEGIN:VEVENT\r
UID:{uid}\r
DTSTAMP:20260101T000000Z\r
DTSTART:20261201T090000Z\r
DTEND:20261201T100000Z\r
SUMMARY:Meeting\r
END:VEVENT\r
END:VCALENDAR\r
"""

VCF = """BEGIN:VCARD\r
VERSION:3.0\r
UID:{uid}\r
FN:Ana Example\r
N:Example;Ana;;;\r
EMAIL:ana@example.org\r
END:VCARD\r
"""


def propfind(client: httpx.Client, url: str) -> ET.Element:
    response = client.request("PROPFIND", url, content=PROPFIND,
                              headers={**XML, "Depth": "0"})
    assert response.status_code == 207, response.text
    return ET.fromstring(response.content)


def test_server_answers_with_its_principal(dav_server: DavServer) -> None:
    with dav_server.client() as client:
        tree = propfind(client, dav_server.principal_url)
    assert tree.find(f".//{DAV}resourcetype/{DAV}principal") is not None


@pytest.mark.parametrize("kind", ["calendar", "tasks", "addressbook"])
def test_make_collection(dav_server: DavServer, kind: str) -> None:
    url = dav_server.make_collection(kind)
    assert url.startswith(dav_server.base_url) and url.endswith("/")
    assert dav_server.make_collection(kind) != url
    with dav_server.client() as client:
        tree = propfind(client, url)
    resourcetype = tree.find(f".//{DAV}resourcetype")
    assert resourcetype is not None
    assert resourcetype.find(f"{DAV}collection") is not None
    if kind == "addressbook":
        assert resourcetype.find(f"{CARDDAV}addressbook") is not None
        return
    assert resourcetype.find(f"{CALDAV}calendar") is not None
    components = {c.get("name") for c in tree.iter(f"{CALDAV}comp")}
    assert components == ({"VTODO"} if kind == "tasks" else {"VEVENT", "VTODO"})


def test_make_collection_with_a_name(dav_server: DavServer) -> None:
    name = f"named-{uuid.uuid4().hex[:6]}"
    assert dav_server.make_collection("calendar", name).endswith(f"/{name}/")
    with pytest.raises(ValueError):
        dav_server.make_collection("journal")


@pytest.mark.parametrize(("kind", "template", "content_type"), [
    ("calendar", ICS, "text/calendar; charset=utf-8"),
    ("addressbook", VCF, "text/vcard; charset=utf-8"),
])
def test_put_and_get(dav_server: DavServer, kind: str, template: str,
                     content_type: str) -> None:
    uid = str(uuid.uuid4())
    url = dav_server.make_collection(kind) + uid + (".ics" if kind == "calendar" else ".vcf")
    with dav_server.client() as client:
        put = client.put(url, content=template.format(uid=uid).encode(),
                         headers={"Content-Type": content_type, "If-None-Match": "*"})
        assert put.status_code == 201, put.text
        got = client.get(url)
    assert got.status_code == 200
    assert f"UID:{uid}" in got.text
    assert got.headers.get("ETag")


@pytest.mark.parametrize("dav_server", ["radicale-auth", "xandikos-auth"], indirect=True)
def test_auth_variants_demand_credentials(dav_server: DavServer) -> None:
    assert dav_server.auth == (USERNAME, PASSWORD)
    url = dav_server.make_collection("calendar")
    with httpx.Client(timeout=10.0) as anonymous:
        response = anonymous.request("PROPFIND", url, content=PROPFIND,
                                     headers={**XML, "Depth": "0"})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    with httpx.Client(timeout=10.0, auth=(USERNAME, "wrong")) as wrong:
        assert wrong.get(url).status_code == 401
    with dav_server.client() as client:
        propfind(client, url)


def test_no_auth_variants_need_no_credentials(radicale_server: DavServer,
                                              xandikos_server: DavServer) -> None:
    for server in (radicale_server, xandikos_server):
        assert server.auth is None
        with httpx.Client(timeout=10.0) as client:
            propfind(client, server.make_collection("addressbook"))


# --- the proxy, against a real server ------------------------------------------------


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_proxy_forwards_and_counts(fault_proxy: FaultProxy, dav_server: DavServer) -> None:
    url = fault_proxy.translate(dav_server.make_collection("calendar"))
    assert url.startswith(fault_proxy.url)
    assert fault_proxy.translate(dav_server.base_url) == fault_proxy.url
    uid = str(uuid.uuid4())
    with httpx.Client(timeout=10.0) as client:
        propfind(client, url)
        # A generator body makes httpx send it chunked, which the proxy must de-chunk.
        parts = [part.encode() for part in ICS.format(uid=uid).splitlines(keepends=True)]
        put = client.put(url + "a.ics", content=iter(parts),
                         headers={"Content-Type": "text/calendar"})
        assert put.status_code == 201, put.text
        assert f"UID:{uid}" in client.get(url + "a.ics").text
        assert client.head(url + "a.ics").status_code == 200
        assert client.delete(url + "a.ics").status_code in (200, 204)
    path = url.removeprefix(fault_proxy.origin)
    assert fault_proxy.requests == [("PROPFIND", path), ("PUT", path + "a.ics"),
                                    ("GET", path + "a.ics"), ("HEAD", path + "a.ics"),
                                    ("DELETE", path + "a.ics")]
    assert fault_proxy.count("PUT") == 1
    fault_proxy.reset()
    assert fault_proxy.requests == []
    with pytest.raises(ValueError):
        fault_proxy.translate("http://example.org/ana/")


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_proxy_fail(fault_proxy: FaultProxy, dav_server: DavServer) -> None:
    url = fault_proxy.translate(dav_server.make_collection("calendar"))
    fault_proxy.fail(status=503, times=2, retry_after=7, methods={"PROPFIND"})
    with httpx.Client(timeout=10.0) as client:
        assert client.get(url).status_code != 503  # GET doesn't match
        for _ in range(2):
            response = client.request("PROPFIND", url, content=PROPFIND,
                                      headers={**XML, "Depth": "0"})
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "7"
        propfind(client, url)
        fault_proxy.fail(status=429, times=1)
        assert client.get(url).status_code == 429
        assert "Retry-After" not in client.get(url).headers
    assert fault_proxy.count("PROPFIND") == 3 and fault_proxy.pending_faults == 0


@pytest.mark.parametrize("dav_server", ["radicale"], indirect=True)
def test_proxy_drop_and_delay(fault_proxy: FaultProxy, dav_server: DavServer) -> None:
    url = fault_proxy.translate(dav_server.make_collection("calendar"))
    with httpx.Client(timeout=10.0) as client:
        client.get(url)  # a kept-alive connection is the case that matters for drops
        fault_proxy.drop()
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(url)
        assert client.get(url).status_code == 200
        fault_proxy.delay(0.3, times=1)
        start = time.monotonic()
        assert client.get(url).status_code == 200
        assert time.monotonic() - start >= 0.3
        fault_proxy.delay(2.0)
        with pytest.raises(httpx.ReadTimeout):
            client.get(url, timeout=0.2)
    assert fault_proxy.count("GET") == 5


@pytest.mark.parametrize("dav_server", ["xandikos"], indirect=True)
def test_proxy_drop_after_forward(fault_proxy: FaultProxy, dav_server: DavServer) -> None:
    url = fault_proxy.translate(dav_server.make_collection("calendar")) + "lost.ics"
    body = ICS.format(uid=str(uuid.uuid4())).encode()
    headers = {"Content-Type": "text/calendar", "If-None-Match": "*"}
    fault_proxy.drop(methods={"PUT"}, after_forward=True)
    with httpx.Client(timeout=10.0) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.put(url, content=body, headers=headers)
        assert client.put(url, content=body, headers=headers).status_code == 412
        assert client.get(url).status_code == 200


def test_proxy_requires_auth(radicale_server: DavServer) -> None:
    with FaultProxy(radicale_server.base_url, require_auth=("u", "p")) as proxy:
        with httpx.Client(timeout=10.0) as client:
            assert client.get(proxy.url).status_code == 401
            assert client.get(proxy.url, auth=("u", "x")).status_code == 401
            assert client.get(proxy.url, auth=("u", "p")).status_code != 401


def test_proxy_is_thread_safe(radicale_server: DavServer) -> None:
    with FaultProxy(radicale_server.base_url) as proxy:
        proxy.fail(status=500, times=10)
        statuses: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            with httpx.Client(timeout=10.0) as client:
                for _ in range(5):
                    status = client.get(proxy.url + "ana/").status_code
                    with lock:
                        statuses.append(status)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(proxy.requests) == 40
    assert statuses.count(500) == 10


# --- the proxy, against odd upstream responses ----------------------------------------


class _OddHandler(BaseHTTPRequestHandler):
    """Answers /close with a body ended by closing, /chunked with a chunked body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close")
            self.close_connection = True
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"chu", b"nked"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(204)
            self.end_headers()


@pytest.fixture
def odd_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_proxy_reframes_responses(odd_upstream: str) -> None:
    with FaultProxy(odd_upstream) as proxy, httpx.Client(timeout=5.0) as client:
        for _ in range(2):  # again, over the same client connection and a fresh upstream
            close = client.get(proxy.url + "close")
            assert close.content == b"until-close"
            assert close.headers["Content-Length"] == "11"
            assert client.get(proxy.url + "chunked").content == b"chunked"
            assert client.get(proxy.url + "empty").status_code == 204


def test_proxy_answers_502_when_upstream_is_gone() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with FaultProxy(dead) as proxy, httpx.Client(timeout=5.0) as client:
        assert client.get(proxy.url).status_code == 502
