"""Deterministic timeline tests of ``media_bridge.session.CallSession`` on scripted fake clients.

The caller is driven in real time with 20 ms frames (speech is a tone, silence is zeros); the fakes
segment it by energy and answer from scripts (``tests/fakes.py``). Config values are small so that
each test lasts a second or three. Times are call-clock milliseconds throughout.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from media_bridge.replies import scripted
from media_bridge.resilience import BreakerState
from media_bridge.state import CallState
from tests.fakes import (
    FRAME_MS,
    CallHarness,
    FakeAsrClient,
    FakeLlmClient,
    FakeTtsClient,
    Utterance,
    assistant_messages,
    fast_settings,
)

pytestmark = pytest.mark.unit

LONG_REPLY = ("Our branches open at nine in the morning and close at five in the evening. "
              "On Fridays they open at two in the afternoon. On public holidays the branches are closed, "
              "but this line stays open. You can also use the mobile app at any time of the day or night.")
MEDIUM_REPLY = "Your balance is one hundred and twenty dinars. Your last payment was received on Monday."
MEDIUM_REPLY_AR = "رصيدك مئة وعشرون دينارا. وصلت دفعتك الأخيرة يوم الاثنين، شكرا لك."


def frame_gaps(times: list[float]) -> list[tuple[float, float]]:
    """(start, length) of the gaps between consecutive frames beyond one frame time."""
    return [(a, b - a - FRAME_MS) for a, b in itertools.pairwise(times)]


# ---- endpointing ---------------------------------------------------------------------------------


async def test_normal_turn_states_and_timings() -> None:
    h = CallHarness(asr=FakeAsrClient(["what time do you open"]),
                    llm=FakeLlmClient({"what time do you open": "We open at nine in the morning."}))
    async with h:
        await h.say(500)
        await h.until_turns(1)
        await h.until_listening()
        states = h.transport.states()
    assert states == ["listening", "user_speaking", "thinking", "bot_speaking", "listening"]
    turn = h.session.turns[0]
    assert (turn.index, turn.user_text, turn.interrupted, turn.fallbacks) == (1, "what time do you open", False, [])
    assert turn.bot_text == "We open at nine in the morning." == h.transport.bot_text()
    t = turn.timings
    assert None not in t.as_dict().values()
    assert t.speech_end_ms <= t.final_transcript_ms <= t.endpoint_ms <= t.first_audio_sent_ms  # type: ignore[operator]
    assert t.llm_first_token_ms <= t.tts_first_audio_ms <= t.first_audio_sent_ms  # type: ignore[operator]
    assert t.endpoint_ms <= t.tts_first_audio_ms  # type: ignore[operator]
    assert t.e2e_ms == pytest.approx(t.first_audio_sent_ms - t.speech_end_ms)  # type: ignore[operator]
    # End of caller speech is when its last speech frame arrived (~500 ms after the first), not when
    # the VAD noticed (200 ms of silence later).
    assert 440 <= t.speech_end_ms - h.speech_onsets[0] <= 600  # type: ignore[operator]
    event = h.transport.of_type("turn")[0]
    assert event["stages"]["e2e_ms"] == pytest.approx(t.e2e_ms, abs=0.11)
    assert h.session.history[-2:][0].content == "what time do you open"


@pytest.mark.parametrize(("language", "text"), [("en", "I would like to check my balance"),
                                                ("ar", "أريد أن أعرف رصيدي")])
async def test_endpoint_waits_the_language_silence(language: str, text: str) -> None:
    settings = fast_settings()
    silence = settings.call.endpoint.silence_ms[language]
    assert settings.call.endpoint.silence_ms["ar"] > settings.call.endpoint.silence_ms["en"]
    h = CallHarness(settings, language=language, asr=FakeAsrClient([text]))
    async with h:
        await h.say(500)
        await h.until_turns(1)
    turn = h.session.turns[0]
    assert turn.language == language and turn.user_text == text
    waited = turn.timings.endpoint_ms - turn.timings.speech_end_ms  # type: ignore[operator]
    assert silence - 5 <= waited <= silence + 100, waited
    assert turn.timings.final_transcript_ms < turn.timings.endpoint_ms  # type: ignore[operator]


@pytest.mark.parametrize(("language", "text", "asr_silence_ms"), [
    ("en", "yes", 250),
    ("ar", "نعم", 250),
    ("en", "yes", 150),  # the ASR's final comes before the bridge VAD's speech end (200 ms)
], ids=["en", "ar", "final-before-vad-end"])
async def test_short_answer_ends_turn_without_full_silence(language: str, text: str, asr_silence_ms: int) -> None:
    settings = fast_settings(call__endpoint__silence_ms={"en": 1000, "ar": 1200},
                             call__endpoint__asr_segment_silence_ms=asr_silence_ms)
    h = CallHarness(settings, language=language, asr=FakeAsrClient([text]))
    async with h:
        await h.say(300)
        await h.until_turns(1)
    t = h.session.turns[0].timings
    assert h.session.turns[0].user_text == text
    waited = t.endpoint_ms - t.speech_end_ms  # type: ignore[operator]
    assert waited < 450, waited  # the ASR final or the VAD end (~270 ms), not the 1000/1200 ms silence
    assert t.endpoint_ms - max(t.final_transcript_ms, t.speech_end_ms + 200) < 60  # type: ignore[operator]


# ---- speculative start ---------------------------------------------------------------------------


async def test_speculative_start_reuses_the_reply() -> None:
    reply = "You can pay your bill in the app."
    settings = fast_settings(call__endpoint__silence_ms={"en": 600})  # room for the first token before it
    h = CallHarness(settings, asr=FakeAsrClient(["how can I pay my bill"]),
                    llm=FakeLlmClient({"how can I pay my bill": reply}))
    async with h:
        await h.say(500)
        await h.until_turns(1)
        await h.until_listening()
    turn = h.session.turns[0]
    assert len(h.llm.calls) == 1
    call = h.llm.calls[0]
    assert call.started_ms < turn.timings.endpoint_ms  # type: ignore[operator]
    assert call.first_token_ms is not None and call.first_token_ms < turn.timings.endpoint_ms  # type: ignore[operator]
    assert call.finished and not call.closed
    assert turn.bot_text == reply == h.transport.bot_text()


async def test_speculation_dropped_when_caller_goes_on() -> None:
    llm = FakeLlmClient({"I want to": "To do what exactly, could you tell me a little more please?",
                         "I want to check my balance": "Your balance is ten dinars."}, token_ms=120)
    settings = fast_settings(call__endpoint__silence_ms={"en": 600})
    h = CallHarness(settings, asr=FakeAsrClient(["I want to", "check my balance"]), llm=llm)
    async with h:
        await h.say(500)
        await h.pause(350)  # the first segment's final comes; the endpoint silence does not pass
        await h.say(500)
        await h.until_turns(1)
        await h.until_listening()
    assert [c.user_text for c in llm.calls] == ["I want to", "I want to check my balance"]
    dropped, used = llm.calls
    assert dropped.closed and not dropped.finished  # the speculative stream was cancelled
    assert used.finished
    turn = h.session.turns[0]
    assert turn.user_text == "I want to check my balance"
    assert turn.bot_text == "Your balance is ten dinars." == h.transport.bot_text()
    assert not any("exactly" in c.text for c in h.tts.calls)
    assert len(h.session.turns) == 1


async def test_caller_going_on_after_the_endpoint_reopens_the_turn() -> None:
    # The endpoint passes, the LLM is slow to answer, and the caller goes on before any audio.
    llm = FakeLlmClient({"I want to": "To do what?", "I want to check my balance": "Ten dinars."}, ttft_ms=700)
    settings = fast_settings(call__timeouts__llm_first_token_ms=1500)
    h = CallHarness(settings, asr=FakeAsrClient(["I want to", "check my balance"]), llm=llm)
    async with h:
        await h.say(400)
        await h.until(lambda: h.session.state == CallState.THINKING, 1500, "thinking")
        await h.pause(100)
        await h.say(500)
        await h.until_turns(1, 4000)
        await h.until_listening()
    assert len(h.session.turns) == 1
    turn = h.session.turns[0]
    assert (turn.index, turn.user_text, turn.bot_text) == (1, "I want to check my balance", "Ten dinars.")
    assert [e["turn"] for e in h.transport.of_type("turn")] == [1]
    assert llm.calls[0].closed
    assert h.transport.bot_text() == "Ten dinars."


# ---- barge-in ------------------------------------------------------------------------------------


async def test_barge_in_stops_the_bot_within_200ms() -> None:
    llm = FakeLlmClient({"what are your opening hours": LONG_REPLY, "what about Saturdays": "Saturdays too."},
                        token_ms=45)
    tts = FakeTtsClient(ms_per_char=15, chunk_delay_ms=90)  # synthesis at about real time: a stream is open
    h = CallHarness(asr=FakeAsrClient(["what are your opening hours", "what about Saturdays"]), llm=llm, tts=tts)
    async with h:
        await h.say(500)
        await h.until(lambda: h.transport.audio_ms() >= 700, 3000, "bot audio")
        assert not llm.calls[0].finished  # the reply is still being generated
        await h.say(800)  # longer than confirm_speech_ms: a real interruption
        await h.until_turns(2, 3000)
        await h.until_listening()
    onset = h.speech_onsets[1]
    vad_start = h.vad.starts()[1]
    barge_at = h.transport.times_of("barge_in")[0]
    next_reply = min(t for t in h.transport.times_of("state", state="thinking") if t > barge_at)
    last_frame = max(h.transport.frame_times(before=next_reply))
    assert last_frame - onset <= 200, (last_frame - onset)
    # Paused at the VAD's speech start: at most the frame already on its way goes out after it.
    assert last_frame - vad_start <= 3 * FRAME_MS, (last_frame - vad_start)

    event = h.transport.of_type("barge_in")[0]
    played = event["played_text"]
    assert played and LONG_REPLY.split()[:len(played.split())] == played.split()
    assert len(played) < len(LONG_REPLY) / 2
    first, second = h.session.turns
    assert first.interrupted and first.bot_text == played and event["turn"] == first.index == 1
    assert not second.interrupted and second.user_text == "what about Saturdays"
    assert second.bot_text == "Saturdays too."
    assistant = assistant_messages(h.session.history)
    assert (assistant[0].content, assistant[0].interrupted) == (played, True)
    assert (assistant[1].content, assistant[1].interrupted) == ("Saturdays too.", False)
    # The LLM and TTS streams of the cut reply were cancelled, and nothing of it was synthesised after.
    assert llm.calls[0].closed and not llm.calls[0].finished
    first_reply_tts = [c for c in tts.calls if c.text != "Saturdays too."]
    assert all(c.finished or c.closed for c in first_reply_tts)
    assert any(c.closed for c in first_reply_tts)
    assert not [c for c in first_reply_tts if c.started_ms > barge_at]
    states = h.transport.states()
    assert states[states.index("interrupted") - 1:][:3] == ["bot_speaking", "interrupted", "user_speaking"]


@pytest.mark.parametrize(("language", "burst_ms", "heard"), [
    ("en", 120, ""),  # a cough: short, no words
    ("en", 400, "mm-hmm"),  # a backchannel: long enough to wait for its words
    ("ar", 400, "اها"),
    ("en", 160, "mm"),  # a short backchannel that the ASR transcribes
], ids=["cough", "mm-hmm", "aha-ar", "short-mm"])
async def test_cough_and_backchannel_do_not_interrupt(language: str, burst_ms: int, heard: str) -> None:
    question, reply = ("ما هو رصيدي", MEDIUM_REPLY_AR) if language == "ar" else ("what is my balance", MEDIUM_REPLY)
    tts = FakeTtsClient(ms_per_char=10)  # about 0.9 s of reply
    h = CallHarness(language=language, asr=FakeAsrClient([question, heard]), llm=FakeLlmClient(default=reply),
                    tts=tts)
    async with h:
        await h.say(300)
        await h.until(lambda: h.transport.audio_ms() >= 300, 3000, "bot audio")
        await h.say(burst_ms)
        await h.until_turns(1, 4000)
        await h.until_listening(4000)
        await h.pause(200)  # a late transcript of the burst must not start a turn either
    assert not h.transport.of_type("barge_in")
    assert len(h.session.turns) == 1 and len(h.llm.calls) == 1
    turn = h.session.turns[0]
    assert not turn.interrupted and turn.bot_text == reply == h.transport.bot_text()
    # The bot paused while the caller made the sound, then went on and played the whole reply.
    onset = h.speech_onsets[1]
    gaps = [(t, g) for t, g in frame_gaps(h.transport.frame_times()) if onset - FRAME_MS <= t]
    assert gaps and max(g for _, g in gaps) >= 100
    assert h.transport.frame_times(after=onset + burst_ms + 200)  # resumed
    assert h.transport.audio_ms() >= sum(c.audio_ms for c in tts.calls)
    assert h.session.history[-1].content == reply and not h.session.history[-1].interrupted


async def test_reply_finishing_while_the_caller_starts_speaking() -> None:
    # All the reply's audio is out but the LLM stream is still open when the caller starts: the
    # caller's speech pauses nothing audible, the reply counts as played, the speech is a new turn.
    reply = "Your balance is ten dinars. "
    llm = FakeLlmClient({"balance": reply, "and my card": "Your card is active."}, final_delay_ms=500)
    settings = fast_settings(call__silence_prompt_s=0.3)
    h = CallHarness(settings, asr=FakeAsrClient(["balance", "and my card"]), llm=llm)
    async with h:
        await h.say(400)
        await h.until(lambda: bool(h.tts.calls) and h.transport.audio_ms() >= h.tts.audio_ms(reply.strip()),
                      3000, "the reply's audio")
        assert not llm.calls[0].finished
        await h.say(700)  # the reply drains first (LLM closes); confirm_speech_ms passes after that
        await h.until_turns(2, 4000)
        await h.until(lambda: "Are you still there?" in h.transport.bot_text(), 3000, "a silence prompt")
    first, second = h.session.turns
    assert not first.interrupted and first.bot_text == reply.strip()
    assert second.user_text == "and my card" and second.bot_text == "Your card is active."
    assert not h.transport.of_type("barge_in")


# ---- call start and end --------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "ar"])
async def test_greeting(language: str) -> None:
    h = CallHarness(language=language, greeting=True)
    async with h:
        await h.until(lambda: bool(h.session.history), 3000, "the greeting")
        await h.until_listening()
        states = h.transport.states()
    greeting = scripted("greeting", language)
    assert h.transport.bot_text() == greeting
    assert all(c.request.language == language for c in h.tts.calls)
    assert states == ["listening", "thinking", "bot_speaking", "listening"]
    assert [(m.role, m.content) for m in h.session.history] == [("assistant", greeting)]
    assert h.session.turns == []
    assert h.transport.audio_ms() >= sum(c.audio_ms for c in h.tts.calls)


async def test_silence_prompts_then_hangup() -> None:
    settings = fast_settings(call__silence_prompt_s=0.4, call__silence_prompts=2)
    h = CallHarness(settings)
    async with h:
        await h.until_ended(5000)
    still, bye = scripted("still_there", "en"), scripted("goodbye_silent", "en")
    assert h.transport.bot_text() == f"{still} {still} {bye}"
    assert h.session.ended_reason == "caller_silent"
    assert h.transport.of_type("call.ended")[-1]["reason"] == "caller_silent"
    firsts = (still, bye.split(". ")[0] + ".")  # the first phrase of each of the three replies
    starts = [t for t, e in h.transport.events if e["type"] == "bot.text" and e["text"] in firsts]
    assert len(starts) == 3 and all(b - a >= 400 for a, b in itertools.pairwise(starts))
    # The goodbye was played to the end before the call ended.
    assert h.transport.audio_ms() >= sum(c.audio_ms for c in h.tts.calls)
    assert max(h.transport.frame_times()) <= h.transport.times_of("call.ended")[0]


async def test_noise_alone_does_not_block_silence_prompts() -> None:
    settings = fast_settings(call__silence_prompt_s=0.5, call__silence_prompts=0)
    h = CallHarness(settings, asr=FakeAsrClient([""]))
    async with h:
        await h.say(150)  # a bump on the line: VAD speech, a final with no words
        await h.until(lambda: h.session.state == CallState.LISTENING, 1000, "back to listening")
        await h.until_ended(3000)
    assert h.transport.bot_text() == scripted("goodbye_silent", "en")
    assert h.session.ended_reason == "caller_silent"
    assert h.session.turns == [] and not h.llm.calls


@pytest.mark.parametrize("scenario", ["caller-talks-over-goodbye", "limit-mid-reply"])
async def test_max_call_duration(scenario: str) -> None:
    settings = fast_settings(call__max_call_s=1.4)
    reply = LONG_REPLY if scenario == "limit-mid-reply" else "Sure, I can help with that."
    h = CallHarness(settings, asr=FakeAsrClient(["hello", "wait I have one more question"]),
                    llm=FakeLlmClient(default=reply), tts=FakeTtsClient(ms_per_char=8))
    goodbye = scripted("goodbye_max", "en")
    async with h:
        await h.say(300)
        await h.until(lambda: goodbye.split(",")[0] in h.transport.bot_text(), 2500, "the goodbye")
        if scenario == "caller-talks-over-goodbye":
            await h.say(700)  # longer than confirm_speech_ms
        await h.until_ended(4000)
    assert h.session.ended_reason == "max_duration"
    assert h.transport.of_type("call.ended")[-1]["reason"] == "max_duration"
    assert h.transport.bot_text().endswith(goodbye)
    assert not h.transport.of_type("barge_in")
    # The goodbye was played to the end before the call ended.
    goodbye_audio = sum(c.audio_ms for c in h.tts.calls if c.text in goodbye)
    goodbye_at = min(t for t, e in h.transport.events if e["type"] == "bot.text" and e["text"] in goodbye)
    # bot.text marks the moment a phrase starts playing, so its first frame is sent just before it.
    assert (len(h.transport.frame_times(after=goodbye_at)) + 1) * FRAME_MS >= goodbye_audio
    assert max(h.transport.frame_times()) <= h.transport.times_of("call.ended")[0]
    # The caller's turn is on the record, cut to what was heard when the limit cut it.
    [turn] = h.session.turns
    assert turn.user_text == "hello"
    if scenario == "limit-mid-reply":
        assert turn.interrupted and turn.bot_text and LONG_REPLY.startswith(turn.bot_text.split()[0])
        assert len(turn.bot_text) < len(LONG_REPLY)
        assert (h.session.history[1].content, h.session.history[1].interrupted) == (turn.bot_text, True)
    else:
        assert not turn.interrupted and turn.bot_text == reply


# ---- failures ------------------------------------------------------------------------------------


async def test_llm_error_gives_scripted_fallback() -> None:
    language = "en"  # the stall test checks the Arabic fallback
    llm = FakeLlmClient()
    llm.mode = "error"
    h = CallHarness(language=language, asr=FakeAsrClient(["what is my balance"]), llm=llm,
                    tts=FakeTtsClient(ms_per_char=4))
    async with h:
        await h.say(300)
        await h.until_turns(1)
        await h.until_listening()
        assert not h.ended  # the call goes on
    turn = h.session.turns[0]
    fallback = scripted("llm_fallback", language)
    assert turn.fallbacks == ["llm"] and turn.language == language
    assert turn.bot_text == fallback == h.transport.bot_text()
    assert len(llm.calls) == 1
    assert h.session.breakers["llm"].state == BreakerState.CLOSED  # one failure, threshold 2


async def test_llm_stall_times_out_to_fallback() -> None:
    llm = FakeLlmClient()
    llm.mode = "stall"
    h = CallHarness(language="ar", asr=FakeAsrClient(["أريد أن أغير خطتي"]), llm=llm,
                    tts=FakeTtsClient(ms_per_char=4))
    async with h:
        await h.say(400)
        await h.until_turns(1, 3000)
        await h.until_listening()
    turn = h.session.turns[0]
    limit = h.settings.call.timeouts.llm_first_token_ms
    assert turn.fallbacks == ["llm"] and turn.bot_text == scripted("llm_fallback", "ar")
    waited = turn.timings.first_audio_sent_ms - turn.timings.endpoint_ms  # type: ignore[operator]
    assert limit <= waited <= limit + 250, waited
    assert llm.calls[0].closed  # the stalled stream was cancelled


async def test_llm_breaker_opens_and_recovers_with_half_open_probe() -> None:
    llm = FakeLlmClient(default="Happy to help.")
    llm.mode = "error"
    settings = fast_settings(call__breaker__reset_after_s=1.2)
    # Short answers: the turn ends at the final, no silence to wait (and no speculative call).
    h = CallHarness(settings, asr=FakeAsrClient(default_text="yes please"), llm=llm, tts=FakeTtsClient(ms_per_char=3))
    breaker = h.session.breakers["llm"]
    fallback = scripted("llm_fallback", "en")
    async with h:
        for n in (1, 2, 3):
            await h.say(200)
            await h.until_turns(n)
            await h.until_listening()
            assert h.session.turns[-1].fallbacks == ["llm"] and h.session.turns[-1].bot_text == fallback
        assert len(llm.calls) == 2  # the third turn did not call the LLM: the breaker was open
        assert breaker.state == BreakerState.OPEN
        llm.mode = "ok"
        await h.until(lambda: breaker.state == BreakerState.HALF_OPEN, 2000, "half-open")
        await h.say(200)
        await h.until_turns(4)
        await h.until_listening()
    assert len(llm.calls) == 3
    last = h.session.turns[-1]
    assert last.fallbacks == [] and last.bot_text == "Happy to help."
    assert breaker.state == BreakerState.CLOSED


async def test_half_open_probe_dropped_as_speculation_does_not_wedge_the_breaker() -> None:
    settings = fast_settings(call__breaker__failure_threshold=1, call__endpoint__silence_ms={"en": 600})
    llm = FakeLlmClient({"I want to check my balance": "Ten dinars."})
    llm.mode = "error"
    h = CallHarness(settings, asr=FakeAsrClient(["yes", "I want to", "check my balance"]), llm=llm,
                    tts=FakeTtsClient(ms_per_char=3))
    breaker = h.session.breakers["llm"]
    async with h:
        await h.say(200)
        await h.until_turns(1)
        await h.until_listening()
        assert breaker.state == BreakerState.OPEN
        llm.mode = "ok"
        await h.until(lambda: breaker.state == BreakerState.HALF_OPEN, 2000, "half-open")
        await h.say(400)
        await h.pause(350)  # the probe starts as a speculation on "I want to"...
        await h.say(400)  # ...and is dropped when the caller goes on
        await h.until_turns(2)
        await h.until_listening()
    turn = h.session.turns[-1]
    assert turn.user_text == "I want to check my balance"
    assert turn.fallbacks == [] and turn.bot_text == "Ten dinars."
    assert breaker.state == BreakerState.CLOSED


async def test_tts_failure_uses_the_fallback_voice() -> None:
    reply = "Your balance is ten dinars. Your last payment was on Monday. Is there anything else?"
    tts = FakeTtsClient()
    tts.mode = "error"
    h = CallHarness(asr=FakeAsrClient(["balance please"]), llm=FakeLlmClient(default=reply), tts=tts)
    async with h:
        await h.say(400)
        await h.until_turns(1)
        await h.until_listening()
    turn = h.session.turns[0]
    assert turn.fallbacks == ["tts"] and turn.bot_text == reply and not turn.interrupted
    phrases = [e["text"] for e in h.transport.of_type("bot.text")]
    assert len(phrases) == 3
    assert [c.text for c in h.fallback_tts.calls] == phrases
    assert len(tts.calls) == 2  # then the TTS breaker was open: straight to the fallback voice
    assert h.session.breakers["tts"].state != BreakerState.CLOSED
    assert h.transport.audio_ms() >= sum(c.audio_ms for c in h.fallback_tts.calls)


async def test_asr_failure_asks_to_repeat_and_reopens_the_stream() -> None:
    asr = FakeAsrClient([Utterance("what time do you open", fail=True), "what time do you open"])
    h = CallHarness(asr=asr, llm=FakeLlmClient({"what time do you open": "At nine."}))
    repeat = scripted("repeat", "en")
    async with h:
        await h.say(400)
        await h.until(lambda: h.transport.bot_text() == repeat, 2000, "the repeat prompt")
        await h.until_listening()
        await h.say(400)
        await h.until_turns(1)
        await h.until_listening()
    assert [e["code"] for e in h.transport.of_type("error")] == ["asr_unavailable"]
    assert len(asr.sessions) == 2 and asr.sessions[0].failed and not asr.sessions[1].failed
    turn = h.session.turns[0]
    assert (turn.user_text, turn.bot_text) == ("what time do you open", "At nine.")
    assert h.transport.bot_text() == f"{repeat} At nine."
    assert [c.user_text for c in h.llm.calls] == ["what time do you open"]


async def test_noise_in_the_silence_window_does_not_stall_the_turn() -> None:
    h = CallHarness(asr=FakeAsrClient(["I want to check my balance", ""]))
    async with h:
        await h.say(400)
        await h.pause(300)  # the final is in, the endpoint timer runs...
        await h.say(120)  # ...a bump: VAD speech (cancels the timer), a final with no words
        await h.until_turns(1, 2000)
    turn = h.session.turns[0]
    assert turn.user_text == "I want to check my balance"


async def test_hangup_mid_reply_leaves_no_tasks() -> None:
    before = asyncio.all_tasks()
    llm = FakeLlmClient(default=LONG_REPLY, token_ms=40)
    tts = FakeTtsClient(ms_per_char=15, chunk_delay_ms=90)
    h = CallHarness(llm=llm, tts=tts)
    await h.start()
    await h.say(400)
    await h.until(lambda: h.transport.audio_ms() >= 300, 3000, "bot audio")
    assert not llm.calls[0].finished
    await h.hangup()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before
    assert llm.calls[0].closed
    assert all(c.finished or c.closed for c in tts.calls)
    assert h.transport.of_type("call.ended")[-1]["reason"] == "hangup"
    assert h.vad.sessions[0].closed and h.asr.sessions[0].closed
    assert h.session.state == CallState.ENDED


async def test_fallback_voice_failing_too_does_not_wedge_the_call() -> None:
    h = CallHarness(asr=FakeAsrClient(["balance please", "and my card"]),
                    llm=FakeLlmClient({"and my card": "Your card is active."}))
    h.tts.mode = h.fallback_tts.mode = "error"
    async with h:
        await h.say(300)
        await h.until_turns(1)
        await h.until_listening()
        h.tts.mode = h.fallback_tts.mode = "ok"
        await h.until(lambda: h.session.breakers["tts"].state != BreakerState.OPEN, 2000, "tts half-open")
        await h.say(300)
        await h.until_turns(2)
        await h.until_listening()
    first, second = h.session.turns
    assert first.fallbacks == ["tts"] and not h.transport.frame_times(before=second.timings.endpoint_ms or 0)
    assert second.bot_text == "Your card is active." and second.fallbacks == []
    assert h.transport.audio_ms() >= h.tts.audio_ms("Your card is active.")
