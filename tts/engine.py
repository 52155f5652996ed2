"""The TTS core: validates requests, renders phrase by phrase off the event loop, falls back.

``TtsEngine`` is what both ``InProcessTtsClient`` and the gRPC servicer call. A request's text is cut
into phrases (``tts.chunker``); each phrase is rendered by the voice's backend in that backend's own
worker threads, resampled if asked, and sent as ``chunk_ms`` pieces, so the first audio leaves as soon
as the first phrase is ready. When a backend fails mid-request the rest is spoken by the language's
fallback voice (espeak-ng), and every later chunk names that voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from prometheus_client import Counter

from tts.api import AudioChunk, SynthesisRequest, VoiceInfo
from tts.backends import TtsBackend, make_backend
from tts.chunker import split_phrases
from tts.config import TtsConfig, VoiceConfig
from voiceai import telemetry
from voiceai.audio import StreamResampler, float_to_pcm16
from voiceai.config import Settings
from voiceai.serving import InvalidArgument, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

SERVICE = "tts"
MIN_SPEED, MAX_SPEED = 0.5, 2.0
MIN_RATE_HZ, MAX_RATE_HZ = 8000, 48000

TTS_FALLBACKS = Counter(
    "voiceai_tts_fallbacks_total",
    "Phrases re-rendered by the fallback voice because the chosen voice failed.",
    ["voice", "fallback"],
)

T = TypeVar("T")


class BackendFailed(Exception):
    """A backend raised while rendering; the engine falls back or gives up."""


@dataclass
class _Voice:
    """A configured voice, its backend and the threads that run it."""

    cfg: VoiceConfig
    backend: TtsBackend
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        workers = max(1, self.backend.capabilities.max_concurrent_phrases)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=f"tts-{self.backend.name}")

    async def call(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on this voice's threads, counting the wait in ``voiceai_queue_depth``."""
        telemetry.QUEUE_DEPTH.labels(SERVICE).inc()

        def run() -> T:
            telemetry.QUEUE_DEPTH.labels(SERVICE).dec()
            return fn()

        future = self.executor.submit(run)
        # A call cancelled before it started never runs `run`, so its count is taken back here.
        future.add_done_callback(
            lambda f: telemetry.QUEUE_DEPTH.labels(SERVICE).dec() if f.cancelled() else None)
        return await asyncio.wrap_future(future)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated request."""

    text: str
    language: str
    voice: _Voice
    speed: float
    out_rate_hz: int
    call_id: str


class TtsEngine:
    """Loads the configured voices and streams synthesis for requests.

    ``backends`` replaces the backends built from config, by voice id (tests inject failing ones).
    """

    def __init__(self, settings: Settings, backends: Mapping[str, TtsBackend] | None = None) -> None:
        self._cfg: TtsConfig = settings.tts
        self._check_config(self._cfg)
        overrides = dict(backends or {})
        self._voices = {
            v.id: _Voice(v, overrides.pop(v.id) if v.id in overrides
                         else make_backend(v, self._cfg, settings.models_dir))
            for v in self._cfg.voices
        }
        if overrides:
            raise ValueError(f"backends given for unconfigured voices: {', '.join(sorted(overrides))}")
        self._languages = sorted({lang for v in self._cfg.voices for lang in v.languages})
        self._loaded = False
        self._load_lock = threading.Lock()

    @staticmethod
    def _check_config(cfg: TtsConfig) -> None:
        by_id = {v.id: v for v in cfg.voices}
        if len(by_id) != len(cfg.voices):
            raise ValueError("tts.voices: voice ids must be unique")
        for table in ("default_voice", "fallback_voice"):
            for lang, voice_id in getattr(cfg, table).items():
                if voice_id not in by_id:
                    raise ValueError(f"tts.{table}.{lang} = {voice_id!r} is not a configured voice; "
                                     f"configured: {', '.join(by_id)}")
                if lang not in by_id[voice_id].languages:
                    raise ValueError(f"tts.{table}.{lang} = {voice_id!r}, which does not speak {lang!r}")

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Loads every voice (blocking: call it in a thread). Idempotent."""
        with self._load_lock:
            if self._loaded:
                return
            for voice in self._voices.values():
                started = time.perf_counter()
                voice.backend.load()
                load_s = time.perf_counter() - started
                telemetry.MODEL_LOAD_SECONDS.labels(SERVICE, voice.cfg.id).set(load_s)
                log.info("voice loaded", extra={"voice": voice.cfg.id, "backend": voice.backend.name,
                                                "sample_rate_hz": voice.backend.sample_rate_hz,
                                                "load_s": round(load_s, 2)})
            self._loaded = True

    def close(self) -> None:
        """Stops the worker threads and frees the models."""
        for voice in self._voices.values():
            voice.executor.shutdown(wait=True, cancel_futures=True)  # no thread may use a freed model
            voice.backend.close()
        self._loaded = False

    def voices(self) -> list[VoiceInfo]:
        """The voices this engine speaks with."""
        defaults = set(self._cfg.default_voice.values())
        return [
            VoiceInfo(id=v.cfg.id, languages=tuple(v.cfg.languages), backend=v.backend.name,
                      sample_rate_hz=v.backend.sample_rate_hz, is_default=v.cfg.id in defaults)
            for v in self._voices.values()
        ]

    # ---- requests -----------------------------------------------------------------------------

    def validate(self, request: SynthesisRequest) -> _Plan:
        """Checks a request; raises ``InvalidArgument`` or ``ResourceExhausted`` naming the problem."""
        text = request.text
        if not text or not text.strip():
            raise InvalidArgument("empty_text", "text is empty; send the words to speak")
        if len(text) > self._cfg.max_text_chars:
            raise ResourceExhausted(
                "text_too_long",
                f"text has {len(text)} characters; the limit is {self._cfg.max_text_chars} "
                "(tts.max_text_chars); split it into several requests",
            )
        voice = self._voices.get(request.voice) if request.voice else None
        if request.voice and voice is None:
            raise InvalidArgument("unknown_voice", f"voice {request.voice!r} is not available; "
                                                   f"known voices: {', '.join(self._voices)}")
        language = request.language or (voice.cfg.languages[0] if voice else "")
        if language not in self._languages:
            raise InvalidArgument("unknown_language", f"language {language!r} is not spoken here; "
                                                      f"known languages: {', '.join(self._languages)}")
        if voice is None:
            voice = self._voices[self._default_voice_id(language)]
        elif language not in voice.cfg.languages:
            raise InvalidArgument("voice_language_mismatch",
                                  f"voice {voice.cfg.id!r} speaks {', '.join(voice.cfg.languages)}, "
                                  f"not {language!r}")
        speed = request.speed or 1.0  # proto3 sends 0 for "unset"
        if not (MIN_SPEED <= speed <= MAX_SPEED):  # also refuses NaN
            raise InvalidArgument("bad_speed", f"speed={speed} is out of range; use {MIN_SPEED}..{MAX_SPEED} "
                                               "(1.0 is normal, 0 means 1.0)")
        rate = request.sample_rate_hz
        if rate and not (MIN_RATE_HZ <= rate <= MAX_RATE_HZ):
            raise InvalidArgument("bad_sample_rate",
                                  f"sample_rate_hz={rate} is out of range; use {MIN_RATE_HZ}..{MAX_RATE_HZ}, "
                                  "or 0 for the voice's own")
        return _Plan(text, language, voice, speed, rate or voice.backend.sample_rate_hz, request.call_id)

    def _default_voice_id(self, language: str) -> str:
        voice_id = self._cfg.default_voice.get(language)
        if voice_id is None:  # no default configured: the first voice that speaks it
            voice_id = next(v.cfg.id for v in self._voices.values() if language in v.cfg.languages)
        return voice_id

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        """Streams the audio of ``request``; closing the iterator stops the rendering."""
        started = time.perf_counter()
        plan = self.validate(request)
        if not self._loaded:
            raise Unavailable("not_loaded", "the TTS voices are still loading; retry shortly")
        chunk_samples = max(1, plan.out_rate_hz * self._cfg.chunk_ms // 1000)
        voice, sequence = plan.voice, 0

        def chunk(samples: np.ndarray, text: str) -> AudioChunk:
            nonlocal sequence
            if sequence == 0:
                telemetry.FIRST_RESULT_SECONDS.labels(SERVICE).observe(time.perf_counter() - started)
            sequence += 1
            return AudioChunk(float_to_pcm16(samples), plan.out_rate_hz, sequence - 1, text, voice.cfg.id)

        for phrase in split_phrases(plan.text, self._cfg.chunker):
            label = phrase  # the phrase's first chunk carries its text
            while True:
                try:
                    async with contextlib.aclosing(self._render(voice, phrase, plan)) as pieces:
                        pending = np.zeros(0, dtype=np.float32)
                        async for piece in pieces:
                            pending = np.concatenate((pending, piece))
                            while pending.size >= chunk_samples:
                                yield chunk(pending[:chunk_samples], label)
                                pending, label = pending[chunk_samples:], ""
                        if pending.size:  # a phrase's last chunk may be short: it is not held back
                            yield chunk(pending, label)
                            label = ""
                    break
                except BackendFailed as err:
                    # The phrase is spoken again from its start: a repeated word beats a lost one.
                    voice = self._fallback(voice, plan, err)

    def _fallback(self, failed: _Voice, plan: _Plan, err: BackendFailed) -> _Voice:
        fallback_id = self._cfg.fallback_voice.get(plan.language, "")
        fallback = self._voices.get(fallback_id)
        cause = err.__cause__ or err
        if fallback is None or fallback is failed:
            log.error("voice failed, no fallback left", exc_info=cause,
                      extra={"voice": failed.cfg.id, "call_id": plan.call_id})
            raise Unavailable("tts_backend_failed",
                              f"voice {failed.cfg.id!r} failed to render and no fallback voice is left")
        log.warning("voice failed; falling back", exc_info=cause,
                    extra={"voice": failed.cfg.id, "fallback": fallback.cfg.id, "call_id": plan.call_id})
        TTS_FALLBACKS.labels(failed.cfg.id, fallback.cfg.id).inc()
        return fallback

    async def _render(self, voice: _Voice, phrase: str, plan: _Plan) -> AsyncGenerator[np.ndarray, None]:
        """Yields the phrase's float32 samples at the output rate.

        Each generation step runs on the voice's worker threads; so does resampling, which keeps
        the event loop free of everything but bookkeeping.
        """
        backend = voice.backend
        resampler = StreamResampler(backend.sample_rate_hz, plan.out_rate_hz)
        steps: Iterator[np.ndarray] | None = None
        steps_lock = threading.Lock()  # a backend may have two threads: never step and close at once
        whole_phrase = not backend.capabilities.streams_within_phrase
        busy_s = 0.0
        finished = False

        def step() -> tuple[np.ndarray, bool]:
            nonlocal steps, busy_s
            began = time.perf_counter()
            try:
                with steps_lock:
                    if steps is None:
                        steps = backend.synthesize_phrase(phrase, plan.language, plan.speed)
                    if whole_phrase:  # rendered at once anyway: drain it in one hop to the thread
                        pieces = list(steps)
                    else:
                        piece = next(steps, None)
                        pieces = [] if piece is None else [piece]
                samples = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in pieces]
                                         or [np.zeros(0, dtype=np.float32)])
                if not np.all(np.isfinite(samples)):
                    raise ValueError("backend produced non-finite samples")
                done = whole_phrase or not pieces
                return resampler.process(samples, last=done), done
            except Exception as err:
                raise BackendFailed(f"{backend.name} failed") from err
            finally:
                busy_s += time.perf_counter() - began

        def close() -> None:
            with steps_lock:
                if steps is not None and hasattr(steps, "close"):
                    steps.close()

        try:
            while True:
                samples, done = await voice.call(step)
                if samples.size:
                    yield samples
                if done:
                    finished = True
                    break
            log.debug("phrase rendered", extra={"voice": voice.cfg.id, "inference_s": round(busy_s, 3),
                                                "call_id": plan.call_id, "pii": {"phrase": phrase}})
        finally:
            if steps is not None:  # counted even when cancelled: the model was busy all the same
                telemetry.INFERENCE_SECONDS.labels(SERVICE, backend.name).observe(busy_s)
            if not finished:
                # Stopped early (cancelled, or the backend failed): free the backend's generator on its
                # own threads, without waiting for a step that may still be running.
                with contextlib.suppress(RuntimeError):  # the executor is already shut down
                    voice.executor.submit(close)
