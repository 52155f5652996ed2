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
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from websockets.asyncio.client import connect

from asr.api import AsrOptions, AsrResult, Transcript, VadOptions
from asr.client import InProcessVadClient
from asr.vad_service import VadEngine
from gateway.app import create_app
from media_bridge.clients import BridgeClients, fallback_tts_settings
from nlu.api import ChatMessage, GenerateParams, GenerationFinal, LlmEvent, TextDelta
from tests.conftest import audio_path
from tests.platform_helpers import isolate
from tests.servers import free_port
from tts.client import InProcessTtsClient
from tts.engine import TtsEngine
from voiceai.audio import pcm16_to_float, read_wav, resample
from voiceai.config import Settings

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs headless Chromium: apt-get install -y chromium (listed in scripts/setup.sh APT_PACKAGES)")

CAPTURE_RATE_HZ = 48000  # the fake microphone file; Chromium's capture runs at 48 kHz
FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16: what the page must send
FAKE_ASR_SILENCE_MS = 600  # the fake closes an utterance after this much silence
FAKE_ASR_INTERIM_MS = 300  # and sends an interim this often while the caller speaks

EN_REPLIES = (
    "Sure, I can help with that. Your order was shipped yesterday and it should arrive on Friday. "
    "Is there anything else I can help you with today?",
    "Your balance is two hundred and fifty dollars.",
)
AR_REPLIES = ("حسنا، سأحولك الآن إلى أحد موظفي خدمة العملاء.",)


# ---- fakes: the ASR and the LLM ---------------------------------------------------------------


@dataclass
class Utterance:
    language: str
    text: str


class FakeScriptedAsrSession:
    """One ASR stream: real Silero segmentation of the received audio, scripted words."""

    def __init__(self, client: FakeScriptedAsr, options: AsrOptions) -> None:
        self._client = client
        self._segmenter = client.vad_engine.open(VadOptions(options.sample_rate_hz,
                                                            min_silence_ms=FAKE_ASR_SILENCE_MS))
        self._results: asyncio.Queue[AsrResult | None] = asyncio.Queue()
        self._start_ms: int | None = None
        self._last_interim_ms = 0.0

    async def send_audio(self, pcm16: bytes) -> None:
        self._client.audio.extend(pcm16)
        for event in await self._segmenter.process_async(pcm16_to_float(pcm16)):
            if event.kind == "speech_start":
                self._start_ms = event.timestamp_ms
                self._last_interim_ms = float(event.timestamp_ms)
            elif event.kind == "speech_end":
                self._final(event.timestamp_ms)
        now_ms = self._segmenter.now_ms
        if self._start_ms is not None and now_ms - self._last_interim_ms >= FAKE_ASR_INTERIM_MS:
            self._last_interim_ms = now_ms
            self._interim(now_ms)

    def _current(self) -> Utterance:
        script = self._client.script
        index = self._client.utterances
        return script[index] if index < len(script) else Utterance("en", "")

    def _interim(self, now_ms: float) -> None:
        words = self._current().text.split()
        shown = min(len(words) - 1, 1 + int((now_ms - (self._start_ms or 0)) // FAKE_ASR_INTERIM_MS))
        if shown > 0:
            text = " ".join(words[:shown])
            self._results.put_nowait(Transcript(text, False, self._client.utterances, self._start_ms or 0,
                                                int(now_ms), self._current().language, stable_text=text))

    def _final(self, end_ms: int) -> None:
        utterance = self._current()
        self._results.put_nowait(Transcript(utterance.text, True, self._client.utterances, self._start_ms or 0,
                                            end_ms, utterance.language, confidence=0.9))
        self._client.utterances += 1
        self._start_ms = None

    async def finalize(self) -> None:
        end = self._segmenter.force_end()
        if end is not None:
            self._final(end.timestamp_ms)

    async def results(self) -> AsyncIterator[AsrResult]:
        while (item := await self._results.get()) is not None:
            yield item

    async def close(self) -> None:
        await self.finalize()
        self._results.put_nowait(None)

    async def abort(self) -> None:
        self._results.put_nowait(None)


@dataclass
class FakeScriptedAsr:
    """An AsrClient whose n-th utterance (found by the real VAD) is ``script[n]``; keeps all audio."""

    vad_engine: VadEngine
    script: list[Utterance] = field(default_factory=list)
    utterances: int = 0
    audio: bytearray = field(default_factory=bytearray)

    def reset(self, script: list[Utterance]) -> None:
        self.script, self.utterances, self.audio = script, 0, bytearray()

    def open(self, options: AsrOptions) -> FakeScriptedAsrSession:
        return FakeScriptedAsrSession(self, options)

    async def aclose(self) -> None:
        return None


@dataclass
class FakeScriptedLlm:
    """An LlmClient that answers the n-th user message with ``replies[language][n]``, streamed by word."""

    replies: dict[str, tuple[str, ...]]

    async def generate(self, params: GenerateParams) -> AsyncIterator[LlmEvent]:
        asked = sum(1 for m in params.messages if m.role == "user")
        replies = self.replies.get(params.language) or self.replies["en"]
        text = replies[min(asked, len(replies)) - 1]
        for word in text.split(" "):
            await asyncio.sleep(0.005)
            yield TextDelta(word + " ")
        yield GenerationFinal(ChatMessage("assistant", text), "stop")

    async def aclose(self) -> None:
        return None


# ---- the gateway on a loopback port -------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    asr: FakeScriptedAsr


@pytest.fixture(scope="module")
def gateway(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    holder: dict[str, FakeScriptedAsr] = {}

    async def clients_factory(s: Settings) -> BridgeClients:
        vad_engine = VadEngine(s)
        await asyncio.to_thread(vad_engine.load)
        tts_engine = TtsEngine(fallback_tts_settings(s))  # espeak-ng: real speech, fast on CPU
        await asyncio.to_thread(tts_engine.load)
        tts = InProcessTtsClient(tts_engine)
        holder["asr"] = FakeScriptedAsr(vad_engine)
        return BridgeClients(vad=InProcessVadClient(vad_engine), asr=holder["asr"],
                             llm=FakeScriptedLlm({"en": EN_REPLIES, "ar": AR_REPLIES}), tts=tts, fallback_tts=tts)

    port = free_port()
    app = create_app(isolate(settings, tmp_path_factory.mktemp("platform")), clients_factory=clients_factory,
                     kb_factory=None)
    server = uvicorn.Server(uvicorn.Config(app,
                                           host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the gateway did not start")
        time.sleep(0.05)
    try:
        yield Gateway(f"http://127.0.0.1:{port}/", holder["asr"])
    finally:
        server.should_exit = True
        thread.join(15)


# ---- Chromium over the DevTools protocol ------------------------------------------------------------


class Cdp:
    """A minimal DevTools-protocol client for one page; console output is kept for failure messages."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(message["params"]["exceptionDetails"])[:800])
            elif message.get("method") == "Log.entryAdded":
                entry = message["params"]["entry"]
                self.console.append(f"{entry['level']}: {entry['text']}")

    async def send(self, method: str, timeout_s: float = 15.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout_s)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def js(self, expression: str, timeout_s: float = 15.0) -> Any:
        result = await self.send("Runtime.evaluate", timeout_s=timeout_s, expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {json.dumps(result['exceptionDetails'])[:1500]}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                stats = await self.js("window.voiceai && voiceai.stats()")
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; page stats: {stats}; "
                            f"console: {self.console[-20:]}")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        """A real mouse click (a user gesture), at the element's centre."""
        box = await self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            f".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self.ws.close()


@contextlib.contextmanager
def chromium(tmp_path: Path, capture_wav: Path, grant_microphone: bool = True) -> Iterator[str]:
    """Starts headless Chromium; yields its browser DevTools HTTP endpoint; kills it by PID.

    ``grant_microphone``: answer the microphone prompt with "allow" (else it is left to the page's
    permission, which a test can set to "denied").
    """
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = (tmp_path / "chromium.log").open("wb")
    prompt = ["--use-fake-ui-for-media-stream"] if grant_microphone else []
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", *prompt,
         f"--use-file-for-fake-audio-capture={capture_wav}%noloop",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--lang=en-US",
         "--window-size=1000,900", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start: {(tmp_path / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


async def open_page(devtools: str, url: str) -> Cdp:
    targets = await asyncio.to_thread(_get_json, f"{devtools}/json/list")
    page = next(t for t in targets if t["type"] == "page")
    ws = await connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
    cdp = Cdp(ws)
    for domain in ("Page", "Runtime", "Log"):
        await cdp.send(f"{domain}.enable")
    await cdp.send("Page.navigate", url=url)
    await cdp.wait_for("document.readyState === 'complete' && !!window.voiceai", 15, "the page's script")
    return cdp


def capture_file(tmp_path: Path, parts: list[tuple[str | None, float]]) -> Path:
    """The fake microphone: fixtures and silences (seconds) in a row, as a 48 kHz PCM16 WAV."""
    import soundfile as sf

    pieces = []
    for name, silence_s in parts:
        if name is not None:
            pieces.append(read_wav(audio_path(name))[0])
        pieces.append(np.zeros(int(silence_s * 16000), dtype=np.float32))
    path = tmp_path / "microphone.wav"
    sf.write(str(path), resample(np.concatenate(pieces), 16000, CAPTURE_RATE_HZ), CAPTURE_RATE_HZ,
             subtype="PCM_16", format="WAV")
    return path


def best_correlation(received: np.ndarray, reference: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``reference`` sliding over ``received`` (1.0: identical)."""
    n = len(received) + len(reference)
    size = 1 << (n - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(received, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(np.abs(xcorr[:len(received)])))
    window = received[lag:lag + len(reference)]
    ref = reference[:len(window)]
    return float(abs(np.dot(window, ref)) / (np.linalg.norm(window) * np.linalg.norm(ref) + 1e-9))


TRANSCRIPT_JS = """(() => Array.from(document.querySelectorAll('#transcript .msg')).map(el => {
  const text = el.querySelector('.text');
  return {kind: el.classList.contains('bot') ? 'bot' : 'caller', final: el.querySelector('.final').textContent,
          interim: el.querySelector('.interim').textContent, dir: text.getAttribute('dir'),
          unheard: el.querySelector('.unheard') ? el.querySelector('.unheard').textContent : '',
          lang: text.getAttribute('lang'), rtl: text.matches(':dir(rtl)'),
          direction: getComputedStyle(text).direction, interrupted: !!el.querySelector('.marker'),
          e2e_ms: el.querySelector('.latency') ? Number(el.querySelector('.latency').dataset.e2eMs) : null};
}))()"""


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
