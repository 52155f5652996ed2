"""Speech out, speech in: what the TTS says, the ASR hears (real Piper, real Whisper)."""

from __future__ import annotations

import asyncio

import pytest

from asr.api import AsrOptions, Transcript
from asr.client import InProcessAsrClient
from asr.metrics import word_errors, words
from asr.recognizer import AsrEngine
from tts.api import SynthesisRequest
from tts.client import InProcessTtsClient
from tts.engine import TtsEngine

from .asr_helpers import recognize

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("text", [
    "Thank you for calling. Your card has been blocked and a new one will arrive in five days.",
    "Please hold while I transfer you to an agent.",
])
async def test_tts_output_is_transcribed_back(settings, text):
    tts_engine = TtsEngine(settings)
    await asyncio.to_thread(tts_engine.load)
    asr_engine = AsrEngine(settings)
    await asyncio.to_thread(asr_engine.load)
    tts, asr = InProcessTtsClient(tts_engine), InProcessAsrClient(asr_engine)
    try:
        pcm = bytearray(b"\0" * 16000)  # 0.5 s of lead silence
        async for chunk in tts.synthesize(SynthesisRequest(text=text, language="en", sample_rate_hz=16000)):
            pcm += chunk.pcm16
        pcm += b"\0" * 32000
        results = await recognize(asr, bytes(pcm), AsrOptions(language="auto", interim_results=False))
    finally:
        await asr.aclose()
        await tts.aclose()
    finals = [r for r in results if isinstance(r, Transcript) and r.is_final]
    heard = " ".join(f.text for f in finals)
    # Piper samples its prosody noise afresh each time, and Whisper base now and then fuses two words
    # ("hold while I" -> "hold wildlife", two word errors): a word error rate up to ~20% passes, a
    # garbled voice (most words wrong) fails.
    said = words(text)
    errors = word_errors(words(heard), said)
    assert errors <= max(2, len(said) // 5), (errors, [(f.utterance_index, f.start_ms, f.end_ms, f.text)
                                                        for f in finals])
    assert {f.language for f in finals} == {"en"}
