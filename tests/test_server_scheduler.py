"""The scheduler: every due run queued once, however many schedulers tick at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, update

from crmsync.policy import Policy
from crmsync.server.queue import EmbeddedQueue, JobState, Scheduled
from crmsync.server.scheduler import KEEP_SLOTS, Scheduler, slot_of, tick
from crmsync.store import Store, now
from crmsync.store.schema import jobs, metadata, schedule_slots, users
from pgdb import fresh_database

# A Tuesday, 10:00 UTC.
NOW = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
AUTO = Policy(mode="auto", timezone="UTC", auto_every=60)
USERS = 60


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    s = Store.open(url)
    with s.engine.begin() as conn:
        conn.execute(insert(users), [{"id": n, "email": f"u{n}@example.com",
                                      "password_hash": "x", "created_at": now()}
                                     for n in range(1, USERS + 1)])
    yield s
    with s.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    s.close()


def queued(store: Store) -> list[tuple[int, str]]:
    with store.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(
            select(jobs.c.user_id, jobs.c.kind).where(jobs.c.status == "queued")))


def everyone(last_run: datetime | None = None, policy: Policy = AUTO) -> list[Scheduled]:
    return [Scheduled(n, kind, policy, last_run)
            for n in range(1, USERS + 1) for kind in ("calendar", "contacts")]


def test_each_due_run_is_queued_once_across_ticks(store: Store):
    queue = EmbeddedQueue(store.engine)
    assert tick(store.engine, queue, everyone(), NOW) == 2 * USERS
    assert tick(store.engine, queue, everyone(), NOW + timedelta(minutes=1)) == 0
    assert queued(store) == sorted((n, k) for n in range(1, USERS + 1)
                                   for k in ("calendar", "contacts"))
    with store.engine.connect() as conn:
        reasons = set(conn.execute(select(jobs.c.reason)).scalars())
    assert reasons == {"schedule"}


def test_nothing_not_due_is_queued(store: Store):
    queue = EmbeddedQueue(store.engine)
    recent = NOW - timedelta(minutes=59)
    not_due = [
        Scheduled(1, "calendar", Policy(mode="manual", timezone="UTC"), None),
        Scheduled(2, "calendar", AUTO, recent),  # ran 59 minutes ago, every 60
        # Mondays only; NOW is a Tuesday.
        Scheduled(3, "calendar", Policy(mode="auto", timezone="UTC", auto_days=("mon",)), None),
        # 08:00-09:30 in Berlin is 07:00-08:30 UTC; NOW is 11:00 there.
        Scheduled(4, "calendar", Policy(mode="auto", timezone="Europe/Berlin",
                                        auto_window="08:00-09:30"), None),
    ]
    due_too = [
        Scheduled(5, "calendar", AUTO, NOW - timedelta(minutes=60)),
        Scheduled(6, "calendar", Policy(mode="auto", timezone="Europe/Berlin",
                                        auto_days=("tue",), auto_window="10:30-12:00"), None),
        # Wraps past midnight in Los Angeles (02:00 there, Tuesday): inside.
        Scheduled(7, "calendar", Policy(mode="auto", timezone="America/Los_Angeles",
                                        auto_days=("mon",), auto_window="22:00-06:00"), None),
    ]
    assert tick(store.engine, queue, not_due + due_too, NOW) == 3
    assert queued(store) == [(5, "calendar"), (6, "calendar"), (7, "calendar")]


def test_concurrent_schedulers_queue_each_due_run_once(store: Store):
    """Eight schedulers, each with its own engine (as separate processes have), at once."""
    queue_engines = [create_engine(store.engine.url) for _ in range(8)]
    barrier = threading.Barrier(len(queue_engines))
    counts: list[int] = []
    errors: list[BaseException] = []

    def scheduler(engine) -> None:
        try:
            barrier.wait()
            for minute in range(3):
                counts.append(tick(engine, EmbeddedQueue(engine), everyone(),
                                   NOW + timedelta(minutes=minute)))
        except BaseException as exc:  # noqa: B036 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=scheduler, args=(e,)) for e in queue_engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in queue_engines:
        e.dispose()
    assert errors == []
    assert sum(counts) == 2 * USERS
    assert len(queued(store)) == 2 * USERS
    with store.engine.connect() as conn:
        assert conn.execute(select(schedule_slots.c.slot).distinct()).scalars().all() \
            == ["never"]


def test_the_next_run_gets_its_own_slot(store: Store):
    queue = EmbeddedQueue(store.engine)
    first = [Scheduled(1, "calendar", AUTO, None)]
    assert tick(store.engine, queue, first, NOW) == 1
    claimed = queue.claim("w")
    assert claimed is not None
    queue.finish(claimed.id)
    # The run started at NOW and was recorded; an hour later the next one is due.
    later = [Scheduled(1, "calendar", AUTO, NOW)]
    assert tick(store.engine, queue, later, NOW + timedelta(minutes=30)) == 0
    assert tick(store.engine, queue, later, NOW + timedelta(minutes=60)) == 1
    assert tick(store.engine, queue, later, NOW + timedelta(minutes=61)) == 0
    assert queued(store) == [(1, "calendar")]
    assert slot_of(later[0]) == "2026-03-03T10:00:00Z"


def test_a_run_that_never_recorded_itself_is_retried_after_its_period(store: Store):
    queue = EmbeddedQueue(store.engine)
    stuck = [Scheduled(1, "calendar", AUTO, None)]
    assert tick(store.engine, queue, stuck, NOW) == 1
    with store.engine.begin() as conn:
        conn.execute(jobs.delete())  # the queue lost it; no run was recorded
    assert tick(store.engine, queue, stuck, NOW + timedelta(minutes=59)) == 0
    assert queued(store) == []
    assert tick(store.engine, queue, stuck, NOW + timedelta(minutes=60)) == 1
    assert tick(store.engine, queue, stuck, NOW + timedelta(minutes=61)) == 0
    assert queued(store) == [(1, "calendar")]


def test_old_slots_are_purged(store: Store):
    queue = EmbeddedQueue(store.engine)
    tick(store.engine, queue, [Scheduled(1, "calendar", AUTO, None)], NOW)
    tick(store.engine, queue, [Scheduled(2, "calendar", AUTO, None)],
         NOW + KEEP_SLOTS + timedelta(minutes=1))
    with store.engine.connect() as conn:
        assert conn.execute(select(schedule_slots.c.user_id)).scalars().all() == [2]


class DownQueue:
    """A queue that cannot be reached (its database is down)."""

    def enqueue(self, user_id: int, kind: str, reason: str = "now") -> JobState:
        raise ConnectionError("queue unreachable")

    def state(self, user_id: int, kind: str) -> JobState | None:
        raise ConnectionError("queue unreachable")


def test_a_run_the_queue_refused_is_tried_again_next_tick(store: Store):
    candidate = [Scheduled(1, "calendar", AUTO, None)]
    assert tick(store.engine, DownQueue(), candidate, NOW) == 0
    assert tick(store.engine, EmbeddedQueue(store.engine), candidate, NOW) == 1
    assert queued(store) == [(1, "calendar")]


def test_the_scheduler_thread_ticks_until_stopped(store: Store):
    queue = EmbeddedQueue(store.engine)
    last_run: dict[int, datetime | None] = {1: None}
    scheduler = Scheduler(store.engine, queue,
                          lambda: [Scheduled(1, "calendar", AUTO, last_run[1])], every=0.05)
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while not queued(store):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        scheduler.stop()
    report = scheduler.last
    assert report is not None and report.candidates == 1
    assert report.tick_seconds > 0 and report.candidates_seconds >= 0
    assert queued(store) == [(1, "calendar")]
    # Stopped: a new due run is not queued any more.
    with store.engine.begin() as conn:
        conn.execute(update(jobs).values(status="done"))
    last_run[1] = datetime.now(UTC) - timedelta(hours=2)
    time.sleep(0.2)
    assert queued(store) == []


def test_the_scale_commands_explain_themselves_and_want_postgresql(tmp_path: Path):
    def crmsync(*args: str) -> subprocess.CompletedProcess[str]:
        env = os.environ | {"CRMSYNC_HOME": str(tmp_path)}
        env.pop("CRMSYNC_DATABASE", None)
        return subprocess.run([sys.executable, "-m", "crmsync", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    for command in ("worker", "scheduler"):
        shown = crmsync(command, "--help")
        assert shown.returncode == 0 and "--database" in shown.stdout
        assert "--job" not in shown.stdout and "--candidates" not in shown.stdout  # advanced
    refused = crmsync("scheduler", "--once", "--database", f"sqlite:///{tmp_path}/s.db")
    assert refused.returncode == 2
    assert "needs PostgreSQL" in refused.stderr
