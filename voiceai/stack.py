"""`voiceai up`: the model servers as child processes on loopback, plus the gateway, in one command.

The gateway runs in this process (uvicorn, same event loop); the ASR, NLU and TTS servers run as
children, each on a free loopback port, and are restarted on the same port if they die. Ctrl-C (or
SIGTERM) stops the gateway first, then the children, each with its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from pathlib import Path

from voiceai.config import Settings
from voiceai.supervisor import ServerProcess, spawn_server, wait_ready

log = logging.getLogger(__name__)
RESTART_DELAY_S = 2.0


class ChildServers:
    """Starts, watches and stops the model servers of a one-box stack."""

    def __init__(self, services: list[str], log_dir: Path) -> None:
        self.services = services
        self.log_dir = log_dir
        self.servers: dict[str, ServerProcess] = {}
        self._watch: asyncio.Task | None = None
        self.restarts: dict[str, int] = dict.fromkeys(services, 0)

    async def start(self) -> None:
        for name in self.services:
            self.servers[name] = spawn_server(name, self.log_dir)
        await asyncio.gather(*(wait_ready(s) for s in self.servers.values()))
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for name, server in list(self.servers.items()):
                if server.alive():
                    continue
                log.error("model server died; restarting", extra={"service": name, "code": server.proc.returncode})
                await asyncio.sleep(RESTART_DELAY_S)
                replacement = spawn_server(name, self.log_dir, port=server.port)
                self.servers[name] = replacement
                self.restarts[name] += 1
                with contextlib.suppress(Exception):
                    await wait_ready(replacement)

    async def stop(self) -> None:
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.servers.values()))


async def run_stack(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
                    with_vad_server: bool = False, ready: asyncio.Event | None = None,
                    stop: asyncio.Event | None = None) -> int:
    """Runs until Ctrl-C/SIGTERM (or ``stop`` is set); returns the exit code."""
    import uvicorn

    from gateway.app import create_app

    services = ["asr", "nlu", "tts"] + (["vad"] if with_vad_server else [])
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="voiceai-up-") as tmp:
        children = ChildServers(services, Path(tmp))
        print("Starting model servers (asr, nlu, tts)...", flush=True)
        try:
            await children.start()
        except Exception as err:
            print(f"voiceai: a model server failed to start: {err}", flush=True)
            await children.stop()
            return 1
        for name, child in children.servers.items():
            settings.servers.for_service(name).address = child.address
            print(f"  {name:<4} gRPC {child.address}  metrics http://{child.host}:{child.metrics_port}/metrics",
                  flush=True)
        app = create_app(settings)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", ws="websockets-sansio")
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # ours, above
        serve = loop.create_task(server.serve())
        while not server.started and not serve.done():  # noqa: ASYNC110 - uvicorn offers no event to await
            await asyncio.sleep(0.05)
        if serve.done():
            await children.stop()
            return 1
        print(f"\nvoiceai is up: http://{host}:{port}/  (Ctrl-C stops everything)", flush=True)
        if ready is not None:
            ready.set()
        stopper = loop.create_task(stop.wait())
        await asyncio.wait({serve, stopper}, return_when=asyncio.FIRST_COMPLETED)
        print("\nStopping...", flush=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve, 10)
        stopper.cancel()
        await children.stop()
        print("Stopped.", flush=True)
    return 0
