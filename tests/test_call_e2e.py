"""Whole calls over the WebSocket against the real stack: Whisper, Qwen2.5 0.5B on llama.cpp, Piper.

One stack serves the module (starting it costs ~30 s). Tests that kill a server restart it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import httpx
import pytest
import websockets

from gateway.caller import call_ws_url, load_turns, simulate_call
from tests.servers import wait_until
from tests.sip_helpers import free_udp_port

from .conftest import AUDIO
from .stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARABIC = re.compile(r"[\u0600-\u06FF]")


def words(text: str | None) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Phone calls too: `voiceai up --sip-port N` sets the same setting.
    s = Stack(tmp_path_factory.mktemp("stack"), overrides={"channels.sip.port": free_udp_port()}).start()
    yield s
    s.stop()


def call(stack: Stack, wavs: list[str], language: str = "en", **kw) -> dict:
    turns = load_turns([AUDIO / w for w in wavs], stack.settings.models_dir, 16000)
    return asyncio.run(simulate_call(stack.url, turns, language, **kw))


def test_two_turn_english_call(stack, audio_texts):
    result = call(stack, ["en_balance.wav", "en_order.wav"])
    first, second = result["turns"]
    assert words(first["user_text"]) == words(audio_texts["en_balance.wav"]["text"])
    assert words(second["user_text"])[-5:] == words(audio_texts["en_order.wav"]["text"])[-5:]
    for turn in (first, second):
        assert turn["bot_text"] and not turn["interrupted"]
        assert turn["e2e_ms"] is not None and turn["e2e_ms"] > 0
        stages = turn["stages"]
        assert stages["speech_end_ms"] <= stages["final_transcript_ms"] <= stages["first_audio_sent_ms"]
        assert stages["endpoint_ms"] <= stages["first_audio_sent_ms"]
    assert result["max_audio_gap_ms"] < 200
    # The call record (in the database, written behind the call) holds the same turns, caller and bot.
    detail = wait_until(lambda: (d := stack.get(f"/v1/calls/{result['call_id']}")).status_code == 200 and
                        d.json()["state"] == "ended" and d.json(), "the call record", 30)
    caller = [t["text"] for t in detail["transcript"] if t["speaker"] == "caller"]
    assert caller == [first["user_text"], second["user_text"]]
    assert [t["turn"] for t in detail["transcript"]] == [1, 1, 2, 2]
    assert detail["transcript"][0]["latency"]["e2e_ms"] > 0
    assert result["call_id"] in [c["call_id"] for c in stack.get("/v1/calls").json()["calls"]]
    assert stack.get(f"/v1/calls/{result['call_id']}", role="viewer").status_code == 403  # no transcripts
    assert httpx.get(f"{stack.url}/v1/calls", timeout=10).status_code == 401


def test_arabic_call(stack):
    result = call(stack, ["ar_agent.wav"], language="ar")
    (turn,) = result["turns"]
    assert ARABIC.search(turn["user_text"]) and "العملاء" in turn["user_text"]
    assert turn["language"] == "ar"
    assert ARABIC.search(turn["bot_text"]), turn["bot_text"]


def test_barge_in_cuts_the_reply_and_history_keeps_what_was_heard(stack):
    # en_order asks for something the bot answers at length; the caller cuts in 700 ms into it.
    result = call(stack, ["en_order.wav", "en_balance.wav"], barge_in_at_ms=700)
    first, second = result["turns"]
    assert first["interrupted"] is True
    barge = [e for e in result["events"] if e["type"] == "barge_in"]
    assert barge and barge[0]["played_text"] == first["bot_text"]
    assert second["user_text"] and not second["interrupted"]
    # After the barge-in no audio of the old reply arrives: the next audio is the new reply.
    bot_texts = [e for e in result["events"] if e["type"] == "bot.text"]
    assert bot_texts, "the bot spoke"


def test_a_short_noise_does_not_interrupt(stack):
    result = call(stack, ["en_balance.wav", "blip.wav"], barge_in_at_ms=300)
    first = result["turns"][0]
    assert first["interrupted"] is False
    assert not [e for e in result["events"] if e["type"] == "barge_in"]


def test_malformed_frames_get_errors_and_the_call_survives(stack, audio_texts):
    async def run() -> list[dict]:
        url = await call_ws_url(stack.url, "en", query="greeting=0")
        async with websockets.connect(url) as ws:
            await ws.send("{not json")
            await ws.send(json.dumps({"type": "dance"}))
            await ws.send(json.dumps([1, 2, 3]))
            await ws.send("x" * 70000)
            await ws.send(b"\0" * 70000)
            await ws.send(json.dumps({"type": "ping", "id": 7}))
            events = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len([e for e in events if e["type"] in ("error", "pong")]) < 6:
                msg = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(msg, str):
                    events.append(json.loads(msg))
            await ws.send(json.dumps({"type": "hangup"}))
            return events

    events = asyncio.run(run())
    errors = [e for e in events if e["type"] == "error"]
    assert [e["reason"] for e in errors] == ["invalid_json", "unknown_type", "unknown_type", "text_too_large",
                                             "audio_too_large"]
    assert all(e["fatal"] is False for e in errors)
    assert {"type": "pong", "id": 7}.items() <= next(e for e in events if e["type"] == "pong").items()
    # The same gateway still answers a real call.
    result = call(stack, ["en_yes.wav"])
    assert words(result["turns"][0]["user_text"]) == ["yes"]


@pytest.mark.parametrize("query", ["language=fr", "sample_rate_hz=11025", "sample_rate_hz=abc"])
def test_bad_call_parameters_are_refused_with_a_reason(stack, query):
    async def run() -> tuple[int | None, str]:
        async with websockets.connect(await call_ws_url(stack.url, "en", query=query)) as ws:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code, ws.close_reason or ""

    code, reason = asyncio.run(run())
    assert code == 1008 and "sample_rate_hz" in reason


def test_a_call_needs_a_call_token_used_once(stack):
    async def closed(url: str) -> int | None:
        async with websockets.connect(url) as ws:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    async def run() -> list[int | None]:
        base = stack.url.replace("http", "ws") + "/v1/calls/ws?language=en&greeting=0"
        url = await call_ws_url(stack.url, "en", query="greeting=0")
        async with websockets.connect(url) as first:
            await first.send(json.dumps({"type": "ping", "id": 1}))
            await asyncio.wait_for(first.recv(), 10)
            again = await closed(url)  # the same token while the call runs: refused
            await first.send(json.dumps({"type": "hangup"}))
        return [await closed(base), await closed(base + "&token=garbage"), again]

    assert asyncio.run(run()) == [4401, 4401, 4409]


def test_caller_hangs_up_mid_reply_and_nothing_keeps_running(stack):
    async def run() -> None:
        turns = load_turns([AUDIO / "en_order.wav"], stack.settings.models_dir, 16000)
        url = await call_ws_url(stack.url, "en", query="greeting=0")
        async with websockets.connect(url) as ws:
            pcm = turns[0].pcm + b"\0" * 32000 * 6
            got_audio = False
            for i in range(0, len(pcm), 640):
                await ws.send(pcm[i:i + 640])
                await asyncio.sleep(0.02)
                while True:
                    try:
                        msg = await asyncio.wait_for(ws.recv(), 0.001)
                    except TimeoutError:
                        break
                    got_audio = got_audio or isinstance(msg, bytes)
                if got_audio:
                    break
            assert got_audio, "the bot started answering"
        # the socket is closed here, mid-reply

    asyncio.run(run())
    deadline = time.monotonic() + 10
    metrics = ""
    while time.monotonic() < deadline:
        metrics = stack.get("/metrics").text
        if "voiceai_active_calls 0.0" in metrics:
            break
        time.sleep(0.2)
    assert "voiceai_active_calls 0.0" in metrics
    nlu = stack.servers["nlu"]
    nlu_metrics = httpx.get(f"http://127.0.0.1:{nlu.metrics_port}/metrics").text
    assert 'voiceai_active_streams{service="nlu"} 0.0' in nlu_metrics


def test_a_killed_tts_server_falls_back_to_espeak_and_the_call_goes_on(stack):
    stack.kill("tts")
    try:
        result = call(stack, ["en_balance.wav", "en_yes.wav"])
        for turn in result["turns"]:
            assert "tts" in turn["fallbacks"]
            assert turn["bot_text"]
        assert all(t["e2e_ms"] is not None for t in result["turns"])  # audio still arrived
    finally:
        stack.restart("tts")
    # Back to the primary voice once the breaker's probe succeeds.
    time.sleep(stack.settings.call.breaker.reset_after_s + 0.5)
    result = call(stack, ["en_balance.wav", "en_yes.wav"])
    assert "tts" not in result["turns"][-1]["fallbacks"]


def test_a_killed_llm_server_gives_the_scripted_fallback(stack):
    stack.kill("nlu")
    try:
        result = call(stack, ["en_balance.wav"])
        (turn,) = result["turns"]
        assert turn["fallbacks"] == ["llm"]
        assert "agent" in turn["bot_text"].lower()
        result = call(stack, ["ar_agent.wav"], language="ar")
        assert ARABIC.search(result["turns"][0]["bot_text"])
    finally:
        stack.restart("nlu")


def test_health_reports_every_model_server(stack):
    body = stack.get("/health").json()
    assert body["status"] == "ok"
    assert body["services"] == {"vad": "IN_PROCESS", "asr": "SERVING", "nlu": "SERVING", "tts": "SERVING"}


def test_phone_call_over_sip(stack, audio_texts, tmp_path):
    """A pjsip phone calls over SIP (G.711 A-law, 8 kHz): greeted, asks its question, hears the answer."""
    import numpy as np

    from asr.metrics import wer
    from asr.metrics import words as folded_words
    from asr.transcribe import transcribe_file
    from tests.pjsua_caller import call_with_pjsua
    from voiceai.audio import read_wav, write_wav

    question, rate = read_wav(AUDIO / "en_balance.wav", 16000)
    speaks_at_s = 6.0  # after the greeting
    caller = np.concatenate([np.zeros(int(speaks_at_s * rate)), question, np.zeros(16 * rate)]).astype(np.float32)
    write_wav(tmp_path / "caller.wav", caller, rate)
    result = asyncio.run(call_with_pjsua(f"sip:1000@127.0.0.1:{stack.settings.channels.sip.port}", tmp_path,
                                         tmp_path / "caller.wav", 22.0, "--codec", "PCMA"))
    assert result["codec"] == "PCMA" and "CONFIRMED" in result["states"]

    calls = wait_until(lambda: [c for c in stack.get("/v1/calls").json()["calls"]
                                if c["channel"] == "sip" and c["state"] == "ended"], "the SIP call record", 30)
    detail = wait_until(lambda: (d := stack.get(f"/v1/calls/{calls[0]['call_id']}").json())["transcript"] and d,
                        "its transcript", 30)
    caller_text = [t["text"] for t in detail["transcript"] if t["speaker"] == "caller"]
    bot_text = " ".join(t["text"] for t in detail["transcript"] if t["speaker"] == "bot")
    # Through a phone line (8 kHz A-law both ways) Whisper base may slip on a word ("my count"): at most one.
    assert wer(caller_text[0], audio_texts["en_balance.wav"]["text"]) <= 0.15, caller_text
    assert bot_text

    # What the phone recorded: the greeting before the caller spoke, the answer after. Whisper hears the
    # answer in the recording (phone audio, both ways through G.711) as the bot's words.
    heard, heard_rate = read_wav(result["recording"], None)
    assert np.abs(heard[:int(speaks_at_s * heard_rate)]).max() > 0.05, "no greeting"
    answer = heard[int((speaks_at_s + len(question) / rate) * heard_rate):]
    write_wav(tmp_path / "answer.wav", answer, heard_rate)
    settings = stack.settings.model_copy(deep=True)
    transcript = asyncio.run(transcribe_file(settings, tmp_path / "answer.wav", "en"))
    said, got = set(folded_words(bot_text)), set(folded_words(transcript["text"]))
    assert len(said & got) >= len(said) / 2, (bot_text, transcript["text"])
