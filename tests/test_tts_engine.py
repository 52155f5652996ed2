"""TtsEngine and InProcessTtsClient with the real Piper voice (English) and real espeak-ng (Arabic)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tts.api import AudioChunk, SynthesisRequest
from tts.backends import BackendCapabilities
from tts.backends.espeak import EspeakBackend
from tts.backends.piper import PiperBackend
from tts.chunker import split_phrases
from tts.client import InProcessTtsClient
from tts.engine import TTS_FALLBACKS, TtsEngine
from voiceai.audio import pcm16_to_float
from voiceai.config import Settings
from voiceai.serving import InvalidArgument, ResourceExhausted, ServiceError, Unavailable

pytestmark = pytest.mark.integration

PIPER = "piper:en_US-joe-medium"
EN_TEXT = "Hello there. Thank you for calling customer care, how can I help you today?"
AR_TEXT = "مرحباً بك في خدمة العملاء، كيف يمكنني مساعدتك اليوم؟"
LONG_EN = (
    "Thank you for calling. I can see your account here. Your balance is three hundred dollars and "
    "twenty five cents. Your next payment of fifty dollars is due on the fifth of March. "
    "You can pay it in the mobile app, on our website, or at any branch. "
    "Is there anything else I can help you with today?"
)

# Each bad request, the error class it must raise, its reason, and words the message must contain.
BAD_REQUESTS = [
    (SynthesisRequest(text=""), InvalidArgument, "empty_text", ["empty"]),
    (SynthesisRequest(text="  \n "), InvalidArgument, "empty_text", ["empty"]),
    (SynthesisRequest(text="a" * 4001), ResourceExhausted, "text_too_long", ["4001", "4000"]),
    (SynthesisRequest(text="hi", language="fr"), InvalidArgument, "unknown_language", ["'fr'", "ar, en"]),
    (SynthesisRequest(text="hi", voice="piper:nobody"), InvalidArgument, "unknown_voice",
     ["piper:nobody", PIPER, "espeak:ar"]),
    (SynthesisRequest(text="hi", language="ar", voice=PIPER), InvalidArgument, "voice_language_mismatch",
     [PIPER, "'ar'"]),
    (SynthesisRequest(text="hi", speed=0.25), InvalidArgument, "bad_speed", ["0.25", "0.5..2.0"]),
    (SynthesisRequest(text="hi", speed=2.5), InvalidArgument, "bad_speed", ["2.5"]),
    (SynthesisRequest(text="hi", speed=float("nan")), InvalidArgument, "bad_speed", ["nan"]),
    (SynthesisRequest(text="hi", sample_rate_hz=4000), InvalidArgument, "bad_sample_rate", ["4000", "8000..48000"]),
    (SynthesisRequest(text="hi", sample_rate_hz=96000), InvalidArgument, "bad_sample_rate", ["96000"]),
]


@pytest.fixture(scope="module")
def piper(settings: Settings) -> Iterator[PiperBackend]:
    """One loaded Piper voice, shared by the tests that wrap it (loading takes ~2 s)."""
    backend = PiperBackend(settings.tts.voices[0], settings.models_dir)
    backend.load()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[TtsEngine]:
    eng = TtsEngine(settings)
    eng.load()
    yield eng
    eng.close()


async def collect(engine: TtsEngine, request: SynthesisRequest) -> list[AudioChunk]:
    return [chunk async for chunk in engine.synthesize(request)]


def audio_of(chunks: list[AudioChunk]) -> np.ndarray:
    return pcm16_to_float(b"".join(c.pcm16 for c in chunks))


def check_stream(chunks: list[AudioChunk], text: str, voice: str, rate_hz: int, chunk_ms: int = 200) -> None:
    """The invariants every response keeps."""
    assert chunks, "no audio"
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert {c.sample_rate_hz for c in chunks} == {rate_hz}
    assert {c.voice for c in chunks} == {voice}
    assert [c.text for c in chunks if c.text] == split_phrases(text)
    assert all(len(c.pcm16) % 2 == 0 and 0 < len(c.pcm16) // 2 <= rate_hz * chunk_ms // 1000 for c in chunks)


async def test_piper_english(engine: TtsEngine) -> None:
    chunks = await collect(engine, SynthesisRequest(text=EN_TEXT, language="en"))
    check_stream(chunks, EN_TEXT, PIPER, 22050)
    audio = audio_of(chunks)
    duration_s = audio.size / 22050
    assert 2.5 < duration_s < 9.0, duration_s  # ~13 words
    assert float(np.sqrt(np.mean(audio**2))) > 0.02  # speech, not silence


async def test_espeak_arabic(engine: TtsEngine) -> None:
    chunks = await collect(engine, SynthesisRequest(text=AR_TEXT, language="ar"))
    check_stream(chunks, AR_TEXT, "espeak:ar", 22050)
    audio = audio_of(chunks)
    assert 1.5 < audio.size / 22050 < 9.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.02


async def test_text_that_looks_like_options_is_spoken(engine: TtsEngine) -> None:
    text = "--help -v xx; rm -rf nothing"  # text goes to espeak-ng on stdin, never as argv
    chunks = await collect(engine, SynthesisRequest(text=text, voice="espeak:en"))
    check_stream(chunks, text, "espeak:en", 22050)
    assert audio_of(chunks).size / 22050 > 1.0


async def test_resampled_to_16k_keeps_duration(engine: TtsEngine) -> None:
    native = audio_of(await collect(engine, SynthesisRequest(text=AR_TEXT, language="ar")))
    chunks = await collect(engine, SynthesisRequest(text=AR_TEXT, language="ar", sample_rate_hz=16000))
    check_stream(chunks, AR_TEXT, "espeak:ar", 16000)
    resampled = audio_of(chunks)
    assert resampled.size / 16000 == pytest.approx(native.size / 22050, abs=0.02)  # espeak is deterministic
    full = [c for c in chunks if len(c.pcm16) // 2 == 3200]
    assert len(full) >= len(chunks) - len(split_phrases(AR_TEXT))  # only a phrase's last chunk is short


async def test_speed_changes_duration(engine: TtsEngine) -> None:
    text = "Your payment was received, thank you."
    normal = audio_of(await collect(engine, SynthesisRequest(text=text, speed=1.0))).size
    fast = audio_of(await collect(engine, SynthesisRequest(text=text, speed=2.0))).size
    slow = audio_of(await collect(engine, SynthesisRequest(text=text, speed=0.5))).size
    assert fast < 0.7 * normal < 0.7 * slow


async def test_first_chunk_comes_before_the_whole_text_is_rendered(engine: TtsEngine) -> None:
    started = time.perf_counter()
    stamps: list[float] = []
    async for _chunk in engine.synthesize(SynthesisRequest(text=LONG_EN)):
        stamps.append(time.perf_counter() - started)
    assert len(split_phrases(LONG_EN)) >= 5
    assert stamps[0] < stamps[-1] / 3, (stamps[0], stamps[-1])


async def test_listing_voices(engine: TtsEngine) -> None:
    voices = {v.id: v for v in engine.voices()}
    assert set(voices) == {PIPER, "espeak:ar", "espeak:en"}
    assert voices[PIPER].is_default and voices["espeak:ar"].is_default and not voices["espeak:en"].is_default
    assert voices[PIPER].backend == "piper" and voices[PIPER].sample_rate_hz == 22050
    assert voices["espeak:ar"].languages == ("ar",)


@pytest.mark.parametrize(("request_", "error", "reason", "words"), BAD_REQUESTS)
async def test_bad_input_in_process(engine: TtsEngine, request_: SynthesisRequest, error: type[ServiceError],
                                    reason: str, words: list[str]) -> None:
    client = InProcessTtsClient(engine)
    with pytest.raises(error) as caught:
        await anext(client.synthesize(request_))
    assert caught.value.reason == reason
    for word in words:
        assert word in caught.value.message


async def test_closing_the_iterator_stops_rendering(settings: Settings, piper: PiperBackend) -> None:
    counting = CountingBackend(piper)
    engine = TtsEngine(settings, backends={PIPER: counting})
    engine.load()
    try:
        phrases = split_phrases(LONG_EN)
        stream = engine.synthesize(SynthesisRequest(text=LONG_EN))
        first = await anext(stream)
        assert first.text == phrases[0]
        await stream.aclose()
        await asyncio.sleep(0.5)  # a phrase already running may finish; no new one may start
        assert counting.phrases <= 2 < len(phrases)
        # The engine still serves the next request.
        assert await collect(engine, SynthesisRequest(text="Still here."))
    finally:
        engine.close()


async def test_falls_back_to_espeak_when_the_voice_fails(settings: Settings, piper: PiperBackend) -> None:
    failing = CountingBackend(piper, fail_after=1)
    engine = TtsEngine(settings, backends={PIPER: failing})
    engine.load()
    before = TTS_FALLBACKS.labels(PIPER, "espeak:en")._value.get()
    try:
        chunks = await collect(engine, SynthesisRequest(text=LONG_EN, sample_rate_hz=16000))
    finally:
        engine.close()
    phrases = split_phrases(LONG_EN)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert {c.sample_rate_hz for c in chunks} == {16000}
    assert [c.text for c in chunks if c.text] == phrases  # nothing was lost
    first_phrase = [c.voice for c in chunks[: next(i for i, c in enumerate(chunks[1:], 1) if c.text)]]
    assert set(first_phrase) == {PIPER}
    assert chunks[-1].voice == "espeak:en"
    assert {c.voice for c in chunks if c.text and c.text != phrases[0]} == {"espeak:en"}
    assert TTS_FALLBACKS.labels(PIPER, "espeak:en")._value.get() == before + 1


async def test_no_fallback_left_is_unavailable(settings: Settings) -> None:
    arabic = [v for v in settings.tts.voices if v.id == "espeak:ar"]
    cfg = settings.tts.model_copy(update={"voices": arabic, "default_voice": {"ar": "espeak:ar"},
                                          "fallback_voice": {"ar": "espeak:ar"}})
    broken = CountingBackend(EspeakBackend(arabic[0], cfg), fail_after=0, owns_inner=True)
    engine = TtsEngine(settings.model_copy(update={"tts": cfg}), backends={"espeak:ar": broken})
    engine.load()
    try:
        with pytest.raises(Unavailable) as caught:
            await collect(engine, SynthesisRequest(text=AR_TEXT, language="ar"))
        assert "espeak:ar" in caught.value.message
    finally:
        engine.close()


async def test_in_process_client_loads_on_first_use(settings: Settings) -> None:
    client = InProcessTtsClient(TtsEngine(settings), owns_engine=True)
    try:
        with pytest.raises(InvalidArgument):  # bad input is refused without loading anything
            await anext(client.synthesize(SynthesisRequest(text="")))
        chunks = [c async for c in client.synthesize(SynthesisRequest(text="مرحبا", language="ar"))]
        assert chunks and chunks[0].voice == "espeak:ar"
        assert {v.id for v in await client.voices()} >= {PIPER}
    finally:
        await client.aclose()


def test_config_errors_are_clear(settings: Settings) -> None:
    bad = settings.tts.model_copy(update={"default_voice": {"en": "piper:missing"}})
    with pytest.raises(ValueError, match="piper:missing"):
        TtsEngine(settings.model_copy(update={"tts": bad}))
    bad = settings.tts.model_copy(update={"fallback_voice": {"en": "espeak:ar"}})
    with pytest.raises(ValueError, match="does not speak 'en'"):
        TtsEngine(settings.model_copy(update={"tts": bad}))


class CountingBackend:
    """Wraps a real backend: counts the phrases it is asked for and fails after ``fail_after``."""

    def __init__(self, inner: PiperBackend | EspeakBackend, fail_after: int | None = None,
                 owns_inner: bool = False) -> None:
        self.inner = inner
        self.owns_inner = owns_inner
        self.name = inner.name
        self.capabilities: BackendCapabilities = inner.capabilities
        self.fail_after = fail_after
        self.phrases = 0

    @property
    def sample_rate_hz(self) -> int:
        return self.inner.sample_rate_hz

    def load(self) -> None:
        if self.owns_inner:
            self.inner.load()

    def synthesize_phrase(self, text: str, language: str, speed: float) -> Iterator[np.ndarray]:
        self.phrases += 1
        if self.fail_after is not None and self.phrases > self.fail_after:
            raise RuntimeError("injected backend failure")
        yield from self.inner.synthesize_phrase(text, language, speed)

    def close(self) -> None:
        if self.owns_inner:
            self.inner.close()
