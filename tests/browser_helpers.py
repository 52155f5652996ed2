"""Shared by the browser tests (tests/test_web_page.py, tests/test_webrtc.py): scripted ASR and LLM fakes, the
gateway on a loopback port, headless Chromium driven over the DevTools protocol, and the WebRTC page run.

The fakes implement the real interfaces of ``asr/api.py`` and ``nlu/api.py``: the ASR finds utterances with the
real Silero VAD on the audio the page actually sent (and keeps that audio), the LLM answers from a script, so
the caller's words and the bot's replies are known in advance. VAD (Silero) and TTS (espeak-ng) are real.

``python -m tests.browser_helpers webrtc-call --out FILE --work DIR`` runs one WebRTC call from the real page
and writes what it saw as JSON. Run it inside a network namespace with only loopback up
(``unshare -n sh -c 'ip link set lo up && exec python -m tests.browser_helpers ...'``): Chromium's ICE then
has nothing but 127.0.0.1 to try (it needs ``--allow-loopback-in-peer-connection`` for that, and
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
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
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
from media_bridge.clients import BridgeClients, fallback_tts_settings
from nlu.api import ChatMessage, GenerateParams, GenerationFinal, LlmEvent, TextDelta
from tests.conftest import audio_path
from tests.servers import free_port
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
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
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



# ---- one WebRTC call from the real page (run inside `unshare -n`) ---------------------------------------

WEBRTC_REPLY = "Your order was shipped yesterday and should arrive on Friday."


async def _webrtc_call(url: str, asr: FakeScriptedAsr, work: Path) -> dict[str, Any]:
    order = json.loads((audio_path("TEXTS.json")).read_text())["en_order.wav"]["text"]
    asr.reset([Utterance("en", order)])
    wav = capture_file(work, [(None, 5.0), ("en_order.wav", 6.0)])  # speak once the greeting (~4 s) is over
    with chromium(work, wav, extra_flags=WEBRTC_LOOPBACK_FLAGS) as devtools:
        cdp = await open_page(devtools, url)
        try:
            clicked = time.monotonic()
            await cdp.click("#call")
            await cdp.wait_for("voiceai.stats().transport", 20, "a transport to be chosen")
            await cdp.wait_for("document.querySelectorAll('#transcript .msg.bot .latency').length >= 1", 40,
                               "an answered turn")
            answered_s = time.monotonic() - clicked
            await asyncio.sleep(0.6)  # one more stats poll of the remote audio
            await cdp.screenshot(work / "page-webrtc.png")
            messages = await cdp.js(TRANSCRIPT_JS)
            stats = await cdp.js("voiceai.stats()")
            label = await cdp.js("document.getElementById('transport').hidden ? '' : "
                                 "document.getElementById('transport').textContent")
            remote_audio = await cdp.js("(() => { const a = document.getElementById('remote-audio');"
                                        " return {stream: !!a.srcObject, paused: a.paused, playedS: a.currentTime};"
                                        " })()")
            await cdp.click("#hangup")
            await cdp.wait_for("voiceai.stats().state === 'ended'", 10, "the call to end")
            ended_state = await cdp.js("voiceai.stats().state")
        finally:
            console = list(cdp.console)
            await cdp.close()
    received = pcm16_to_float(bytes(asr.audio))
    correlation = best_correlation(received, read_wav(audio_path("en_order.wav"))[0]) if len(received) else 0.0
    return {"transport_label": label, "remote_audio": remote_audio, "stats": stats, "messages": messages,
            "ended_state": ended_state,
            "reply": WEBRTC_REPLY, "server_audio_correlation": correlation, "console": console[-30:],
            "timings": {**(stats.get("timings") or {}), "click_to_answered_turn_s": round(answered_s, 2)}}


def run_webrtc_call(out: Path, work: Path) -> None:
    """The gateway (WebRTC on loopback) and Chromium on the real page; what the page showed goes to ``out``."""
    from gateway.app import create_app
    from tests.platform_helpers import isolate
    from voiceai.config import load_settings

    settings = isolate(load_settings(profile="cpu", env={}, overrides={
        "channels.webrtc.host_addresses": ["127.0.0.1"], "channels.webrtc.connect_timeout_s": 10,
        "auth.rate_limit.enabled": False}), work / "platform")  # no Redis inside the namespace
    holder: dict[str, FakeScriptedAsr] = {}
    app = create_app(settings, clients_factory=scripted_clients(holder, {"en": (WEBRTC_REPLY,)}), kb_factory=None)
    with serve(app) as url:
        result = asyncio.run(asyncio.wait_for(_webrtc_call(url, holder["asr"], work), 75))
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.browser_helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("webrtc-call", help="one WebRTC call from the real page in headless Chromium")
    call.add_argument("--out", type=Path, required=True, help="JSON result")
    call.add_argument("--work", type=Path, required=True, help="folder for the profile, logs and screenshots")
    args = parser.parse_args(argv)
    run_webrtc_call(args.out, args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
