"""Phone audio (8 kHz G.711) reaches the recogniser the way the bridge hands it over, and is understood.

Resampling is soxr's band-limited (HQ) filter: checked here for images and aliases, since a naive
8 -> 16 kHz or 48 -> 16 kHz conversion puts energy where Whisper hears it as noise."""

from __future__ import annotations

import numpy as np
import pytest

from asr.api import AsrOptions, Transcript
from asr.metrics import wer
from rag.normalize import tokenize
from voiceai.audio import float_to_pcm16, pcm16_to_float

from .asr_helpers import as_bridge_hears, phone_line_pcm, recognize


def _band_energy(pcm: bytes, rate_hz: int, low_hz: float, high_hz: float) -> float:
    x = pcm16_to_float(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / rate_hz)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum())


def _tone(freq_hz: float, rate_hz: int, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return float_to_pcm16(0.5 * np.sin(2 * np.pi * freq_hz * t).astype(np.float32))


@pytest.mark.unit
def test_phone_rate_upsampling_leaves_no_image_above_4_khz() -> None:
    out = as_bridge_hears(_tone(1000.0, 8000), 8000)
    assert len(out) // 2 == pytest.approx(16000, abs=40)
    wanted = _band_energy(out, 16000, 900, 1100)
    image = _band_energy(out, 16000, 6900, 7100)  # where a zero-stuffing upsampler mirrors 1 kHz
    assert image < wanted * 1e-4


@pytest.mark.unit
def test_browser_rate_downsampling_filters_what_16_khz_cannot_hold() -> None:
    # A 10 kHz tone from a 48 kHz WebRTC track must vanish, not fold to 6 kHz.
    out = as_bridge_hears(_tone(10000.0, 48000), 48000)
    speech = as_bridge_hears(_tone(1000.0, 48000), 48000)
    assert _band_energy(out, 16000, 5800, 6200) < _band_energy(speech, 16000, 900, 1100) * 1e-4


async def _hear(client, pcm16k: bytes) -> list[Transcript]:
    pcm16k = b"\0" * 8000 + pcm16k + b"\0" * 32000
    results = await recognize(client, pcm16k, AsrOptions(language="auto", interim_results=False))
    return [r for r in results if isinstance(r, Transcript) and r.is_final and r.text]


@pytest.mark.integration
@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_english_over_a_phone_line_is_understood(asr_client, audio_texts, codec) -> None:
    finals = await _hear(asr_client, as_bridge_hears(phone_line_pcm("en_balance.wav", codec), 8000))
    heard = " ".join(f.text for f in finals)
    assert {f.language for f in finals} == {"en"}
    assert wer(heard, audio_texts["en_balance.wav"]["text"]) <= 0.2, heard


@pytest.mark.integration
async def test_arabic_over_a_phone_line_is_understood(asr_client, audio_texts) -> None:
    finals = await _hear(asr_client, as_bridge_hears(phone_line_pcm("ar_agent.wav"), 8000))
    assert finals and finals[0].language == "ar"
    # As at 16 kHz (test_asr.py), synthetic MBROLA Arabic is only partly intelligible; key words survive
    # (compared without the definite article: "العملاء" may come back as "عملاء").
    heard = set(tokenize(" ".join(f.text for f in finals)))
    said = set(tokenize(audio_texts["ar_agent.wav"]["text"]))
    assert "عملاء" in heard and len(heard & said) >= 2, (heard, said)
