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
