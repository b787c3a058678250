"""An embedded Radicale CalDAV/CardDAV server on a free loopback port, for the demo.

Radicale runs as a child process with its own config file (no user or system config
leaks in), anonymous access, and storage in a folder of ours; stopping it terminates the
process. :func:`make_collection` creates a calendar or an address book on it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import httpx

from crmsync.errors import ConnectionFailed

_MKCALENDAR = """<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>
<D:displayname>{name}</D:displayname><C:supported-calendar-component-set>
<C:comp name="VEVENT"/><C:comp name="VTODO"/></C:supported-calendar-component-set>
</D:prop></D:set></C:mkcalendar>"""

_MKCOL_ADDRESSBOOK = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><D:set><D:prop>
<D:resourcetype><D:collection/><CR:addressbook/></D:resourcetype>
<D:displayname>{name}</D:displayname></D:prop></D:set></D:mkcol>"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Radicale:
    """``with Radicale(folder) as server:`` serves ``folder`` at ``server.url``."""

    def __init__(self, folder: Path, startup_timeout: float = 20.0) -> None:
        self.folder = folder
        self.startup_timeout = startup_timeout
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Radicale:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = self.folder / "radicale.conf"
        config.write_text(
            f"[server]\nhosts = 127.0.0.1:{port}\n"
            "[auth]\ntype = none\n[rights]\ntype = authenticated\n"
            f"[storage]\nfilesystem_folder = {self.folder / 'collections'}\n"
            "[web]\ntype = none\n[logging]\nlevel = warning\n", encoding="utf-8")
        log = (self.folder / "radicale.log").open("wb")
        # -C replaces the default config paths: nothing of the user's own setup leaks in.
        self._proc = subprocess.Popen([sys.executable, "-m", "radicale", "-C", str(config)],
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
        log.close()
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while self._proc.poll() is None and time.monotonic() < deadline:
                try:
                    client.get(self.url)
                    return
                except httpx.TransportError:
                    time.sleep(0.05)
        self.stop()
        raise ConnectionFailed(f"the embedded Radicale did not start; see "
                               f"{self.folder / 'radicale.log'}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def make_collection(self, user: str, name: str, kind: str) -> str:
        """Create ``kind`` ("calendar" or "addressbook") ``name`` for ``user``; its URL."""
        url = f"{self.url}{quote(user)}/{quote(name)}/"
        if kind == "calendar":
            method, body = "MKCALENDAR", _MKCALENDAR.format(name=name)
        else:
            method, body = "MKCOL", _MKCOL_ADDRESSBOOK.format(name=name)
        with httpx.Client(timeout=10.0) as client:
            # The user's own folder first (405: it is there already).
            client.request("MKCOL", f"{self.url}{quote(user)}/")
            response = client.request(method, url, content=body.encode(),
                                      headers={"Content-Type": "application/xml"})
        if response.status_code != 201:
            raise ConnectionFailed(f"{method} {url} answered {response.status_code}")
        return url

    def put(self, url: str, raw: str) -> None:
        media = "text/vcard" if url.endswith(".vcf") else "text/calendar"
        with httpx.Client(timeout=10.0) as client:
            response = client.put(url, content=raw.encode(), headers={"Content-Type": media})
        if not response.is_success:
            raise ConnectionFailed(f"PUT {url} answered {response.status_code}")
