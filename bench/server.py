"""Benchmark the server at scale: jobs per minute with 1, 2, 4 workers, and a tick's cost.

    python bench/server.py [--users 1000] [--workers 1,2,4] [--concurrency 1]
                           [--setup probe|real] [--job module:function]
                           [--candidates module:function] [--make-user module:function]
                           [--probe-sleep 0.1] [--postgres URL] [--json out.json]

For every worker count, on a fresh PostgreSQL database (dropped afterwards):

1. set up ``--users`` users whose scheduled objects are all due;
2. start that many ``crmsync worker`` processes and wait until each has registered;
3. tick the scheduler once, in this process: every due run is queued. Its cost is
   reported as two parts, asking for the candidates and the tick itself (due, slots,
   queuing), plus a second tick that finds every slot already taken (the steady state);
4. time from that tick until the queue is empty: jobs per minute = jobs / that time.

``--setup probe`` (the default) runs the probe job of tests/jobprobe.py, which sleeps
``--probe-sleep`` seconds: the numbers measure the harness, the queue and the scheduler,
not a sync. ``--setup real`` measures real syncs: it starts Radicale and the Salesforce
sandbox, gives every user a calendar collection of ``--events`` small events, and calls
``--make-user`` (default ``crmsync.server.service:make_user``) for each user to create
the user and their auto-syncing profile in the store:

    make_user(store, n: int, caldav: dict, salesforce: dict) -> None

``caldav`` is {"url", "username", "password"} of the user's collection; ``salesforce``
is the sandbox's connection.json ({"instance_url", "login_url", "ca_path", "client_id",
"client_secret", "username", "refresh_token", ...}). The job and the candidates then
default to the service's (``crmsync.server.service:run_job`` and ``:scheduled``).

Exit status: 0 done; 1 some job failed or the queue did not empty in time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from crmsync.server.pgqueue import ProcrastinateQueue  # noqa: E402
from crmsync.server.queue import load  # noqa: E402
from crmsync.server.scheduler import Scheduler, service_candidates  # noqa: E402
from crmsync.store import Store, now  # noqa: E402
from crmsync.store.schema import users  # noqa: E402

DEFAULT_POSTGRES = os.environ.get("CRMSYNC_TEST_POSTGRES",
                                  "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Result:
    workers: int
    concurrency: int
    jobs: int
    failed: int
    seconds: float
    jobs_per_minute: float
    candidates_seconds: float
    tick_seconds: float
    idle_tick_seconds: float


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"crmsync_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def add_users(store: Store, count: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(insert(users), [{"id": n, "email": f"user{n}@bench.example",
                                      "password_hash": "x", "created_at": now()}
                                     for n in range(1, count + 1)])


def setup_probe(store: Store, count: int) -> None:
    import jobprobe

    add_users(store, count)
    jobprobe.create(store.engine)
    with store.engine.begin() as conn:
        conn.execute(insert(jobprobe.probe_schedule),
                     [{"user_id": n, "kind": "calendar", "round": 1}
                      for n in range(1, count + 1)])


class RealSides:
    """Radicale and the Salesforce sandbox, running for the whole bench."""

    def __init__(self, workdir: Path) -> None:
        from crmsync.sandbox.server import Sandbox

        from davservers import DavServerPool

        self.pool = DavServerPool(workdir / "dav")
        self.dav = self.pool.get("radicale-auth")
        self.sandbox = Sandbox(daily_limit=10_000_000).start()
        self.salesforce = {
            "instance_url": self.sandbox.url, "login_url": self.sandbox.login_url,
            "ca_path": self.sandbox.ca_path, "client_id": self.sandbox.client_id,
            "client_secret": self.sandbox.client_secret, "username": self.sandbox.username,
            "refresh_token": self.sandbox.refresh_token,
            "jwt_private_key_path": self.sandbox.jwt_private_key_path}

    def calendar(self, n: int, events: int) -> dict[str, str]:
        url = self.dav.make_collection("calendar", f"bench-user{n}-{uuid.uuid4().hex[:6]}")
        with self.dav.client() as client:
            for e in range(events):
                uid = f"bench-{n}-{e}@crmsync"
                body = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync bench//EN\r\n"
                        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
                        f"DTSTART:202607{1 + e % 28:02d}T090000Z\r\n"
                        f"DTEND:202607{1 + e % 28:02d}T100000Z\r\n"
                        f"SUMMARY:Customer call {e} of user {n}\r\n"
                        "END:VEVENT\r\nEND:VCALENDAR\r\n")
                client.put(url + f"{uid}.ics", content=body,
                           headers={"Content-Type": "text/calendar"}).raise_for_status()
        return {"url": url, "username": self.dav.username or "",
                "password": self.dav.password or ""}

    def close(self) -> None:
        self.sandbox.stop()
        self.pool.close()


def setup_real(store: Store, count: int, sides: RealSides, make_user: str,
               events: int) -> None:
    make = load(make_user)
    for n in range(1, count + 1):
        make(store, n, sides.calendar(n, events), sides.salesforce)


def start_workers(url: str, count: int, args: argparse.Namespace,
                  logs: Path) -> list[subprocess.Popen]:
    env = os.environ | {
        "CRMSYNC_DATABASE": url, "CRMSYNC_PROBE_SLEEP": str(args.probe_sleep),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    return [subprocess.Popen(
        [sys.executable, "-m", "crmsync", "worker", "--job", args.job,
         "--concurrency", str(args.concurrency)],
        env=env, stdout=(logs / f"worker{n}.log").open("w"), stderr=subprocess.STDOUT)
        for n in range(count)]


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def count(store: Store, sql: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def measure(workers: int, args: argparse.Namespace, sides: RealSides | None,
            logs: Path) -> Result:
    with fresh_database(args.postgres) as url:
        store = Store.open(url)
        if sides is None:
            setup_probe(store, args.users)
        else:
            setup_real(store, args.users, sides, args.make_user, args.events)
        queue = ProcrastinateQueue(store.engine)
        procs = start_workers(url, workers, args, logs)
        try:
            wait(lambda: count(store, "SELECT count(*) FROM procrastinate_workers") == workers,
                 60, "the workers to start")
            scheduler = Scheduler(store.engine, queue,
                                  service_candidates(store, args.candidates))
            started = time.perf_counter()
            first = scheduler.run_once()
            idle = scheduler.run_once()
            wait(lambda: count(store, "SELECT count(*) FROM procrastinate_jobs "
                                      "WHERE status IN ('todo', 'doing')") == 0,
                 args.timeout, "the queue to empty")
            seconds = time.perf_counter() - started
            failed = count(store, "SELECT count(*) FROM procrastinate_jobs "
                                  "WHERE status = 'failed'")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
            queue.close()
            store.close()
    return Result(workers, args.concurrency, first.queued, failed, seconds,
                  first.queued / seconds * 60, first.candidates_seconds,
                  first.tick_seconds, idle.tick_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--workers", default="1,2,4",
                        help="worker process counts to measure, comma-separated")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs per worker")
    parser.add_argument("--setup", choices=("probe", "real"), default="probe")
    parser.add_argument("--job", help="module:function(store, user_id, kind); default "
                        "jobprobe:run (probe) or crmsync.server.service:run_job (real)")
    parser.add_argument("--candidates", help="module:function(store); default "
                        "jobprobe:scheduled or crmsync.server.service:scheduled")
    parser.add_argument("--make-user", default="crmsync.server.service:make_user",
                        help="module:function(store, n, caldav, salesforce) creating user "
                        "n (real setup only)")
    parser.add_argument("--events", type=int, default=5, help="events per calendar (real)")
    parser.add_argument("--probe-sleep", type=float, default=0.1,
                        help="seconds the probe job sleeps (probe setup)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="a database on the server to use (fresh ones are made there)")
    parser.add_argument("--json", type=Path, help="write the results here as well")
    args = parser.parse_args(argv)
    real = args.setup == "real"
    args.job = args.job or ("crmsync.server.service:run_job" if real else "jobprobe:run")
    args.candidates = args.candidates or (
        "crmsync.server.service:scheduled" if real else "jobprobe:scheduled")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="crmsync-bench-server-") as tmp:
        sides = RealSides(Path(tmp)) if real else None
        try:
            for workers in (int(w) for w in args.workers.split(",")):
                results.append(measure(workers, args, sides, Path(tmp)))
                r = results[-1]
                print(f"{workers} worker(s) x {r.concurrency}: {r.jobs} jobs in "
                      f"{r.seconds:.1f}s = {r.jobs_per_minute:.0f} jobs/min "
                      f"({r.failed} failed); tick: candidates {r.candidates_seconds:.3f}s "
                      f"+ queuing {r.tick_seconds:.3f}s, idle tick {r.idle_tick_seconds:.3f}s",
                      flush=True)
        finally:
            if sides is not None:
                sides.close()
    meta: dict[str, Any] = {"users": args.users, "setup": args.setup, "job": args.job,
                            "probe_sleep": args.probe_sleep if not real else None,
                            "cpus": os.cpu_count()}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]},
                                        indent=2) + "\n")
    ok = all(r.failed == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
