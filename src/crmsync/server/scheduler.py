"""The scheduler: finds the scheduled runs that are due and queues each of them once.

Any number of schedulers may tick at the same time: one in every ``crmsync serve`` and
``crmsync scheduler`` process, on any machine. A due run is named by its SLOT: the user,
the object and the start of the last run it follows ("never" before the first run). A
scheduler queues a run only when it is the one that inserts the slot into
``schedule_slots``; the table's key turns every other scheduler away, so a due run is
queued once however many schedulers see it.

A slot stays taken until the object's next run is recorded (which changes the slot). Should
the queued run never record one (it failed before starting, the queue lost it), the slot
is taken again once it is ``auto_every`` minutes old, so the schedule retries at its own
pace instead of stalling. Queuing the same run twice is harmless anyway: the queue answers
"queued" or "running" and adds nothing (see crmsync.server.queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from crmsync.policy import due
from crmsync.server.queue import JobQueue, Scheduled, load
from crmsync.store.schema import schedule_slots

log = logging.getLogger(__name__)

# What the scheduler asks for the scheduled objects of every user, each tick.
Candidates = Callable[[], Iterable[Scheduled]]
DEFAULT_CANDIDATES = "crmsync.server.service:scheduled"
# Slots older than this are deleted: their runs were recorded long ago (or were retried).
KEEP_SLOTS = timedelta(days=2)
# Rows per INSERT: far below SQLite's limit on bound parameters.
_CHUNK = 500


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slot_of(candidate: Scheduled) -> str:
    """The slot of a candidate's next run: the start of the run it follows, or "never"."""
    return "never" if candidate.last_run is None else _stamp(candidate.last_run)


def tick(engine: Engine, queue: JobQueue, candidates: Iterable[Scheduled],
         now: datetime | None = None) -> int:
    """Queue every due candidate whose slot this call takes; how many it queued."""
    now = now or datetime.now(UTC)
    wanted = {(c.user_id, c.kind, slot_of(c)): c for c in candidates
              if due(c.policy, c.last_run, now)}
    taken = _take(engine, list(wanted.values()), now) if wanted else set()
    queued = 0
    for key in sorted(taken):
        user_id, kind, slot = key
        try:
            queue.enqueue(user_id, kind, reason="schedule")
        except Exception:
            # Give the slot back so that the next tick (here or elsewhere) tries again.
            log.exception("queuing the scheduled run of user %d, %s failed", user_id, kind)
            with engine.begin() as conn:
                conn.execute(delete(schedule_slots).where(
                    schedule_slots.c.user_id == user_id, schedule_slots.c.kind == kind,
                    schedule_slots.c.slot == slot))
            continue
        queued += 1
    _purge(engine, now)
    return queued


def _take(engine: Engine, due_now: Sequence[Scheduled], now: datetime) -> set[tuple]:
    """Insert the slots of ``due_now``; the keys this call inserted (or retook)."""
    stamp = _stamp(now)
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[engine.dialect.name]
    key = (schedule_slots.c.user_id, schedule_slots.c.kind, schedule_slots.c.slot)
    taken: set[tuple] = set()
    with engine.begin() as conn:
        for start in range(0, len(due_now), _CHUNK):
            rows = [{"user_id": c.user_id, "kind": c.kind, "slot": slot_of(c),
                     "taken_at": stamp} for c in due_now[start:start + _CHUNK]]
            statement = (dialect.insert(schedule_slots).values(rows)
                         .on_conflict_do_nothing().returning(*key))
            taken.update(tuple(r) for r in conn.execute(statement))
    # The rest were taken before: retake those older than their object's period (the run
    # they queued never recorded itself). One UPDATE per period; the row's old taken_at
    # in the WHERE makes sure only one scheduler retakes it.
    by_period: dict[int, list[tuple]] = {}
    for c in due_now:
        k = (c.user_id, c.kind, slot_of(c))
        if k not in taken:
            by_period.setdefault(c.policy.auto_every, []).append(k)
    for minutes, keys in by_period.items():
        cutoff = _stamp(now - timedelta(minutes=minutes))
        for start in range(0, len(keys), _CHUNK):
            with engine.begin() as conn:
                statement = (update(schedule_slots)
                             .where(and_(tuple_(*key).in_(keys[start:start + _CHUNK]),
                                         schedule_slots.c.taken_at <= cutoff))
                             .values(taken_at=stamp).returning(*key))
                taken.update(tuple(r) for r in conn.execute(statement))
    return taken


def _purge(engine: Engine, now: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(delete(schedule_slots).where(
            schedule_slots.c.taken_at < _stamp(now - KEEP_SLOTS)))


def service_candidates(store: Any, dotted: str = DEFAULT_CANDIDATES) -> Candidates:
    """The candidates as ``scheduled(store)`` at ``dotted`` sees them (default: the service)."""
    scheduled = load(dotted)
    return lambda: scheduled(store)


@dataclass(frozen=True)
class TickReport:
    """One tick: how many candidates, how many queued, and what each part cost."""

    candidates: int
    queued: int
    # Asking the service for the candidates, and the tick itself (due, slots, queuing).
    candidates_seconds: float
    tick_seconds: float


class Scheduler:
    """Ticks every ``every`` seconds in a thread until stopped (``crmsync serve``)."""

    def __init__(self, engine: Engine, queue: JobQueue, candidates: Candidates,
                 every: float = 60.0) -> None:
        self.engine, self.queue, self.candidates, self.every = engine, queue, candidates, every
        self.last: TickReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> TickReport:
        started = time.perf_counter()
        candidates = list(self.candidates())
        asked = time.perf_counter()
        queued = tick(self.engine, self.queue, candidates)
        self.last = TickReport(len(candidates), queued, asked - started,
                               time.perf_counter() - asked)
        log.info("scheduler tick: %d scheduled, %d queued; candidates %.3fs, tick %.3fs",
                 self.last.candidates, queued, self.last.candidates_seconds,
                 self.last.tick_seconds)
        return self.last

    def start(self) -> None:
        """Tick in a thread of its own (``crmsync serve``)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="crmsync-scheduler",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Tick in this thread until :meth:`stop` (``crmsync scheduler``)."""
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the store is unreachable for a moment: try next tick
                log.exception("scheduler tick failed")
            self._stop.wait(self.every)
