"""Helpers for VAD/ASR tests: streaming fixture audio through any client implementation."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np

from asr.api import AsrClient, AsrOptions, AsrResult
from voiceai.audio import float_to_pcm16, read_wav

from .conftest import audio_path


def fixture_pcm(name: str, rate_hz: int = 16000) -> bytes:
    samples, _ = read_wav(audio_path(name), rate_hz)
    return float_to_pcm16(samples)


def silence_pcm(seconds: float, rate_hz: int = 16000) -> bytes:
    return float_to_pcm16(np.zeros(int(seconds * rate_hz), dtype=np.float32))


async def recognize(client: AsrClient, pcm: bytes, options: AsrOptions, chunk_ms: int = 40,
                    realtime: bool = False) -> list[AsrResult]:
    """Streams PCM16 through a session, closes it, and returns every result."""
    session = client.open(options)
    step = options.sample_rate_hz * chunk_ms // 1000 * 2
    results: list[AsrResult] = []

    async def feed() -> None:
        for i in range(0, len(pcm), step):
            await session.send_audio(pcm[i:i + step])
            if realtime:
                await asyncio.sleep(chunk_ms / 1000)
            else:
                await asyncio.sleep(0)
        await session.close()

    feeder = asyncio.get_running_loop().create_task(feed())
    try:
        async for r in session.results():
            results.append(r)
    finally:
        if not feeder.done():
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    feeder.result()
    return results


def phone_line_pcm(name: str, codec: str = "PCMU") -> bytes:
    """A fixture as a phone call delivers it to the bridge: 8 kHz PCM16 after a G.711 round trip."""
    from media_bridge.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

    samples, _ = read_wav(audio_path(name), 8000)
    encode, decode = (ulaw_encode, ulaw_decode) if codec == "PCMU" else (alaw_encode, alaw_decode)
    return decode(encode(float_to_pcm16(samples)))


def as_bridge_hears(pcm: bytes, rate_hz: int, frame_ms: int = 20) -> bytes:
    """Caller audio at ``rate_hz`` resampled to 16 kHz frame by frame, as ``CallSession.push_audio`` does."""
    from voiceai.audio import MODEL_RATE_HZ, StreamResampler, pcm16_to_float

    resampler = StreamResampler(rate_hz, MODEL_RATE_HZ)
    step = rate_hz * frame_ms // 1000 * 2
    out = [resampler.process(pcm16_to_float(pcm[i:i + step])) for i in range(0, len(pcm), step)]
    out.append(resampler.process(np.zeros(0, dtype=np.float32), last=True))
    return float_to_pcm16(np.concatenate(out))
