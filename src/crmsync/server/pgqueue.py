"""The job queue at scale: Procrastinate on the store's PostgreSQL database.

Web instances queue jobs (:class:`ProcrastinateQueue`), ``crmsync worker`` processes on
any number of machines run them (:class:`Workers`). The queue keeps the promises of
crmsync.server.queue with Procrastinate's own locks, keyed ``"user_id:kind"``:

- ``queueing_lock``: PostgreSQL refuses a second waiting job of a user and object, so
  "Sync now" pressed twice queues one job, whichever web instance gets the clicks;
- ``lock``: a worker takes no job whose user and object has one running, so their runs
  never overlap, on however many machines;
- asking while one runs answers "running" and queues nothing, as the embedded engine does.

A worker killed mid-job (SIGKILL, a lost machine) leaves its job "doing". Every worker
beats (Procrastinate's worker heartbeat) and every worker, every few seconds, puts the
jobs of workers that stopped beating back on the queue (:meth:`ProcrastinateQueue.recover`).
The workers do it rather than the scheduler because without a worker nothing runs anyway,
while a deployment may run no scheduler process (``crmsync serve`` ticks its own) or
several; the recovery locks the rows it moves, so workers doing it at once is safe.

Procrastinate's schema lives in the store's database and is applied on first use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.schema import SchemaManager
from procrastinate.worker import Worker
from sqlalchemy import text
from sqlalchemy.engine import URL, Engine, make_url

from crmsync.errors import ConfigError
from crmsync.server.queue import Job, JobState

log = logging.getLogger(__name__)

TASK = "crmsync.sync_job"
QUEUE = "crmsync"
# A user's "Sync now" goes before the scheduled backlog.
PRIORITY = {"now": 10}
# Workers beat every STALLED_AFTER / 3 seconds; one silent this long has died.
STALLED_AFTER = 30.0
# Any constant shared by every process: serialises applying the schema.
_SCHEMA_LOCK = 0x63726D73796E63  # "crmsync"

_STATE = text("""
    SELECT status FROM procrastinate_jobs
     WHERE task_name = :task
       AND ((status = 'todo' AND queueing_lock = :key) OR (status = 'doing' AND lock = :key))
""")
# Running jobs whose worker stopped beating (or was pruned as stalled: worker_id NULL),
# locked so that two workers recovering at once do not both move a job.
_STALLED = text("""
    SELECT job.id, job.queueing_lock FROM procrastinate_jobs job
      LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id
     WHERE job.status = 'doing' AND job.task_name = :task
       AND (worker.id IS NULL
            OR worker.last_heartbeat < now() - make_interval(secs => :seconds))
       FOR UPDATE OF job SKIP LOCKED
""")
_WAITING = text("SELECT 1 FROM procrastinate_jobs "
                "WHERE status = 'todo' AND queueing_lock = :key")
_RETRY = text("SELECT procrastinate_retry_job_v2(:id, now(), NULL, NULL, NULL)")
_GIVE_UP = text("SELECT procrastinate_finish_job_v1(:id, 'failed', false)")


def sqlalchemy_url(url: str | URL) -> URL:
    """A PostgreSQL URL for SQLAlchemy with the psycopg (3) driver; ConfigError otherwise."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"the job queue at scale needs PostgreSQL, not {parsed.drivername}; "
                          "give --database postgresql://user@host/db")
    return parsed.set(drivername="postgresql+psycopg")


def conninfo(url: str | URL) -> str:
    """libpq's form of a SQLAlchemy URL, for Procrastinate's connections."""
    return sqlalchemy_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


def key_of(user_id: int, kind: str) -> str:
    return f"{user_id}:{kind}"


class ProcrastinateQueue:
    """The :class:`~crmsync.server.queue.JobQueue` on Procrastinate.

    ``engine`` is the store's (PostgreSQL, psycopg); ``job`` is what this process runs
    when it works (``crmsync worker``), None in a process that only queues.
    """

    def __init__(self, engine: Engine, job: Job | None = None,
                 stalled_after: float = STALLED_AFTER, pool_size: int = 4) -> None:
        self.engine, self.job, self.stalled_after = engine, job, stalled_after
        self._pool = {"conninfo": conninfo(engine.url), "min_size": 1, "max_size": pool_size}
        # Queuing is sync, from the web's threads; each Workers has an async app of its own.
        self._queuing = procrastinate.App(
            connector=procrastinate.SyncPsycopgConnector(**self._pool))
        self._opened = False
        self._open_lock = threading.Lock()
        ensure_schema(engine)

    def worker_app(self, connections: int) -> procrastinate.App:
        """A Procrastinate app that runs this queue's job (for :class:`Workers`)."""
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            **(self._pool | {"max_size": connections})))
        app.task(name=TASK, queue=QUEUE)(self._sync_job)
        return app

    def _sync_job(self, user_id: int, kind: str, reason: str = "now") -> None:
        if self.job is None:
            raise RuntimeError("this process queues jobs but was given none to run")
        self.job(user_id, kind)

    def _open(self) -> None:
        with self._open_lock:
            if not self._opened:
                self._queuing.open()
                self._opened = True

    def close(self) -> None:
        if self._opened:
            self._queuing.close()
            self._opened = False

    def enqueue(self, user_id: int, kind: str, reason: str = "now") -> JobState:
        current = self.state(user_id, kind)
        if current is not None:
            return current
        try:
            self.defer(user_id, kind, reason)
        except AlreadyEnqueued:
            pass  # another instance queued it first: one job waits, as asked
        return "queued"

    def defer(self, user_id: int, kind: str, reason: str = "now") -> int:
        """Queue a job without asking first; AlreadyEnqueued when one waits."""
        self._open()
        key = key_of(user_id, kind)
        return self._queuing.configure_task(
            name=TASK, queue=QUEUE, queueing_lock=key, lock=key,
            priority=PRIORITY.get(reason, 0)).defer(user_id=user_id, kind=kind, reason=reason)

    def state(self, user_id: int, kind: str) -> JobState | None:
        with self.engine.connect() as conn:
            found = set(conn.execute(_STATE, {"task": TASK, "key": key_of(user_id, kind)})
                        .scalars())
        if "todo" in found:
            return "queued"
        return "running" if found else None

    def recover(self) -> int:
        """Put the jobs of workers that stopped beating back on the queue; how many.

        One already waiting again for the same user and object replaces it (that job is
        marked failed), as in the embedded engine.
        """
        moved = 0
        with self.engine.begin() as conn:
            stalled = conn.execute(_STALLED, {"task": TASK, "seconds": self.stalled_after})
            for job_id, key in stalled.all():
                waiting = conn.execute(_WAITING, {"key": key}).first() is not None
                conn.execute(_GIVE_UP if waiting else _RETRY, {"id": job_id})
                moved += 1
        if moved:
            log.info("put %d job(s) of stalled workers back on the queue", moved)
        return moved


def ensure_schema(engine: Engine) -> None:
    """Apply Procrastinate's schema unless present; safe when processes start together."""
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        if conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar():
            return
        # No parameters: psycopg sends the script as is, many statements at once.
        conn.connection.driver_connection.execute(SchemaManager.get_schema())
        log.info("applied Procrastinate's schema")


class Workers:
    """A Procrastinate worker running the queue's job, ``concurrency`` jobs at a time.

    :meth:`run` blocks until SIGINT or SIGTERM (``crmsync worker``); :meth:`start` and
    :meth:`stop` run it in a thread instead (a server that also works, tests). Both
    also recover the jobs of stalled workers every heartbeat.
    """

    def __init__(self, queue: ProcrastinateQueue, concurrency: int = 1,
                 name: str | None = None) -> None:
        self.queue, self.concurrency = queue, concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.beat = max(queue.stalled_after / 3, 0.2)
        # Fetching, heartbeat and one per running job's end.
        self.app = queue.worker_app(connections=concurrency + 2)
        self._worker: Worker | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, signals: bool = True) -> None:
        recoverer = threading.Thread(target=self._recover, name="crmsync-recover",
                                     daemon=True)
        recoverer.start()
        try:
            asyncio.run(self._main(signals))
        finally:
            self._stopping.set()
            recoverer.join()

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.run, args=(False,),
                                        name="crmsync-pgworker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the worker did not start")

    def stop(self, timeout: float | None = None) -> None:
        """Take no more jobs; wait for the running ones to end."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.stop()  # thread-safe: wakes the worker's own loop
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def _main(self, signals: bool) -> None:
        async with self.app.open_async():
            self._worker = Worker(
                app=self.app, queues=[QUEUE], name=self.name,
                concurrency=self.concurrency, install_signal_handlers=signals,
                update_heartbeat_interval=self.beat,
                stalled_worker_timeout=self.queue.stalled_after,
                fetch_job_polling_interval=max(self.beat, 1.0),
                # Finished jobs live on in the store's runs; failed ones stay for a look.
                delete_jobs="successful")
            self._started.set()
            if not self._stopping.is_set():
                await self._worker.run()

    def _recover(self) -> None:
        while not self._stopping.wait(self.beat):
            try:
                self.queue.recover()
            except Exception:  # the database is unreachable for a moment: next time
                log.exception("recovering stalled jobs failed")
