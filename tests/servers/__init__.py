"""CalDAV/CardDAV servers from Debian's packages, started for tests: Cyrus, DAViCal, SOGo.

Each module here (``cyrus``, ``davical``, ``sogo``) has

- ``missing() -> str | None``: why the server cannot run on this machine (a package that
  is not installed, with the ``apt-get install`` line), or None;
- ``start() -> Started``: the server running as subprocesses on free loopback ports, with
  its configuration, data and logs in a fresh temporary folder, the user ``ana`` /
  ``s3cret`` created, a default calendar (VEVENT and VTODO) and address book in place.
  ``Started.stop()`` ends every process, drops the server's databases and removes the
  folder.

``davservers.py`` registers them as the variants "cyrus", "davical" and "sogo". The
daemons drop root to their own system users (cyrus, www-data, sogo), so their folders live
in world-traversable temporary folders of their own rather than under pytest's private
``tmp_path``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

USERNAME = "ana"
PASSWORD = "s3cret"
STARTUP_TIMEOUT = 60.0
POSTGRES_URL = os.environ.get(
    "CRMSYNC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class ServerStartError(RuntimeError):
    pass


@dataclass
class Started:
    """A running server as a client sees it; URLs are absolute and end with ``/``."""

    name: str
    base_url: str
    principal_url: str
    calendar_home_url: str
    addressbook_home_url: str
    calendar_url: str  # the default calendar (VEVENT and VTODO) the server made for ana
    addressbook_url: str  # the default address book
    seconds: float  # how long the start took, from nothing to the first answer as ana
    folder: Path
    stop: Callable[[], None] = field(repr=False)


def missing_files(files: dict[str, str], packages: str) -> str | None:
    """A skip reason naming the packages when any of ``files`` (path: package) is absent."""
    absent = sorted({package for path, package in files.items() if not Path(path).exists()})
    if not absent:
        return None
    return (f"{', '.join(absent)} not installed (apt-get install --no-install-recommends "
            f"{packages}; see .ci/run)")


def make_folder(label: str, owner: str | None = None) -> Path:
    """A fresh temporary folder that the daemon's own user ``owner`` can use."""
    folder = Path(tempfile.mkdtemp(prefix=f"crmsync-{label}-"))
    folder.chmod(0o755)
    if owner is not None:
        shutil.chown(folder, owner)
    return folder


def chown_tree(folder: Path, user: str, group: str | None = None) -> None:
    for path in [folder, *folder.rglob("*")]:
        shutil.chown(path, user, group)


def free_port() -> int:
    from crmsync.embedded import free_port as port

    return port()


def spawn(argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
          user: str | None = None, group: str | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (so that :func:`stop` ends its children too),
    with stdout and stderr appended to ``log``."""
    extra_groups: list[int] | None = None
    if user is not None:
        # Only the user's own group: Popen would otherwise keep root's groups.
        group = group if group is not None else pwd.getpwnam(user).pw_gid
        extra_groups = []
    with log.open("ab") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd, user=user,
                                group=group, extra_groups=extra_groups,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it after ``timeout``."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    # Children that outlived their parent (forked workers) go with the group.
    _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def wait_until_ready(label: str, url: str, procs: Sequence[subprocess.Popen[bytes]],
                     logs: Sequence[Path], auth: tuple[str, str] | None = None,
                     method: str = "PROPFIND", timeout: float = STARTUP_TIMEOUT,
                     ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 207,
                     ) -> httpx.Response:
    """Poll ``url`` until ``ready(response)``; a dead process or the timeout raises
    :class:`ServerStartError` with the end of each log."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(auth=auth, timeout=5.0) as client:
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise ServerStartError(
                        f"{label}: {proc.args[0]} exited with status {proc.returncode} "
                        f"while starting; {_logs(logs)}")
            try:
                response = client.request(method, url, headers={"Depth": "0"})
                if ready(response):
                    return response
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(f"{label}: {method} {url} not ready within "
                                       f"{timeout:.0f} s (last: {last}); {_logs(logs)}")
            time.sleep(0.05)


def _logs(logs: Sequence[Path]) -> str:
    return "; ".join(f"{log}:\n{tail(log)}" for log in logs)


def run(argv: Sequence[str], label: str, *, env: dict[str, str] | None = None,
        input: bytes | None = None, timeout: float = 120.0) -> str:
    """Run a set-up command; its failure is a :class:`ServerStartError` with its output."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, env=env,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerStartError(f"{label}: {' '.join(argv)} failed: {exc}") from exc
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0:
        raise ServerStartError(f"{label}: {' '.join(argv)} exited with {done.returncode}:\n"
                               f"{output[-3000:]}")
    return output


# --- PostgreSQL --------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str

    @classmethod
    def from_env(cls) -> Postgres:
        parts = urlsplit(POSTGRES_URL.replace("+psycopg", ""))
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres")

    def env(self) -> dict[str, str]:
        """The environment for psql and the scripts that call it."""
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port),
                "PGUSER": self.user, "PGOPTIONS": "--client-min-messages=warning"}

    def connect(self, dbname: str = "postgres"):  # -> psycopg.Connection
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user,
                               dbname=dbname, autocommit=True, connect_timeout=5)

    def reachable(self) -> str | None:
        """None, or why PostgreSQL cannot be used."""
        try:
            with self.connect():
                return None
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            return f"PostgreSQL at {self.host}:{self.port} not reachable: {exc}".strip()

    def new_database_name(self, label: str) -> str:
        return f"crmsync_{label}_{uuid.uuid4().hex[:10]}"

    def drop(self, dbname: str) -> None:
        with contextlib.suppress(Exception), self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
