"""Scripted fake model clients for fast, deterministic call-loop tests.

Each ``Fake*`` class implements one of the real seams exactly (``asr/api.py``, ``nlu/api.py``,
``tts/api.py``) and behaves like the real thing on the audio it is given, with scripted words:

- ``FakeVadClient``: energy VAD. A 10 ms window with a sample above ``threshold`` is speech;
  ``speech_start`` after ``min_speech_ms`` of speech (timestamp: the onset), ``speech_end`` after
  ``min_silence_ms`` of silence (timestamp: the end of the last speech window), in stream ms.
- ``FakeAsrClient``: the same segmentation with its own ``endpoint_silence_ms`` (from AsrOptions);
  each utterance gets the next scripted text, its final ``decode_ms`` after the segment closes,
  interims while it lasts; a scripted utterance, ``fail_stream`` or ``fail_opens`` break the stream.
- ``FakeLlmClient``: replies by user text (or a default), time to first token and per-token delay;
  ``mode`` "error" or "stall"; records every call and whether its stream was closed early.
- ``FakeTtsClient``: a sine tone whose length is proportional to the text, the first chunk after
  ``first_chunk_ms``; ``mode`` "error" or "stall"; records calls.
- ``FakeTransport``: collects the bot's audio frames and the call's events with arrival times.
- ``CallHarness``: builds a ``CallSession`` on the fakes and drives it with 20 ms frames in real time
  (speech is a tone, silence is zeros). All times it and the fakes record are on the call's clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.api import AsrOptions, AsrResult, SpeechBoundary, Transcript, VadEvent, VadOptions
from media_bridge.clients import BridgeClients
from media_bridge.session import CallSession
from nlu.api import ChatMessage, GenerateParams, GenerationFinal, LlmEvent, TextDelta, Usage
from tts.api import AudioChunk, SynthesisRequest, VoiceInfo
from voiceai.config import Settings, load_settings
from voiceai.serving import Unavailable

RATE_HZ = 16000
FRAME_MS = 20
Clock = Callable[[], float]


def monotonic_ms() -> float:
    return time.monotonic() * 1000


def tone(ms: float, rate_hz: int = RATE_HZ, freq_hz: float = 220.0, amplitude: float = 0.3,
         phase: int = 0) -> bytes:
    """PCM16 sine; ``phase`` (in samples) keeps consecutive pieces continuous."""
    n = int(rate_hz * ms / 1000)
    t = (np.arange(n) + phase) / rate_hz
    return (np.sin(2 * math.pi * freq_hz * t) * amplitude * 32767).astype("<i2").tobytes()


def peak_hz(samples: np.ndarray, rate_hz: int) -> float:
    """The strongest frequency in ``samples`` (Hann-windowed spectrum): which tone came through."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate_hz / len(samples))


def silence(ms: float, rate_hz: int = RATE_HZ) -> bytes:
    return b"\0\0" * int(rate_hz * ms / 1000)


def is_arabic(text: str) -> bool:
    return any("\u0600" <= ch <= "\u06ff" for ch in text)


class _EnergySegmenter:
    """Speech start/end on the peak level of fixed windows; times in stream ms."""

    def __init__(self, threshold: int, min_speech_ms: int, min_silence_ms: int, rate_hz: int = RATE_HZ,
                 window_ms: int = 10) -> None:
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        self.window = rate_hz * window_ms // 1000
        self.window_ms = window_ms
        self._pending = np.zeros(0, dtype="<i2")
        self.now_ms = 0
        self.in_speech = False
        self.onset_ms: int | None = None
        self.speech_start_ms = 0
        self.last_speech_end_ms = 0
        self.silence_since_ms: int | None = None

    def process(self, pcm16: bytes) -> list[tuple[str, int, int]]:
        """Returns ("start", onset_ms, 0) and ("end", end_ms, duration_ms) events."""
        data = np.concatenate([self._pending, np.frombuffer(pcm16, dtype="<i2")])
        n = len(data) // self.window
        self._pending = data[n * self.window:]
        out: list[tuple[str, int, int]] = []
        for i in range(n):
            loud = bool(np.abs(data[i * self.window:(i + 1) * self.window].astype(np.int32)).max() > self.threshold)
            start, self.now_ms = self.now_ms, self.now_ms + self.window_ms
            if not self.in_speech:
                if not loud:
                    self.onset_ms = None  # a blip shorter than min_speech_ms: dropped
                    continue
                if self.onset_ms is None:
                    self.onset_ms = start
                if self.now_ms - self.onset_ms >= self.min_speech_ms:
                    self.in_speech = True
                    self.speech_start_ms = self.onset_ms
                    self.last_speech_end_ms = self.now_ms
                    self.silence_since_ms = None
                    out.append(("start", self.onset_ms, 0))
                continue
            if loud:
                self.last_speech_end_ms = self.now_ms
                self.silence_since_ms = None
                continue
            if self.silence_since_ms is None:
                self.silence_since_ms = start
            if self.now_ms - self.silence_since_ms >= self.min_silence_ms:
                out.append(self._end())
        return out

    def force_end(self) -> tuple[str, int, int] | None:
        if not self.in_speech:
            self.onset_ms = None
            return None
        if self.silence_since_ms is None:
            self.last_speech_end_ms = self.now_ms
        return self._end()

    def _end(self) -> tuple[str, int, int]:
        self.in_speech = False
        self.onset_ms = None
        self.silence_since_ms = None
        return ("end", self.last_speech_end_ms, self.last_speech_end_ms - self.speech_start_ms)


_CLOSE = object()

# ---- VAD ---------------------------------------------------------------------------------------


class FakeVadSession:
    """A ``VadSession``: energy segmentation of the PCM it receives."""

    def __init__(self, client: FakeVadClient, options: VadOptions) -> None:
        self.options = options
        self._client = client
        threshold = int(options.threshold * 32768) if options.threshold else client.threshold
        self._seg = _EnergySegmenter(threshold, options.min_speech_ms or client.min_speech_ms,
                                     options.min_silence_ms or client.min_silence_ms, options.sample_rate_hz)
        self._events: asyncio.Queue = asyncio.Queue()
        self.emitted: list[tuple[float, VadEvent]] = []  # (call-clock ms when found, event)
        self.closed = False

    async def send(self, pcm16: bytes) -> None:
        if self.closed:
            raise Unavailable("closed", "VAD stream is closed")
        for kind, at_ms, duration in self._seg.process(pcm16):
            self._put(VadEvent("speech_start" if kind == "start" else "speech_end", at_ms, 1.0, duration))

    def _put(self, event: VadEvent) -> None:
        self.emitted.append((self._client.clock(), event))
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[VadEvent]:
        while (item := await self._events.get()) is not _CLOSE:
            yield item

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        end = self._seg.force_end()
        if end is not None:
            self._put(VadEvent("speech_end", end[1], 0.0, end[2]))
        self._events.put_nowait(_CLOSE)


class FakeVadClient:
    """A ``VadClient``; zero values in ``VadOptions`` take these defaults (as the real server does)."""

    def __init__(self, threshold: int = 1000, min_speech_ms: int = 60, min_silence_ms: int = 200,
                 clock: Clock = monotonic_ms) -> None:
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        self.clock = clock
        self.sessions: list[FakeVadSession] = []

    def open(self, options: VadOptions) -> FakeVadSession:
        session = FakeVadSession(self, options)
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        return None

    def starts(self) -> list[float]:
        """Call-clock times at which speech starts were found, over all sessions."""
        return [t for s in self.sessions for t, e in s.emitted if e.kind == "speech_start"]


# ---- ASR ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """What the fake ASR hears in one caller utterance."""

    text: str
    language: str = ""  # empty: "ar" when the text has Arabic letters, else "en"
    fail: bool = False  # the stream breaks (raises) where this final would be sent

    @property
    def lang(self) -> str:
        return self.language or ("ar" if is_arabic(self.text) else "en")


class FakeAsrSession:
    """An ``AsrSession``: segments by energy, answers each utterance with the next scripted text."""

    def __init__(self, client: FakeAsrClient, options: AsrOptions, broken: bool) -> None:
        self.options = options
        self._client = client
        silence_ms = options.endpoint_silence_ms or client.endpoint_silence_ms
        self._seg = _EnergySegmenter(client.threshold, client.min_speech_ms, silence_ms, options.sample_rate_hz)
        self._results: asyncio.Queue = asyncio.Queue()
        self._timers: list[tuple[asyncio.TimerHandle, Transcript | BaseException]] = []
        self._utt: Utterance | None = None
        self._utt_start = 0
        self._utt_index = 0
        self._last_interim_ms = 0
        self.finals: list[Transcript] = []
        self.failed = False
        self.closed = False
        if broken:
            self.fail(Unavailable("unavailable", "fake ASR: server down"))

    async def send_audio(self, pcm16: bytes) -> None:
        if self.failed or self.closed:
            raise Unavailable("unavailable", "fake ASR: stream is gone")
        for kind, at_ms, _ in self._seg.process(pcm16):
            if kind == "start":
                self._start(at_ms)
            else:
                self._end(at_ms)
        if self._utt is not None and self.options.interim_results \
                and self._seg.silence_since_ms is None \
                and self._seg.now_ms - self._last_interim_ms >= self._client.interim_interval_ms:
            self._interim()

    def _start(self, onset_ms: int) -> None:
        self._utt = self._client.next_utterance()
        self._utt_start = onset_ms
        self._last_interim_ms = self._seg.now_ms
        self._results.put_nowait(SpeechBoundary("speech_start", onset_ms))

    def _interim(self) -> None:
        assert self._utt is not None
        self._last_interim_ms = self._seg.now_ms
        words = self._utt.text.split()
        heard = max(1, (self._seg.now_ms - self._utt_start) // self._client.interim_interval_ms)
        if not words:
            return
        shown = words[:heard]
        stable, unstable = " ".join(shown[:-1]), shown[-1]
        self._results.put_nowait(Transcript(
            " ".join(shown), False, self._utt_index, self._utt_start, self._seg.now_ms, self._utt.lang,
            stable_text=stable, unstable_text=unstable))

    def _end(self, end_ms: int) -> None:
        utt, self._utt = self._utt, None
        if utt is None:
            return
        self._results.put_nowait(SpeechBoundary("speech_end", end_ms))
        if utt.fail:
            item: Transcript | BaseException = Unavailable("unavailable", "fake ASR: server died mid-stream")
        else:
            item = Transcript(utt.text, True, self._utt_index, self._utt_start, end_ms, utt.lang,
                              confidence=0.9, stable_text=utt.text, decode_ms=self._client.decode_ms)
        self._utt_index += 1
        handle = asyncio.get_running_loop().call_later(self._client.decode_ms / 1000, self._deliver, item)
        self._timers.append((handle, item))

    def _deliver(self, item: Transcript | BaseException) -> None:
        self._timers = [(h, i) for h, i in self._timers if i is not item]
        if self.failed:
            return
        if isinstance(item, BaseException):
            self.fail(item)
            return
        self.finals.append(item)
        self._results.put_nowait(item)

    def fail(self, error: BaseException | None = None) -> None:
        """Breaks the stream now: ``results`` raises ``error``."""
        self.failed = True
        for h, _ in self._timers:
            h.cancel()
        self._timers = []
        self._results.put_nowait(error or Unavailable("unavailable", "fake ASR: server died"))

    async def finalize(self) -> None:
        end = self._seg.force_end()
        if end is not None:
            self._end(end[1])

    def results(self) -> AsyncIterator[AsrResult]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AsrResult]:
        while True:
            item = await self._results.get()
            if item is _CLOSE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        """Ends the stream; a pending utterance is finalised (without the decode wait) first."""
        if self.closed:
            return
        self.closed = True
        await self.finalize()
        for h, item in list(self._timers):
            h.cancel()
            self._deliver(item)
        self._results.put_nowait(_CLOSE)


class FakeAsrClient:
    """An ``AsrClient``: utterance n of the call (over all streams) gets ``script[n]``."""

    def __init__(self, script: Iterable[str | Utterance] = (), default_text: str = "hello",
                 threshold: int = 1000, min_speech_ms: int = 60, endpoint_silence_ms: int = 250,
                 decode_ms: int = 20, interim_interval_ms: int = 200) -> None:
        self.script: deque[Utterance] = deque(u if isinstance(u, Utterance) else Utterance(u) for u in script)
        self.default_text = default_text
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.endpoint_silence_ms = endpoint_silence_ms
        self.decode_ms = decode_ms
        self.interim_interval_ms = interim_interval_ms
        self.fail_opens = 0  # this many next streams fail at once (server down)
        self.sessions: list[FakeAsrSession] = []

    def next_utterance(self) -> Utterance:
        return self.script.popleft() if self.script else Utterance(self.default_text)

    def open(self, options: AsrOptions) -> FakeAsrSession:
        broken = self.fail_opens > 0
        self.fail_opens -= int(broken)
        session = FakeAsrSession(self, options, broken)
        self.sessions.append(session)
        return session

    def fail_stream(self, error: BaseException | None = None) -> None:
        """The server dies: the newest stream breaks now."""
        self.sessions[-1].fail(error)

    async def aclose(self) -> None:
        return None


# ---- LLM ---------------------------------------------------------------------------------------


@dataclass
class LlmCall:
    params: GenerateParams
    user_text: str
    started_ms: float
    reply: str
    mode: str
    tokens_sent: int = 0
    first_token_ms: float | None = None
    finished: bool = False  # sent its GenerationFinal
    closed: bool = False  # closed or cancelled by the caller before finishing


class FakeLlmClient:
    """An ``LlmClient`` answering from a script.

    ``replies`` maps the user's text (case and surrounding space ignored) to the reply; other texts
    get ``default``. ``mode``: "ok", "error" (raises after ``ttft_ms``) or "stall" (never answers).
    """

    def __init__(self, replies: Mapping[str, str] | None = None, default: str = "Sure, I can help with that.",
                 ttft_ms: float = 40, token_ms: float = 5, final_delay_ms: float = 0,
                 clock: Clock = monotonic_ms) -> None:
        self.replies = {k.strip().casefold(): v for k, v in (replies or {}).items()}
        self.default = default
        self.ttft_ms = ttft_ms
        self.token_ms = token_ms
        self.final_delay_ms = final_delay_ms  # wait between the last token and the GenerationFinal
        self.mode = "ok"
        self.clock = clock
        self.calls: list[LlmCall] = []

    def reply_for(self, user_text: str) -> str:
        return self.replies.get(user_text.strip().casefold(), self.default)

    def generate(self, params: GenerateParams) -> AsyncIterator[LlmEvent]:
        user = next((m.content for m in reversed(params.messages) if m.role == "user"), "")
        call = LlmCall(params, user, self.clock(), self.reply_for(user), self.mode)
        self.calls.append(call)
        return self._stream(call)

    async def _stream(self, call: LlmCall) -> AsyncIterator[LlmEvent]:
        try:
            await asyncio.sleep(self.ttft_ms / 1000)
            if call.mode == "error":
                raise Unavailable("engine_unavailable", "fake LLM: engine error")
            if call.mode == "stall":
                await asyncio.Event().wait()
            tokens = [w + " " for w in call.reply.split(" ")]
            tokens[-1] = tokens[-1].rstrip(" ")
            for i, token in enumerate(tokens):
                if i:
                    await asyncio.sleep(self.token_ms / 1000)
                if call.first_token_ms is None:
                    call.first_token_ms = self.clock()
                call.tokens_sent += 1
                yield TextDelta(token)
            if self.final_delay_ms:
                await asyncio.sleep(self.final_delay_ms / 1000)
            call.finished = True
            yield GenerationFinal(ChatMessage("assistant", call.reply), "stop",
                                  Usage(prompt_tokens=10, completion_tokens=len(tokens)))
        except (GeneratorExit, asyncio.CancelledError):
            call.closed = not call.finished
            raise

    async def aclose(self) -> None:
        return None


# ---- TTS ---------------------------------------------------------------------------------------


@dataclass
class TtsCall:
    request: SynthesisRequest
    started_ms: float
    audio_ms: float
    chunks_sent: int = 0
    finished: bool = False
    closed: bool = False  # closed or cancelled before the end

    @property
    def text(self) -> str:
        return self.request.text


class FakeTtsClient:
    """A ``TtsClient``: a tone of ``ms_per_char`` per character, in ``chunk_ms`` chunks.

    The first chunk comes ``first_chunk_ms`` after the request, the others every ``chunk_delay_ms``.
    ``mode``: "ok", "error" (raises before any audio) or "stall" (never answers).
    """

    def __init__(self, ms_per_char: float = 10, first_chunk_ms: float = 20, chunk_ms: float = 100,
                 chunk_delay_ms: float = 0, freq_hz: float = 440.0, voice: str = "fake:voice",
                 clock: Clock = monotonic_ms) -> None:
        self.ms_per_char = ms_per_char
        self.first_chunk_ms = first_chunk_ms
        self.chunk_ms = chunk_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.freq_hz = freq_hz
        self.voice = voice
        self.mode = "ok"
        self.clock = clock
        self.calls: list[TtsCall] = []

    def audio_ms(self, text: str) -> float:
        return max(self.chunk_ms / 2, len(text) * self.ms_per_char)

    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        call = TtsCall(request, self.clock(), self.audio_ms(request.text))
        self.calls.append(call)
        return self._stream(call, self.mode)

    async def _stream(self, call: TtsCall, mode: str) -> AsyncIterator[AudioChunk]:
        rate = call.request.sample_rate_hz or RATE_HZ
        try:
            await asyncio.sleep(self.first_chunk_ms / 1000)
            if mode == "error":
                raise Unavailable("synthesis_failed", "fake TTS: backend error")
            if mode == "stall":
                await asyncio.Event().wait()
            total = int(rate * call.audio_ms / 1000)
            step = int(rate * self.chunk_ms / 1000)
            for seq, start in enumerate(range(0, total, step)):
                if seq and self.chunk_delay_ms:
                    await asyncio.sleep(self.chunk_delay_ms / 1000)
                n = min(step, total - start)
                pcm = tone(n * 1000 / rate, rate, self.freq_hz, 0.2, phase=start)
                call.chunks_sent += 1
                yield AudioChunk(pcm, rate, seq, call.request.text if seq == 0 else "", self.voice)
            call.finished = True
        except (GeneratorExit, asyncio.CancelledError):
            call.closed = not call.finished
            raise

    async def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(self.voice, ("en", "ar"), "fake", RATE_HZ, True)]

    async def aclose(self) -> None:
        return None


# ---- transport ---------------------------------------------------------------------------------


class FakeTransport:
    """A ``CallTransport`` that keeps what it is sent, with call-clock arrival times."""

    def __init__(self, sample_rate_hz: int = RATE_HZ, clock: Clock = monotonic_ms) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.clock = clock
        self.frames: list[tuple[float, bytes]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []

    async def send_audio(self, pcm16: bytes) -> None:
        self.frames.append((self.clock(), pcm16))

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append((self.clock(), dict(event)))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    def times_of(self, kind: str, **match: Any) -> list[float]:
        return [t for t, e in self.events if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())]

    def states(self) -> list[str]:
        return [e["state"] for e in self.of_type("state")]

    def frame_times(self, after: float = -math.inf, before: float = math.inf) -> list[float]:
        return [t for t, _ in self.frames if after <= t < before]

    def audio_ms(self) -> float:
        return sum(len(f) for _, f in self.frames) / 2 * 1000 / self.sample_rate_hz

    def bot_text(self) -> str:
        return " ".join(e["text"] for e in self.of_type("bot.text"))


# ---- settings and the call driver ---------------------------------------------------------------

FAST_CALL: dict[str, Any] = {
    "call.greeting": False,
    "call.endpoint.silence_ms": {"en": 400, "ar": 650},
    "call.endpoint.asr_segment_silence_ms": 250,
    "call.interruption.min_speech_ms": 250,
    "call.interruption.confirm_speech_ms": 600,
    "call.timeouts.asr_final_ms": 800,
    "call.timeouts.llm_first_token_ms": 400,
    "call.timeouts.llm_total_ms": 2000,
    "call.timeouts.tts_first_chunk_ms": 300,
    "call.breaker.failure_threshold": 2,
    "call.breaker.reset_after_s": 0.8,
    "call.silence_prompt_s": 30.0,
    "call.max_call_s": 60.0,
}


def fast_settings(**overrides: Any) -> Settings:
    """CPU-profile settings with a call loop sized for tests; ``overrides`` use dotted keys with '__'
    for '.' (``call__endpoint__silence_ms={"en": 300}``)."""
    tree = dict(FAST_CALL)
    tree.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(env={}, overrides=tree)


@dataclass
class CallHarness:
    """A ``CallSession`` on fakes, driven in real time with 20 ms caller frames."""

    settings: Settings = field(default_factory=fast_settings)
    language: str = "en"
    greeting: bool = False
    vad: FakeVadClient = field(default_factory=FakeVadClient)
    asr: FakeAsrClient = field(default_factory=FakeAsrClient)
    llm: FakeLlmClient = field(default_factory=FakeLlmClient)
    tts: FakeTtsClient = field(default_factory=FakeTtsClient)
    fallback_tts: FakeTtsClient = field(default_factory=lambda: FakeTtsClient(freq_hz=660.0, voice="espeak:fake"))
    transport: FakeTransport = field(default_factory=FakeTransport)

    def __post_init__(self) -> None:
        clients = BridgeClients(self.vad, self.asr, self.llm, self.tts, self.fallback_tts)
        self.session = CallSession("test-call", self.settings, clients, self.transport, language=self.language,
                                   greeting=self.greeting)
        clock = self.session.clock.now_ms
        for fake in (self.vad, self.llm, self.tts, self.fallback_tts, self.transport):
            fake.clock = clock
        self.task: asyncio.Task | None = None
        self.speech_onsets: list[float] = []  # call-clock ms at which each burst's first frame was sent
        self._next_frame_at = 0.0
        self._phase = 0

    def now(self) -> float:
        return self.session.clock.now_ms()

    async def start(self) -> CallHarness:
        self.task = asyncio.create_task(self.session.run())
        for _ in range(200):
            if self.vad.sessions:
                break
            await asyncio.sleep(0.005)
        assert self.vad.sessions, "the session did not open its VAD stream"
        self._next_frame_at = time.monotonic()
        return self

    async def __aenter__(self) -> CallHarness:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.hangup()

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    async def _frame(self, pcm: bytes, onset: bool = False) -> None:
        delay = self._next_frame_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.1:  # the test stalled: go on in real time rather than bursting to catch up
            self._next_frame_at = time.monotonic()
        self._next_frame_at += FRAME_MS / 1000
        if onset:  # the moment the session gets the burst's first frame
            self.speech_onsets.append(self.now())
        if not self.ended:
            await self.session.push_audio(pcm)

    async def say(self, ms: float, freq_hz: float = 220.0) -> None:
        """The caller speaks (a tone) for ``ms``."""
        rate = self.transport.sample_rate_hz
        for i in range(max(1, round(ms / FRAME_MS))):
            pcm = tone(FRAME_MS, rate, freq_hz, phase=self._phase)
            self._phase += len(pcm) // 2
            await self._frame(pcm, onset=i == 0)

    async def pause(self, ms: float) -> None:
        """The caller is silent for ``ms`` (audio keeps flowing)."""
        frame = silence(FRAME_MS, self.transport.sample_rate_hz)
        for _ in range(max(1, round(ms / FRAME_MS))):
            await self._frame(frame)

    async def until(self, predicate: Callable[[], bool], timeout_ms: float = 3000, what: str = "") -> float:
        """Feeds silence until ``predicate()`` holds; returns the call-clock time; fails on timeout."""
        frame = silence(FRAME_MS, self.transport.sample_rate_hz)
        deadline = self.now() + timeout_ms
        while not predicate():
            if self.now() > deadline:
                raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what or predicate}")
            await self._frame(frame)
        return self.now()

    async def until_turns(self, n: int, timeout_ms: float = 3000) -> None:
        await self.until(lambda: len(self.session.turns) >= n, timeout_ms, f"{n} turn(s)")

    async def until_listening(self, timeout_ms: float = 3000) -> None:
        """Until the bot has finished its reply and the call is listening again."""
        from media_bridge.state import CallState

        def listening() -> bool:  # state events are sent by tasks: wait for the transport to have it too
            states = self.transport.states()
            return (self.session.state == CallState.LISTENING and not self.session.playout.active
                    and bool(states) and states[-1] == "listening")

        await self.until(listening, timeout_ms, "listening")

    async def until_ended(self, timeout_ms: float = 5000) -> None:
        await self.until(lambda: self.ended, timeout_ms, "the end of the call")
        assert self.task is not None
        await self.task

    async def hangup(self, reason: str = "hangup") -> None:
        await self.session.hangup(reason)
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


def assistant_messages(history: Sequence[ChatMessage]) -> list[ChatMessage]:
    return [m for m in history if m.role == "assistant"]


if TYPE_CHECKING:  # the fakes satisfy the real seams (checked by mypy: `mypy tests/fakes.py`)
    from asr.api import AsrClient, AsrSession, VadClient, VadSession
    from media_bridge.session import CallTransport
    from nlu.api import LlmClient
    from tts.api import TtsClient

    _vad: VadClient = FakeVadClient()
    _vad_session: VadSession = FakeVadSession(FakeVadClient(), VadOptions())
    _asr: AsrClient = FakeAsrClient()
    _asr_session: AsrSession = FakeAsrClient().open(AsrOptions())
    _llm: LlmClient = FakeLlmClient()
    _tts: TtsClient = FakeTtsClient()
    _transport: CallTransport = FakeTransport()
