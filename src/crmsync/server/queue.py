"""The job queue: sync runs of one user and object, queued and run by workers.

A job is ``job(user_id, kind)``; what it does lives in ``crmsync.server.service``. The
queue promises, whichever engine is under it:

- at most one queued and one running job per user and object: asking for a run while
  one is queued or running queues nothing more (it answers that job's state);
- a job whose worker dies is not lost: it runs again.

:class:`EmbeddedQueue` is the engine of the embedded server: the store's ``jobs`` table
and worker threads in the server's own process. Partial unique indexes on the table
(one queued, one running per user and object) make the promises hold even when two
threads race. The PostgreSQL engine is Procrastinate (``crmsync.server.pgqueue``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any, Literal, Protocol

from sqlalchemy import and_, delete, exists, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from crmsync.policy import Policy
from crmsync.store import now
from crmsync.store.schema import jobs

log = logging.getLogger(__name__)

JobState = Literal["queued", "running"]
# What a job does: one sync run of a user's object. Raising marks the job failed.
Job = Callable[[int, str], None]
# The job function of the server, ``run_job(store, user_id, kind)``; every engine runs it
# bound to the process's store (see bind_job).
DEFAULT_JOB = "crmsync.server.service:run_job"


class JobQueue(Protocol):
    def enqueue(self, user_id: int, kind: str, reason: str = "now") -> JobState:
        """Queue a run unless one is queued or running; the state of the job that will run."""
        ...

    def state(self, user_id: int, kind: str) -> JobState | None:
        """The state of the user's job for ``kind``: queued, running, or none."""
        ...

    def close(self) -> None:
        """Let go of what the queue holds open (connections)."""
        ...


@dataclass(frozen=True)
class Scheduled:
    """A user's object that runs on a schedule (effective mode "auto"), for the scheduler.

    ``policy`` is the effective one (admin defaults and locks applied); ``last_run`` the
    start of the object's last finished run, None when it never ran.
    """

    user_id: int
    kind: str
    policy: Policy
    last_run: datetime | None


def load(dotted: str) -> Any:
    """The object at ``"package.module:name"`` (the job, the scheduler's candidates)."""
    module, _, name = dotted.partition(":")
    if not name:
        raise ValueError(f"{dotted!r} is not module:name")
    return getattr(import_module(module), name)


def bind_job(store: Any, dotted: str = DEFAULT_JOB) -> Job:
    """The job function at ``dotted``, ``f(store, user_id, kind)``, bound to ``store``.

    Both engines run what this returns, so a job runs the same embedded or at scale.
    """
    function = load(dotted)

    def job(user_id: int, kind: str) -> None:
        function(store, user_id, kind)

    return job


@dataclass(frozen=True)
class Claimed:
    id: int
    user_id: int
    kind: str


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EmbeddedQueue:
    """The ``jobs`` table as a queue; safe for several threads of one process."""

    def __init__(self, engine: Engine, stale_after: timedelta = timedelta(seconds=60),
                 keep: timedelta = timedelta(days=7)) -> None:
        self.engine = engine
        # A running job whose heartbeat is older than this has lost its worker.
        self.stale_after = stale_after
        # Ended jobs are kept this long (the runs table keeps the reports).
        self.keep = keep

    def enqueue(self, user_id: int, kind: str, reason: str = "now") -> JobState:
        while True:
            current = self.state(user_id, kind)
            if current is not None:
                return current
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(jobs).values(user_id=user_id, kind=kind, status="queued",
                                                     reason=reason, queued_at=now()))
                return "queued"
            except IntegrityError:
                continue  # another thread queued it first: answer its state

    def state(self, user_id: int, kind: str) -> JobState | None:
        with self.engine.connect() as conn:
            found = set(conn.execute(
                select(jobs.c.status).where(jobs.c.user_id == user_id, jobs.c.kind == kind,
                                            jobs.c.status.in_(("queued", "running")))
            ).scalars())
        if "queued" in found:
            return "queued"
        return "running" if found else None

    def close(self) -> None:
        pass  # the store's engine is the server's to close

    def claim(self, worker: str) -> Claimed | None:
        """Take the oldest queued job whose user and object have none running."""
        running = jobs.alias("running")
        busy = exists().where(running.c.user_id == jobs.c.user_id,
                              running.c.kind == jobs.c.kind, running.c.status == "running")
        with self.engine.connect() as conn:
            candidates = conn.execute(
                select(jobs.c.id, jobs.c.user_id, jobs.c.kind)
                .where(jobs.c.status == "queued", ~busy)
                .order_by(jobs.c.queued_at, jobs.c.id).limit(20)
            ).all()
        for row in candidates:
            stamp = now()
            try:
                with self.engine.begin() as conn:
                    taken = conn.execute(
                        update(jobs).where(jobs.c.id == row.id, jobs.c.status == "queued")
                        .values(status="running", worker=worker, started_at=stamp,
                                heartbeat_at=stamp, attempts=jobs.c.attempts + 1)
                    ).rowcount
            except IntegrityError:
                continue  # its user and object started running elsewhere meanwhile
            if taken:
                return Claimed(row.id, row.user_id, row.kind)
        return None

    def beat(self, job_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                         .values(heartbeat_at=now()))

    def finish(self, job_id: int, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status="failed" if error else "done", finished_at=now(), error=error))

    def recover(self, everything: bool = False) -> int:
        """Put jobs that lost their worker back on the queue; how many.

        ``everything``: every running job has lost its worker (the embedded server starting
        again after a stop or a crash: no other process runs its jobs).
        """
        cutoff = _stamp(datetime.now(UTC) - self.stale_after)
        stale = jobs.c.status == "running"
        if not everything:
            stale = and_(stale, jobs.c.heartbeat_at < cutoff)
        recovered = 0
        with self.engine.begin() as conn:
            for row in conn.execute(select(jobs.c.id, jobs.c.user_id, jobs.c.kind).where(stale)):
                queued = conn.execute(select(jobs.c.id).where(
                    jobs.c.user_id == row.user_id, jobs.c.kind == row.kind,
                    jobs.c.status == "queued")).first()
                # Already queued again: that run covers this one.
                values = ({"status": "failed", "finished_at": now(),
                           "error": "interrupted; a queued run replaces it"} if queued
                          else {"status": "queued", "reason": "retry", "worker": None})
                conn.execute(update(jobs).where(jobs.c.id == row.id).values(**values))
                recovered += 1
        if recovered:
            log.info("put %d interrupted job(s) back on the queue", recovered)
        return recovered

    def purge(self) -> int:
        """Forget jobs that ended longer ago than ``keep``; how many."""
        cutoff = _stamp(datetime.now(UTC) - self.keep)
        with self.engine.begin() as conn:
            return conn.execute(delete(jobs).where(jobs.c.status.in_(("done", "failed")),
                                                   jobs.c.finished_at < cutoff)).rowcount


class Workers:
    """Worker threads taking jobs from an :class:`EmbeddedQueue` until stopped."""

    def __init__(self, queue: EmbeddedQueue, job: Job, count: int = 2,
                 poll: float = 0.5, heartbeat: float = 10.0) -> None:
        self.queue, self.job, self.count = queue, job, count
        self.poll, self.heartbeat = poll, heartbeat
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.name = f"{socket.gethostname()}:{id(self):x}"
        self._next_purge = 0.0

    def _purge(self) -> None:
        """Forget old ended jobs, at most once an hour."""
        self._next_purge = time.monotonic() + 3600
        self.queue.purge()

    def start(self) -> None:
        self.queue.recover(everything=True)
        self._purge()
        for n in range(self.count):
            thread = threading.Thread(target=self._loop, args=(f"{self.name}/{n}",),
                                      name=f"crmsync-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking jobs; wait for the running ones to end."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self, worker: str) -> None:
        while not self._stop.is_set():
            try:
                claimed = self.queue.claim(worker)
            except Exception:  # the store is unreachable for a moment: try again
                log.exception("taking a job failed")
                claimed = None
            if claimed is None:
                self._stop.wait(self.poll)
                if not self._stop.is_set():
                    self.queue.recover()
                    if time.monotonic() >= self._next_purge:
                        self._purge()
                continue
            self._run(claimed)

    def _run(self, claimed: Claimed) -> None:
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat):
                self.queue.beat(claimed.id)

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        error: str | None = None
        try:
            self.job(claimed.user_id, claimed.kind)
        except Exception as exc:
            log.exception("job %d (user %d, %s) failed", claimed.id, claimed.user_id,
                          claimed.kind)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            beater.join()
        self.queue.finish(claimed.id, error)
