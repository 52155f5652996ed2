"""Starts and stops model servers as child processes (``voiceai up``, benchmarks, tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from voiceai.serving import wait_for_serving

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the child binds it right away)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def peak_rss_bytes(pid: int) -> int:
    """High-water mark of a process's resident memory (VmHWM), children excluded; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class ServerProcess:
    """A ``voiceai serve SERVICE`` child process."""

    service: str
    port: int
    metrics_port: int
    proc: subprocess.Popen
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (the server drains and exits), then SIGKILL if it does not."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_bytes(self) -> int:
        """High-water mark of the server's resident memory (children excluded)."""
        return peak_rss_bytes(self.pid)


def spawn_server(service: str, log_dir: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), port: int = 0, host: str = "127.0.0.1") -> ServerProcess:
    """Starts ``voiceai serve SERVICE`` on a free loopback port; does not wait."""
    port = port or free_port(host)
    metrics_port = free_port(host)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{service}-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voiceai", "serve", service, "--host", host, "--port", str(port),
             "--metrics-port", str(metrics_port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent, which stops us in order
        )
    return ServerProcess(service, port, metrics_port, proc, log_path, host)


async def wait_ready(server: ServerProcess, timeout_s: float = 180.0) -> None:
    """Waits for SERVING; raises with the tail of the server's log if it dies or times out."""
    waiter = asyncio.create_task(wait_for_serving(server.address, timeout_s))
    while not waiter.done():
        if not server.alive():
            waiter.cancel()
            raise RuntimeError(f"{server.service} server exited with {server.proc.returncode}:\n"
                               f"{server.log()[-3000:]}")
        await asyncio.sleep(0.2)
    try:
        waiter.result()
    except TimeoutError as err:
        server.kill()
        raise RuntimeError(f"{server.service} server not ready: {err}\n{server.log()[-3000:]}") from None
