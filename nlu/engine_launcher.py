"""Starts and stops the local llama.cpp server (``python -m llama_cpp.server``) for the CPU profile.

Production runs vLLM as its own service and sets ``nlu.engine.base_url``; nothing is launched then.
Here the GGUF model is served by llama-cpp-python's OpenAI-compatible server as a child process on
a loopback port, so the generator talks to both engines over the same HTTP API.

Server flags that matter (checked against llama-cpp-python 0.3.36):

* ``--interrupt_requests false``: by default a new request (even ``GET /v1/models``) makes the
  server cut the stream being generated short; we queue concurrent generations instead.
* ``--logits_all false``: the default keeps logits of every prompt token, which costs prompt
  speed and RAM (n_ctx x vocabulary floats) and only serves ``logprobs``, which we do not use.
* ``chat_format`` unset: the server uses the GGUF's Jinja chat template and passes ``tools`` into
  it, so Qwen2.5 sees its own tool instructions and answers with ``<tool_call>`` text.
* Prompt reuse: llama.cpp keeps the previous prompt's tokens and re-reads only what follows the
  longest common prefix, so a call's consecutive turns are cheap as long as the prompt's head
  stays fixed (see ``nlu.prompting``). ``--cache true`` (keep several prompt states) stays off by
  default: in 0.3.36 each saved state also holds an uncounted copy of the logits (see
  ``LlamaCppLaunch.prompt_cache``), which grew the engine by ~63 MB per request with Qwen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from nlu.config import LlamaCppLaunch
from voiceai.models import require

log = logging.getLogger(__name__)

# The child asks the kernel for SIGTERM when its parent dies, so a crashed or killed server never
# leaves an engine holding RAM and CPU; then it runs the server module as `python -m` would.
_CHILD_BOOTSTRAP = """\
import ctypes, os, runpy, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(os.environ.pop("VOICEAI_ENGINE_PARENT", "0") or os.getppid()):
    sys.exit(0)
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class EngineStartError(RuntimeError):
    """The engine exited or did not answer in time; the message carries the tail of its log."""


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gguf_path(launch: LlamaCppLaunch, models_dir: Path) -> Path:
    """The GGUF file of the configured registry model."""
    folder = require(launch.model, models_dir)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise EngineStartError(f"no .gguf file in {folder} for model {launch.model!r}")
    return files[0]


class LlamaCppEngine:
    """A llama.cpp server child process on a loopback port."""

    def __init__(self, launch: LlamaCppLaunch, models_dir: Path, served_model_name: str) -> None:
        self.launch = launch
        self.models_dir = models_dir
        self.served_model_name = served_model_name
        self.port = 0
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, model_path: Path) -> list[str]:
        """The child's command line (without the bootstrap that runs it)."""
        lc = self.launch
        args = [
            "--model", str(model_path),
            "--model_alias", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(lc.n_ctx),
            "--n_threads", str(lc.n_threads),
            "--n_threads_batch", str(lc.n_threads),
            "--interrupt_requests", "false",
            "--logits_all", "true" if lc.logits_all else "false",
            "--cache", "true" if lc.prompt_cache else "false",
            "--cache_size", str(lc.prompt_cache_bytes),
        ]
        if lc.chat_format:
            args += ["--chat_format", lc.chat_format]
        return args

    async def start(self) -> str:
        """Starts the child and waits until ``/v1/models`` answers; returns the base URL."""
        if self._proc is not None:
            return self.base_url
        started = time.perf_counter()
        # The first check of a model hashes the whole file: not on the event loop.
        self._spawn(await asyncio.to_thread(gguf_path, self.launch, self.models_dir))
        log.info("engine starting", extra={"engine": "llama_cpp", "model": self.launch.model,
                                           "port": self.port, "log_path": str(self.log_path)})
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop(keep_log=True)
            raise
        log.info("engine ready", extra={"engine": "llama_cpp", "port": self.port,
                                        "start_s": round(time.perf_counter() - started, 2)})
        return self.base_url

    def _spawn(self, model_path: Path) -> None:
        """Forks the child on the calling (event-loop) thread.

        Not in a worker thread on purpose: the kernel sends PR_SET_PDEATHSIG when the thread that
        forked exits, and pool threads come and go. Popen only forks and execs (milliseconds).
        """
        self.port = self.launch.port or free_loopback_port()
        log_dir = Path(self.launch.log_dir or tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"voiceai-llama-cpp-{self.port}.log"
        env = {**os.environ, "VOICEAI_ENGINE_PARENT": str(os.getpid())}
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_BOOTSTRAP, *self.command(model_path)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
            )

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.launch.startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise EngineStartError(
                        f"llama.cpp server exited with code {self._proc.returncode}; log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    resp = await http.get(f"{self.base_url}/models")
                    if resp.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise EngineStartError(
            f"llama.cpp server did not answer within {self.launch.startup_timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, max_chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-max_chars:]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def stop(self, grace_s: float = 5.0, keep_log: bool = False) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; waits off the event loop."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, grace_s)
        log.info("engine stopped", extra={"engine": "llama_cpp", "port": self.port})
        if not keep_log:
            self._drop_temp_log()

    def _drop_temp_log(self) -> None:
        # A log in the temp folder is only kept when the engine failed; a configured log_dir keeps all.
        if not self.launch.log_dir and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def stop_now(self) -> None:
        """Synchronous stop, for interpreter exit and test teardown outside an event loop."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            self._drop_temp_log()
