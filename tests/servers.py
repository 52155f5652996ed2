"""Model servers as real subprocesses on free loopback ports, for tests."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from pathlib import Path

from voiceai.supervisor import ServerProcess, free_port, spawn_server, wait_ready

__all__ = ["ServerProcess", "free_port", "running_server", "start_server", "wait_for"]


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
