"""The job queue on Procrastinate keeps the embedded queue's promises, on PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import insert, text

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
