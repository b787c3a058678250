"""Fresh PostgreSQL databases for test modules that need one of their own.

The queue's tests run worker processes and Procrastinate's schema next to the store; a
database per module keeps them apart from every other test (and other users of the
server).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import POSTGRES_URL, require_service


@contextmanager
def fresh_database(prefix: str = "crmsync_test") -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database; dropped (with its sessions) after."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        require_service("PostgreSQL", str(exc).splitlines()[0])
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
