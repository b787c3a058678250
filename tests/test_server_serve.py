"""``crmsync serve`` as a real process: killed with SIGKILL while a job runs and another
waits, then started again: both jobs run, none is lost. Also ``crmsync user``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, select

from crmsync import formats
from crmsync.embedded import free_port
from crmsync.model import Event, moment
from crmsync.sandbox.server import Sandbox
from crmsync.store.schema import jobs, runs

from davservers import DavServer, FaultProxy

PASSWORD = "correct horse battery"


def crmsync(home: Path, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmsync", "--home", str(home), *args],
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class Serve:
    """A running ``crmsync serve`` subprocess on a free port."""

    def __init__(self, home: Path, sandbox: Sandbox, *extra: str) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (home / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crmsync", "--home", str(home), "serve", "--port",
             str(self.port), "--workers", "1", "--salesforce-client-id", sandbox.client_id,
             "--salesforce-login-url", sandbox.login_url, "--salesforce-ca-bundle",
             str(sandbox.ca_path), *extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "CRMSYNC_SALESFORCE_CLIENT_SECRET": sandbox.client_secret})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                httpx.get(self.url + "/signin", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("crmsync serve did not start:\n" + self.output())

    def output(self) -> str:
        return (self.home / f"serve-{self.port}.log").read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Api:
    """A signed-in API client. The cookie is Secure, so over plain http it is sent by hand,
    as a browser on localhost would."""

    def __init__(self, url: str, email: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        answer = self.http.post("/api/session", json={"email": email, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        assert "Secure" in answer.headers["set-cookie"]
        token = answer.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        self.headers = {"Cookie": f"crmsync_session={token}",
                        "X-CSRF-Token": answer.json()["csrf_token"]}

    def __call__(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.http.request(method, path, headers=self.headers, **kwargs)


@pytest.fixture
def proxy(radicale_server: DavServer) -> Iterator[FaultProxy]:
    with FaultProxy(radicale_server.base_url) as running:
        yield running


def job_rows(home: Path) -> list[dict]:
    engine = create_engine(f"sqlite:///{home / 'state.db'}")
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(jobs).order_by(jobs.c.id))]
    finally:
        engine.dispose()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_user_commands(tmp_path: Path):
    home = tmp_path / "home"
    added = crmsync(home, "user", "add", "Ana@Example.com", "--admin", "--password-stdin",
                    stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    again = crmsync(home, "user", "add", "ana@example.com", "--password-stdin",
                    stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "exists already" in again.stderr
    listed = crmsync(home, "user", "list", "--json")
    assert json.loads(listed.stdout) == [{"id": 1, "email": "ana@example.com", "admin": True,
                                          "disabled": False}]
    for args in (("serve",), ("user",), ("user", "add"), ("user", "list")):
        shown = crmsync(home, *args, "--help")
        assert shown.returncode == 0 and "Usage" in shown.stdout


def test_a_killed_server_loses_no_queued_or_running_job(tmp_path: Path, sandbox: Sandbox,
                                                        radicale_server: DavServer,
                                                        proxy: FaultProxy):
    home = tmp_path / "home"
    assert crmsync(home, "user", "add", "ana@example.com", "--password-stdin",
                   stdin=PASSWORD + "\n").returncode == 0
    calendar = radicale_server.make_collection("calendar")
    start = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=1)
    uid = f"restart-{tmp_path.name}@t"
    with radicale_server.client() as dav:
        dav.put(calendar + "restart.ics", headers={"Content-Type": "text/calendar"},
                content=formats.render(formats.ICALENDAR, "calendar", Event(
                    uid=uid, summary="Survives a restart", start=moment(start),
                    end=moment(start + timedelta(hours=1)))).encode()).raise_for_status()
    server = Serve(home, sandbox)
    try:
        api = Api(server.url, "ana@example.com")
        answer = api("PUT", "/api/connections/groupware",
                     json={"calendar_url": proxy.translate(calendar)})
        assert answer.status_code == 200, answer.text
        go = api("POST", "/api/connections/crm/authorize").json()["authorize_url"]
        redirect = httpx.get(go, verify=sandbox.ssl_context(), follow_redirects=False)
        query = {k: v[0] for k, v in parse_qs(urlsplit(redirect.headers["location"]).query)
                 .items()}
        back = api("GET", "/api/connections/crm/callback", params=query,
                   follow_redirects=False)
        assert back.status_code == 303, back.text
        # The groupware answers its next request only after a while: the job hangs there.
        proxy.delay(10, times=1)
        assert api("PATCH", "/api/settings/calendar",
                   json={"values": {"mode": "auto"}}).status_code == 200
        wait_for(lambda: any(r["status"] == "running" for r in job_rows(home)),
                 "the calendar job to run")
        assert api("POST", "/api/jobs/tasks/run").json() == {"state": "queued"}
        states = {r["kind"]: r["status"] for r in job_rows(home)}
        assert states == {"calendar": "running", "tasks": "queued"}
        server.kill()
    finally:
        server.stop()
    assert {r["kind"]: r["status"] for r in job_rows(home)} == {"calendar": "running",
                                                                "tasks": "queued"}
    server = Serve(home, sandbox)
    try:
        wait_for(lambda: all(r["status"] in ("done", "failed") for r in job_rows(home)),
                 "both jobs to finish after the restart")
        rows = {r["kind"]: r for r in job_rows(home)}
        assert rows["calendar"]["status"] == "done", server.output()
        assert rows["calendar"]["attempts"] == 2 and rows["calendar"]["reason"] == "retry"
        assert rows["tasks"]["status"] == "done" and rows["tasks"]["attempts"] == 1
        api = Api(server.url, "ana@example.com")
        last = api("GET", "/api/jobs").json()[0]["last_run"]
        assert last["status"] == "ok"
        engine = create_engine(f"sqlite:///{home / 'state.db'}")
        with engine.connect() as conn:
            assert conn.execute(select(runs.c.status).where(runs.c.id == last["id"])
                                ).scalar() == "ok"
        engine.dispose()
        with sandbox.client() as crm:
            found = crm.get("/services/data/v62.0/query", params={
                "q": "SELECT Subject FROM Event WHERE Subject = 'Survives a restart'"})
        assert found.json()["totalSize"] == 1
        assert sandbox.client_secret not in server.output()
        assert query["code"] not in server.output()
    finally:
        server.stop()
