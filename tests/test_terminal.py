"""``crmsync sync`` on a real terminal (a pseudo-terminal): the review screen opens, and
a progress bar is drawn; the same command without a terminal stays plain (test_cli)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Sides, day, event
from test_cli import add_profile, crmsync


class Terminal:
    """``crmsync ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""

    def __init__(self, home: Path, *args: str, **env: str) -> None:
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        environ = os.environ | {"CRMSYNC_HOME": str(home), "TERM": "xterm-256color",
                                "COLUMNS": "160", "LINES": "45"} | env
        self.proc = subprocess.Popen([sys.executable, "-m", "crmsync", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=environ,
                                     start_new_session=True)
        os.close(slave)
        self.screen = ""

    def read(self, timeout: float = 0.2) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.screen += os.read(self.master, 65536).decode("utf-8", "replace")
            except OSError:  # the child closed the terminal
                pass

    def expect(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < deadline, f"{text!r} never shown:\n{self.screen[-2000:]}"
            assert self.proc.poll() is None or text in self.screen, self.screen[-2000:]
            self.read()

    def press(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, self.screen[-2000:]
            self.read()
        self.read(0)
        os.close(self.master)
        return self.proc.returncode


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_sync_on_a_terminal_opens_the_review_and_writes_what_was_confirmed(
        home: Path, sides: Sides):
    sides.put("crm", event("kickoff@x", "Kickoff with Acme", start=day(1), end=day(1, "10:00")))
    add_profile(home, sides, "--objects", "calendar")
    term = Terminal(home, "sync", "work")
    term.expect("Kickoff with Acme")  # its row in the review
    term.press("y")
    term.expect("apply?")  # the confirmation's summary
    term.press("y")
    assert term.wait() == 0
    assert [r.summary for r in sides.records("groupware", "calendar").values()] == [
        "Kickoff with Acme"]


def test_cancelling_the_review_on_a_terminal_writes_nothing(home: Path, sides: Sides):
    sides.put("crm", event("kickoff@x", "Kickoff with Acme", start=day(1), end=day(1, "10:00")))
    add_profile(home, sides, "--objects", "calendar")
    term = Terminal(home, "sync", "work")
    term.expect("Kickoff with Acme")
    term.press("q")
    assert term.wait() == 7  # EXIT_CANCELLED
    assert "nothing was written" in term.screen
    assert sides.records("groupware", "calendar") == {}


def test_a_progress_bar_is_drawn_on_a_terminal_and_not_with_json(home: Path, sides: Sides):
    for n in range(40):
        sides.put("crm", event(f"e{n}@x", f"Call {n}", start=day(1 + n % 20),
                               end=day(1 + n % 20, "10:00")))
    add_profile(home, sides, "--objects", "calendar")
    crmsync(home, "sync", "work", "--dry-run")  # (a first look: nothing written)
    term = Terminal(home, "sync", "work", "--yes", CRMSYNC_PROGRESS_DELAY="0")
    assert term.wait() == 0
    # Rich's bar: the phase, the object and done/total counts.
    assert "applying calendar" in term.screen and "40/40" in term.screen
    assert len(sides.records("groupware", "calendar")) == 40
    quiet = Terminal(home, "sync", "work", "--yes", "--json", CRMSYNC_PROGRESS_DELAY="0")
    assert quiet.wait() == 0
    assert "fetching calendar" not in quiet.screen and "applying" not in quiet.screen
