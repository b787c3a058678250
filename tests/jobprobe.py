"""A probe job and probe schedule for the queue's scale test and bench/server.py.

``run(store, user_id, kind)`` has the signature of the server's job: it records its start
and end in ``probe_runs`` (the worker's pid, the schedule round it ran for) and sleeps a
little in between. ``scheduled(store)`` is the scheduler's view of ``probe_schedule``:
every row an object on auto sync every 30 minutes, all day, every day.

Environment: CRMSYNC_PROBE_SLEEP (seconds, default 0.05); CRMSYNC_PROBE_SLOW
("user_id:kind:seconds"): that object's first attempt sleeps this long instead, so that a
test can kill its worker in the middle of it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from crmsync.policy import Policy
from crmsync.server.queue import Scheduled

metadata = MetaData()
probe_runs = Table(
    "probe_runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("round", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("ended", DateTime(timezone=True)),
)
probe_schedule = Table(
    "probe_schedule", metadata,
    Column("user_id", Integer, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("round", Integer, nullable=False, default=1),
    Column("last_run", DateTime(timezone=True)),
)
POLICY = Policy(mode="auto", timezone="UTC", auto_every=30)


def create(engine: Engine) -> None:
    metadata.create_all(engine)


def run(store, user_id: int, kind: str) -> None:
    with store.engine.begin() as conn:
        round_ = conn.execute(select(probe_schedule.c.round).where(
            probe_schedule.c.user_id == user_id, probe_schedule.c.kind == kind)).scalar()
        tried = conn.execute(select(func.count()).select_from(probe_runs).where(
            probe_runs.c.user_id == user_id, probe_runs.c.kind == kind)).scalar()
        run_id = conn.execute(insert(probe_runs).values(
            user_id=user_id, kind=kind, round=round_ or 0, pid=os.getpid(),
            started=func.clock_timestamp()).returning(probe_runs.c.id)).scalar_one()
    time.sleep(_sleep(user_id, kind, first=tried == 0))
    with store.engine.begin() as conn:
        conn.execute(update(probe_runs).where(probe_runs.c.id == run_id)
                     .values(ended=func.clock_timestamp()))


def _sleep(user_id: int, kind: str, first: bool) -> float:
    slow = os.environ.get("CRMSYNC_PROBE_SLOW", "")
    if first and slow.rsplit(":", 1)[0] == f"{user_id}:{kind}":
        return float(slow.rsplit(":", 1)[1])
    return float(os.environ.get("CRMSYNC_PROBE_SLEEP", "0.05"))


def scheduled(store) -> list[Scheduled]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(probe_schedule.c.user_id, probe_schedule.c.kind,
                                   probe_schedule.c.last_run)).all()
    return [Scheduled(r.user_id, r.kind, POLICY,
                      r.last_run.astimezone(UTC) if r.last_run else None) for r in rows]


def next_round(engine: Engine, last_run: datetime) -> None:
    """Every object ran at ``last_run``: the next round of the schedule begins."""
    with engine.begin() as conn:
        conn.execute(update(probe_schedule).values(round=probe_schedule.c.round + 1,
                                                   last_run=last_run))
