"""The whole stack for end-to-end tests: model servers as subprocesses, the gateway in a thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.platform_helpers import isolate
from voiceai.config import Settings, load_settings
from voiceai.supervisor import ServerProcess, free_port, spawn_server, wait_ready


class Stack:
    """ASR, NLU and TTS servers on loopback plus the gateway, as `voiceai up` runs them."""

    def __init__(self, log_dir: Path, overrides: dict | None = None,
                 services: tuple[str, ...] = ("asr", "nlu", "tts")) -> None:
        self.log_dir = log_dir
        self.services = services
        # Database, keys and knowledge base live with the logs: a test never writes into the checkout's data/.
        self.settings: Settings = isolate(load_settings(profile="cpu", env={}, overrides=overrides or {}),
                                          log_dir / "platform")
        self.servers: dict[str, ServerProcess] = {}
        self.port = free_port()
        self._uvicorn = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        for name in self.services:
            self.servers[name] = spawn_server(name, self.log_dir)

        async def ready() -> None:
            await asyncio.gather(*(wait_ready(s) for s in self.servers.values()))

        asyncio.run(ready())
        for name, server in self.servers.items():
            self.settings.servers.for_service(name).address = server.address
        self._start_gateway()
        return self

    def _start_gateway(self) -> None:
        import uvicorn

        from gateway.app import create_app

        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port, log_level="warning",
                                ws="websockets-sansio", lifespan="on")
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, name="gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._uvicorn.started:
                return
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        raise RuntimeError("gateway did not start")

    def kill(self, service: str) -> None:
        self.servers[service].kill()

    def restart(self, service: str) -> None:
        old = self.servers[service]
        old.kill()
        new = spawn_server(service, self.log_dir, port=old.port)
        self.servers[service] = new
        asyncio.run(wait_ready(new))

    def token(self, role: str = "admin") -> str:
        """An access token for the demo tenant (the one anonymous web calls reach), signed by the gateway's keys."""
        from gateway.auth.keys import KeyRing
        from gateway.auth.tokens import issue_access

        name = self.settings.auth.anonymous_calls_tenant
        with sqlite3.connect(self.settings.db.url.removeprefix("sqlite:///")) as db:
            (tenant_id,) = db.execute("SELECT id FROM tenants WHERE name = ?", (name,)).fetchone()
        ring = KeyRing.load_or_create(self.settings.auth.keys_dir)
        return issue_access(ring, self.settings.auth, subject=f"test-{role}", tenant_id=tenant_id, tenant_name=name,
                            role=role, principal_type="user")

    def get(self, path: str, role: str = "admin") -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, headers={"Authorization": f"Bearer {self.token(role)}"})

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        for server in self.servers.values():
            server.stop()
