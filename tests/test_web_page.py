"""The web page at ``/`` in real headless Chromium, talking to the real gateway over the call WebSocket.

What is real: the gateway app and its call WebSocket, the media bridge's call session, the VAD
(Silero, in-process), the TTS (espeak-ng, in-process), Chromium with its getUserMedia (a fake
microphone that plays a WAV file), AudioWorklet, WebAudio playback and the page's JavaScript.
What is fake: the ASR and the LLM (``FakeScriptedAsr``, ``FakeScriptedLlm`` below), so that the
caller's words and the bot's replies are known in advance; they implement the real interfaces of
``asr/api.py`` and ``nlu/api.py``. The fake ASR finds utterances with the real Silero VAD on the
audio the page actually sent, and records that audio, so the capture path is checked too.

Needs the ``chromium`` Debian package (``apt-get install -y chromium``). Screenshots of both
languages are saved in the test's tmp dir (``page-en.png``, ``page-ar.png``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app import create_app
from tests.browser_helpers import (
    CHROMIUM,
    TRANSCRIPT_JS,
    FakeScriptedAsr,
    Utterance,
    best_correlation,
    capture_file,
    chromium,
    open_page,
    scripted_clients,
    serve,
)
from tests.conftest import audio_path
from tests.platform_helpers import isolate
from tests.servers import free_port
from voiceai.audio import pcm16_to_float, read_wav
from voiceai.config import Settings

pytestmark = pytest.mark.e2e

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs headless Chromium: apt-get install -y chromium (listed in scripts/setup.sh APT_PACKAGES)")

FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16: what the page must send


EN_REPLIES = (
    "Sure, I can help with that. Your order was shipped yesterday and it should arrive on Friday. "
    "Is there anything else I can help you with today?",
    "Your balance is two hundred and fifty dollars.",
)
AR_REPLIES = ("حسنا، سأحولك الآن إلى أحد موظفي خدمة العملاء.",)


# ---- the gateway on a loopback port -------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    asr: FakeScriptedAsr
    settings: Settings


@pytest.fixture(scope="module")
def gateway(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    holder: dict[str, FakeScriptedAsr] = {}
    gateway_settings = isolate(settings, tmp_path_factory.mktemp("platform"))
    # These tests are about the WebSocket path: the page falls back to it when the server offers no WebRTC.
    # (test_fallback_to_websocket turns WebRTC on; tests/test_webrtc.py runs the WebRTC path itself.)
    gateway_settings.channels.webrtc.enabled = False
    app = create_app(gateway_settings, clients_factory=scripted_clients(holder, {"en": EN_REPLIES, "ar": AR_REPLIES}),
                     kb_factory=None)
    with serve(app) as url:
        yield Gateway(url, holder["asr"], gateway_settings)


# ---- tests ----------------------------------------------------------------------------------------


@needs_chromium
def test_page_resampler_and_microphone_refusal(gateway: Gateway, tmp_path: Path) -> None:
    """The capture low-pass really removes what would alias; a refused microphone says how to allow it."""

    async def run() -> None:
        with chromium(tmp_path, capture_file(tmp_path, [(None, 1.0)]), grant_microphone=False) as devtools:
            cdp = await open_page(devtools, gateway.url)
            try:
                # The same module the AudioWorklet imports, fed synthetic tones in odd-sized chunks.
                gains = await cdp.js("""(async () => {
                  const { RateConverter } = await import('/static/resampler.js');
                  const run = (inHz, outHz, toneHz, chunk) => {
                    const conv = new RateConverter(inHz, outHz);
                    const x = new Float32Array(inHz);  // one second
                    for (let i = 0; i < x.length; i++) x[i] = Math.sin(2 * Math.PI * toneHz * i / inHz);
                    const out = [];
                    for (let i = 0; i < x.length; i += chunk) out.push(...conv.process(x.subarray(i, i + chunk)));
                    const y = out.slice(Math.floor(out.length / 4), Math.floor(3 * out.length / 4));
                    const rms = Math.sqrt(y.reduce((s, v) => s + v * v, 0) / y.length);
                    return 20 * Math.log10(rms / Math.SQRT1_2);
                  };
                  const whole = new RateConverter(48000, 16000).process(new Float32Array(4800).fill(0.5)).slice();
                  const conv = new RateConverter(48000, 16000);
                  const parts = [];
                  for (const n of [128, 7, 333, 1000, 3332]) parts.push(...conv.process(new Float32Array(n).fill(0.5)));
                  const seam = Math.max(...parts.map((v, i) => Math.abs(v - whole[i])));
                  return { pass48: run(48000, 16000, 1000, 128), alias48: run(48000, 16000, 10000, 128),
                           alias48near: run(48000, 16000, 8500, 128), pass44: run(44100, 16000, 3000, 128),
                           alias44: run(44100, 16000, 12000, 128), up: run(16000, 48000, 1000, 320), seam };
                })()""")
                assert abs(gains["pass48"]) < 0.1 and abs(gains["pass44"]) < 0.1 and abs(gains["up"]) < 0.1, gains
                assert gains["alias48"] < -60 and gains["alias44"] < -60 and gains["alias48near"] < -40, gains
                assert gains["seam"] < 1e-6, gains  # chunking does not change the output

                origin = gateway.url.rstrip("/")
                await cdp.send("Browser.setPermission", permission={"name": "microphone"}, setting="denied",
                               origin=origin)
                await cdp.click("#call")
                alert = await cdp.wait_for("!document.getElementById('alert').hidden && "
                                           "document.getElementById('alert').textContent", 10, "the refusal message")
                await cdp.screenshot(tmp_path / "page-refused.png")
                assert "Microphone access was refused" in alert and "allow the microphone" in alert
                assert await cdp.js("document.getElementById('call').disabled") is False  # can try again
                assert await cdp.js("voiceai.stats().state") == "ended"

                # Microphone allowed, but the call server cannot be reached (a port nobody listens on).
                await cdp.send("Browser.setPermission", permission={"name": "microphone"}, setting="granted",
                               origin=origin)
                dead = json.dumps(f"127.0.0.1:{free_port()}")
                await cdp.js("(() => { const Real = WebSocket; window.WebSocket = class extends Real {"
                             f" constructor(url) {{ super(url.replace(location.host, {dead})); }} }}; }})()")
                await cdp.click("#call")
                alert = await cdp.wait_for("!document.getElementById('alert').hidden && "
                                           "document.getElementById('alert').textContent", 10, "the connection error")
                assert "Could not reach the call server" in alert, alert
                assert await cdp.js("voiceai.stats().state") == "ended"
            finally:
                await cdp.close()

    asyncio.run(asyncio.wait_for(run(), 60))


@needs_chromium
def test_english_call_with_barge_in(gateway: Gateway, tmp_path: Path, audio_texts: dict) -> None:
    """Speak, hear the reply, talk over it: transcripts, bot text, barge-in and latency on the page."""
    order, balance = audio_texts["en_order.wav"]["text"], audio_texts["en_balance.wav"]["text"]
    gateway.asr.reset([Utterance("en", order), Utterance("en", balance)])
    # Silence while the greeting (~4 s) plays; the second question starts while the first reply plays.
    wav = capture_file(tmp_path, [(None, 5.0), ("en_order.wav", 0.5), ("en_balance.wav", 6.0)])

    async def run() -> None:
        with chromium(tmp_path, wav) as devtools:
            cdp = await open_page(devtools, gateway.url)
            try:
                assert await cdp.js("document.documentElement.dir") == "ltr"
                await cdp.click("#call")
                await cdp.wait_for("document.querySelectorAll('#transcript .msg.bot .latency').length >= 2", 45,
                                   "two answered turns")
                await cdp.screenshot(tmp_path / "page-en.png")
                messages = await cdp.js(TRANSCRIPT_JS)
                await cdp.click("#hangup")
                await cdp.wait_for("voiceai.stats().state === 'ended'", 10, "the call to end")
                stats = await cdp.js("voiceai.stats()")
                (tmp_path / "page-stats.json").write_text(json.dumps(stats, indent=1))
            finally:
                await cdp.close()

        callers = [m for m in messages if m["kind"] == "caller"]
        bots = [m for m in messages if m["kind"] == "bot"]
        # (1) The microphone's audio reached the server as 20 ms PCM16 frames and is the caller's voice.
        assert stats["framesSent"] > 200 and stats["bytesSent"] == FRAME_BYTES * stats["framesSent"], stats
        received = pcm16_to_float(bytes(gateway.asr.audio))
        assert len(received) > 5 * 16000, "the ASR saw less than 5 s of audio"
        reference = read_wav(audio_path("en_order.wav"))[0]
        correlation = best_correlation(received, reference)
        (tmp_path / "capture-correlation.txt").write_text(f"{correlation:.3f}\n")
        assert correlation > 0.5, f"the audio the server got does not match the microphone ({correlation:.2f})"
        # (2) The caller's words and the bot's replies are on the page.
        assert [c["final"] for c in callers] == [order, balance], messages
        assert all(not c["interim"] for c in callers), messages
        assert bots[0]["final"].startswith("Hello, thank you for calling"), messages  # the greeting
        assert bots[2]["final"] == EN_REPLIES[1], messages
        # The first reply was cut: marked, the words never played greyed out, the page's playback stopped.
        assert bots[1]["interrupted"] and not bots[2]["interrupted"], messages
        # bot.text arrives as each phrase starts playing: the page shows what started, greys out
        # the part of it the caller did not hear, and never shows phrases that never played.
        shown = f"{bots[1]['final']} {bots[1]['unheard'].strip()}".strip()
        assert bots[1]["unheard"] and EN_REPLIES[0].startswith(shown) and shown != EN_REPLIES[0], bots
        assert len(bots[1]["final"]) < len(EN_REPLIES[0]) / 2, bots  # cut early in the reply
        assert "barge_in" in stats["events"] and stats["playbackStops"] >= 1, stats
        for state in ("listening", "user_speaking", "thinking", "bot_speaking", "interrupted"):
            assert state in stats["states"], stats["states"]
        assert bots[2]["e2e_ms"] is not None and 0 < bots[2]["e2e_ms"] < 5000, messages
        assert stats["framesPlayed"] > 100, stats  # the bot's voice was scheduled for playback
        # Gapless: a frame that misses its slot restarts the jitter buffer (an audible gap). A loaded
        # machine may stall the server's pacing once or twice; more means the scheduling is wrong.
        assert stats["underruns"] <= 2, stats
        assert all(m["dir"] == "auto" and m["direction"] == "ltr" for m in messages), messages

    asyncio.run(asyncio.wait_for(run(), 90))


@needs_chromium
def test_arabic_call_is_right_to_left(gateway: Gateway, tmp_path: Path, audio_texts: dict) -> None:
    """With Arabic selected the page, its labels and its messages read right to left."""
    agent = audio_texts["ar_agent.wav"]["text"]
    gateway.asr.reset([Utterance("ar", agent)])
    wav = capture_file(tmp_path, [(None, 6.5), ("ar_agent.wav", 7.0)])  # the Arabic greeting is ~5.5 s

    async def run() -> None:
        with chromium(tmp_path, wav) as devtools:
            cdp = await open_page(devtools, gateway.url)
            try:
                await cdp.js("(() => { const s = document.getElementById('language'); s.value = 'ar';"
                             " s.dispatchEvent(new Event('change')); })()")
                await cdp.click("#call")
                await cdp.wait_for("document.querySelectorAll('#transcript .msg.bot .latency').length >= 1", 40,
                                   "an answered turn")
                await cdp.screenshot(tmp_path / "page-ar.png")
                messages = await cdp.js(TRANSCRIPT_JS)
                page = await cdp.js("({dir: document.documentElement.dir, lang: document.documentElement.lang,"
                                    " direction: getComputedStyle(document.body).direction,"
                                    " state: document.querySelector('#state .label').textContent,"
                                    " hangup: document.getElementById('hangup').textContent.trim(),"
                                    " resources: performance.getEntriesByType('resource').map(e => e.name)})")
                await cdp.click("#hangup")
                await cdp.wait_for("voiceai.stats().state === 'ended'", 10, "the call to end")
                ended_label = await cdp.js("document.querySelector('#state .label').textContent")
            finally:
                await cdp.close()

        # (3) The document and every message are right to left.
        assert page["dir"] == "rtl" and page["lang"] == "ar" and page["direction"] == "rtl", page
        assert page["hangup"] == "إنهاء المكالمة" and ended_label == "انتهت المكالمة", (page, ended_label)
        callers = [m for m in messages if m["kind"] == "caller"]
        bots = [m for m in messages if m["kind"] == "bot"]
        assert [c["final"] for c in callers] == [agent], messages
        assert bots[0]["final"].startswith("مرحبا") and bots[-1]["final"] == AR_REPLIES[0], messages
        for m in messages:
            assert m["dir"] == "auto" and m["lang"] == "ar" and m["rtl"] and m["direction"] == "rtl", m
        assert bots[-1]["e2e_ms"] is not None and bots[-1]["e2e_ms"] > 0, messages
        # Air-gapped: everything the page loaded came from the gateway itself.
        assert all(name.startswith(gateway.url) for name in page["resources"]), page["resources"]

    asyncio.run(asyncio.wait_for(run(), 90))


@needs_chromium
def test_fallback_to_websocket(gateway: Gateway, tmp_path: Path) -> None:
    """WebRTC offered but never connecting: after the connect timeout the page calls over the WebSocket."""
    gateway.asr.reset([])
    webrtc = gateway.settings.channels.webrtc
    webrtc.enabled, webrtc.connect_timeout_s = True, 1.5

    async def run() -> tuple[dict, str, list]:
        with chromium(tmp_path, capture_file(tmp_path, [(None, 8.0)])) as devtools:
            cdp = await open_page(devtools, gateway.url)
            try:
                # The answer is never applied, so ICE never starts: the page must give up and fall back.
                await cdp.js("(() => { window.RTCPeerConnection = class extends RTCPeerConnection {"
                             " setRemoteDescription() { return Promise.resolve(); } }; })()")
                await cdp.click("#call")
                await cdp.wait_for("document.querySelectorAll('#transcript .msg.bot').length >= 1", 20,
                                   "the greeting over the WebSocket")
                await cdp.wait_for("voiceai.stats().framesSent > 50", 10, "microphone frames on the WebSocket")
                label = await cdp.js("document.getElementById('transport').textContent")
                stats = await cdp.js("voiceai.stats()")
                await cdp.click("#hangup")
                await cdp.wait_for("voiceai.stats().state === 'ended'", 10, "the call to end")
                return stats, label, await cdp.js(TRANSCRIPT_JS)
            finally:
                await cdp.close()

    try:
        stats, label, messages = asyncio.run(asyncio.wait_for(run(), 40))
    finally:
        webrtc.enabled, webrtc.connect_timeout_s = False, 15.0
    assert label == "WebSocket" and stats["transport"] == "websocket", (label, stats)
    assert "not connected within 1500 ms" in stats["fallback"], stats["fallback"]
    assert stats["timings"]["answerMs"] > 0, stats["timings"]  # the offer was answered; the media never came
    assert stats["framesSent"] > 50 and stats["events"][0] == "call.started", stats
    assert messages[0]["kind"] == "bot" and messages[0]["final"].startswith("Hello"), messages
