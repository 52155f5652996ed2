"""Model-server benchmarks: VAD, ASR, LLM and TTS at 1, 2 and 4 concurrent streams.

Each server runs as its own process (``voiceai serve``) on loopback, exactly as deployed; the same
backend is also called in-process to price the gRPC hop. Results go to benchmarks/results/servers.json
and the markdown table into docs/BENCHMARKS.md.

    .venv/bin/python -m benchmarks.bench_servers            # everything (~6 min on 2 cores)
    .venv/bin/python -m benchmarks.bench_servers --only asr,tts --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from voiceai.audio import float_to_pcm16, read_wav
from voiceai.config import Settings, load_settings
from voiceai.supervisor import ServerProcess, spawn_server, wait_ready

FIXTURES = report.ROOT / "tests" / "fixtures" / "audio"
CONCURRENCY = (1, 2, 4)


def fixture(name: str) -> tuple[bytes, float]:
    samples, _ = read_wav(FIXTURES / name, 16000)
    return float_to_pcm16(samples), len(samples) / 16000


async def start(service: str, log_dir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    server = spawn_server(service, log_dir, env=env)
    await wait_ready(server)
    return server


async def gather_rounds(concurrency: int, rounds: int, make_one) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for _ in range(rounds):
        out += await asyncio.gather(*(make_one(i) for i in range(concurrency)))
    return out


# ---- VAD --------------------------------------------------------------------------------------


async def bench_vad(settings: Settings, log_dir: Path, rounds: int) -> dict[str, Any]:
    from asr.api import VadOptions
    from asr.client import GrpcVadClient, InProcessVadClient
    from asr.vad_service import VadEngine

    pcm, _ = fixture("en_order.wav")
    chunk = 1024  # 32 ms at 16 kHz, PCM16

    async def run(client, n: int) -> list[dict[str, float]]:
        async def one(_i: int) -> dict[str, float]:
            session = client.open(VadOptions())
            events = session.events()
            consumer = asyncio.create_task(_drain(events))
            started = time.perf_counter()
            for i in range(0, len(pcm) - chunk + 1, chunk):
                await session.send(pcm[i:i + chunk])
            await session.close()
            await consumer
            chunks = len(pcm) // chunk
            return {"ms_per_chunk": (time.perf_counter() - started) * 1000 / chunks}

        return await gather_rounds(n, rounds, one)

    engine = VadEngine(settings)
    engine.load()
    server = await start("vad", log_dir)
    rows = {}
    try:
        grpc_client = GrpcVadClient(server.address)
        for n in CONCURRENCY:
            local = await run(InProcessVadClient(engine), n)
            remote = await run(grpc_client, n)
            rows[str(n)] = {"in_process_ms_per_chunk": report.median([r["ms_per_chunk"] for r in local]),
                       "grpc_ms_per_chunk": report.median([r["ms_per_chunk"] for r in remote])}
        await grpc_client.aclose()
        rows["peak_rss_mb"] = server.peak_rss_bytes() / 2**20
    finally:
        server.stop()
    return rows


async def _drain(iterator) -> list:
    return [x async for x in iterator]


# ---- ASR --------------------------------------------------------------------------------------


def speech_end_ms(pcm: bytes, settings: Settings) -> int:
    """Where the speech of a clip ends, found offline with the same VAD."""
    from asr.vad import SegmenterOptions, SileroVadModel, SpeechSegmenter
    from voiceai import models
    from voiceai.audio import pcm16_to_float

    model = SileroVadModel(models.require(settings.vad.model, settings.models_dir) / "silero_vad.onnx")
    seg = SpeechSegmenter(model, SegmenterOptions())
    events = seg.process(pcm16_to_float(pcm))
    return max(e.timestamp_ms for e in events if e.kind == "speech_end")


async def asr_stream(client, pcm: bytes, end_ms: int, mode: str) -> dict[str, float]:
    """Streams a clip in real time (20 ms frames) and times the final transcript.

    mode "finalize": the client ends the utterance right at the end of speech (the media bridge's
    path once its endpointer fires), so the time is pure decode + transport.
    mode "endpoint": the server's own VAD ends the utterance after its endpoint silence.
    """
    from asr.api import AsrOptions, SpeechBoundary, Transcript

    session = client.open(AsrOptions(language="en", interim_results=True))
    frame = 640
    end_byte = end_ms * 32
    marks: dict[str, float] = {}

    async def feed() -> None:
        started = time.perf_counter()
        limit = end_byte if mode == "finalize" else len(pcm)
        for k, i in enumerate(range(0, limit, frame)):
            await session.send_audio(pcm[i:min(i + frame, limit)])
            if i + frame >= end_byte and "speech_end" not in marks:
                marks["speech_end"] = time.perf_counter()
            await asyncio.sleep(max(0.0, started + (k + 1) * 0.02 - time.perf_counter()))
        if mode == "finalize":
            await session.finalize()
            marks["finalize"] = time.perf_counter()
        await session.close()

    feeder = asyncio.create_task(feed())
    result: dict[str, float] = {}
    async for r in session.results():
        now = time.perf_counter()
        if isinstance(r, SpeechBoundary) and r.kind == "speech_end":
            marks.setdefault("endpoint", now)
        elif isinstance(r, Transcript) and r.is_final and "final" not in marks:
            marks["final"] = now
            result["decode_ms"] = r.decode_ms
            result["rtf"] = r.decode_ms / 1000 / max(0.001, (r.end_ms - r.start_ms) / 1000)
            result["text_ok"] = float("status of my order" in r.text.lower())
    await feeder
    result["final_after_speech_end_ms"] = (marks["final"] - marks["speech_end"]) * 1000
    if mode == "finalize":
        result["final_after_finalize_ms"] = (marks["final"] - marks["finalize"]) * 1000
    else:
        result["final_after_endpoint_ms"] = (marks["final"] - marks.get("endpoint", marks["final"])) * 1000
    return result


async def bench_asr(settings: Settings, log_dir: Path, rounds: int) -> dict[str, Any]:
    from asr.client import GrpcAsrClient, InProcessAsrClient
    from asr.recognizer import AsrEngine

    pcm, _duration = fixture("en_order.wav")
    end_ms = speech_end_ms(pcm, settings)
    out: dict[str, Any] = {"clip": "en_order.wav", "speech_s": round(end_ms / 1000 - 0.6, 2),
                           "endpoint_silence_ms": settings.asr.endpoint_silence_ms}
    server = await start("asr", log_dir)
    try:
        client = GrpcAsrClient(server.address)
        await asr_stream(client, pcm, end_ms, "finalize")  # warm-up
        for n in CONCURRENCY:
            fin = await gather_rounds(n, rounds, lambda _i: asr_stream(client, pcm, end_ms, "finalize"))
            ept = await gather_rounds(n, rounds, lambda _i: asr_stream(client, pcm, end_ms, "endpoint"))
            out[str(n)] = {
                "final_after_finalize_ms": report.median([r["final_after_finalize_ms"] for r in fin]),
                "final_after_finalize_p95_ms": report.p95([r["final_after_finalize_ms"] for r in fin]),
                "final_after_endpoint_ms": report.median([r["final_after_endpoint_ms"] for r in ept]),
                "final_after_speech_end_ms": report.median([r["final_after_speech_end_ms"] for r in ept]),
                "rtf": report.median([r["rtf"] for r in fin]),
                "correct": sum(r["text_ok"] for r in fin + ept) / len(fin + ept),
            }
        # The price of the gRPC hop: the same stream through the same backend code, in-process
        # and over gRPC, interleaved so that machine noise hits both alike.
        engine = AsrEngine(settings)
        engine.load()
        local = InProcessAsrClient(engine)
        await asr_stream(local, pcm, end_ms, "finalize")
        in_proc, remote = [], []
        for _ in range(max(5, 2 * rounds)):
            in_proc.append((await asr_stream(local, pcm, end_ms, "finalize"))["final_after_finalize_ms"])
            remote.append((await asr_stream(client, pcm, end_ms, "finalize"))["final_after_finalize_ms"])
        await local.aclose()
        await client.aclose()
        out["in_process_final_after_finalize_ms"] = report.median(in_proc)
        out["grpc_final_after_finalize_ms"] = report.median(remote)
        out["grpc_overhead_ratio"] = report.median(remote) / report.median(in_proc) - 1
        out["peak_rss_mb"] = server.peak_rss_bytes() / 2**20
    finally:
        server.stop()
    return out


# ---- report -----------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    parts = ["## Model servers (`benchmarks/bench_servers.py`)\n"]
    if "vad" in results:
        v = results["vad"]
        parts.append("### VAD (Silero, ONNX Runtime): time per 32 ms chunk\n")
        parts.append(report.table(
            ["streams", "in-process ms/chunk", "gRPC ms/chunk (round trip per chunk)"],
            [[n, v[str(n)]["in_process_ms_per_chunk"], v[str(n)]["grpc_ms_per_chunk"]] for n in CONCURRENCY]))
        parts.append(f"\nVAD server peak RSS: {v['peak_rss_mb']:.0f} MB. Target < 1 ms per chunk in-process.\n")
    if "asr" in results:
        a = results["asr"]
        parts.append(f"### ASR (Whisper base int8, fitted encoder window): {a['clip']}, "
                     f"{a['speech_s']} s of speech, streamed in real time\n")
        parts.append(report.table(
            ["streams", "final after finalize ms (p50)", "p95", "final after endpoint event ms",
             "final after speech end ms (incl. endpoint silence)", "RTF", "correct"],
            [[n, a[str(n)]["final_after_finalize_ms"], a[str(n)]["final_after_finalize_p95_ms"],
              a[str(n)]["final_after_endpoint_ms"], a[str(n)]["final_after_speech_end_ms"], a[str(n)]["rtf"],
              a[str(n)]["correct"]] for n in CONCURRENCY]))
        parts.append(f"\nSame stream, interleaved: in-process {a['in_process_final_after_finalize_ms']:.0f} ms, "
                     f"gRPC {a['grpc_final_after_finalize_ms']:.0f} ms: the gRPC path adds "
                     f"{a['grpc_overhead_ratio']:+.1%}. ASR server peak RSS: {a['peak_rss_mb']:.0f} MB. "
                     f"Endpoint silence {a['endpoint_silence_ms']} ms; the early decode starts at the first "
                     "silent window. Target: final within 300 ms of the end of speech (finalize column).\n")
    for extra in ("nlu", "tts"):
        if extra in results and "markdown" in results[extra]:
            parts.append(results[extra].pop("markdown"))
    return "\n".join(parts)


SECTIONS = {"vad": bench_vad, "asr": bench_asr}


async def main_async(only: list[str], rounds: int) -> dict[str, Any]:
    settings = load_settings(profile="cpu", env={})
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            print(f"== {name}", flush=True)
            results[name] = await SECTIONS[name](settings, Path(tmp), rounds)
            print({k: v for k, v in results[name].items() if k != "markdown"}, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency level")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    results = asyncio.run(main_async(only, args.rounds))
    with contextlib.suppress(Exception):
        previous = report.json.loads((report.RESULTS / "servers.json").read_text())
        for key in SECTIONS:
            if key not in results and key in previous:
                results[key] = previous[key]
    report.write("servers", {k: v for k, v in results.items()}, markdown(results))


if __name__ == "__main__":
    main()
