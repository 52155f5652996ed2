"""The streaming recogniser: VAD-cut utterances, interim and final Whisper decodes, one per stream.

``AsrEngine`` is process-wide (models and the decode scheduler); ``RecognizerStream`` is one audio
stream. The gRPC servicer and the in-process client both drive ``RecognizerStream``, so they behave
the same.

Flow of one utterance: Silero finds speech -> ``speech_start`` -> every ``interim_interval_ms`` of
speech an interim decode of the utterance so far (newest wins; stable prefix kept) -> the first
silent window starts an early final decode of the speech so far -> after ``endpoint_silence_ms`` of
silence (or a client ``finalize``) ``speech_end`` and the final, which reuses the early decode
when the speech did not resume. Only speech is ever decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from asr.api import AsrOptions, AsrResult, SpeechBoundary, Transcript
from asr.scheduler import PRIORITY_FINAL, PRIORITY_INTERIM, DecodeScheduler
from asr.stabilizer import StablePrefix
from asr.vad import SegmenterOptions, SileroVadModel, SpeechSegmenter
from asr.whisper import DecodeRequest, DecodeResult, FasterWhisperBackend
from voiceai import models
from voiceai.audio import MODEL_RATE_HZ, Pcm16Assembler, StreamResampler
from voiceai.config import Settings
from voiceai.serving import InvalidArgument, ResourceExhausted, ServiceError

log = logging.getLogger(__name__)

ACCEPTED_RATES_HZ = (8000, 48000)
_TAIL_PAD_MS = 150  # silence kept after the speech: Whisper hears the end as an end
_NO_SPEECH_PROB = 0.6
_NO_SPEECH_CONFIDENCE = math.exp(-1.0)
_END = object()


class AsrEngine:
    """Models and the decode scheduler shared by every stream of a process."""

    def __init__(self, settings: Settings, backend: FasterWhisperBackend | None = None) -> None:
        self.settings = settings
        self.cfg = settings.asr
        self.vad_cfg = settings.vad
        self.backend = backend
        self.vad_model: SileroVadModel | None = None
        self.scheduler: DecodeScheduler | None = None

    def load(self) -> None:
        """Loads Silero and Whisper (blocking; run it in a thread)."""
        self.vad_model = SileroVadModel(models.require(self.vad_cfg.model, self.settings.models_dir) /
                                        "silero_vad.onnx")
        if self.backend is None:
            c = self.cfg
            self.backend = FasterWhisperBackend.from_registry(
                c.model, self.settings.models_dir, device=c.device, compute_type=c.compute_type,
                cpu_threads=c.cpu_threads, allowed_languages=c.languages, encoder_window=c.encoder_window,
                window_margin_s=c.encoder_margin_s, min_window_s=c.encoder_min_window_s)
        self.backend.load()

    def _scheduler(self) -> DecodeScheduler:
        if self.scheduler is None:
            assert self.backend is not None, "load() first"
            self.scheduler = DecodeScheduler(self.backend.decode_batch, "asr",
                                             self.cfg.batch.max_batch_size, self.cfg.batch.max_wait_ms)
        return self.scheduler

    def open_stream(self, options: AsrOptions) -> RecognizerStream:
        """Validates the options and starts a stream (raises InvalidArgument)."""
        if self.vad_model is None:
            raise RuntimeError("AsrEngine.load() has not run")
        return RecognizerStream(self, options, self._scheduler())

    async def close(self) -> None:
        if self.scheduler:
            await self.scheduler.close()


@dataclass
class _Utterance:
    index: int
    start_sample: int  # first sample kept (speech onset minus the pre-roll pad)
    speech_start_ms: int
    stabilizer: StablePrefix
    last_interim_ms: float
    finalized: bool = False


class RecognizerStream:
    """One audio stream. Feed it with ``push_audio``/``finalize``, read ``results``, then ``close``."""

    def __init__(self, engine: AsrEngine, options: AsrOptions, scheduler: DecodeScheduler) -> None:
        cfg = engine.cfg
        language = (options.language or "auto").lower()
        if language != "auto" and language not in cfg.languages:
            raise InvalidArgument("unknown_language",
                                  f"language {options.language!r} is not served; use one of "
                                  f"{', '.join([*cfg.languages, 'auto'])}")
        low, high = ACCEPTED_RATES_HZ
        if not low <= options.sample_rate_hz <= high:
            raise InvalidArgument("bad_sample_rate", f"sample_rate_hz={options.sample_rate_hz} is not "
                                                     f"supported; use {low}..{high} Hz")
        self.engine = engine
        self.options = options
        self.language = language
        self.cfg = cfg
        self._scheduler = scheduler
        self._interim_ms = options.interim_interval_ms or cfg.interim_interval_ms
        endpoint_ms = options.endpoint_silence_ms or cfg.endpoint_silence_ms
        assert engine.vad_model is not None
        self._vad = SpeechSegmenter(engine.vad_model, SegmenterOptions.resolve(
            engine.vad_cfg, MODEL_RATE_HZ, min_silence_ms=endpoint_ms))
        self._pad_samples = engine.vad_cfg.speech_pad_ms * MODEL_RATE_HZ // 1000
        self._assembler = Pcm16Assembler()
        self._resampler = StreamResampler(options.sample_rate_hz, MODEL_RATE_HZ)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample index of _buf[0] (16 kHz)
        self._max_samples = cfg.max_stream_s * MODEL_RATE_HZ
        self._max_utt_samples = int(cfg.max_utterance_s * MODEL_RATE_HZ)
        self._utt: _Utterance | None = None
        self._utt_count = 0
        self._early: tuple[int, float, asyncio.Task] | None = None  # (utterance, silence start, task)
        self._interim_task: asyncio.Task | None = None
        self._last_final: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._results: asyncio.Queue = asyncio.Queue()
        self._closed = False

    # ---- input -------------------------------------------------------------------------------

    @property
    def now_samples(self) -> int:
        return self._buf_start + len(self._buf)

    async def push_audio(self, pcm16: bytes) -> None:
        if self._closed:
            raise InvalidArgument("stream_closed", "audio after the stream was closed")
        samples = self._resampler.process(self._assembler.push(pcm16))
        if self.now_samples + len(samples) > self._max_samples:
            raise ResourceExhausted("stream_too_long",
                                    f"stream passed its maximum of {self.cfg.max_stream_s} s of audio")
        self._buf = np.concatenate([self._buf, samples])
        for event in await self._vad.process_async(samples):
            if event.kind == "speech_start":
                self._start_utterance(event.timestamp_ms)
            elif event.kind == "speech_end" and self._utt is not None:
                self._end_utterance(event.timestamp_ms)
        if self._utt is not None:
            self._while_speaking()
        else:
            self._trim_idle_audio()

    async def finalize(self) -> None:
        """Ends the current utterance now. Every finalize is answered by a final hypothesis:
        the current utterance's, the one being decoded, or an empty one when there was no speech."""
        if self._utt is not None:
            event = self._vad.force_end()
            self._end_utterance(event.timestamp_ms if event else self._ms(self.now_samples))
        elif self._last_final is None or self._last_final.done():
            self._emit(Transcript(text="", is_final=True, utterance_index=self._utt_count,
                                  start_ms=self._ms(self.now_samples), end_ms=self._ms(self.now_samples),
                                  language=self.language if self.language != "auto" else "",
                                  language_probability=0.0))

    async def close(self) -> None:
        """Finalises pending speech, waits for outstanding finals, then ends ``results``."""
        if self._closed:
            return
        self._closed = True
        if self._utt is not None:
            event = self._vad.force_end()
            self._end_utterance(event.timestamp_ms if event else self._ms(self.now_samples))
        if self._last_final is not None:
            with contextlib.suppress(Exception):
                await self._last_final
        self._cancel(self._interim_task)
        self._results.put_nowait(_END)

    async def fail(self, err: BaseException) -> None:
        """Ends the stream with an error that ``results`` raises."""
        self._emit(err)
        await self.abort()

    async def abort(self) -> None:
        """Drops everything (the client went away)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._results.put_nowait(_END)

    async def results(self) -> AsyncIterator[AsrResult]:
        while True:
            item = await self._results.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # ---- utterances --------------------------------------------------------------------------

    def _ms(self, sample: int) -> int:
        return sample * 1000 // MODEL_RATE_HZ

    def _sample(self, ms: float) -> int:
        return int(ms * MODEL_RATE_HZ / 1000)

    def _audio(self, start_sample: int, end_sample: int) -> np.ndarray:
        a = max(0, start_sample - self._buf_start)
        b = max(a, min(len(self._buf), end_sample - self._buf_start))
        return self._buf[a:b].copy()

    def _start_utterance(self, onset_ms: int) -> None:
        start = max(self._buf_start, self._sample(onset_ms) - self._pad_samples)
        self._utt = _Utterance(self._utt_count, start, onset_ms, StablePrefix(), float(onset_ms))
        self._utt_count += 1
        self._emit(SpeechBoundary("speech_start", onset_ms))

    def _while_speaking(self) -> None:
        utt = self._utt
        assert utt is not None
        now_ms = self._ms(self.now_samples)
        silence_ms = self._vad.silence_since_ms
        if self._early and (silence_ms is None or self._early[1] != silence_ms):
            self._cancel(self._early[2])  # speech resumed: the early decode is stale
            self._early = None
        if silence_ms is not None and self._early is None and self.cfg.early_decode:
            task = self._spawn(self._decode(self._request(utt, silence_ms, final=True), final=True))
            self._early = (utt.index, silence_ms, task)
        if (self.options.interim_results and silence_ms is None
                and now_ms - utt.last_interim_ms >= self._interim_ms):
            utt.last_interim_ms = now_ms
            self._interim_task = self._spawn(self._interim(utt, now_ms, self._request(utt, now_ms, False)))
        if self.now_samples - utt.start_sample >= self._max_utt_samples:
            event = self._vad.force_end()
            self._end_utterance(event.timestamp_ms if event else now_ms)

    def _end_utterance(self, end_ms: int) -> None:
        utt = self._utt
        assert utt is not None
        self._utt = None
        utt.finalized = True
        self._emit(SpeechBoundary("speech_end", end_ms))
        early = None
        if self._early and self._early[0] == utt.index and int(self._early[1]) == end_ms:
            early = self._early[2]
        elif self._early:
            self._cancel(self._early[2])
        self._early = None
        decode = early or self._spawn(self._decode(self._request(utt, end_ms, final=True), final=True))
        previous = self._last_final
        self._last_final = self._spawn(self._emit_final(utt, end_ms, decode, previous))

    def _trim_idle_audio(self) -> None:
        # Decode requests copy their audio when they are made, so only the pre-roll of the next
        # utterance is worth keeping while nobody speaks.
        keep = self._pad_samples + 2048
        if len(self._buf) > keep * 4:
            drop = len(self._buf) - keep
            self._buf = self._buf[drop:]
            self._buf_start += drop

    # ---- decoding ----------------------------------------------------------------------------

    def _request(self, utt: _Utterance, end_ms: float, final: bool) -> DecodeRequest:
        end_sample = self._sample(end_ms + (_TAIL_PAD_MS if final else 0))
        return DecodeRequest(
            audio=self._audio(utt.start_sample, end_sample),
            language=self.language,
            offset_ms=self._ms(utt.start_sample),
            word_timestamps=final,
            beam_size=self.cfg.beam_size if final else self.cfg.interim_beam_size,
            prompt=self.options.prompt,
        )

    async def _decode(self, request: DecodeRequest, final: bool) -> DecodeResult | None:
        return await self._scheduler.submit(request, PRIORITY_FINAL if final else PRIORITY_INTERIM,
                                            key=f"{id(self)}")

    async def _interim(self, utt: _Utterance, now_ms: float, request: DecodeRequest) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await self._decode(request, final=False)
        if result is None or utt.finalized or not result.text:
            return  # superseded by a newer interim, or the final already went out
        stable, unstable = utt.stabilizer.update(result.text)
        self._emit(Transcript(
            text=" ".join(p for p in (stable, unstable) if p), is_final=False, utterance_index=utt.index,
            start_ms=utt.speech_start_ms, end_ms=int(now_ms), language=result.language,
            language_probability=result.language_probability, confidence=result.confidence,
            stable_text=stable, unstable_text=unstable, decode_ms=int((loop.time() - started) * 1000)))

    async def _emit_final(self, utt: _Utterance, end_ms: int, decode: asyncio.Task,
                          previous: asyncio.Task | None) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await decode
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._emit(ServiceError("decode_failed", f"decoding utterance {utt.index} failed: {err}"))
            return
        if previous is not None:  # finals leave in utterance order
            with contextlib.suppress(Exception):
                await previous
        if result is None:
            return
        text = result.text
        if result.no_speech_probability > _NO_SPEECH_PROB and result.confidence < _NO_SPEECH_CONFIDENCE:
            text = ""  # Whisper's own "this was not speech"; drop the invention
        self._emit(Transcript(
            text=text, is_final=True, utterance_index=utt.index, start_ms=utt.speech_start_ms, end_ms=end_ms,
            language=result.language, language_probability=result.language_probability,
            confidence=result.confidence, stable_text=text, unstable_text="", words=result.words,
            decode_ms=int((loop.time() - started) * 1000)))
        log.info("final transcript", extra={"utterance": utt.index, "language": result.language,
                                            "call_id": self.options.call_id, "pii": {"text": text}})

    # ---- plumbing ----------------------------------------------------------------------------

    def _emit(self, item: AsrResult | BaseException) -> None:
        self._results.put_nowait(item)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _cancel(task: asyncio.Task | None) -> None:
        if task is not None and not task.done():
            task.cancel()
