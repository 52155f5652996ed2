"""End-to-end call benchmark: simulated callers against `voiceai up` (Whisper base, Qwen2.5 0.5B, Piper).

Part 1, latency: calls of three turns each, English and Arabic, one at a time; reports median and
p95 ``e2e_ms`` (end of the caller's speech in the WAV -> first bot audio frame at the caller) with
the per-stage breakdown and the pipeline's own overhead.
Part 2, concurrency: 1, 2, 4, 8 simultaneous callers; e2e distribution, the longest gap in the
paced bot audio as the callers received it, CPU and memory of the whole stack.

    .venv/bin/python -m benchmarks.bench_call                 # ~12 min on 2 cores
    .venv/bin/python -m benchmarks.bench_call --calls 2 --concurrency 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from gateway.caller import load_turns, simulate_call
from voiceai.config import load_settings
from voiceai.supervisor import free_port

FIXTURES = report.ROOT / "tests" / "fixtures" / "audio"
SCRIPTS = {
    "en": ["en_balance.wav", "en_order.wav", "en_yes.wav"],
    "ar": ["ar_agent.wav", "ar_greeting.wav", "ar_yes.wav"],
}


class StackProcess:
    """`voiceai up` as a child process tree, with CPU and memory sampling."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "voiceai", "up", "--port", str(self.port)],  # noqa: ASYNC220 - started once, returns at once
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=report.ROOT, start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            if "voiceai is up" in line:
                # Keep draining its output so the pipe never blocks it.
                asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.read)
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError("voiceai up did not come up")

    def tree(self) -> list[int]:
        assert self.proc is not None
        pids, frontier = [self.proc.pid], [self.proc.pid]
        while frontier:
            parent = frontier.pop()
            try:
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            except OSError:
                continue
            for c in children:
                pids.append(int(c))
                frontier.append(int(c))
        return pids

    def sample(self) -> tuple[float, int]:
        """(cpu seconds used, resident bytes) summed over the process tree."""
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        cpu, rss = 0.0, 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / ticks
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
        return cpu, rss

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Sampler:
    """Samples CPU and memory of the stack every 0.5 s while a block runs."""

    def __init__(self, stack: StackProcess) -> None:
        self.stack = stack
        self.cpu_pct: list[float] = []
        self.rss: list[int] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        last_cpu, _ = self.stack.sample()
        last_t = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            cpu, rss = self.stack.sample()
            now = time.monotonic()
            self.cpu_pct.append(100 * (cpu - last_cpu) / (now - last_t))
            self.rss.append(rss)
            last_cpu, last_t = cpu, now

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def overhead_ms(stages: dict[str, float | None]) -> float | None:
    """e2e minus the endpoint wait minus model time on the critical path.

    Model time on the critical path: the LLM from the endpoint (or from its own start, when the
    speculative start began earlier) to the first phrase, and the TTS from that phrase to its first
    audio. What is left is the pipeline's own cost: queues, event loop, resampling, playout start.
    """
    need = ("speech_end_ms", "endpoint_ms", "first_phrase_ms", "tts_first_audio_ms", "first_audio_sent_ms")
    if any(stages.get(k) is None for k in need):
        return None
    e2e = stages["first_audio_sent_ms"] - stages["speech_end_ms"]  # type: ignore[operator]
    endpoint_wait = stages["endpoint_ms"] - stages["speech_end_ms"]  # type: ignore[operator]
    llm = max(0.0, stages["first_phrase_ms"] - stages["endpoint_ms"])  # type: ignore[operator]
    tts = stages["tts_first_audio_ms"] - stages["first_phrase_ms"]  # type: ignore[operator]
    return e2e - endpoint_wait - llm - tts


async def latency_run(stack: StackProcess, calls: int, models_dir: Path) -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    for language, script in SCRIPTS.items():
        caller_turns = load_turns([FIXTURES / w for w in script], models_dir, 16000)
        for _ in range(calls):
            result = await simulate_call(stack.url, caller_turns, language)
            for t in result["turns"]:
                t["call_language"] = language
                turns.append(t)
            print(f"  {language}: " + " | ".join(f"{t['e2e_ms']} ms" for t in result["turns"]), flush=True)
    out: dict[str, Any] = {"turns": turns}
    for language in ("all", *SCRIPTS):
        subset = [t for t in turns if (language == "all" or t["call_language"] == language) and t["e2e_ms"]]
        e2e = [t["e2e_ms"] for t in subset]
        stage = {k: report.median([t["stages"][k] - t["stages"]["speech_end_ms"] for t in subset
                                   if t["stages"].get(k) is not None and t["stages"].get("speech_end_ms")])
                 for k in ("final_transcript_ms", "endpoint_ms", "llm_first_token_ms", "first_phrase_ms",
                           "tts_first_audio_ms", "first_audio_sent_ms")}
        overheads = [o for t in subset if (o := overhead_ms(t["stages"])) is not None]
        out[language] = {"turns": len(subset), "e2e_p50_ms": report.median(e2e), "e2e_p95_ms": report.p95(e2e),
                         "stage_p50_ms": stage, "overhead_p50_ms": report.median(overheads),
                         "fallback_turns": sum(1 for t in subset if t["fallbacks"])}
    return out


async def concurrency_run(stack: StackProcess, levels: list[int], models_dir: Path) -> dict[str, Any]:
    caller_turns = load_turns([FIXTURES / w for w in ("en_balance.wav", "en_order.wav")], models_dir, 16000)
    out: dict[str, Any] = {}
    for n in levels:
        async with Sampler(stack) as sampler:
            results = await asyncio.gather(*(simulate_call(stack.url, caller_turns, "en") for _ in range(n)))
        e2e = [t["e2e_ms"] for r in results for t in r["turns"] if t["e2e_ms"] is not None]
        missing = sum(1 for r in results for t in r["turns"] if t["e2e_ms"] is None)
        out[str(n)] = {"e2e_p50_ms": report.median(e2e), "e2e_p95_ms": report.p95(e2e), "e2e_max_ms": max(e2e),
                       "unanswered_turns": missing, "max_audio_gap_ms": max(r["max_audio_gap_ms"] for r in results),
                       "cpu_pct_p50": report.median(sampler.cpu_pct), "cpu_pct_max": max(sampler.cpu_pct),
                       "rss_max_mb": max(sampler.rss) / 2**20}
        print(f"  {n} callers: {out[str(n)]}", flush=True)
    return out


def markdown(lat: dict[str, Any], conc: dict[str, Any]) -> str:
    parts = ["## End-to-end calls (`benchmarks/bench_call.py`)\n",
             "Simulated callers stream fixture WAVs in real time over the call WebSocket to `voiceai up` "
             "(Whisper base int8, Qwen2.5-Coder-0.5B Q4_K_M on llama.cpp, Piper joe / espeak-ng Arabic). "
             "`e2e` runs from the end of the caller's speech in the WAV to the first bot audio frame the "
             "caller receives.\n"]
    rows = []
    for language in ("all", "en", "ar"):
        s = lat[language]
        st = s["stage_p50_ms"]
        rows.append([language, s["turns"], s["e2e_p50_ms"], s["e2e_p95_ms"], st["final_transcript_ms"],
                     st["endpoint_ms"], st["llm_first_token_ms"], st["first_phrase_ms"], st["tts_first_audio_ms"],
                     st["first_audio_sent_ms"], s["overhead_p50_ms"], s["fallback_turns"]])
    parts.append(report.table(
        ["calls", "turns", "e2e p50 ms", "e2e p95 ms", "final transcript", "endpoint", "LLM first token",
         "first phrase", "TTS first audio", "first audio sent", "pipeline overhead p50 ms", "fallback turns"],
        rows))
    parts.append("\nStage columns are medians in ms after the end of the caller's speech (server clock). "
                 "The LLM's first token can precede the endpoint: the speculative start runs during the "
                 "silence window. Pipeline overhead = e2e - endpoint wait - LLM time to the first phrase "
                 "after the endpoint - TTS time to its first audio.\n")
    parts.append("### Concurrent callers (two English turns each)\n")
    parts.append(report.table(
        ["callers", "e2e p50 ms", "e2e p95 ms", "e2e max ms", "unanswered turns", "longest audio gap ms",
         "CPU % p50 (of 200)", "CPU % max", "stack RSS max MB"],
        [[n, c["e2e_p50_ms"], c["e2e_p95_ms"], c["e2e_max_ms"], c["unanswered_turns"], c["max_audio_gap_ms"],
          c["cpu_pct_p50"], c["cpu_pct_max"], c["rss_max_mb"]] for n, c in conc.items()]))
    return "\n".join(parts)


async def main_async(calls: int, levels: list[int]) -> None:
    settings = load_settings(profile="cpu", env={})
    stack = StackProcess()
    await stack.start()
    try:
        await simulate_call(stack.url, load_turns([FIXTURES / "en_yes.wav"], settings.models_dir, 16000))  # warm
        print("latency run", flush=True)
        lat = await latency_run(stack, calls, settings.models_dir)
        print("concurrency run", flush=True)
        conc = await concurrency_run(stack, levels, settings.models_dir)
    finally:
        stack.stop()
    report.write("calls", {"latency": lat, "concurrency": conc}, markdown(lat, conc))
    print(markdown(lat, conc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4, help="calls per language in the latency run (3 turns each)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="simultaneous callers, comma-separated")
    args = parser.parse_args()
    asyncio.run(main_async(args.calls, [int(x) for x in args.concurrency.split(",")]))


if __name__ == "__main__":
    main()
