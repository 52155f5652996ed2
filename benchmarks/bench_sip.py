"""SIP transport benchmark: call setup time, and how many concurrent SIP calls one bridge process carries.

The bridge runs in its own process (``bench_sip bridge``): a ``SipServer`` on a ``CallHost`` whose calls
run the real call loop on the fake VAD/ASR/LLM/TTS of ``tests/fakes.py`` (an energy VAD, an ASR that
hears "hello", a fixed LLM sentence, a 440 Hz TTS tone), so only the transport and the call loop cost CPU.
This process is the load generator (``benchmarks/sip_load.py``: a raw SIP UAC and lean RTP callers on
one event loop).

Part 1, setup: sequential calls from the raw UAC (INVITE offering PCMA, PCMU, telephone-event; ACK; BYE):
INVITE sent -> 200 OK received, and -> the call ACKed with the bridge's first RTP packet here; plus
pjsua2 calls (``tests/pjsua_caller.py``, a real phone) as a cross-check.
Part 2, capacity: N calls held at once, each talking (a 1 s tone every 4 s: a turn the bot answers);
the longest gap between consecutive RTP packets from the bridge, per call, on the kernel's arrival
times, after each call's first second. A level passes when every call was answered, kept, answered at
least one turn, and never saw a gap over 60 ms. N steps up until a level fails.

    .venv/bin/python -m benchmarks.bench_sip             # ~6-9 min on 2 cores
    .venv/bin/python -m benchmarks.bench_sip --quick     # ~30 s: 10 setup calls, 2 small levels
    .venv/bin/python -m benchmarks.bench_sip --levels 10,40 --hold-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.sip_load import CallerMedia, Dialog, MediaPump, SipUac, SpeechPattern

GAP_LIMIT_MS = 60.0
LEVELS = [10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300]
BUDGET_S = 540.0  # the whole run stays under 10 minutes: a level that would not fit is not started


# ---- the bridge process ------------------------------------------------------------------------------


async def serve_bridge(args: argparse.Namespace) -> None:
    """The bridge sub-command: serves SIP until SIGTERM (or ``--max-s``), then prints one ``STATS {json}``
    line. SIGUSR1 starts the measurement window: the send-gap maximum of calls in progress restarts."""
    from media_bridge.channels import SipConfig
    from media_bridge.sip.ua import SipServer
    from tests.fakes import fast_settings
    from tests.host_helpers import fake_host

    settings = fast_settings(call__greeting=True, call__max_call_s=3600.0, call__silence_prompt_s=600.0)
    host, writer = fake_host(settings)
    live: dict[str, Any] = {}  # call id -> its RtpSession
    finished: list[dict[str, Any]] = []
    run = host.run

    async def tracked(spec: Any, transport: Any, feed: Any) -> Any:
        rtp = transport.rtp
        live[spec.call_id] = rtp
        try:
            return await run(spec, transport, feed)
        finally:
            live.pop(spec.call_id, None)
            s = rtp.stats
            finished.append({"call_id": spec.call_id, "max_send_gap_ms": round(s.max_send_gap_ms, 1),
                             "packets_out": s.packets_out, "packets_in": s.packets_in,
                             "frames_skipped": s.frames_skipped})

    host.run = tracked  # type: ignore[method-assign]

    async def tenant_for(user: str) -> tuple[str, str]:
        return ("tenant-bench", "bench")

    cfg = SipConfig(port=args.port, bind="127.0.0.1", rtp_port_min=args.rtp_port_min, rtp_port_max=args.rtp_port_max,
                    max_calls=args.max_calls)
    server = SipServer(host, cfg, tenant_for)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    window_cpu_s = [time.process_time()]
    pauses = GcPauses()

    def window() -> None:
        window_cpu_s[0] = time.process_time()
        pauses.reset()
        for rtp in live.values():  # our own process: the gap before the window (setup) is not the question
            rtp.stats.max_send_gap_ms = 0.0

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, window)
    print(f"READY {server.port}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.stop(), 20)
    from prometheus_client import REGISTRY

    turns = Counter(r["call_id"] for r in writer.of_kind("turn") if r["speaker"] == "caller")
    reasons = {r["call_id"]: r["reason"] for r in writer.of_kind("call_ended")}
    for record in finished:
        record["turns"] = turns.get(record["call_id"], 0)
        record["ended"] = reasons.get(record.pop("call_id"), "")
    stats = {"calls": finished, "unfinished": len(live), "cpu_s": time.process_time(),
             "window_cpu_s": time.process_time() - window_cpu_s[0], "gc": pauses.as_dict(),
             "setup_s_sum": REGISTRY.get_sample_value("voiceai_sip_setup_seconds_sum") or 0.0,
             "setup_count": REGISTRY.get_sample_value("voiceai_sip_setup_seconds_count") or 0.0}
    print("STATS " + json.dumps(stats), flush=True)


class GcPauses:
    """Times this process's garbage collections (a full one stops every call at once)."""

    def __init__(self) -> None:
        self.max_ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.max_ms[generation] = max(self.max_ms[generation], (time.perf_counter() - self._started) * 1000)
        self.count[generation] += 1

    def reset(self) -> None:
        self.max_ms, self.count = [0.0, 0.0, 0.0], [0, 0, 0]

    def close(self) -> None:
        gc.callbacks.remove(self._callback)

    def as_dict(self) -> dict[str, Any]:
        return {"max_ms": [round(v, 1) for v in self.max_ms], "count": list(self.count)}


class BridgeProcess:
    """``bench_sip bridge`` as a child process: started, signalled, CPU-sampled, stopped, always killed."""

    def __init__(self, max_calls: int, max_s: float) -> None:
        self.max_calls = max_calls
        self.max_s = max_s
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()

    async def start(self) -> None:
        base = 20000 + (os.getpid() * 7 % 20000) // 2 * 2
        span = 2 * self.max_calls + 200
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.bench_sip", "bridge", "--port", "0", "--rtp-port-min", str(base),
            "--rtp-port-max", str(base + span), "--max-calls", str(self.max_calls), "--max-s", str(self.max_s),
            stdout=asyncio.subprocess.PIPE, stderr=self._stderr, cwd=report.ROOT, start_new_session=True)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"the bridge did not start: {line!r} {self.stderr_lines()[-5:]}")
        self.port = int(line.split()[1])

    def cpu_s(self) -> float:
        """User + system CPU seconds of the bridge process so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_s(self) -> float:
        """Seconds the bridge has spent runnable but waiting for a core (``/proc/PID/schedstat``)."""
        assert self.proc is not None
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int(Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()[1]) / 1e9
        return float("nan")

    def rss_mb(self) -> float:
        assert self.proc is not None
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def start_window(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, then the bridge's STATS line (empty when it never came)."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), deadline - time.monotonic())
            except TimeoutError:
                break
            if line.startswith(b"STATS "):
                stats: dict[str, Any] = json.loads(line[6:])
                await asyncio.wait_for(self.proc.wait(), 10)
                return stats
            if not line:
                break
        return {}

    def stderr_lines(self) -> list[str]:
        self._stderr.seek(0)
        return [line for line in self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._stderr.close()


class WaitSampler:
    """Samples the bridge's run-queue wait every 10 ms, to tell a gap the bridge made (its event loop was
    busy) from one the machine made (the bridge was ready to run and had no core)."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self.bridge = bridge
        self.times: list[float] = []
        self.waits: list[float] = []
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wait-sampler")

    async def _run(self) -> None:
        while True:
            self.times.append(time.time())
            self.waits.append(self.bridge.wait_s())
            await asyncio.sleep(0.01)

    def waited_s(self, start: float, end: float) -> float:
        """How long the bridge waited for a core between about ``start`` and ``end`` (a sample either side)."""
        if not self.times:
            return 0.0
        first = max(0, bisect.bisect_right(self.times, start) - 1)
        last = min(len(self.times) - 1, bisect.bisect_left(self.times, end))
        return self.waits[last] - self.waits[first]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def machine_made(gap: tuple[float, float], pump: MediaPump, waits: WaitSampler) -> bool:
    """A long gap is the machine's when, for at least half its excess over 20 ms, the load generator was
    stalled too or the bridge was waiting for a core."""
    need_s = 0.5 * max(0.0, gap[1] - gap[0] - 0.02)
    return pump.during_stall(gap) or waits.waited_s(*gap) >= need_s


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


def _warnings(lines: list[str]) -> dict[str, int]:
    """The bridge's stderr (logging's last-resort handler: warnings and errors), counted by message."""
    return dict(Counter(lines).most_common(5))


# ---- part 1: setup time ------------------------------------------------------------------------------


async def _first_packet(media: CallerMedia, timeout_s: float = 2.0) -> None:
    with contextlib.suppress(TimeoutError):  # its arrival time is the kernel's, whenever we wake up
        await asyncio.wait_for(media.first_packet.wait(), timeout_s)


async def pjsua_setup(port: int) -> dict[str, Any]:
    """One call from pjsua2 (its own process); its ``setup_ms`` is makeCall -> CONFIRMED."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.pjsua_caller", f"sip:1000@127.0.0.1:{port}", "--seconds", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=report.ROOT)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        return {"error": err.decode("utf-8", "replace").strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def setup_run(calls: int, pjsua_calls: int, warmup: int = 2) -> dict[str, Any]:
    bridge = BridgeProcess(max_calls=20, max_s=300)
    await bridge.start()
    uac = SipUac(("127.0.0.1", bridge.port))
    pattern = SpeechPattern()
    dialogs: list[Dialog] = []
    pjsua: list[dict[str, Any]] = []
    try:
        for i in range(warmup + calls):
            media = CallerMedia(pattern)
            try:
                dialog = await uac.invite(media)
                await _first_packet(media)
                await uac.bye(dialog)
            finally:
                media.close()
            if i >= warmup:
                dialogs.append(dialog)
            await asyncio.sleep(0.05)
        for _ in range(pjsua_calls):
            pjsua.append(await pjsua_setup(bridge.port))
        stats = await bridge.stop()
        stderr = bridge.stderr_lines()
    finally:
        uac.close()
        await bridge.kill()
    setup = [d.setup_ms for d in dialogs if d.setup_ms is not None]
    media_up = [d.media_ms for d in dialogs if d.media_ms is not None]
    pjsua_ms = [float(p["setup_ms"]) for p in pjsua if p.get("setup_ms") is not None]
    out = {"calls": calls, "answered": sum(d.status == 200 for d in dialogs),
           "with_media": len(media_up), "hung_up": sum(d.bye_status == 200 for d in dialogs),
           "setup_p50_ms": report.median(setup), "setup_p95_ms": report.p95(setup),
           "setup_max_ms": max(setup, default=float("nan")),
           "media_p50_ms": report.median(media_up), "media_p95_ms": report.p95(media_up),
           # the bridge's histogram counts the warm-up and pjsua calls too
           "bridge_setup_mean_ms": 1000 * stats.get("setup_s_sum", 0.0) / max(1.0, stats.get("setup_count", 0.0)),
           "pjsua": pjsua, "pjsua_setup_p50_ms": report.median(pjsua_ms),
           "bridge_warnings": _warnings(stderr)}
    print(f"  setup: {json.dumps({k: v for k, v in out.items() if k != 'pjsua'})}", flush=True)
    print(f"  pjsua2: {pjsua}", flush=True)
    return out


# ---- part 2: concurrent calls ------------------------------------------------------------------------


async def capacity_level(n: int, hold_s: float, ramp_per_s: float, pattern: SpeechPattern) -> dict[str, Any]:
    """N calls up (``ramp_per_s`` new calls a second), held ``hold_s`` once all are up, then hung up."""
    bridge = BridgeProcess(max_calls=n + 10, max_s=n / ramp_per_s + hold_s + 120)
    await bridge.start()
    uac = SipUac(("127.0.0.1", bridge.port))
    pump = MediaPump()
    pump.start()
    medias: list[CallerMedia] = []
    gc_pauses = GcPauses()
    waits = WaitSampler(bridge)

    async def call() -> Dialog:
        media = CallerMedia(pattern, long_gap_ms=GAP_LIMIT_MS)
        medias.append(media)
        pump.calls.add(media)
        return await uac.invite(media)

    try:
        started = time.monotonic()
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(call()))
            await asyncio.sleep(1 / ramp_per_s)
        dialogs = await asyncio.gather(*tasks)
        ramp_s = time.monotonic() - started
        bridge.start_window()
        pump.reset_lateness()
        gc_pauses.reset()
        cpu0, gen0, wait0, (busy0, _), t0 = (bridge.cpu_s(), time.process_time(), bridge.wait_s(), _machine_cpu_s(),
                                            time.monotonic())
        await asyncio.sleep(hold_s)
        cpu1, gen1, wait1, (busy1, _), t1 = (bridge.cpu_s(), time.process_time(), bridge.wait_s(), _machine_cpu_s(),
                                            time.monotonic())
        rss_mb = bridge.rss_mb()
        late_ms, skipped = pump.max_late_ms, pump.skipped_ticks
        generator_gc = gc_pauses.as_dict()
        for media in medias:
            media.stop_measuring()
        pump.calls.clear()
        await asyncio.gather(*(uac.bye(d) for d in dialogs))
        stats = await bridge.stop()
        stderr = bridge.stderr_lines()
    finally:
        gc_pauses.close()
        await waits.stop()
        await pump.stop()
        uac.close()
        for media in medias:
            media.close()
        await bridge.kill()
    answered = [d for d in dialogs if d.status == 200]
    gaps = np.array([g for m in medias for g in m.gaps_ms]) if medias else np.zeros(0)
    per_call_max = [m.max_gap_ms for m in medias if m.first_packet_s is not None]
    bridge_calls = stats.get("calls", [])
    turns = [c["turns"] for c in bridge_calls]
    setup = [d.setup_ms for d in answered if d.setup_ms is not None]
    completed = sum(d.bye_status == 200 and not d.bridge_bye for d in answered)
    result = {
        "calls": n, "answered": len(answered), "completed": completed, "with_media": len(per_call_max),
        "turns": sum(turns), "calls_without_turn": sum(t == 0 for t in turns) + (len(answered) - len(turns)),
        "max_gap_ms": max(per_call_max, default=float("nan")),
        "p99_gap_ms": float(np.percentile(gaps, 99)) if gaps.size else float("nan"),
        "calls_over_limit": sum(g > GAP_LIMIT_MS for g in per_call_max),
        # over the limit at least once with neither the generator stalled nor the bridge short of a core
        "calls_over_limit_alone": sum(any(not machine_made(g, pump, waits) for g in m.long_gaps) for m in medias),
        "bridge_max_send_gap_ms": max((c["max_send_gap_ms"] for c in bridge_calls), default=float("nan")),
        "bridge_frames_skipped": sum(c["frames_skipped"] for c in bridge_calls),
        "bridge_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "generator_cpu_pct": 100 * (gen1 - gen0) / (t1 - t0),
        # time the bridge was ready to run but had no core: other processes' load, not its own slowness
        "bridge_wait_pct": 100 * (wait1 - wait0) / (t1 - t0),
        "other_cpu_pct": 100 * ((busy1 - busy0) - (cpu1 - cpu0) - (gen1 - gen0)) / (t1 - t0),
        "bridge_rss_mb": rss_mb, "bridge_gc": stats.get("gc", {}), "generator_gc": generator_gc,
        "generator_max_late_ms": late_ms, "generator_skipped_ticks": skipped,
        "setup_p50_ms": report.median(setup), "setup_p95_ms": report.p95(setup),
        "ramp_s": ramp_s, "hold_s": hold_s,
        "kernel_timestamps": all(m.endpoint.kernel_time for m in medias), "bridge_warnings": _warnings(stderr),
        "ended": dict(Counter(c["ended"] for c in bridge_calls)),
        # greeting + replies as the callers heard them (the bridge marks its first packet too: not counted)
        "bot_talk_spurts_heard": sum(max(0, m.talk_spurts - 1) for m in medias),
    }
    result["passed"] = (len(answered) == n == completed == len(per_call_max) and result["calls_without_turn"] == 0
                        and result["calls_over_limit"] == 0)
    return result


def machine_only(level: dict[str, Any]) -> bool:
    """A failed level whose every long gap came while the load generator stalled too: the machine's doing."""
    n = level["calls"]
    return (not level["passed"] and level["calls_over_limit_alone"] == 0 and level["calls_without_turn"] == 0
            and level["answered"] == level["completed"] == level["with_media"] == n)


async def capacity_run(levels: list[int], hold_s: float, ramp_per_s: float, budget_s: float, started: float,
                       retries: int) -> dict[str, Any]:
    """Steps up the levels until one fails; a level that failed only by machine-wide stalls (see
    ``machine_only``) is run again, up to ``retries`` times."""
    pattern = SpeechPattern()
    out: dict[str, Any] = {"levels": {}, "largest_passing": 0, "stopped_by": "levels exhausted"}
    for n in levels:
        attempts: list[dict[str, Any]] = []
        while len(attempts) <= retries:
            expected_s = n / ramp_per_s + hold_s + 15
            if time.monotonic() - started + expected_s > budget_s:
                out["stopped_by"] = f"time budget ({budget_s:.0f} s) before {n} calls"
                break
            try:
                level = await capacity_level(n, hold_s, ramp_per_s, pattern)
            except Exception as err:  # recorded, and the levels below it still get written
                out["stopped_by"] = f"{n} calls: the run broke ({err!r})"
                print(f"  {n} calls: {err!r}", flush=True)
                break
            attempts.append(level)
            print(f"  {n} calls: " + json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                                 for k, v in level.items()}), flush=True)
            if level["passed"] or not machine_only(level):
                break
            print(f"  {n} calls: every long gap fell in a stall of the whole machine; once more", flush=True)
        if not attempts:
            break
        level = attempts[-1]
        level["attempts"] = len(attempts)
        level["earlier_attempts"] = [{k: a[k] for k in ("max_gap_ms", "calls_over_limit", "other_cpu_pct")}
                                     for a in attempts[:-1]]
        out["levels"][str(n)] = level
        if not level["passed"]:
            out["stopped_by"] = f"{n} calls failed"
            break
        out["largest_passing"] = n
    return out


# ---- report ------------------------------------------------------------------------------------------


def markdown(setup: dict[str, Any], capacity: dict[str, Any], hold_s: float, quick: bool) -> str:
    cores = os.cpu_count()
    parts = [
        "## SIP calls (`benchmarks/bench_sip.py`)\n",
        *(["_A `--quick` smoke run (small levels, short holds): not the measurement._\n"] if quick else []),
        "What this measures: the SIP transport alone. The bridge (`SipServer` on the real call loop) runs in "
        "its own process with the model servers replaced by fakes (energy VAD, an ASR that hears \"hello\", a "
        "fixed LLM sentence, a 440 Hz TTS tone), so what costs CPU is SIP, RTP (G.711, jitter buffer, 20 ms "
        "pacing) and the call loop. The load generator (`benchmarks/sip_load.py`) is a raw Python UAC: INVITE "
        "offering PCMA, PCMU and telephone-event, ACK, BYE, and one RTP socket per call. Setup time runs from "
        "the INVITE sent to the 200 OK received, and to the call ACKed with the bridge's first RTP packet in. "
        "For capacity, N calls are held at once, each caller saying something (a 1 s tone) every 4 s, which "
        "the bot answers; the gap is the longest time between two consecutive RTP packets from the bridge "
        "(it sends every 20 ms, silence included), from the kernel's arrival timestamps, after each call's "
        f"first second. A level passes when every call was answered and kept, had a turn answered, and no "
        f"gap exceeded {GAP_LIMIT_MS:.0f} ms. On this {cores}-core machine the load generator (one process, "
        "one event loop) shares the CPU with the bridge: its own CPU is in the table.\n",
        "### Call setup (sequential calls, loopback)\n",
    ]
    pjsua = setup["pjsua"]
    parts.append(report.table(
        ["client", "calls", "answered", "INVITE -> 200 OK p50 ms", "p95 ms", "max ms",
         "INVITE -> ACKed + first RTP p50 ms", "p95 ms"],
        [["raw UAC", setup["calls"], setup["answered"], setup["setup_p50_ms"], setup["setup_p95_ms"],
          setup["setup_max_ms"], setup["media_p50_ms"], setup["media_p95_ms"]],
         ["pjsua2 (makeCall -> CONFIRMED)", len(pjsua), sum(p.get("setup_ms") is not None for p in pjsua),
          setup["pjsua_setup_p50_ms"], "", "", "", ""]]))
    parts.append(f"\nThe bridge's own view (`voiceai_sip_setup_seconds`, INVITE received -> 200 OK sent): mean "
                 f"{setup['bridge_setup_mean_ms']:.2f} ms. pjsua2's number runs from its makeCall to its CONFIRMED "
                 "callback (its ACK sent), its own processing included: a cross-check with a real phone.\n")
    parts.append(f"### Concurrent calls (each level held {hold_s:.0f} s after the last call is up)\n")
    rows = [[n, lv["answered"], lv["completed"], lv["turns"], lv["max_gap_ms"], lv["p99_gap_ms"],
             f"{lv['calls_over_limit']} ({lv['calls_over_limit_alone']})", lv["bridge_max_send_gap_ms"],
             lv["bridge_cpu_pct"], lv["bridge_wait_pct"],
             lv["generator_cpu_pct"], lv["other_cpu_pct"], "yes" if lv["passed"] else "no"]
            for n, lv in capacity["levels"].items()]
    parts.append(report.table(
        ["calls", "answered", "kept to the end", "turns answered", "max gap ms", "p99 gap ms",
         f"calls > {GAP_LIMIT_MS:.0f} ms (the bridge's own)", "bridge max send gap ms",
         "bridge CPU % (of 1 core)",
         "bridge waiting for a core %", "generator CPU %", "other processes CPU %", "pass"], rows))
    largest = capacity["largest_passing"]
    verdict = f"{largest} concurrent calls" if largest else "none of the levels tried"
    parts.append(f"\n**Largest passing level: {verdict}** in one bridge process "
                 f"(stopped: {capacity['stopped_by']}). The bridge is one Python process with one event loop: "
                 "it cannot use more than one core, so its CPU column near 100 % is the ceiling. The gaps "
                 "measured at the callers run from each call's second second to its hang-up (the ramp "
                 "included); the bridge's max send gap (its `RtpSession` stats) and both CPU columns cover "
                 "the held window only. `turns answered` counts caller turns the bot replied to over whole "
                 "calls. `bridge waiting for a core` is the time the bridge was runnable but not running "
                 "(`/proc/PID/schedstat`) and `other processes CPU` everything else the machine ran: when "
                 "they are not near zero, the gaps say more about the machine than about the bridge. A gap "
                 "is the bridge's own (in parentheses) unless, for half its excess over 20 ms, the load generator's "
                 "20 ms tick was stalled too or the bridge was waiting for a core (sampled every 10 ms): those "
                 "are the machine's (other processes, the VM's host). A level failed by the machine's gaps "
                 "alone is run once more (`attempts` in the JSON).\n")
    return "\n".join(parts)


async def main_async(args: argparse.Namespace) -> None:
    started = time.monotonic()
    print("setup run", flush=True)
    setup = await setup_run(args.setup_calls, args.pjsua_calls)
    print("capacity run", flush=True)
    levels = [int(x) for x in args.levels.split(",")]
    capacity = await capacity_run(levels, args.hold_s, args.ramp_per_s, BUDGET_S, started, args.retries)
    text = markdown(setup, capacity, args.hold_s, args.quick)
    report.write("sip", {"setup": setup, "capacity": capacity,
                         "options": {"levels": levels, "hold_s": args.hold_s, "ramp_per_s": args.ramp_per_s,
                                     "gap_limit_ms": GAP_LIMIT_MS, "quick": args.quick}}, text)
    print(text)
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 setup calls, 1 pjsua2 call, levels 5,10 held 8 s")
    parser.add_argument("--setup-calls", type=int, default=50, help="sequential calls for the setup time")
    parser.add_argument("--pjsua-calls", type=int, default=3, help="pjsua2 calls for the cross-check (0: none)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent calls, comma-separated")
    parser.add_argument("--hold-s", type=float, default=20.0, help="how long each level is held once all are up")
    parser.add_argument("--retries", type=int, default=1,
                        help="runs of a level again when its only long gaps came with the generator stalled too")
    parser.add_argument("--ramp-per-s", type=float, default=20.0, help="new calls per second while ramping up")
    sub = parser.add_subparsers(dest="command")
    bridge = sub.add_parser("bridge", help="serve SIP on fake models (started by the benchmark itself)")
    bridge.add_argument("--port", type=int, default=0)
    bridge.add_argument("--rtp-port-min", type=int, default=40000)
    bridge.add_argument("--rtp-port-max", type=int, default=40999)
    bridge.add_argument("--max-calls", type=int, default=200)
    bridge.add_argument("--max-s", type=float, default=600.0, help="exit after this long whatever happens")
    args = parser.parse_args()
    if args.command == "bridge":
        asyncio.run(serve_bridge(args))
        return
    if args.quick:
        args.setup_calls, args.pjsua_calls, args.levels, args.hold_s = 10, 1, "5,10", 8.0
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
