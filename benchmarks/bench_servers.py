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
from voiceai.supervisor import ServerProcess, peak_rss_bytes, spawn_server, wait_ready

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


# ---- LLM --------------------------------------------------------------------------------------

_PASSAGE = ("Customers can check their account balance in the mobile app under Accounts, by calling the "
            "automated line and pressing one, or at any branch with their Emirates ID. Balances update "
            "within five minutes of a card payment and by the next working day for cheques. Savings "
            "accounts pay monthly interest, credited on the last working day of the month. A customer "
            "who sees a transaction they do not recognise should block the card in the app and call the "
            "fraud line, which is open all day, every day. Replacement cards arrive within five working "
            "days in the UAE; an express card can be collected from a branch the next day for a fee. ")


async def _prompt_tokens(base_url: str, text: str) -> int:
    import httpx

    async with httpx.AsyncClient() as http:
        r = await http.post(base_url.removesuffix("/v1") + "/extras/tokenize/count", json={"input": text})
        return int(r.json().get("count", 0)) if r.status_code == 200 else 0


def _llm_params(i: int, question_id: int):
    from nlu.api import ChatMessage, GenerateParams, Passage

    # A unique first line defeats llama.cpp's prefix reuse: every request processes its whole prompt.
    system = f"Request {question_id}-{i}. You are a concise customer-care assistant for a UAE bank."
    return GenerateParams(
        messages=(ChatMessage("system", system), ChatMessage("user", "How do I check my balance, and how fast "
                                                                     "does it update after a card payment?")),
        context=(Passage(_PASSAGE, "balances.md"), Passage(_PASSAGE.replace("Customers", "Clients"), "cards.md")),
        max_tokens=48, greedy=True, language="en")


async def llm_one(client, params) -> dict[str, float]:
    from nlu.api import GenerationFinal, TextDelta

    started = time.perf_counter()
    first = None
    tokens = 0
    async for event in client.generate(params):
        if isinstance(event, TextDelta) and event.text:
            first = first or time.perf_counter()
            tokens += 1
        elif isinstance(event, GenerationFinal):
            tokens = event.usage.completion_tokens or tokens
    end = time.perf_counter()
    assert first is not None, "no tokens"
    return {"ttft_ms": (first - started) * 1000, "total_ms": (end - started) * 1000,
            "tokens_per_s": (tokens - 1) / max(1e-6, end - first)}


async def bench_nlu(settings: Settings, log_dir: Path, rounds: int) -> dict[str, Any]:
    from nlu.client import GrpcLlmClient, InProcessLlmClient
    from nlu.engine_launcher import LlamaCppEngine
    from nlu.generator import Generator
    from nlu.prompting import build_messages

    launch = settings.nlu.engine.launch.model_copy(update={"port": 0})
    engine = LlamaCppEngine(launch, settings.models_dir, settings.nlu.engine.model)
    base_url = await engine.start()
    out: dict[str, Any] = {"model": launch.model}
    try:
        # One engine behind both paths, so the comparison prices the gRPC hop alone.
        env = {"VOICEAI_LLM_BASE_URL": base_url}
        server = await start("nlu", log_dir, env=env)
        local_settings = settings.model_copy(deep=True)
        local_settings.nlu.engine.base_url = base_url
        local = InProcessLlmClient(Generator(local_settings))
        remote = GrpcLlmClient(server.address)
        try:
            probe = _llm_params(0, 0)
            prompt = "\n".join(str(m["content"]) for m in build_messages(probe, local_settings.nlu, "hermes"))
            out["prompt_tokens"] = await _prompt_tokens(base_url, prompt)
            await llm_one(remote, _llm_params(0, 1))  # warm-up
            qid = 2
            for n in CONCURRENCY:
                runs = []
                for _ in range(rounds):
                    runs += await asyncio.gather(*(llm_one(remote, _llm_params(i, qid)) for i in range(n)))
                    qid += 1
                out[str(n)] = {"ttft_ms": report.median([r["ttft_ms"] for r in runs]),
                               "ttft_p95_ms": report.p95([r["ttft_ms"] for r in runs]),
                               "tokens_per_s": report.median([r["tokens_per_s"] for r in runs])}
            in_proc, grpc_path = [], []
            for _ in range(max(4, 2 * rounds)):
                in_proc.append((await llm_one(local, _llm_params(9, qid)))["total_ms"])
                grpc_path.append((await llm_one(remote, _llm_params(9, qid + 1)))["total_ms"])
                qid += 2
            out["in_process_total_ms"] = report.median(in_proc)
            out["grpc_total_ms"] = report.median(grpc_path)
            out["grpc_overhead_ratio"] = report.median(grpc_path) / report.median(in_proc) - 1
            out["peak_rss_mb"] = server.peak_rss_bytes() / 2**20
            out["engine_peak_rss_mb"] = peak_rss_bytes(engine._proc.pid) / 2**20 if engine._proc else 0.0
        finally:
            await remote.aclose()
            await local.aclose()
            server.stop()
    finally:
        await engine.stop()
    return out


# ---- TTS --------------------------------------------------------------------------------------

_TTS_TEXT = {"en": "Your balance is four thousand two hundred dirhams. Is there anything else I can help with?",
             "ar": "رصيدك أربعة آلاف ومئتا درهم. هل هناك شيء آخر يمكنني مساعدتك فيه؟"}


async def tts_one(client, language: str) -> dict[str, float]:
    from tts.api import SynthesisRequest

    started = time.perf_counter()
    first = None
    samples = 0
    rate = 16000
    async for chunk in client.synthesize(SynthesisRequest(text=_TTS_TEXT[language], language=language,
                                                          sample_rate_hz=16000)):
        first = first or time.perf_counter()
        samples += len(chunk.pcm16) // 2
        rate = chunk.sample_rate_hz
    total = time.perf_counter() - started
    assert first is not None
    return {"first_chunk_ms": (first - started) * 1000, "rtf": total / (samples / rate)}


async def bench_tts(settings: Settings, log_dir: Path, rounds: int) -> dict[str, Any]:
    from tts.client import GrpcTtsClient, InProcessTtsClient
    from tts.engine import TtsEngine

    server = await start("tts", log_dir)
    out: dict[str, Any] = {}
    engine = TtsEngine(settings)
    await asyncio.to_thread(engine.load)
    local = InProcessTtsClient(engine)
    remote = GrpcTtsClient(server.address)
    try:
        for language in ("en", "ar"):
            await tts_one(remote, language)
            for n in CONCURRENCY:
                runs = await gather_rounds(n, rounds, lambda _i, lang=language: tts_one(remote, lang))
                out[f"{language}_{n}"] = {"first_chunk_ms": report.median([r["first_chunk_ms"] for r in runs]),
                                          "rtf": report.median([r["rtf"] for r in runs])}
        in_proc, grpc_path = [], []
        for _ in range(max(5, 2 * rounds)):
            in_proc.append((await tts_one(local, "en"))["first_chunk_ms"])
            grpc_path.append((await tts_one(remote, "en"))["first_chunk_ms"])
        out["in_process_first_chunk_ms"] = report.median(in_proc)
        out["grpc_first_chunk_ms"] = report.median(grpc_path)
        out["grpc_overhead_ratio"] = report.median(grpc_path) / report.median(in_proc) - 1
        out["peak_rss_mb"] = server.peak_rss_bytes() / 2**20
    finally:
        await remote.aclose()
        await local.aclose()
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
    if "nlu" in results:
        n = results["nlu"]
        parts.append(f"### LLM ({n['model']} on llama.cpp, 2 threads): a {n['prompt_tokens']}-token prompt, "
                     "48 tokens out, no prefix reuse\n")
        parts.append(report.table(["streams", "time to first token ms (p50)", "p95", "tokens/s per stream"],
                                  [[c, n[str(c)]["ttft_ms"], n[str(c)]["ttft_p95_ms"], n[str(c)]["tokens_per_s"]]
                                   for c in CONCURRENCY]))
        parts.append(f"\nThe llama.cpp server runs one generation at a time, so concurrent streams queue. Same "
                     f"request through the same engine: in-process {n['in_process_total_ms']:.0f} ms, gRPC "
                     f"{n['grpc_total_ms']:.0f} ms ({n['grpc_overhead_ratio']:+.1%}). NLU server peak RSS "
                     f"{n['peak_rss_mb']:.0f} MB, its llama.cpp engine {n['engine_peak_rss_mb']:.0f} MB.\n")
    if "tts" in results:
        t = results["tts"]
        rows = [[lang, c, t[f"{lang}_{c}"]["first_chunk_ms"], t[f"{lang}_{c}"]["rtf"]]
                for lang in ("en", "ar") for c in CONCURRENCY]
        parts.append("### TTS (Piper joe for English, espeak-ng for Arabic), two sentences, 16 kHz out\n")
        parts.append(report.table(["language", "streams", "first chunk ms (p50)", "real-time factor"], rows))
        parts.append(f"\nFirst chunk in-process {t['in_process_first_chunk_ms']:.0f} ms vs gRPC "
                     f"{t['grpc_first_chunk_ms']:.0f} ms ({t['grpc_overhead_ratio']:+.1%}). TTS server peak RSS "
                     f"{t['peak_rss_mb']:.0f} MB.\n")
    return "\n".join(parts)


SECTIONS = {"vad": bench_vad, "asr": bench_asr, "nlu": bench_nlu, "tts": bench_tts}


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
