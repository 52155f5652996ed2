"""A real SIP phone (pjsip's pjsua2, in its own process) calls the bridge: plays a WAV, records the bot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media_bridge.channels import SipConfig
from media_bridge.host import CallSpec
from media_bridge.sip.ua import SipServer
from tests.fakes import fast_settings, peak_hz
from tests.host_helpers import fake_host
from tests.pjsua_caller import call_with_pjsua
from voiceai.audio import read_wav, write_wav

pytestmark = pytest.mark.integration


def caller_wav(path: Path, speech_at_s: float = 4.0) -> Path:
    """Silence while the bot greets, a second of "speech" (220 Hz), then silence for the reply."""
    rate = 16000
    t = np.arange(rate) / rate
    samples = np.concatenate([np.zeros(int(rate * speech_at_s)), 0.4 * np.sin(2 * np.pi * 220 * t),
                              np.zeros(rate * 6)]).astype(np.float32)
    write_wav(path, samples, rate)
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of the loud part (A-law silence decodes to a small DC offset)."""
    idx = np.flatnonzero(np.abs(samples) > 0.02)
    loud = samples[idx[0]:idx[-1] + 1]
    return peak_hz(loud - loud.mean(), rate)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_a_phone_hears_the_bot_and_the_bot_hears_the_phone(tmp_path: Path, codec: str) -> None:
    host, writer = fake_host(fast_settings(call__greeting=True))
    sessions: list[Any] = []
    run = host.run

    async def keep(spec: CallSpec, transport: Any, feed: Any) -> Any:
        session = await run(spec, transport, feed)
        sessions.append(session)
        return session

    host.run = keep  # type: ignore[method-assign]
    server = SipServer(host, SipConfig(port=0), lambda user: asyncio.sleep(0, result=("tenant-1", "acme")))
    await server.start()
    try:
        result = await call_with_pjsua(f"sip:1000@127.0.0.1:{server.port}", tmp_path, caller_wav(tmp_path / "c.wav"),
                                  9.0, "--codec", codec, "--dtmf", "5")
    finally:
        await server.stop()
    assert result["states"][-2:] == ["CONFIRMED", "DISCONNECTED"] and result["codec"] == codec
    # The bridge heard the caller's burst (the fake ASR calls it "hello") and answered it.
    turns = writer.of_kind("turn")
    assert [t["speaker"] for t in turns] == ["caller", "bot"] and turns[0]["text"] == "hello"
    assert writer.of_kind("call_started")[0]["caller_id"] == "+971501234567"
    assert writer.of_kind("call_ended")[0]["reason"] == "hangup"
    assert sessions[0].dtmf == ["5"]  # RFC 4733 from pjsip, through the jitter buffer's key handling
    # The phone recorded the bot: the greeting (fake TTS, 440 Hz) in the first seconds, then the reply.
    audio, rate = read_wav(result["recording"], None)
    greeting = audio[:int(2.0 * rate)]
    assert np.abs(greeting).max() > 0.05
    assert abs(dominant_hz(greeting, rate) - 440) < 15
    reply = audio[int(5.2 * rate):]
    assert np.abs(reply).max() > 0.05, "no reply after the caller spoke"
