"""Model servers as real subprocesses on free loopback ports, for tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from voiceai.supervisor import ServerProcess, free_port, spawn_server, wait_ready

__all__ = ["ServerProcess", "eventually", "free_port", "running_server", "serve_app", "start_server", "wait_for",
           "wait_until"]


def start_server(service: str, tmp_path: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), timeout_s: float = 180.0) -> ServerProcess:
    """Starts a server and waits until its health service says SERVING."""
    server = spawn_server(service, tmp_path, env=env, args=args)
    try:
        asyncio.run(wait_ready(server, timeout_s))
    except BaseException:
        server.kill()  # never leave a server behind, whatever went wrong
        raise
    return server


@contextmanager
def running_server(service: str, tmp_path: Path, **kwargs):
    server = start_server(service, tmp_path, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout_s: float = 60) -> T:
    """Polls until `check` returns something truthy; fails after `timeout_s` saying what it waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


async def eventually(check: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """``wait_until`` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextmanager
def serve_app(app: Any, timeout_s: float = 60) -> Iterator[str]:
    """Runs an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL (no slash)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
