"""The bot's side of a turn: the reply sources (LLM, scripted, fallback) and the phrase speaker.

``LlmReply`` runs a generation in the background and buffers its events, so the same object serves
a speculative start (maybe discarded) and the committed reply. ``ScriptedReply`` speaks a fixed
line through the same path. ``PhraseSpeaker`` renders one phrase with the primary TTS under its
circuit breaker and first-chunk timeout, and falls back to the local espeak-ng voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from media_bridge.resilience import CircuitBreaker
from media_bridge.timeline import CallClock, TurnTimings
from nlu.api import LlmEvent, TextDelta
from tts.api import SynthesisRequest, TtsClient

log = logging.getLogger(__name__)

FALLBACKS = Counter("voiceai_fallbacks_total", "Turns that used a fallback, by dependency.", ["dependency"])

_END = object()


@dataclass
class TurnRecord:
    """A finished caller turn, as the call record and the `turn` event show it."""

    index: int
    user_text: str
    bot_text: str
    language: str
    interrupted: bool
    timings: TurnTimings
    fallbacks: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)  # tools run for this reply (call record only)

    def as_event(self) -> dict[str, Any]:
        return {"type": "turn", "turn": self.index, "user_text": self.user_text, "bot_text": self.bot_text,
                "language": self.language, "interrupted": self.interrupted, "stages": self.timings.as_dict(),
                "fallbacks": self.fallbacks, "sources": self.sources}


class LlmReply:
    """An LLM generation running in the background; its events are buffered until consumed.

    Used both for speculation (started during the silence window, maybe discarded) and for the
    committed reply.
    """

    def __init__(self, text: str, events: AsyncIterator[LlmEvent], clock: CallClock, breaker: CircuitBreaker,
                 spawn: Callable[[Any], asyncio.Task]) -> None:
        self.text = text
        self._queue: asyncio.Queue = asyncio.Queue()
        self.first_token_ms: float | None = None
        self._clock = clock
        self._breaker = breaker
        self.task = spawn(self._pump(events))

    async def _pump(self, events: AsyncIterator[LlmEvent]) -> None:
        try:
            async for event in events:
                if self.first_token_ms is None and isinstance(event, TextDelta) and event.text.strip():
                    self.first_token_ms = self._clock.now_ms()
                self._queue.put_nowait(event)
            self._queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._queue.put_nowait(err)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def next(self, timeout_s: float) -> LlmEvent | None:
        """The next event, None at the end; raises the generation's error or TimeoutError."""
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as an event
        # arrives (it returns the event instead), so a barge-in during a token stream could leave
        # the reply running: the bot went on talking after the flush.
        async with asyncio.timeout(timeout_s):
            item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.task.cancel()
        # If this generation was the breaker's half-open probe, it will never report now.
        self._breaker.release()


class ScriptedReply:
    """A reply that needs no LLM (greeting, fallbacks, prompts), behind the same interface."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.first_token_ms: float | None = None
        self._sent = False

    async def next(self, timeout_s: float) -> LlmEvent | None:
        if self._sent:
            return None
        self._sent = True
        return TextDelta(self.text)

    def cancel(self) -> None:
        return None


class FallbackReply(ScriptedReply):
    """The LLM breaker is open: the scripted fallback reply, counted as an LLM fallback."""


class PhraseSpeaker:
    """Turns phrases into audio for one call (primary voice, else the local fallback voice)."""

    def __init__(self, tts: TtsClient, fallback_tts: TtsClient, breaker: CircuitBreaker, sample_rate_hz: int,
                 first_chunk_timeout_ms: int, on_audio: Callable[[bytes, TurnRecord | None], None]) -> None:
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.breaker = breaker
        self.sample_rate_hz = sample_rate_hz
        self.first_chunk_timeout_ms = first_chunk_timeout_ms
        self.on_audio = on_audio

    async def speak(self, phrase: str, language: str, turn: TurnRecord | None, call_id: str) -> None:
        """Renders one phrase into the playout: the primary voice, else the local fallback voice."""
        breaker = self.breaker
        request = SynthesisRequest(text=phrase, language=language, sample_rate_hz=self.sample_rate_hz,
                                   call_id=call_id)
        if breaker.allow():
            chunks = self.tts.synthesize(request)
            sent_any = False
            try:
                timeout_s = self.first_chunk_timeout_ms / 1000
                while True:
                    # asyncio.timeout, not wait_for: see LlmReply.next (cancellation must not be lost).
                    async with asyncio.timeout(timeout_s if not sent_any else 10 * timeout_s):
                        chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    self.on_audio(chunk.pcm16, turn)
                    sent_any = True
                breaker.success()
                return
            except asyncio.CancelledError:
                breaker.release()  # no verdict: a half-open probe must not stay taken
                raise
            except Exception as err:
                breaker.failure("timeout" if isinstance(err, TimeoutError) else "error")
                log.warning("tts failed", extra={"call_id": call_id, "error": repr(err)})
                if sent_any:
                    return  # half a phrase is better than the phrase twice
            finally:
                with contextlib.suppress(Exception):
                    await chunks.aclose()  # type: ignore[attr-defined]
        FALLBACKS.labels("tts").inc()
        if turn is not None and "tts" not in turn.fallbacks:
            turn.fallbacks.append("tts")
        fallback = SynthesisRequest(text=phrase, language=language, sample_rate_hz=self.sample_rate_hz,
                                    call_id=call_id)
        try:
            async for chunk in self.fallback_tts.synthesize(fallback):
                self.on_audio(chunk.pcm16, turn)
        except Exception as err:
            # The last resort failed too: this phrase goes unsaid, but the reply must still end.
            # Raising here killed the speaker, the reply never ended and the playout stayed
            # "active": a mute call, stuck out of listening, with no silence prompts.
            log.error("fallback tts failed", extra={"call_id": call_id, "error": repr(err)})
