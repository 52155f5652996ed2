"""Shared by the browser tests (tests/test_web_page.py, tests/test_webrtc.py): scripted ASR and LLM fakes, the
gateway on a loopback port, headless Chromium driven over the DevTools protocol, and the WebRTC page run.

The fakes implement the real interfaces of ``asr/api.py`` and ``nlu/api.py``: the ASR finds utterances with the
real Silero VAD on the audio the page actually sent (and keeps that audio), the LLM answers from a script, so
the caller's words and the bot's replies are known in advance. VAD (Silero) and TTS (espeak-ng) are real.

``python -m tests.browser_helpers webrtc-call --out FILE --work DIR [--language ar | --barge-in]`` runs one
WebRTC call from the real page and writes what it saw as JSON. That call is real but for the LLM: Silero VAD,
in-process faster-whisper ASR (``make_asr_client``) and espeak-ng TTS, with ``FakeScriptedLlm`` answering.
Run it inside a network namespace with only loopback up
(``unshare -n sh -c 'ip link set lo up && exec python -m tests.browser_helpers ...'``): Chromium's ICE then has
nothing but 127.0.0.1 to try (it needs ``--allow-loopback-in-peer-connection`` for that, and
``--disable-features=WebRtcHideLocalIpsWithMdns`` to show the address instead of a ``.local`` name), and no
check packet can leave the machine. tests/test_webrtc.py does exactly that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from asr.api import AsrClient, AsrOptions, AsrResult, AsrSession, Transcript, VadOptions
from asr.client import InProcessVadClient, make_asr_client
from asr.vad_service import VadEngine
from media_bridge.clients import BridgeClients, fallback_tts_settings
from nlu.api import ChatMessage, GenerateParams, GenerationFinal, LlmEvent, TextDelta
from tests.conftest import audio_path
from tests.servers import serve_app
from tts.client import InProcessTtsClient
from tts.engine import TtsEngine
from voiceai.audio import pcm16_to_float, read_wav, resample
from voiceai.config import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CAPTURE_RATE_HZ = 48000  # the fake microphone file; Chromium's capture runs at 48 kHz
FAKE_ASR_SILENCE_MS = 600  # the fake closes an utterance after this much silence
FAKE_ASR_INTERIM_MS = 300  # and sends an interim this often while the caller speaks
# Chromium's flags for WebRTC on loopback (see the module docstring).
WEBRTC_LOOPBACK_FLAGS = ("--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns")

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


def scripted_clients(holder: dict[str, FakeScriptedAsr], replies: dict[str, tuple[str, ...]]) -> Any:
    """A ``clients_factory`` for ``create_app``: real Silero VAD and espeak-ng TTS, the scripted ASR (left in
    ``holder["asr"]``) and LLM."""

    async def clients_factory(s: Settings) -> BridgeClients:
        vad_engine = VadEngine(s)
        await asyncio.to_thread(vad_engine.load)
        tts_engine = TtsEngine(fallback_tts_settings(s))  # espeak-ng: real speech, fast on CPU
        await asyncio.to_thread(tts_engine.load)
        tts = InProcessTtsClient(tts_engine)
        holder["asr"] = FakeScriptedAsr(vad_engine)
        return BridgeClients(vad=InProcessVadClient(vad_engine), asr=holder["asr"], llm=FakeScriptedLlm(replies),
                             tts=tts, fallback_tts=tts)

    return clients_factory


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Runs ``app`` with uvicorn in a thread on a free loopback port; yields its base URL (ending in /)."""
    with serve_app(app) as url:
        yield url + "/"


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
def chromium(tmp_path: Path, capture_wav: Path, grant_microphone: bool = True,
             extra_flags: Sequence[str] = ()) -> Iterator[str]:
    """Starts headless Chromium; yields its browser DevTools HTTP endpoint; kills it by PID.

    ``grant_microphone``: answer the microphone prompt with "allow" (else it is left to the page's
    permission, which a test can set to "denied"). ``extra_flags``: e.g. ``WEBRTC_LOOPBACK_FLAGS``.
    """
    if CHROMIUM is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = (tmp_path / "chromium.log").open("wb")
    prompt = ["--use-fake-ui-for-media-stream"] if grant_microphone else []
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", *prompt,
         f"--use-file-for-fake-audio-capture={capture_wav}%noloop",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-quic",
         "--disable-component-update", "--disable-sync",
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--lang=en-US",
         "--window-size=1000,900", *extra_flags, "about:blank"],
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


def write_wav(path: Path, samples: np.ndarray, rate_hz: int = 16000) -> None:
    import soundfile as sf

    sf.write(str(path), samples, rate_hz, subtype="PCM_16", format="WAV")


def capture_file(tmp_path: Path, parts: list[tuple[str | None, float]], gain_db: float = 0.0) -> Path:
    """The fake microphone: fixtures and silences (seconds) in a row, as a 48 kHz PCM16 WAV; ``gain_db`` scales
    it (the fixtures peak at 0 dBFS, hotter than a real microphone)."""
    pieces = []
    for name, silence_s in parts:
        if name is not None:
            pieces.append(read_wav(audio_path(name))[0])
        pieces.append(np.zeros(int(silence_s * 16000), dtype=np.float32))
    path = tmp_path / "microphone.wav"
    samples = np.concatenate(pieces) * np.float32(10 ** (gain_db / 20))
    write_wav(path, resample(samples, 16000, CAPTURE_RATE_HZ), CAPTURE_RATE_HZ)
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



# ---- one WebRTC call from the real page (run inside `unshare -n`) ---------------------------------------


class _RecordingAsrSession:
    """Forwards to a real ASR stream and keeps a copy of the audio sent to it."""

    def __init__(self, inner: AsrSession, audio: bytearray) -> None:
        self._inner = inner
        self._audio = audio

    async def send_audio(self, pcm16: bytes) -> None:
        self._audio.extend(pcm16)
        await self._inner.send_audio(pcm16)

    async def finalize(self) -> None:
        await self._inner.finalize()

    def results(self) -> AsyncIterator[AsrResult]:
        return self._inner.results()

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class RecordingAsr:
    """The real recogniser (``make_asr_client``), keeping all the audio the call session sent it, so a test
    can check that what Whisper heard is what the page's microphone played."""

    inner: AsrClient
    audio: bytearray = field(default_factory=bytearray)

    def open(self, options: AsrOptions) -> _RecordingAsrSession:
        return _RecordingAsrSession(self.inner.open(options), self.audio)

    async def aclose(self) -> None:
        await self.inner.aclose()


def real_asr_clients(holder: dict[str, RecordingAsr], replies: dict[str, tuple[str, ...]]) -> Any:
    """A ``clients_factory``: real Silero VAD, espeak-ng TTS and in-process faster-whisper ASR (left in
    ``holder["asr"]``); only the LLM is scripted."""

    async def clients_factory(s: Settings) -> BridgeClients:
        vad_engine = VadEngine(s)
        await asyncio.to_thread(vad_engine.load)
        tts_engine = TtsEngine(fallback_tts_settings(s))
        await asyncio.to_thread(tts_engine.load)
        tts = InProcessTtsClient(tts_engine)
        holder["asr"] = RecordingAsr(await make_asr_client(s))
        return BridgeClients(vad=InProcessVadClient(vad_engine), asr=holder["asr"], llm=FakeScriptedLlm(replies),
                             tts=tts, fallback_tts=tts)

    return clients_factory


@dataclass(frozen=True)
class CallScript:
    """One browser call: what the fake microphone plays, what the scripted LLM answers, when it is over."""

    language: str  # picked on the page before Call
    microphone: tuple[tuple[str | None, float], ...]  # (fixture, then seconds of silence), as capture_file
    replies: tuple[str, ...]  # the LLM's answers to the 1st, 2nd, ... caller turn
    reference: str  # the fixture whose audio the server must have received
    answered_turns: int  # bot bubbles with a latency badge (the greeting has none) that end the call
    # Speech at about -26 dBFS RMS, as a headset microphone gives: the fixtures at full level go through the
    # browser's gain control and noise suppression worse (Whisper lost more of the Arabic fixture).
    microphone_gain_db: float = -10.0


WEBRTC_REPLY = "Your order was shipped yesterday and should arrive on Friday."
WEBRTC_REPLY_AR = "حسنا، سأحولك الآن إلى أحد موظفي خدمة العملاء."
# Several sentences (about 20 s of espeak), so the caller's second question lands well inside it.
WEBRTC_LONG_REPLY = (
    "Sure, I can help with that. Your order left our warehouse on Monday and went to the courier on Tuesday "
    "morning. It is on its way now, and the courier expects to deliver it on Friday between nine and five. "
    "You will get a text message with a tracking link an hour before it arrives. "
    "Is there anything else I can help you with today?")
WEBRTC_SHORT_REPLY = "Your balance is two hundred and fifty dollars."

CALL_SCRIPTS = {
    # Speak once the greeting (~4 s in English, ~5.5 s in Arabic) is over.
    "en": CallScript("en", ((None, 5.0), ("en_order.wav", 6.0)), (WEBRTC_REPLY,), "en_order.wav", 1),
    "ar": CallScript("ar", ((None, 6.5), ("ar_agent.wav", 7.0)), (WEBRTC_REPLY_AR,), "ar_agent.wav", 1),
    # Ask, then ask again about 2 s into the long answer: the question's speech ends 1.2 s before its file
    # does, the reply starts ~0.6 s after that, and the next question's speech starts 0.65 s into its file.
    "barge-in": CallScript("en", ((None, 5.0), ("en_order.wav", 1.0), ("en_balance.wav", 6.0)),
                           (WEBRTC_LONG_REPLY, WEBRTC_SHORT_REPLY), "en_order.wav", 2),
}

# Installed before Call: wraps the page's RTCPeerConnection to record, with page-clock times (ms), every
# event on the data channel and the remote track's cumulative energy (getStats `totalAudioEnergy`, the
# integral of audioLevel² over what was played out) every 50 ms, finer than the page's own 500 ms poll.
PROBE_JS = """(() => {
  const probe = window.__probe = {events: [], energy: []};
  const Base = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Base {
    constructor(...args) {
      super(...args);
      const timer = setInterval(async () => {
        if (this.connectionState === 'closed') return clearInterval(timer);
        try {
          const report = await this.getStats();
          report.forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'audio')
              probe.energy.push([performance.now(), s.totalAudioEnergy || 0, s.totalSamplesDuration || 0]);
          });
        } catch { /* closed under us */ }
      }, 50);
    }
    createDataChannel(...args) {
      const channel = super.createDataChannel(...args);
      channel.addEventListener('message', (m) => {
        try {
          const e = JSON.parse(m.data);
          probe.events.push({t: performance.now(), type: e.type, state: e.state || null,
                             language: e.language || null});
        } catch { /* not JSON */ }
      });
      return channel;
    }
  };
})()"""

PAGE_JS = """({dir: document.documentElement.dir, lang: document.documentElement.lang,
  direction: getComputedStyle(document.body).direction, title: document.title,
  call: document.getElementById('call').textContent.trim(),
  hangup: document.getElementById('hangup').textContent.trim(),
  state: document.querySelector('#state .label').textContent,
  who: Array.from(document.querySelectorAll('#transcript .msg .who span:first-child')).map(e => e.textContent)})"""


def energy_rate(samples: list[list[float]], start_ms: float, end_ms: float) -> float | None:
    """Mean audioLevel² of the remote track played out between two page times (None: no samples there)."""
    inside = [s for s in samples if start_ms <= s[0] <= end_ms]
    if len(inside) < 2 or inside[-1][2] <= inside[0][2]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])


def barge_in_audio(probe: dict[str, list]) -> dict[str, Any]:
    """When the bot spoke, when the caller cut in, when the barge-in came, and the bot's loudness around it."""
    events, energy = probe["events"], probe["energy"]
    barge_ms = next((e["t"] for e in events if e["type"] == "barge_in"), None)
    if barge_ms is None:
        return {"barge_in_ms": None}
    # The reply that was cut started at the last bot_speaking before the barge-in; the caller cut in at the
    # first speech after that (a short first burst pauses the bot, and it may resume before the real words).
    speaking_ms = max((e["t"] for e in events if e["state"] == "bot_speaking" and e["t"] <= barge_ms), default=None)
    starts = [e["t"] for e in events if e["type"] == "speech.started" and e["t"] <= barge_ms]
    if speaking_ms is None or not starts:
        return {"barge_in_ms": barge_ms, "events": events}  # the test fails on the missing numbers
    speech_ms = min((t for t in starts if t >= speaking_ms), default=starts[-1])
    # The answer to the new question may start within the second: the window ends there.
    after_ms = min([barge_ms + 1000] + [e["t"] for e in events if e["state"] == "bot_speaking" and e["t"] > barge_ms])
    return {"barge_in_ms": barge_ms, "reply_to_caller_speech_s": round((speech_ms - speaking_ms) / 1000, 2),
            "caller_speech_to_barge_in_s": round((barge_ms - speech_ms) / 1000, 2),
            # The bot's voice in the second before the caller cut in, and in the second after the barge-in.
            "energy_before": energy_rate(energy, max(speaking_ms, speech_ms - 1000), speech_ms),
            "energy_after": energy_rate(energy, barge_ms, after_ms), "after_s": round((after_ms - barge_ms) / 1000, 2)}


async def _webrtc_call(url: str, asr: RecordingAsr, work: Path, script: CallScript) -> dict[str, Any]:
    wav = capture_file(work, list(script.microphone), script.microphone_gain_db)
    with chromium(work, wav, extra_flags=WEBRTC_LOOPBACK_FLAGS) as devtools:
        cdp = await open_page(devtools, url)
        try:
            await cdp.js(PROBE_JS)
            if script.language != "en":
                await cdp.js(f"(() => {{ const s = document.getElementById('language'); s.value = "
                             f"{json.dumps(script.language)}; s.dispatchEvent(new Event('change')); }})()")
            clicked = time.monotonic()
            await cdp.click("#call")
            await cdp.wait_for("voiceai.stats().transport", 20, "a transport to be chosen")
            await cdp.wait_for(f"document.querySelectorAll('#transcript .msg.bot .latency').length >= "
                               f"{script.answered_turns}", 45, f"{script.answered_turns} answered turn(s)")
            answered_s = time.monotonic() - clicked
            await asyncio.sleep(0.6)  # one more stats poll of the remote audio
            await cdp.screenshot(work / f"page-webrtc-{script.language}.png")
            messages = await cdp.js(TRANSCRIPT_JS)
            stats = await cdp.js("voiceai.stats()")
            page = await cdp.js(PAGE_JS)
            probe = await cdp.js("window.__probe")
            label = await cdp.js("document.getElementById('transport').hidden ? '' : "
                                 "document.getElementById('transport').textContent")
            remote_audio = await cdp.js("(() => { const a = document.getElementById('remote-audio');"
                                        " return {stream: !!a.srcObject, paused: a.paused, playedS: a.currentTime};"
                                        " })()")
            await cdp.click("#hangup")
            await cdp.wait_for("voiceai.stats().state === 'ended'", 10, "the call to end")
            ended_state = await cdp.js("voiceai.stats().state")
            page["ended_label"] = await cdp.js("document.querySelector('#state .label').textContent")
        finally:
            console = list(cdp.console)
            await cdp.close()
    received = pcm16_to_float(bytes(asr.audio))
    await asyncio.to_thread(write_wav, work / "server-audio.wav", received)  # what Whisper heard, for a look
    reference = read_wav(audio_path(script.reference))[0]
    correlation = best_correlation(received, reference) if len(received) else 0.0
    return {"transport_label": label, "remote_audio": remote_audio, "stats": stats, "messages": messages,
            "page": page, "ended_state": ended_state, "replies": list(script.replies),
            "barge_in": barge_in_audio(probe), "probe": probe,
            "final_languages": [e["language"] for e in probe["events"] if e["type"] == "transcript.final"],
            "server_audio_correlation": correlation, "console": console[-30:],
            "timings": {**(stats.get("timings") or {}), "click_to_answered_turn_s": round(answered_s, 2)}}


def run_webrtc_call(out: Path, work: Path, scenario: str) -> None:
    """The gateway (WebRTC on loopback, real VAD, ASR and TTS, scripted LLM) and Chromium on the real page;
    what the page showed goes to ``out``."""
    from gateway.app import create_app
    from tests.platform_helpers import isolate
    from voiceai.config import load_settings

    script = CALL_SCRIPTS[scenario]
    settings = isolate(load_settings(profile="cpu", env={}, overrides={
        "channels.webrtc.host_addresses": ["127.0.0.1"], "channels.webrtc.connect_timeout_s": 10,
        "auth.rate_limit.enabled": False}), work / "platform")  # no Redis inside the namespace
    holder: dict[str, RecordingAsr] = {}
    started = time.monotonic()
    app = create_app(settings, clients_factory=real_asr_clients(holder, {script.language: script.replies}),
                     kb_factory=None)
    with serve(app) as url:
        ready_s = time.monotonic() - started
        result = asyncio.run(asyncio.wait_for(_webrtc_call(url, holder["asr"], work, script), 55))
    result["timings"]["gateway_ready_s"] = round(ready_s, 2)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.browser_helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("webrtc-call", help="one WebRTC call from the real page in headless Chromium")
    call.add_argument("--out", type=Path, required=True, help="JSON result")
    call.add_argument("--work", type=Path, required=True, help="folder for the profile, logs and screenshots")
    call.add_argument("--language", choices=("en", "ar"), default="en", help="the page's (and the call's) language")
    call.add_argument("--barge-in", action="store_true",
                      help="a long reply the microphone talks over (English only)")
    args = parser.parse_args(argv)
    if args.barge_in and args.language != "en":
        parser.error("--barge-in runs in English only")
    run_webrtc_call(args.out, args.work, "barge-in" if args.barge_in else args.language)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
