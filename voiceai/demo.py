"""`voiceai demo`: the four model servers on loopback, and speech through them in both languages."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from voiceai.config import Settings
from voiceai.supervisor import ServerProcess, spawn_server, wait_ready

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "audio"


def _say(line: str) -> None:
    print(line, flush=True)


async def _speak(settings: Settings, address: str, text: str, language: str, out: Path) -> tuple[float, float]:
    from tts.api import SynthesisRequest
    from tts.client import GrpcTtsClient
    from voiceai.audio import write_wav

    client = GrpcTtsClient(address)
    pcm, rate, first_ms = bytearray(), 16000, 0.0
    started = time.perf_counter()
    try:
        async for chunk in client.synthesize(SynthesisRequest(text=text, language=language, sample_rate_hz=16000)):
            if not pcm:
                first_ms = (time.perf_counter() - started) * 1000
            pcm += chunk.pcm16
            rate = chunk.sample_rate_hz
    finally:
        await client.aclose()
    write_wav(out, bytes(pcm), rate)
    return first_ms, len(pcm) / 2 / rate


async def _chat(address: str, text: str) -> tuple[str, int]:
    from nlu.api import ChatMessage, GenerateParams, GenerationFinal
    from nlu.client import GrpcLlmClient

    client = GrpcLlmClient(address)
    try:
        async for event in client.generate(GenerateParams(messages=(ChatMessage("user", text),), max_tokens=60)):
            if isinstance(event, GenerationFinal):
                return event.message.content, event.timings.time_to_first_token_ms
    finally:
        await client.aclose()
    return "", 0


async def run_demo(settings: Settings, out_dir: Path) -> None:
    from asr.transcribe import transcribe_file

    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory() as logs:
        try:
            _say("Starting the model servers (VAD, ASR, NLU with a llama.cpp engine, TTS)...")
            for name in ("vad", "asr", "nlu", "tts"):
                servers[name] = spawn_server(name, Path(logs))
            await asyncio.gather(*(wait_ready(s) for s in servers.values()))
            for name, s in servers.items():
                _say(f"  {name:<4} gRPC {s.address}   metrics http://{s.host}:{s.metrics_port}/metrics")
            asr_settings = settings.model_copy(deep=True)
            asr_settings.servers.asr.address = servers["asr"].address

            greeting = "Hello, thank you for calling customer care. How can I help you today?"
            first_ms, seconds = await _speak(settings, servers["tts"].address, greeting, "en", out_dir / "bot_en.wav")
            _say(f"\nTTS (Piper, en): {seconds:.1f} s of audio, first chunk after {first_ms:.0f} ms "
                 f"-> {out_dir / 'bot_en.wav'}")
            heard = await transcribe_file(asr_settings, out_dir / "bot_en.wav", "auto")
            _say(f"ASR of that audio ({heard['language']}): {heard['text']}")
            arabic = await transcribe_file(asr_settings, FIXTURES / "ar_agent.wav", "auto")
            _say(f"ASR of an Arabic caller clip ({arabic['language']}): {arabic['text']}")

            for question in ("How can I check my account balance?", "مرحبا، كيف أستطيع معرفة رصيد حسابي؟"):
                reply, ttft = await _chat(servers["nlu"].address, question)
                _say(f"\nCaller: {question}\nBot ({ttft} ms to first token): {reply}")
            first_ms, seconds = await _speak(settings, servers["tts"].address, "شكرا لاتصالك. كيف يمكنني مساعدتك؟",
                                             "ar", out_dir / "bot_ar.wav")
            _say(f"\nTTS (espeak-ng, ar): {seconds:.1f} s of audio, first chunk after {first_ms:.0f} ms "
                 f"-> {out_dir / 'bot_ar.wav'}")
        finally:
            for s in servers.values():
                with contextlib.suppress(Exception):
                    s.stop()
    _say("\nDone: servers stopped.")
