"""Starts voiceai model servers as real subprocesses on free loopback ports, for tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A `voiceai serve SERVICE` child process."""

    service: str
    port: int
    metrics_port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(service: str, tmp_path: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), timeout_s: float = 120.0) -> ServerProcess:
    """Starts a server and waits until its health service says SERVING."""
    from voiceai.serving import wait_for_serving

    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / f"{service}-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voiceai", "serve", service, "--port", str(port),
             "--metrics-port", str(metrics_port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT,
        )
    server = ServerProcess(service, port, metrics_port, proc, log_path)
    try:
        asyncio.run(wait_for_serving(server.address, timeout_s))
    except BaseException:
        server.kill()
        raise RuntimeError(f"{service} server did not become SERVING:\n{server.log()[-4000:]}") from None
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
