"""One call: caller audio in, bot audio out, driven by the state machine in ``state.py``.

Who does what:
- ``_on_vad``: the bridge's own (in-process) VAD; speech start/stop, barge-in pause and decision.
- ``_asr_loop``: the ASR stream; segment finals build the caller's turn; restarts after failures.
- ``_on_segment``: endpointing (per-language silence, shortened for short answers) and the
  speculative LLM start during the silence window.
- ``_respond``: LLM deltas -> phrase chunker -> TTS -> paced playout, with per-stage timeouts,
  circuit breakers and fallbacks (scripted reply, espeak-ng voice).
- ``_tick``: silence prompts and the maximum call duration.

Every task is created through ``_spawn`` and cancelled when the call ends, so a caller who hangs up
mid-reply leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from asr.api import AsrOptions, AsrSession, SpeechBoundary, Transcript, VadEvent, VadOptions, VadSession
from media_bridge.clients import BridgeClients
from media_bridge.endpointing import Endpointer
from media_bridge.interruption import BargeInPolicy, Verdict
from media_bridge.playout import Playout
from media_bridge.replies import scripted
from media_bridge.reply import FALLBACKS, FallbackReply, LlmReply, PhraseSpeaker, ScriptedReply, TurnRecord
from media_bridge.resilience import CircuitBreaker
from media_bridge.state import CallState, StateMachine
from media_bridge.timeline import CallClock, TurnTimings
from nlu.api import ChatMessage, GenerateParams, GenerationFinal, TextDelta
from rag.answer import GroundedLlm
from tts.chunker import PhraseChunker, split_phrases
from voiceai.audio import MODEL_RATE_HZ, Pcm16Assembler, StreamResampler, float_to_pcm16
from voiceai.config import Settings
from voiceai.tasks import TaskSet

log = logging.getLogger(__name__)

ACTIVE_CALLS = Gauge("voiceai_active_calls", "Calls in progress.")
TURN_STAGE_SECONDS = Histogram(
    "voiceai_turn_stage_seconds", "Per-stage latency of caller turns.", ["stage", "language"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0))
BARGE_INS = Counter("voiceai_barge_ins_total", "Caller interruptions, by outcome.", ["outcome"])
_VAD_MIN_SILENCE_MS = 200


class CallTransport(Protocol):
    """Where the bot's audio and the call's events go (WebSocket, WebRTC, SIP...).

    A transport may also have ``async transfer(target: str) -> bool`` (SIP REFER): the session calls
    it when the caller is handed to a person, after the "please hold" line has played."""

    sample_rate_hz: int

    async def send_audio(self, pcm16: bytes) -> None: ...

    async def send_event(self, event: dict[str, Any]) -> None: ...


@dataclass
class _BargeIn:
    started_ms: float
    audio_start_ms: int = 0  # the speech's onset in the caller's audio (VAD/ASR stream time)
    audio_end_ms: int | None = None
    speech_ended_ms: float | None = None
    awaiting_transcript: bool = False


class CallSession:
    """Runs one call until the caller hangs up or the call times out."""

    def __init__(self, call_id: str, settings: Settings, clients: BridgeClients, transport: CallTransport,
                 language: str = "en", greeting: bool | None = None,
                 on_turn: Callable[[TurnRecord], Awaitable[None] | None] | None = None, tenant: str = "") -> None:
        self.call_id = call_id
        self.tenant = tenant or settings.kb.default_tenant
        self.settings = settings
        self.cfg = settings.call
        self.clients = clients
        self.transport = transport
        self.language = language
        self.greeting = self.cfg.greeting if greeting is None else greeting
        self.on_turn = on_turn
        self.clock = CallClock()
        self.sm = StateMachine(self._state_changed)
        self.endpointer = Endpointer(self.cfg.endpoint, language)
        self.barge_policy = BargeInPolicy(self.cfg.interruption)
        breaker_cfg = self.cfg.breaker
        # Shared by every call of the process when the clients carry them: a dead server then costs
        # one caller a timeout, not every caller.
        self.breakers = clients.breakers if clients.breakers is not None else {
            name: CircuitBreaker(name, breaker_cfg) for name in ("asr", "llm", "tts")}
        self.playout = Playout(transport.send_audio, transport.sample_rate_hz, self.cfg.frame_ms,
                               on_first_frame=self._first_frame_sent, on_drained=self._reply_drained,
                               on_phrase_start=self._phrase_started)
        self.speaker = PhraseSpeaker(clients.tts, clients.fallback_tts, self.breakers["tts"],
                                     transport.sample_rate_hz, self.cfg.timeouts.tts_first_chunk_ms, self._audio_ready)
        self.history: list[ChatMessage] = []
        self.turns: list[TurnRecord] = []
        self.ended_reason: str | None = None
        self._tasks = TaskSet(log, "call task failed", call_id=call_id)
        self._ended = asyncio.Event()
        self._assembler = Pcm16Assembler()
        self._resampler = StreamResampler(transport.sample_rate_hz, MODEL_RATE_HZ)
        self._audio_in_ms = 0.0
        self._vad: VadSession | None = None
        self._asr: AsrSession | None = None
        # The caller's turn being built.
        self._segments: list[str] = []
        self._turn_language = language
        self._turn_timings = TurnTimings()
        self._speaking_since: float | None = None
        self._endpoint_task: asyncio.Task | None = None
        self._endpoint_waits_vad = False
        self._speculation: LlmReply | None = None
        # The bot's reply in progress.
        self._reply_task: asyncio.Task | None = None
        self._reply_parts: tuple[asyncio.Task, LlmReply | ScriptedReply] | None = None  # its speaker, its LLM
        self._reply: TurnRecord | None = None
        self._reply_user_text = ""
        self._reply_text_parts: list[str] = []
        self._barge: _BargeIn | None = None
        self._dismissed: tuple[int, int] | None = None  # audio span of the last burst judged no interruption
        self._turn_index = 0
        self._last_activity_ms = 0.0
        self._silence_prompts = 0
        self._closing = False
        self._closing_after_reply = False
        self.dtmf: list[str] = []  # keys the caller pressed, in order
        self.transfer_target: str | None = None

    # ---- public ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs the call until it ends; always cleans up."""
        ACTIVE_CALLS.inc()
        try:
            await self._emit({"type": "call.started", "call_id": self.call_id, "language": self.language,
                              "sample_rate_hz": self.transport.sample_rate_hz, "frame_ms": self.cfg.frame_ms})
            await self._emit({"type": "state", "state": self.sm.state.value})
            self._vad = self.clients.vad.open(VadOptions(sample_rate_hz=MODEL_RATE_HZ,
                                                         min_silence_ms=_VAD_MIN_SILENCE_MS, stream_id=self.call_id))
            self.playout.start()
            self._spawn(self._vad_loop())
            self._spawn(self._asr_loop())
            self._spawn(self._tick())
            if self.greeting:
                self._start_reply(ScriptedReply(scripted("greeting", self.language)), user_text=None)
            await self._ended.wait()
            if self.transfer_target is not None:
                await self._hand_over(self.transfer_target)
        finally:
            await self._cleanup()
            ACTIVE_CALLS.dec()

    async def push_audio(self, pcm16: bytes) -> None:
        """Caller audio at the transport's rate (any chunking)."""
        if self._ended.is_set() or self._vad is None:
            return
        samples = self._resampler.process(self._assembler.push(pcm16))
        if samples.size == 0:
            return
        pcm = float_to_pcm16(samples)
        self._audio_in_ms += samples.size * 1000 / MODEL_RATE_HZ
        self.clock.audio_received(self._audio_in_ms)
        await self._vad.send(pcm)
        if self._asr is not None:
            try:
                await self._asr.send_audio(pcm)
            except Exception:  # the ASR loop sees the failure on its result stream
                log.debug("asr send failed", extra={"call_id": self.call_id})

    async def push_dtmf(self, digit: str, duration_ms: int = 0) -> None:
        """A key the caller pressed (RFC 4733 telephone-event on SIP). The transfer key asks for a person."""
        if self._ended.is_set():
            return
        self.dtmf.append(digit)
        await self._emit({"type": "dtmf", "digit": digit, "duration_ms": duration_ms})
        if digit == self.cfg.transfer.dtmf_digit:
            self.transfer()

    def transfer(self, target: str | None = None) -> None:
        """Hands the caller to a person: "please hold", then the transport transfers (SIP REFER) and the
        call ends with reason ``transferred``."""
        if self.transfer_target is not None or self._ended.is_set():
            return
        self.transfer_target = target or self.cfg.transfer.target
        self._stop_reply()
        self.playout.flush()
        self._say_goodbye("transfer", "transferred")

    async def _hand_over(self, target: str) -> None:
        await self._emit({"type": "transfer", "target": target})
        do_transfer = getattr(self.transport, "transfer", None)
        if do_transfer is None:
            return
        try:
            ok = await asyncio.wait_for(do_transfer(target), self.cfg.transfer.timeout_s)
        except Exception as err:  # a failed transfer still ends the bot's part
            log.warning("transfer failed", extra={"call_id": self.call_id, "error": repr(err)})
            ok = False
        if not ok:
            self.ended_reason = "transfer_failed"

    async def hangup(self, reason: str = "hangup") -> None:
        """Ends the call now (the caller left, or the server decided)."""
        if self.transfer_target is not None and not self._ended.is_set():
            self.transfer_target = None  # gone before the hand-over: nothing to transfer
            self.ended_reason = None
        if self.ended_reason is None:
            self.ended_reason = reason
        self._ended.set()

    @property
    def state(self) -> CallState:
        return self.sm.state

    # ---- plumbing ----------------------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        return self._tasks.spawn(coro)

    async def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("t_ms", round(self.clock.now_ms(), 1))
        try:
            await self.transport.send_event(event)
        except Exception:  # the caller is gone; the gateway ends the call
            log.debug("event not delivered", extra={"call_id": self.call_id})

    def _emit_soon(self, event: dict[str, Any]) -> None:
        if not self._ended.is_set():
            self._spawn(self._emit(event))

    def _state_changed(self, old: CallState, new: CallState) -> None:
        self._emit_soon({"type": "state", "state": new.value})

    def _to(self, state: CallState) -> None:
        if not self.sm.ended:
            self.sm.to(state)

    async def _cleanup(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self.sm.to(CallState.ENDED)
        if self._speculation:
            self._speculation.cancel()
        await self._tasks.cancel_all()
        await self.playout.stop()
        for session in (self._asr, self._vad):
            if session is not None:
                with contextlib.suppress(Exception):
                    abort = getattr(session, "abort", None)
                    await (abort() if abort else session.close())
        with contextlib.suppress(Exception):
            await self.transport.send_event({"type": "call.ended", "reason": self.ended_reason or "hangup",
                                             "t_ms": round(self.clock.now_ms(), 1)})
        log.info("call ended", extra={"call_id": self.call_id, "reason": self.ended_reason,
                                      "turns": len(self.turns)})

    # ---- caller speech (VAD) -----------------------------------------------------------------

    async def _vad_loop(self) -> None:
        assert self._vad is not None
        async for event in self._vad.events():
            await self._on_vad(event)

    async def _on_vad(self, event: VadEvent) -> None:
        at_ms = self.clock.at_audio(event.timestamp_ms)
        self._last_activity_ms = self.clock.now_ms()
        self._silence_prompts = 0
        if event.kind == "speech_start":
            self._speaking_since = at_ms
            await self._emit({"type": "speech.started", "audio_ms": event.timestamp_ms})
            self._cancel(self._endpoint_task)
            if self.playout.active and self.sm.state == CallState.BOT_SPEAKING \
                    and self.cfg.interruption.enabled and not self._closing_after_reply:
                self.playout.pause()  # silence now; decide below whether it was a real interruption
                self._barge = _BargeIn(started_ms=at_ms, audio_start_ms=event.timestamp_ms)
            elif self.sm.state == CallState.THINKING and self._reply_user_text:
                # The caller goes on before the bot said anything: it was not the end of the turn.
                self._reopen_turn()
            elif self.sm.state in (CallState.LISTENING, CallState.USER_SPEAKING):
                self._to(CallState.USER_SPEAKING)
        elif event.kind == "speech_end":
            self._speaking_since = None
            await self._emit({"type": "speech.stopped", "audio_ms": event.timestamp_ms})
            if self._barge is not None:
                verdict = self.barge_policy.speech_ended(event.speech_duration_ms)
                self._barge.speech_ended_ms = at_ms
                self._barge.audio_end_ms = event.timestamp_ms
                if verdict == Verdict.WAIT:
                    self._barge.awaiting_transcript = True
                    self._spawn(self._barge_transcript_timeout(self._barge))
                else:
                    await self._decide_barge(verdict)
                return
            self._turn_timings.speech_end_ms = at_ms
            if self._endpoint_waits_vad:
                self._endpoint_waits_vad = False
                self._arm_endpoint()

    async def _decide_barge(self, verdict: Verdict) -> None:
        if self._barge is None or verdict == Verdict.WAIT:
            return
        barge, self._barge = self._barge, None
        if verdict == Verdict.RESUME:
            BARGE_INS.labels("resumed").inc()
            if barge.audio_end_ms is not None:
                self._dismissed = (barge.audio_start_ms, barge.audio_end_ms)
            self.playout.resume()
            return
        BARGE_INS.labels("interrupted").inc()
        await self._interrupt()

    async def _barge_transcript_timeout(self, barge: _BargeIn) -> None:
        await asyncio.sleep(self.cfg.timeouts.asr_final_ms / 1000)
        if self._barge is barge:  # no words came: it was noise
            await self._decide_barge(Verdict.RESUME)

    async def _interrupt(self) -> None:
        """The caller took the turn: cut the reply, keep only what was heard."""
        heard = self.playout.flush()
        reply = self._reply
        self._stop_reply()
        if reply is not None:
            reply.bot_text = heard
            reply.interrupted = True
            await self._finish_turn(reply, interrupted=True)
        await self._emit({"type": "barge_in", "turn": reply.index if reply else self._turn_index,
                          "played_text": heard})
        self._to(CallState.INTERRUPTED)
        self._to(CallState.USER_SPEAKING)
        self._turn_timings = TurnTimings()

    def _reopen_turn(self) -> None:
        """Undo a committed turn whose reply has not started playing."""
        self._stop_reply()
        self.playout.flush()
        if self._reply_user_text:
            self._segments = [self._reply_user_text]
            self._turn_index -= 1  # that turn was never answered: its next commit is the same turn
        self._reply = None
        self._reply_user_text = ""
        self._to(CallState.USER_SPEAKING)

    # ---- caller words (ASR) ------------------------------------------------------------------

    async def _asr_loop(self) -> None:
        breaker = self.breakers["asr"]
        while not self._ended.is_set():
            if not breaker.allow():
                await asyncio.sleep(0.2)
                continue
            options = AsrOptions(language="auto", sample_rate_hz=MODEL_RATE_HZ, call_id=self.call_id,
                                 interim_results=True,
                                 endpoint_silence_ms=self.cfg.endpoint.asr_segment_silence_ms)
            try:
                self._asr = self.clients.asr.open(options)
                async for result in self._asr.results():
                    breaker.success()
                    if isinstance(result, Transcript):
                        await self._on_transcript(result)
                    elif isinstance(result, SpeechBoundary):
                        continue
                if not self._ended.is_set():
                    raise ConnectionError("ASR stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._asr = None
                breaker.failure("stream")
                FALLBACKS.labels("asr").inc()
                log.warning("asr stream failed", extra={"call_id": self.call_id, "error": str(err)})
                await self._emit({"type": "error", "code": "asr_unavailable", "message": "speech recognition "
                                  "failed; the call goes on", "fatal": False})
                if self._segments or self._speaking_since is not None or self.sm.state == CallState.USER_SPEAKING:
                    self._segments = []
                    self._start_reply(ScriptedReply(scripted("repeat", self._turn_language)), user_text=None)
                await asyncio.sleep(0.3)

    async def _on_transcript(self, t: Transcript) -> None:
        if not t.is_final:
            if t.text:
                await self._emit({"type": "transcript.interim", "turn": self._turn_index + 1, "text": t.text,
                                  "stable_text": t.stable_text, "language": t.language})
            return
        if self._barge is not None:
            verdict = self.barge_policy.transcript(t.text)
            if verdict == Verdict.RESUME:
                await self._decide_barge(Verdict.RESUME)
                self._dismissed = None
                return  # a backchannel is not a turn
            await self._decide_barge(Verdict.INTERRUPT)
        elif self._dismissed is not None and self._is_dismissed(t):
            # The transcript of a burst already judged not an interruption (too short, or no words in
            # time): a cough or "mm" the ASR put words on is not the caller's next turn either.
            self._dismissed = None
            return
        if not t.text.strip():
            # Noise with no words. Its speech_start cancelled the endpoint timer of a turn still
            # pending: re-arm it, or that turn would wait until the caller happened to speak again.
            if self._segments:
                self._arm_endpoint()
            elif self.sm.state == CallState.USER_SPEAKING and self._speaking_since is None:
                self._to(CallState.LISTENING)  # noise alone is no turn
            return
        await self._on_segment(t)

    def _is_dismissed(self, t: Transcript) -> bool:
        assert self._dismissed is not None
        start, end = self._dismissed
        slack = 200  # the ASR's segmenter and the bridge's VAD do not cut at the same millisecond
        return t.start_ms >= start - slack and t.end_ms <= end + slack

    async def _on_segment(self, t: Transcript) -> None:
        now = self.clock.now_ms()
        self._segments.append(t.text.strip())
        self._turn_language = t.language if t.language in self.settings.asr.languages else self.language
        self._turn_timings.final_transcript_ms = now
        if self._turn_timings.speech_end_ms is None:
            self._turn_timings.speech_end_ms = self.clock.at_audio(t.end_ms)
        await self._emit({"type": "transcript.final", "turn": self._turn_index + 1, "text": t.text,
                          "language": t.language, "confidence": round(t.confidence, 3)})
        if self._closing_after_reply:
            self._segments = []  # the goodbye is playing and the call ends after it: no new turn
            return
        text = " ".join(self._segments)
        if self.sm.state in (CallState.LISTENING,):
            self._to(CallState.USER_SPEAKING)
        deadline = self.endpointer.deadline_ms(self._turn_timings.speech_end_ms, text, self._turn_language)
        if self._speculation and self._speculation.text != text:
            self._speculation.cancel()  # the transcript changed: that answer is for another question
            self._speculation = None
        if self.cfg.speculative and self._speculation is None and deadline > now:
            generation = self._generate(text)
            # With the LLM breaker open there is nothing to start early; keeping the scripted
            # fallback as a "speculation" would compare its reply text with the caller's text.
            self._speculation = generation if isinstance(generation, LlmReply) else None
        self._arm_endpoint(deadline)

    def _arm_endpoint(self, deadline_ms: float | None = None) -> None:
        """(Re)starts the end-of-turn timer for the segments so far."""
        if deadline_ms is None:
            end = self._turn_timings.speech_end_ms
            deadline_ms = self.endpointer.deadline_ms(self.clock.now_ms() if end is None else end,
                                                      " ".join(self._segments), self._turn_language)
        self._endpoint_waits_vad = False
        self._cancel(self._endpoint_task)
        self._endpoint_task = self._spawn(self._endpoint_after(deadline_ms))

    async def _endpoint_after(self, deadline_ms: float) -> None:
        delay = (deadline_ms - self.clock.now_ms()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        if not self._segments:
            return
        if self._speaking_since is not None:
            # The final came before the bridge's VAD heard the speech end (the ASR's segment
            # silence is shorter, or the VAD lags); a resumed speech would have cancelled this
            # timer. The VAD's speech_end re-arms it; before, a short answer ("yes") hung here.
            self._endpoint_waits_vad = True
            return
        self._commit_turn()

    def _commit_turn(self) -> None:
        text = " ".join(self._segments)
        self._segments = []
        self._endpoint_waits_vad = False
        self._turn_timings.endpoint_ms = self.clock.now_ms()
        generation: LlmReply | FallbackReply | None = None
        if self._speculation and self._speculation.text == text:
            generation = self._speculation
        elif self._speculation:
            self._speculation.cancel()
        self._speculation = None
        if generation is None:
            generation = self._generate(text)
        self._start_reply(generation, user_text=text)

    # ---- the bot's reply ---------------------------------------------------------------------

    def _generate(self, user_text: str) -> LlmReply | FallbackReply:
        breaker = self.breakers["llm"]
        if not breaker.allow():  # counted as a fallback when the reply is spoken
            return FallbackReply(scripted("llm_fallback", self._turn_language))
        history = self.history[-2 * self.cfg.history_turns:]
        params = GenerateParams(
            messages=(*history, ChatMessage("user", user_text)), language=self._turn_language,
            max_tokens=self.cfg.max_reply_tokens, timeout_ms=self.cfg.timeouts.llm_total_ms, call_id=self.call_id)
        llm = self.clients.llm
        if self.clients.kb is not None:  # retrieval runs inside the reply, so speculation covers it too
            llm = GroundedLlm(llm, self.clients.kb, self.tenant)
        return LlmReply(user_text, llm.generate(params), self.clock, self.breakers["llm"], self._spawn)

    def _stop_reply(self) -> None:
        """Cuts the reply in progress now: its task, its speaker and its LLM stream.

        All three are cancelled here, synchronously. Cancelling only the reply task reaches the
        speaker one loop iteration later, and a TTS chunk that is ready in between would be queued
        after the playout's flush: heard after the barge-in.
        """
        self._cancel(self._reply_task)
        self._reply_task = None
        if self._reply_parts is not None:
            speaker, generation = self._reply_parts
            self._reply_parts = None
            speaker.cancel()
            generation.cancel()

    def _start_reply(self, generation: LlmReply | ScriptedReply, user_text: str | None) -> None:
        if self._reply_task is not None:
            # A new reply replaces one still producing or playing (the goodbye at the time limit, a
            # "repeat" after an ASR failure...).
            heard = self.playout.flush()
            cut = self._reply
            if cut is not None and cut not in self.turns:
                # Record what the caller heard of it; before, the turn vanished from the call record.
                cut.bot_text, cut.interrupted = heard, True
                self._spawn(self._finish_turn(cut, interrupted=True))
        self._stop_reply()
        if user_text is not None:
            self._turn_index += 1
            timings, self._turn_timings = self._turn_timings, TurnTimings()
            self._reply = TurnRecord(self._turn_index, user_text, "", self._turn_language, False, timings)
        else:
            self._reply = None
        self._reply_user_text = user_text or ""
        self._reply_text_parts = []
        self._to(CallState.THINKING)
        self.playout.start_reply()
        language = self._reply.language if self._reply else self._turn_language
        phrases: asyncio.Queue = asyncio.Queue()
        speaker = self._spawn(self._speak(phrases, language, self._reply))
        self._reply_parts = (speaker, generation)
        self._reply_task = self._spawn(self._respond(generation, self._reply, language, phrases, speaker))

    async def _respond(self, generation: LlmReply | ScriptedReply, turn: TurnRecord | None, language: str,
                       phrases: asyncio.Queue, speaker: asyncio.Task) -> None:
        try:
            await self._produce(generation, turn, language, phrases)
            await speaker
        except asyncio.CancelledError:
            # The reply was cut (barge-in, a newer reply, hang-up). Cancelling this task alone would
            # leave the LLM stream running and the speaker synthesising the queued phrases into the
            # playout after its flush: the bot would go on talking over the caller.
            generation.cancel()
            speaker.cancel()
            raise
        self.playout.end_reply()

    async def _produce(self, generation: LlmReply | ScriptedReply, turn: TurnRecord | None, language: str,
                       phrases: asyncio.Queue) -> None:
        """LLM events -> phrases for the speaker (or the scripted fallback); None at the end."""
        t = self.cfg.timeouts
        chunker = PhraseChunker(self.settings.tts.chunker)
        try:
            if isinstance(generation, FallbackReply):
                FALLBACKS.labels("llm").inc()
                if turn is not None:
                    turn.fallbacks.append("llm")
            # Both limits count from the moment the reply was committed: the first token must come
            # within llm_first_token_ms, the whole reply within llm_total_ms.
            loop = asyncio.get_running_loop()
            first_deadline = loop.time() + t.llm_first_token_ms / 1000
            total_deadline = loop.time() + t.llm_total_ms / 1000
            got_text = False
            while True:
                deadline = total_deadline if got_text else min(first_deadline, total_deadline)
                try:
                    event = await generation.next(max(0.0, deadline - loop.time()))
                except Exception as err:  # TimeoutError included; CancelledError passes through
                    generation.cancel()
                    if isinstance(generation, LlmReply):
                        self.breakers["llm"].failure("timeout" if isinstance(err, TimeoutError) else "error")
                    log.warning("llm failed", extra={"call_id": self.call_id, "error": repr(err)})
                    if not got_text:
                        FALLBACKS.labels("llm").inc()
                        if turn is not None:
                            turn.fallbacks.append("llm")
                        for p in split_phrases(scripted("llm_fallback", language), self.settings.tts.chunker):
                            phrases.put_nowait(p)
                    break
                if event is None:
                    break
                if isinstance(event, TextDelta):
                    if not got_text and isinstance(generation, LlmReply):
                        self.breakers["llm"].success()
                    got_text = True
                    if turn is not None and turn.timings.llm_first_token_ms is None:
                        turn.timings.llm_first_token_ms = generation.first_token_ms or self.clock.now_ms()
                    for p in chunker.push(event.text):
                        phrases.put_nowait(p)
                elif isinstance(event, GenerationFinal) and turn is not None:
                    turn.sources = list(event.sources)
                    turn.actions = list(event.actions)
            for p in chunker.flush():
                phrases.put_nowait(p)
        finally:
            phrases.put_nowait(None)

    async def _speak(self, phrases: asyncio.Queue, language: str, turn: TurnRecord | None) -> None:
        while (phrase := await phrases.get()) is not None:
            self._reply_text_parts.append(phrase)
            if turn is not None and turn.timings.first_phrase_ms is None:
                turn.timings.first_phrase_ms = self.clock.now_ms()
            self.playout.begin_phrase(phrase)
            await self.speaker.speak(phrase, language, turn, self.call_id)
            self.playout.end_phrase()

    def _audio_ready(self, pcm16: bytes, turn: TurnRecord | None) -> None:
        if turn is not None and turn.timings.tts_first_audio_ms is None:
            turn.timings.tts_first_audio_ms = self.clock.now_ms()
        self.playout.enqueue(pcm16)

    def _phrase_started(self, phrase: str) -> None:
        """The first frame of a phrase went out: the caller starts hearing it now."""
        turn = self._reply
        self._emit_soon({"type": "bot.text", "turn": turn.index if turn else self._turn_index, "text": phrase})

    def _first_frame_sent(self) -> None:
        if self._reply is not None and self._reply.timings.first_audio_sent_ms is None:
            self._reply.timings.first_audio_sent_ms = self.clock.now_ms()
        if self.sm.state == CallState.THINKING:
            self._to(CallState.BOT_SPEAKING)

    def _reply_drained(self) -> None:
        """The whole reply was sent to the caller."""
        reply = self._reply
        text = " ".join(self._reply_text_parts)
        self._reply_task = None
        self._reply_parts = None
        self._last_activity_ms = self.clock.now_ms()
        if reply is not None:
            reply.bot_text = text
            self._spawn(self._finish_turn(reply, interrupted=False))
        elif text:
            self.history.append(ChatMessage("assistant", text))
        if self._barge is not None:
            # The last audio was out before the caller's speech began (the LLM stream was still
            # closing): nothing is left to interrupt; the speech is the caller's next turn. Left
            # pending, its verdict would "interrupt" a finished reply from the listening state.
            self._barge = None
            self.playout.resume()
        if self.sm.state in (CallState.BOT_SPEAKING, CallState.THINKING):
            self._to(CallState.LISTENING)
        if self._speaking_since is not None and self.sm.state == CallState.LISTENING:
            self._to(CallState.USER_SPEAKING)
        if self._closing_after_reply:
            self._ended.set()

    async def _finish_turn(self, turn: TurnRecord, interrupted: bool) -> None:
        if turn in self.turns:
            return
        self._reply = None if self._reply is turn else self._reply
        self.turns.append(turn)
        self.history.append(ChatMessage("user", turn.user_text))
        if turn.bot_text or not interrupted:
            self.history.append(ChatMessage("assistant", turn.bot_text, interrupted=interrupted))
        for stage, ms in turn.timings.stage_durations_ms().items():
            TURN_STAGE_SECONDS.labels(stage, turn.language).observe(ms / 1000)
        await self._emit(turn.as_event())
        if self.on_turn is not None:
            result = self.on_turn(turn)
            if asyncio.iscoroutine(result):
                await result

    # ---- timers ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        started = time.monotonic()
        while not self._ended.is_set():
            await asyncio.sleep(0.05)
            now = self.clock.now_ms()
            barge = self._barge
            if barge is not None and self._speaking_since is not None and barge.speech_ended_ms is None:
                if self.barge_policy.while_speaking(now - barge.started_ms) == Verdict.INTERRUPT:
                    await self._decide_barge(Verdict.INTERRUPT)
            if self._closing_after_reply:
                continue
            if time.monotonic() - started >= self.cfg.max_call_s:
                self._say_goodbye("goodbye_max", "max_duration")
                continue
            # user_speaking with no words pending and no speech is a caller who made a noise and went
            # quiet (no final, or an empty one): still silent as far as prompts are concerned.
            idle = (self.sm.state in (CallState.LISTENING, CallState.USER_SPEAKING) and not self.playout.active
                    and not self._segments and self._speaking_since is None)
            if idle and now - self._last_activity_ms >= self.cfg.silence_prompt_s * 1000:
                self._last_activity_ms = now
                if self._silence_prompts >= self.cfg.silence_prompts:
                    self._say_goodbye("goodbye_silent", "caller_silent")
                else:
                    self._silence_prompts += 1
                    self._start_reply(ScriptedReply(scripted("still_there", self.language)), user_text=None)

    def _say_goodbye(self, line: str, reason: str) -> None:
        self.ended_reason = reason
        self._closing_after_reply = True
        # The call ends when the goodbye has played; a pending barge-in (or any later one, see
        # _on_vad) would flush it, and a flushed reply never drains: the call would never end.
        self._barge = None
        self._start_reply(ScriptedReply(scripted(line, self.language)), user_text=None)

    @staticmethod
    def _cancel(task: asyncio.Task | None) -> None:
        if task is not None and not task.done():
            task.cancel()
