"""The embedded job queue: one queued and one running job per user and object, no job lost."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from crmsync.server.queue import EmbeddedQueue, Workers
from crmsync.store import Store, now
from crmsync.store.schema import jobs, users


@pytest.fixture
def queue(sqlite_store: Store) -> EmbeddedQueue:
    with sqlite_store.engine.begin() as conn:
        for n in (1, 2):
            conn.execute(insert(users).values(id=n, email=f"u{n}@example.com",
                                              password_hash="x", created_at=now()))
    return EmbeddedQueue(sqlite_store.engine, stale_after=timedelta(seconds=2))


def rows(queue: EmbeddedQueue) -> list[tuple[int, str, str]]:
    with queue.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(jobs.c.user_id, jobs.c.kind, jobs.c.status).order_by(jobs.c.id))]


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_asking_twice_queues_once_and_answers_the_state(queue: EmbeddedQueue):
    assert queue.state(1, "event") is None
    assert queue.enqueue(1, "event") == "queued"
    assert queue.enqueue(1, "event") == "queued"
    assert queue.enqueue(1, "contact") == "queued"
    assert rows(queue) == [(1, "event", "queued"), (1, "contact", "queued")]
    claimed = queue.claim("w")
    assert claimed is not None and (claimed.user_id, claimed.kind) == (1, "event")
    assert queue.enqueue(1, "event") == "running"
    assert len(rows(queue)) == 2


def test_racing_threads_queue_one_job(queue: EmbeddedQueue):
    answers: list[str] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        answers.append(queue.enqueue(2, "task"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["queued"] * 8
    assert rows(queue) == [(2, "task", "queued")]


def test_workers_run_each_job_once_and_never_one_user_object_twice_at_a_time(
        queue: EmbeddedQueue):
    running: set[tuple[int, str]] = set()
    overlaps: list[tuple[int, str]] = []
    ran: list[tuple[int, str]] = []
    lock = threading.Lock()

    def job(user_id: int, kind: str) -> None:
        with lock:
            if (user_id, kind) in running:
                overlaps.append((user_id, kind))
            running.add((user_id, kind))
        time.sleep(0.05)
        with lock:
            running.discard((user_id, kind))
            ran.append((user_id, kind))

    for user in (1, 2):
        for kind in ("event", "contact", "task"):
            queue.enqueue(user, kind)
    workers = Workers(queue, job, count=3, poll=0.02)
    workers.start()
    try:
        wait_for(lambda: len(ran) == 6)
    finally:
        workers.stop()
    assert sorted(ran) == sorted((u, k) for u in (1, 2) for k in ("event", "contact", "task"))
    assert overlaps == []
    assert {status for *_, status in rows(queue)} == {"done"}


def test_a_failing_job_is_marked_failed_with_its_error(queue: EmbeddedQueue):
    def job(user_id: int, kind: str) -> None:
        raise RuntimeError("CalDAV server said 503")

    queue.enqueue(1, "event")
    workers = Workers(queue, job, count=1, poll=0.02)
    workers.start()
    try:
        wait_for(lambda: rows(queue)[0][2] == "failed")
    finally:
        workers.stop()
    with queue.engine.connect() as conn:
        assert "503" in conn.execute(select(jobs.c.error)).scalar_one()


def test_a_job_interrupted_by_a_restart_runs_again(queue: EmbeddedQueue):
    queue.enqueue(1, "event")
    assert queue.claim("the server before its restart") is not None  # then it died
    ran: list[tuple[int, str]] = []
    workers = Workers(queue, lambda u, k: ran.append((u, k)), count=1, poll=0.02)
    workers.start()  # the server starting again
    try:
        wait_for(lambda: ran == [(1, "event")])
    finally:
        workers.stop()
    with queue.engine.connect() as conn:
        assert conn.execute(select(jobs.c.attempts, jobs.c.status)).one() == (2, "done")


def test_a_running_job_whose_worker_stopped_beating_is_queued_again(queue: EmbeddedQueue):
    queue.enqueue(1, "event")
    claimed = queue.claim("a worker that hangs")
    assert claimed is not None
    assert queue.recover() == 0  # its heartbeat is fresh
    with queue.engine.begin() as conn:
        conn.execute(update(jobs).values(heartbeat_at="2000-01-01T00:00:00Z"))
    assert queue.recover() == 1
    assert queue.state(1, "event") == "queued"


def test_ended_jobs_are_forgotten_after_a_week_and_the_others_kept(queue: EmbeddedQueue):
    long_ago = "2000-01-01T00:00:00Z"
    with queue.engine.begin() as conn:
        for user, kind, status, queued in [(1, "event", "done", long_ago),
                                           (1, "task", "failed", long_ago),
                                           (2, "event", "queued", long_ago),
                                           (2, "task", "done", now())]:
            conn.execute(insert(jobs).values(
                user_id=user, kind=kind, status=status, reason="now", queued_at=queued,
                finished_at=None if status == "queued" else queued))
    workers = Workers(queue, lambda u, k: None, count=1, poll=0.02)
    workers.start()  # the server starting purges; its worker then runs the queued job
    try:
        wait_for(lambda: queue.state(2, "event") is None)
    finally:
        workers.stop()
    assert sorted(rows(queue)) == [(2, "event", "done"), (2, "task", "done")]
    assert queue.purge() == 0
