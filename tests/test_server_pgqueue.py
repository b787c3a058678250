"""The job queue on Procrastinate keeps the embedded queue's promises, on PostgreSQL."""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import distinct, func, insert, select, text, tuple_

from crmsync.server.pgqueue import ProcrastinateQueue, Workers, conninfo, sqlalchemy_url
from crmsync.store import Store, now
from crmsync.store.schema import users
from pgdb import fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    with fresh_database() as url:
        s = Store.open(url)
        with s.engine.begin() as conn:
            conn.execute(insert(users), [{"id": n, "email": f"u{n}@example.com",
                                          "password_hash": "x", "created_at": now()}
                                         for n in (1, 2, 3)])
        yield s
        s.close()


@pytest.fixture
def queue(store: Store) -> Iterator[ProcrastinateQueue]:
    q = ProcrastinateQueue(store.engine, stalled_after=3.0)
    yield q
    q.close()
    with store.engine.begin() as conn:
        conn.execute(text("TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE"))


def jobs(store: Store) -> list[tuple[str, str]]:
    """(queueing lock, status) of every job, oldest first."""
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT queueing_lock, status::text FROM procrastinate_jobs ORDER BY id"))]


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_urls_of_the_store_work_for_the_queue():
    assert str(sqlalchemy_url("postgresql://u:pw@db:5433/crm")) \
        == "postgresql+psycopg://u:***@db:5433/crm"
    assert conninfo("postgresql+psycopg://u:pw@db/crm") == "postgresql://u:pw@db/crm"
    with pytest.raises(Exception, match="needs PostgreSQL"):
        sqlalchemy_url("sqlite:///state.db")


def test_the_schema_is_applied_once_by_processes_starting_together(store: Store):
    errors: list[BaseException] = []

    def start() -> None:
        try:
            ProcrastinateQueue(store.engine)
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sync_now_twice_queues_one_job(store: Store, queue: ProcrastinateQueue):
    assert queue.state(1, "calendar") is None
    assert queue.enqueue(1, "calendar") == "queued"
    assert queue.enqueue(1, "calendar") == "queued"
    assert queue.enqueue(1, "contacts", reason="schedule") == "queued"
    assert jobs(store) == [("1:calendar", "todo"), ("1:contacts", "todo")]
    assert queue.state(1, "calendar") == "queued"


def test_web_instances_racing_queue_one_job(store: Store, queue: ProcrastinateQueue):
    instances = [ProcrastinateQueue(store.engine) for _ in range(6)]
    barrier = threading.Barrier(len(instances))
    answers: list[str] = []

    def click(q: ProcrastinateQueue) -> None:
        barrier.wait()
        answers.append(q.enqueue(2, "tasks"))

    threads = [threading.Thread(target=click, args=(q,)) for q in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q in instances:
        q.close()
    assert answers == ["queued"] * len(instances)
    assert jobs(store) == [("2:tasks", "todo")]


def test_asking_while_it_runs_answers_running_and_queues_nothing(
        store: Store, queue: ProcrastinateQueue):
    started, release = threading.Event(), threading.Event()

    def job(user_id: int, kind: str) -> None:
        started.set()
        assert release.wait(20)

    queue.job = job
    workers = Workers(queue, concurrency=2)
    workers.start()
    try:
        queue.enqueue(1, "calendar")
        assert started.wait(20)
        assert queue.state(1, "calendar") == "running"
        assert queue.enqueue(1, "calendar") == "running"
        assert jobs(store) == [("1:calendar", "doing")]
        release.set()
        wait_for(lambda: queue.state(1, "calendar") is None)
    finally:
        release.set()
        workers.stop()
    assert jobs(store) == []  # succeeded jobs are deleted; the store keeps the runs


def test_runs_of_one_user_and_object_never_overlap(store: Store, queue: ProcrastinateQueue):
    """Two workers, six at a time, while eight threads keep asking for three objects."""
    lock = threading.Lock()
    running: set[tuple[int, str]] = set()
    overlaps: list[tuple[int, str]] = []
    ran: list[tuple[int, str]] = []

    def job(user_id: int, kind: str) -> None:
        with lock:
            if (user_id, kind) in running:
                overlaps.append((user_id, kind))
            running.add((user_id, kind))
        time.sleep(random.uniform(0.01, 0.05))
        with lock:
            running.discard((user_id, kind))
            ran.append((user_id, kind))

    queue.job = job
    workers = [Workers(queue, concurrency=3, name=f"w{n}") for n in (1, 2)]
    for w in workers:
        w.start()
    objects = [(1, "calendar"), (1, "contacts"), (3, "calendar")]
    stop = time.monotonic() + 3
    answers: list[str] = []

    def ask() -> None:
        while time.monotonic() < stop:
            answers.append(queue.enqueue(*random.choice(objects)))
            time.sleep(0.005)

    askers = [threading.Thread(target=ask) for _ in range(8)]
    try:
        for t in askers:
            t.start()
        for t in askers:
            t.join()
        wait_for(lambda: all(queue.state(*o) is None for o in objects))
    finally:
        for w in workers:
            w.stop()
    assert overlaps == []
    assert set(ran) == set(objects)
    assert {"queued", "running"} <= set(answers)
    # Every answer "queued" was a job that then ran: far fewer runs than requests.
    assert len(ran) < len(answers)


def test_a_job_whose_worker_stopped_beating_is_queued_again(
        store: Store, queue: ProcrastinateQueue):
    queue.enqueue(1, "calendar")
    with store.engine.begin() as conn:
        worker = conn.execute(text(
            "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")).scalar()
        conn.execute(text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w"),
                     {"w": worker})
    assert queue.state(1, "calendar") == "running"
    assert queue.recover() == 0  # its worker beats
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE procrastinate_workers "
                          "SET last_heartbeat = now() - interval '1 minute'"))
    assert queue.recover() == 1
    assert queue.state(1, "calendar") == "queued"
    assert jobs(store) == [("1:calendar", "todo")]


def test_a_stalled_job_already_asked_for_again_gives_way(
        store: Store, queue: ProcrastinateQueue):
    queue.enqueue(1, "calendar")
    with store.engine.begin() as conn:  # its worker was pruned as stalled
        conn.execute(text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL"))
    queue.defer(1, "calendar")  # queued again before the recovery ran
    assert queue.recover() == 1
    assert jobs(store) == [("1:calendar", "failed"), ("1:calendar", "todo")]
    ran: list[tuple[int, str]] = []
    queue.job = lambda u, k: ran.append((u, k))
    workers = Workers(queue)
    workers.start()
    try:
        wait_for(lambda: ran == [(1, "calendar")])
    finally:
        workers.stop()


# --- at scale: worker and scheduler processes, one of them killed ---------------------------

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("calendar", "contacts")
SCALE_USERS = 200


def crmsync(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crmsync", *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_at_scale_every_run_once_never_overlapping_and_a_killed_worker_loses_nothing(
        tmp_path: Path):
    """3 workers, 3 schedulers racing, 200 users with 2 scheduled objects, 2 rounds.

    The worker that takes user 1's calendar (a slow run) is killed with SIGKILL in the
    middle of it: that run must run again elsewhere and finish, once.
    """
    import jobprobe

    with fresh_database() as url:
        s = Store.open(url)
        jobprobe.create(s.engine)
        with s.engine.begin() as conn:
            conn.execute(insert(users), [{"id": n, "email": f"u{n}@example.com",
                                          "password_hash": "x", "created_at": now()}
                                         for n in range(1, SCALE_USERS + 1)])
            conn.execute(insert(jobprobe.probe_schedule), [
                {"user_id": n, "kind": k, "round": 1}
                for n in range(1, SCALE_USERS + 1) for k in KINDS])
        env = os.environ | {
            "CRMSYNC_DATABASE": url, "CRMSYNC_PROBE_SLEEP": "0.03",
            "CRMSYNC_PROBE_SLOW": "1:calendar:120",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
        work = ("worker", "--job", "jobprobe:run", "--stalled-after", "5")
        workers: list[subprocess.Popen] = []

        def ended(round_: int) -> int:
            with s.engine.connect() as conn:
                return conn.execute(select(func.count(distinct(tuple_(
                    jobprobe.probe_runs.c.user_id, jobprobe.probe_runs.c.kind)))).where(
                    jobprobe.probe_runs.c.round == round_,
                    jobprobe.probe_runs.c.ended.is_not(None))).scalar()

        def schedule(round_: int) -> int:
            schedulers = [crmsync("scheduler", "--once", "--candidates",
                                  "jobprobe:scheduled", env=env,
                                  log=tmp_path / f"scheduler{round_}.{n}.log")
                          for n in range(3)]
            for p in schedulers:
                assert p.wait(60) == 0
            queued = 0
            for n in range(3):
                out = (tmp_path / f"scheduler{round_}.{n}.log").read_text()
                queued += int(re.search(r"(\d+) queued", out)[1])
            return queued

        try:
            # The victim works alone (one job at a time) until it holds the slow run.
            workers.append(crmsync(*work, "--concurrency", "1", env=env,
                                   log=tmp_path / "victim.log"))
            assert schedule(1) == SCALE_USERS * len(KINDS)
            with s.engine.connect() as conn:
                slow = jobprobe.probe_runs.select().where(
                    jobprobe.probe_runs.c.user_id == 1,
                    jobprobe.probe_runs.c.kind == "calendar")
                wait_for(lambda: conn.execute(slow).first() is not None, timeout=60)
                assert conn.execute(slow).one().pid == workers[0].pid
            for n in (1, 2):
                workers.append(crmsync(*work, "--concurrency", "2", env=env,
                                       log=tmp_path / f"worker{n}.log"))
            wait_for(lambda: ended(1) >= 20, timeout=60)  # the others are at work
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            with s.engine.connect() as conn:
                killed_at = conn.execute(select(func.clock_timestamp())).scalar()
            wait_for(lambda: ended(1) == SCALE_USERS * len(KINDS), timeout=90)

            # Round 2, with a new worker in place of the dead one.
            workers.append(crmsync(*work, "--concurrency", "2", env=env,
                                   log=tmp_path / "worker3.log"))
            # The first round's runs count as an hour ago: the next ones are due.
            jobprobe.next_round(s.engine, datetime.now(UTC) - timedelta(hours=1))
            assert schedule(2) == SCALE_USERS * len(KINDS)
            assert schedule(2) == 0  # nothing more is due
            wait_for(lambda: ended(2) == SCALE_USERS * len(KINDS), timeout=90)
        finally:
            for p in workers:
                if p.poll() is None:
                    p.terminate()
            for p in workers:
                p.wait(30)
        for p in workers[1:]:
            assert p.returncode == 0, (tmp_path / "worker1.log").read_text()[-2000:]

        with s.engine.connect() as conn:
            runs = conn.execute(select(jobprobe.probe_runs).order_by(
                jobprobe.probe_runs.c.started)).all()
            left = conn.execute(text("SELECT status::text, count(*) FROM procrastinate_jobs "
                                     "GROUP BY status")).all()
        s.close()

    # Every object ran exactly once per round, to its end.
    done = Counter((r.user_id, r.kind, r.round) for r in runs if r.ended is not None)
    assert set(done) == {(n, k, r) for n in range(1, SCALE_USERS + 1) for k in KINDS
                         for r in (1, 2)}
    assert set(done.values()) == {1}
    # The one run cut short was the victim's, and it ran again after the kill.
    cut = [r for r in runs if r.ended is None]
    assert [(r.user_id, r.kind, r.pid) for r in cut] == [(1, "calendar", workers[0].pid)]
    again = [r for r in runs if (r.user_id, r.kind) == (1, "calendar") and r.round == 1
             and r.ended is not None]
    assert len(again) == 1 and again[0].started > killed_at
    assert again[0].pid != workers[0].pid
    # Runs of one user and object never overlap (the cut one lasted until the kill).
    by_object: dict[tuple[int, str], list] = {}
    for r in runs:
        by_object.setdefault((r.user_id, r.kind), []).append(r)
    for object_runs in by_object.values():
        for before, after in itertools.pairwise(object_runs):
            assert (before.ended or killed_at) <= after.started
    # Nothing is left queued, running or failed.
    assert left == []
