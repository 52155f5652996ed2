"""`voiceai asr FILE`: a file streamed through the same recogniser a call uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

from asr.api import AsrOptions, Transcript
from asr.client import make_asr_client
from voiceai.audio import float_to_pcm16, read_wav
from voiceai.config import Settings

_CHUNK_MS = 100


async def transcribe_file(settings: Settings, path: Path, language: str = "auto") -> dict[str, Any]:
    """Transcribes a sound file; returns text, language and the utterances with word timings."""
    if not await asyncio.to_thread(path.is_file):
        raise FileNotFoundError(f"{path}: no such file")
    samples, rate = await asyncio.to_thread(read_wav, path, None)
    if rate < 8000 or rate > 48000:
        raise ValueError(f"{path}: sample rate {rate} Hz is outside 8000..48000 Hz")
    pcm = float_to_pcm16(samples)
    client = await make_asr_client(settings)
    finals: list[Transcript] = []
    try:
        session = client.open(AsrOptions(language=language, sample_rate_hz=rate, interim_results=False))

        async def feed() -> None:
            step = rate * _CHUNK_MS // 1000 * 2
            for i in range(0, len(pcm), step):
                await session.send_audio(pcm[i:i + step])
            await session.close()

        feeder = asyncio.get_running_loop().create_task(feed())
        try:
            async for result in session.results():
                if isinstance(result, Transcript) and result.is_final and result.text:
                    finals.append(result)
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
    finally:
        await client.aclose()
    languages = Counter(f.language for f in finals)
    return {
        "text": " ".join(f.text for f in finals),
        "language": languages.most_common(1)[0][0] if languages else (language if language != "auto" else ""),
        "duration_s": round(len(samples) / rate, 3),
        "utterances": [{
            "text": f.text, "language": f.language, "confidence": round(f.confidence, 3),
            "start_ms": f.start_ms, "end_ms": f.end_ms,
            "words": [{"text": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms,
                       "probability": round(w.probability, 3)} for w in f.words],
        } for f in finals],
    }
