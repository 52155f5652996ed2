"""Caller transports: what each way of reaching the bot adds to its response time, over the WebSocket.

One gateway (a child process: uvicorn, the real call loop, SIP and Twilio switched on) answers every
call with the same fake models (tests/fakes.py: energy VAD and ASR, scripted LLM, a 440 Hz tone for the
bot's voice), so only the transport differs. Calls run one at a time, the transports taking turns. The
caller (benchmarks/transport_clients.py) streams silence until the bot is quiet, then a 1 s tone burst
("speech"), then silence, in real time; the response time runs from the moment the burst's last frame was
sent to the arrival of the first bot frame with energy in it, both on the caller's clock.

    .venv/bin/python -m benchmarks.bench_transports                 # 10 calls per transport, ~3 min on 2 cores
    .venv/bin/python -m benchmarks.bench_transports --quick         # 2 calls per transport, ~1 min, writes nothing
    .venv/bin/python -m benchmarks.bench_transports --transports websocket,sip --sip-jitter-ms 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.transport_clients import CallerClient, SipCaller, TwilioCaller, WebRtcCaller, WebSocketCaller

FRAME_S = 0.020
BURST_MS = 1000
CALLER_HZ = 300.0  # the caller's "speech"; the fake TTS answers at 440 Hz
LEAD_S = 1.0  # silence before the burst, at least
QUIET_S = 0.6  # ... and until the bot (its greeting) has been quiet this long
LEAD_MAX_S = 15.0
LEAD_SPREAD_FRAMES = 10  # 0-9 more frames of silence, drawn per call: the burst's end falls at every phase
# of the bridge's 20 ms clocks and of the resampler's blocks (seeded: runs are comparable)
REPLY_TIMEOUT_S = 5.0
WARMUP_CALLS = 1  # per transport, not counted: imports, codec set-up, first-call paths
TWILIO_AUTH_TOKEN = "bench0123456789abcdef0123456789ab"
TRANSPORTS = ("websocket", "webrtc", "sip", "twilio")
SKIPPED = {"livekit": "no LiveKit server available (unverified)"}
# The fake models' timings (tests/fakes.py defaults) and the call loop's (tests/fakes.py FAST_CALL), the
# same for every transport.
FAKE_TIMINGS = {"endpoint_silence_ms_en": 400, "asr_segment_silence_ms": 250, "asr_decode_ms": 20,
                "llm_first_token_ms": 40, "tts_first_chunk_ms": 20}


def audio_path(transport: str, sip_jitter_ms: int) -> str:
    """How the audio travels, caller to bot and back (what the added latency is made of)."""
    return {
        "websocket": "PCM16 16 kHz in binary WebSocket frames: no codec, no jitter buffer, no resampling",
        "webrtc": "Opus 48 kHz over DTLS-SRTP (aiortc): aiortc's 4-packet (80 ms) receive buffer on the bridge, "
                  "the bot's track starting one 20 ms frame late on its own clock; resampled 48 <-> 16 kHz",
        "sip": f"G.711 µ-law 8 kHz RTP/UDP: {sip_jitter_ms} ms jitter buffer on the caller's audio, the bot's "
               "RTP on its own 20 ms clock; resampled 8 <-> 16 kHz",
        "twilio": "G.711 µ-law 8 kHz, base64 in JSON WebSocket frames; resampled 8 <-> 16 kHz",
    }[transport]


def resampler_holdback_ms(rate_hz: int, seconds: float = 3.0) -> dict[str, float]:
    """How much caller audio the call's streaming resampler (to the models' 16 kHz) still holds after each
    20 ms frame, mean and largest: the VAD and endpointer hear the end of speech that much later."""
    from voiceai.audio import MODEL_RATE_HZ, StreamResampler

    resampler = StreamResampler(rate_hz, MODEL_RATE_HZ)
    step = int(rate_hz * FRAME_S)
    fed_ms = produced_ms = 0.0
    held = []
    for _ in range(int(seconds / FRAME_S)):
        produced_ms += len(resampler.process(np.zeros(step, np.float32))) * 1000 / MODEL_RATE_HZ
        fed_ms += FRAME_S * 1000
        held.append(fed_ms - produced_ms)
    steady = held[len(held) // 4:]  # past the start-up
    return {"mean": float(np.mean(steady)), "max": float(np.max(steady))}


# ---- the gateway, a child process ----------------------------------------------------------------------


def serve(folder: Path, sip_jitter_ms: int) -> None:
    """Child process: the gateway on fake models with SIP and Twilio on; writes ``ready.json`` once up."""
    import uvicorn

    from gateway.app import create_app
    from media_bridge.clients import BridgeClients
    from tests.fakes import FAST_CALL, FakeAsrClient, FakeLlmClient, FakeTtsClient, FakeVadClient
    from tests.platform_helpers import isolate
    from voiceai.config import Settings, load_settings
    from voiceai.supervisor import free_port

    rtp_base = 30000 + 2 * secrets.randbelow(10000)
    tree = {**FAST_CALL, "call.greeting": False, "auth.rate_limit.enabled": False,
            "channels.webrtc.host_addresses": ["127.0.0.1"], "channels.twilio.auth_token": TWILIO_AUTH_TOKEN,
            "channels.sip.port": 0, "channels.sip.bind": "127.0.0.1", "channels.sip.jitter_ms": sip_jitter_ms,
            "channels.sip.rtp_port_min": rtp_base, "channels.sip.rtp_port_max": rtp_base + 400}
    settings = isolate(load_settings(profile="cpu", env={}, overrides=tree), folder / "platform")

    async def fake_clients(_: Settings) -> BridgeClients:
        return BridgeClients(vad=FakeVadClient(), asr=FakeAsrClient(), llm=FakeLlmClient(), tts=FakeTtsClient(),
                             fallback_tts=FakeTtsClient(freq_hz=660.0, voice="espeak:fake"))

    app = create_app(settings, clients_factory=fake_clients, kb_factory=None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws="websockets-sansio"))

    async def run() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn offers only a flag
            await asyncio.sleep(0.05)
        if server.started:
            ready = {"url": f"http://127.0.0.1:{port}", "sip_port": app.state.sip.port}
            (folder / "ready.tmp").write_text(json.dumps(ready))
            (folder / "ready.tmp").rename(folder / "ready.json")
        await serving

    asyncio.run(run())


class GatewayProcess:
    """``serve`` in a child process (its own CPU, like a real gateway), stopped by its process group."""

    def __init__(self, folder: Path, sip_jitter_ms: int) -> None:
        self.folder = folder
        self.sip_jitter_ms = sip_jitter_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.sip_port = 0

    @property
    def log_path(self) -> Path:
        return self.folder / "gateway.log"

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - started once, returns at once
                [sys.executable, "-m", "benchmarks.bench_transports", "--serve", str(self.folder),
                 "--sip-jitter-ms", str(self.sip_jitter_ms)],
                stdout=log, stderr=subprocess.STDOUT, cwd=report.ROOT, start_new_session=True)
        ready = self.folder / "ready.json"
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start:\n" + self.log_tail())
            await asyncio.sleep(0.1)
        info = json.loads(ready.read_text())
        self.url, self.sip_port = info["url"], info["sip_port"]

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- one call ----------------------------------------------------------------------------------------------


class Pacer:
    """Sends one 20 ms frame per 20 ms of wall time; after a stall it carries on from now (no burst)."""

    def __init__(self, client: CallerClient) -> None:
        self.client = client
        self.next_at = time.monotonic()

    async def send(self, pcm16: bytes) -> None:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.1:
            self.next_at = time.monotonic()
        self.next_at += FRAME_S
        await self.client.send(pcm16)


def tone_frames(rate_hz: int, ms: int, freq_hz: float = CALLER_HZ, amplitude: float = 0.3) -> list[bytes]:
    """``ms`` of a continuous sine as 20 ms PCM16 frames."""
    n = rate_hz * ms // 1000
    samples = (np.sin(2 * np.pi * freq_hz * np.arange(n) / rate_hz) * amplitude * 32767).astype("<i2")
    step = int(rate_hz * FRAME_S)
    return [samples[i:i + step].tobytes() for i in range(0, n, step)]


async def one_call(client: CallerClient, extra_lead_frames: int) -> dict[str, Any]:
    """Dials, waits for a quiet line, sends the burst, waits for the bot's first audio; hangs up."""
    result: dict[str, Any] = {"response_ms": None, "greeting_heard": False, "error": ""}
    try:
        await asyncio.wait_for(client.open(), 30)
        silence = bytes(int(client.rate_hz * FRAME_S) * 2)
        pacer = Pacer(client)
        started = time.monotonic()
        # The bot greets on some transports whatever call.greeting says: let it finish first.
        while time.monotonic() - started < LEAD_S or not client.quiet_for(QUIET_S):
            if time.monotonic() - started > LEAD_MAX_S:
                raise TimeoutError("the bot never went quiet before the burst")
            await pacer.send(silence)
        for _ in range(extra_lead_frames):
            await pacer.send(silence)
        result["greeting_heard"] = bool(client.loud_at)
        for frame in tone_frames(client.rate_hz, BURST_MS):
            await pacer.send(frame)
        burst_end = time.monotonic()
        while (first := client.first_loud_after(burst_end)) is None:
            if time.monotonic() - burst_end > REPLY_TIMEOUT_S:
                break
            await pacer.send(silence)
        if first is not None:
            result["response_ms"] = round((first - burst_end) * 1000, 1)
            if isinstance(client, WebRtcCaller):
                played = next((t for t in client.played_at if t > burst_end), None)
                result["played_ms"] = round((played - burst_end) * 1000, 1) if played is not None else None
                result["unmapped_frames"] = client.unmapped_frames
    except Exception as err:  # one broken call is reported, the run goes on
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        try:
            await asyncio.wait_for(client.close(), 10)
        except Exception as err:
            result["error"] = result["error"] or f"hang-up failed: {type(err).__name__}: {err}"
    return result


def make_client(transport: str, gateway: GatewayProcess) -> CallerClient:
    if transport == "websocket":
        return WebSocketCaller(gateway.url)
    if transport == "webrtc":
        return WebRtcCaller(gateway.url)
    if transport == "sip":
        return SipCaller(gateway.sip_port)
    if transport == "twilio":
        return TwilioCaller(gateway.url, TWILIO_AUTH_TOKEN)
    raise ValueError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")


# ---- the run ------------------------------------------------------------------------------------------------


async def measure(gateway: GatewayProcess, transports: list[str], calls: int) -> dict[str, list[dict[str, Any]]]:
    """``calls`` counted calls per transport (after the warm-up), the transports taking turns so that a
    noisy minute on the machine falls on all of them."""
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    spread = random.Random(1)
    for n in range(WARMUP_CALLS + calls):
        extra_lead_frames = spread.randrange(LEAD_SPREAD_FRAMES)  # the same for every transport in a round
        for transport in transports:
            result = await one_call(make_client(transport, gateway), extra_lead_frames)
            label = "warm-up" if n < WARMUP_CALLS else f"call {n - WARMUP_CALLS + 1}/{calls}"
            shown = result["error"] or (f"{result['response_ms']} ms" if result["response_ms"] is not None
                                        else "no reply")
            print(f"  {transport:9s} {label}: {shown}", flush=True)
            if n >= WARMUP_CALLS:
                out[transport].append(result)
    return out


def summarize(raw: dict[str, list[dict[str, Any]]], sip_jitter_ms: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for transport, results in raw.items():
        times = [r["response_ms"] for r in results if r["response_ms"] is not None]
        summary[transport] = {
            "audio_path": audio_path(transport, sip_jitter_ms), "calls": len(results), "answered": len(times),
            "unanswered": sum(1 for r in results if r["response_ms"] is None and not r["error"]),
            "failed": sum(1 for r in results if r["error"]), "errors": sorted({r["error"] for r in results
                                                                                if r["error"]}),
            "greeting_heard": sum(1 for r in results if r["greeting_heard"]),
            "response_p50_ms": report.median(times), "response_p95_ms": report.p95(times), "response_ms": times}
        played = [r["played_ms"] for r in results if r.get("played_ms") is not None]
        if played:
            summary[transport]["played_p50_ms"] = report.median(played)
    base = summary.get("websocket", {}).get("response_p50_ms", float("nan"))
    for s in summary.values():
        s["added_p50_ms"] = s["response_p50_ms"] - base
    return summary


def markdown(summary: dict[str, Any], calls: int, sip_jitter_ms: int) -> str:
    parts = [
        "## Caller transports (`benchmarks/bench_transports.py`)\n",
        "What each way of calling adds to the bot's response time, compared with the call WebSocket. One gateway "
        "runs the real call loop on fake models with fixed delays (energy VAD and ASR, 400 ms endpoint silence, "
        "LLM first token 40 ms, TTS first audio 20 ms, the bot's voice a 440 Hz tone), so everything but the "
        "transport is the same. A Python caller per transport streams silence, a 1 s tone burst, then silence, "
        "in real time; **response** runs from the moment the burst's last 20 ms frame was sent to the arrival at "
        "the caller's socket of the first bot frame with energy in it. The caller adds no buffer of its own, so "
        "**added** (the difference of the medians to the WebSocket's) is the bridge-side cost of the transport: "
        "codec, resampling, jitter buffer, and the transport's own 20 ms clocks meeting the call's. "
        f"{calls} calls per transport, one at a time, the transports taking turns, after one warm-up call each.\n",
        f"The SIP jitter buffer's depth is configuration (`channels.sip.jitter_ms`, {sip_jitter_ms} ms here): "
        "deeper rides out more network jitter and adds its depth to every response; rerun with "
        "`--sip-jitter-ms N` to see it move. WebRTC's receive buffer is aiortc's (4 packets), not configurable.\n",
    ]
    rows = []
    for transport, s in summary.items():
        broken = f"{s['unanswered']} / {s['failed']}"
        rows.append([transport, s["audio_path"], s["answered"], s["response_p50_ms"], s["response_p95_ms"],
                     "-" if transport == "websocket" else f"{s['added_p50_ms']:+.0f}", broken])
    for transport, reason in SKIPPED.items():
        rows.append([transport, f"skipped: {reason}", 0, "-", "-", "-", "-"])
    parts.append(report.table(["transport", "audio path", "answered calls", "response p50 ms", "response p95 ms",
                               "added vs WebSocket, p50 ms", "unanswered / failed"], rows))
    notes = []
    if "webrtc" in summary and "played_p50_ms" in summary["webrtc"]:
        extra = summary["webrtc"]["played_p50_ms"] - summary["webrtc"]["response_p50_ms"]
        notes.append(f"The WebRTC caller (aiortc) holds received audio in its own 4-packet jitter buffer: its decoder "
                     f"gets the first bot frame {extra:.0f} ms (p50) after the packet arrived. That is the caller's "
                     "side and not counted above; a browser's adaptive buffer takes its place.")
    held = {rate: resampler_holdback_ms(rate) for rate in (8000, 48000)}
    notes.append("Resampling the caller's audio to 16 kHz (`voiceai.audio.StreamResampler`) holds back "
                 f"{held[8000]['mean']:.0f} ms on average (up to {held[8000]['max']:.0f}) at 8 kHz (SIP, Twilio) and "
                 f"{held[48000]['mean']:.0f} ms (up to {held[48000]['max']:.0f}) at 48 kHz (WebRTC) before the "
                 "endpointer hears it (soxr's stream mode held back 64 ms on average at 8 kHz, which is why the "
                 "bridge now uses its own causal FIR for these rates; the filter's ~3 ms group delay is not counted "
                 "here).")
    greeted = [t for t, s in summary.items() if s["greeting_heard"]]
    if greeted:
        notes.append(f"{', '.join(greeted)}: the bot greeted although `call.greeting` is false (those transports "
                     "always ask for a greeting); the caller waits until it has finished before the burst.")
    if notes:
        parts.append("\n" + " ".join(notes) + "\n")
    return "\n".join(parts)


async def main_async(calls: int, transports: list[str], sip_jitter_ms: int, write: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="voiceai-bench-transports-") as tmp:
        gateway = GatewayProcess(Path(tmp), sip_jitter_ms)
        try:
            await gateway.start()
            print(f"gateway at {gateway.url}, SIP on udp/{gateway.sip_port}", flush=True)
            raw = await measure(gateway, transports, calls)
        except BaseException:
            print(gateway.log_tail(), file=sys.stderr)
            raise
        finally:
            gateway.stop()
    summary = summarize(raw, sip_jitter_ms)
    data = {"calls_per_transport": calls, "warmup_calls": WARMUP_CALLS, "burst_ms": BURST_MS,
            "resampler_holdback_ms": {str(rate): resampler_holdback_ms(rate) for rate in (8000, 48000)},
            "sip_jitter_ms": sip_jitter_ms, "fake_timings": FAKE_TIMINGS, "transports": summary,
            "skipped": SKIPPED, "calls": raw}
    text = markdown(summary, calls, sip_jitter_ms)
    if write:
        report.write("transports", data, text)
    print(text if write else text + "\n(--quick: a smoke run; benchmarks/results/ and docs/ left as they were)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10, help="counted calls per transport (default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="2 calls per transport: a smoke run; writes no results")
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        help=f"comma-separated, from {', '.join(TRANSPORTS)} (websocket is the baseline)")
    parser.add_argument("--sip-jitter-ms", type=int, default=60, help="channels.sip.jitter_ms (default 60)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the gateway child process
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.sip_jitter_ms)
        return
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown:
        parser.error(f"unknown transport(s) {', '.join(unknown)}; known: {', '.join(TRANSPORTS)}")
    asyncio.run(main_async(2 if args.quick else args.calls, transports, args.sip_jitter_ms, write=not args.quick))


if __name__ == "__main__":
    main()
