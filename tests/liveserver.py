"""The server for browser tests: the real app in a uvicorn thread on a free loopback
port, with the embedded queue's real worker threads running the jobs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from crmsync.server import service
from crmsync.server.queue import Workers
from serverworld import World, web_app


@dataclass
class Live:
    url: str
    world: World


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(world: World) -> Iterator[Live]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    app = web_app(world, secure_cookies=False, public_url=url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    workers = Workers(world.queue, lambda user_id, kind: service.run_job(
        world.store, user_id, kind, vault=world.srv.vault), count=2, poll=0.2)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    workers.start()
    try:
        yield Live(url, world)
    finally:
        workers.stop(timeout=30)
        server.should_exit = True
        thread.join(10)
