"""Twilio Media Streams: the signed webhook, the TwiML, and whole calls over the stream WebSocket.

The gateway runs under uvicorn on a loopback port with the real call loop on fake models (tests/fakes.py:
the bot's voice is a 440 Hz tone, the caller's speech a 220 Hz tone). A Python client plays Twilio's part:
it signs webhooks with Twilio's own helper library (``twilio.request_validator``), then streams 20 ms
mu-law frames in real time and echoes marks back as Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import httpx
import jwt
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.app import create_app
from gateway.auth.keys import KeyRing
from gateway.auth.tokens import issue_access
from media_bridge.clients import BridgeClients
from media_bridge.g711 import ulaw_decode, ulaw_encode
from media_bridge.twilio import _port_variants, connect_twiml, signature, signature_valid, signed_url, stream_url
from tests.fakes import (
    FakeAsrClient,
    FakeLlmClient,
    FakeTtsClient,
    FakeVadClient,
    fast_settings,
    peak_hz,
    silence,
    tone,
)
from tests.platform_helpers import isolate, kb_database
from tests.servers import serve_app
from voiceai.config import Settings

pytestmark = pytest.mark.integration

AUTH_TOKEN = "12345678901234567890123456789012"
TENANT = "acme"
BOT_HZ = 440.0  # the fake TTS's tone
CALLER_HZ = 220.0
FRAME_MS = 20
RATE_HZ = 8000
CALLER = "+14155550100"


def _settings(folder: Path, **overrides: Any) -> Settings:
    kb_database(folder, TENANT)  # the answering tenant exists before the gateway starts
    tree = {"channels__twilio__auth_token": AUTH_TOKEN, "channels__twilio__tenant": TENANT,
            "call__greeting": True} | overrides
    return isolate(fast_settings(**tree), folder)


async def _fake_clients(_: Settings) -> BridgeClients:
    # 40 ms of audio per character: the greeting lasts ~2.2 s, long enough to talk over.
    tts = FakeTtsClient(ms_per_char=40, freq_hz=BOT_HZ)
    return BridgeClients(vad=FakeVadClient(), asr=FakeAsrClient(), llm=FakeLlmClient(), tts=tts,
                         fallback_tts=FakeTtsClient(freq_hz=660.0, voice="espeak:fake"))


def _counter(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


def _form(call_sid: str = "CA0001") -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": "AC0001", "From": CALLER, "To": "+14155550199", "Direction": "inbound",
            "CallStatus": "ringing"}


@dataclass
class Gateway:
    url: str
    app: Any
    settings: Settings

    @property
    def voice_url(self) -> str:
        return f"{self.url}/v1/twilio/voice"

    def webhook(self, params: dict[str, str], *, url: str | None = None, sign: bool = True,
                signature_value: str | None = None, headers: dict[str, str] | None = None,
                to: str | None = None) -> httpx.Response:
        """POSTs the voice webhook (or ``to``, e.g. a <Connect action>) as Twilio does, signed over ``url``
        (default: the URL posted to)."""
        target = to or self.voice_url
        sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if sign:
            sent["X-Twilio-Signature"] = signature_value or RequestValidator(AUTH_TOKEN).compute_signature(
                url or target, params)
        return httpx.post(target, content=urlencode(params), headers=sent, timeout=5)

    def call_token(self) -> str:
        """A call token, the way Twilio gets one: from the TwiML of a signed webhook."""
        response = self.webhook(_form())
        assert response.status_code == 200, response.text
        return _twiml_params(response.text)[1]["token"]


def _twiml_params(twiml: str) -> tuple[str, dict[str, str]]:
    root = ElementTree.fromstring(twiml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = _settings(tmp_path_factory.mktemp("twilio"))
    app = create_app(settings, clients_factory=_fake_clients, kb_factory=None)
    with serve_app(app) as url:
        yield Gateway(url, app, settings)


# ---- Twilio's side of the stream --------------------------------------------------------------


@dataclass
class FakeTwilio:
    """Twilio's end of a Media Stream: paced caller audio out; the bot's media, marks and clears in."""

    ws: ClientConnection
    stream_sid: str = "MZ0001"
    media: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, PCM16 at 8 kHz)
    marks: list[tuple[float, str]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    _chunk: int = 0
    _phase: int = 0
    _next_at: float = 0.0
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, gateway: Gateway) -> FakeTwilio:
        ws = await connect(gateway.url.replace("http", "ws") + "/v1/twilio/stream", open_timeout=5)
        twilio = cls(ws)
        twilio._reader = asyncio.create_task(twilio._read())
        return twilio

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def start(self, parameters: dict[str, str], media_format: dict[str, Any] | None = None) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid, "start": {
            "accountSid": "AC0001", "streamSid": self.stream_sid, "callSid": "CA0001", "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        self._next_at = time.monotonic()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                now = time.monotonic()
                assert message.get("streamSid") == self.stream_sid, message
                if message["event"] == "media":
                    self.media.append((now, ulaw_decode(base64.b64decode(message["media"]["payload"]))))
                elif message["event"] == "mark":
                    self.marks.append((now, message["mark"]["name"]))
                    await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": message["mark"]})
                elif message["event"] == "clear":
                    self.clears.append(now)
                else:
                    self.other.append(message)
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def _frame(self, pcm16: bytes) -> None:
        delay = self._next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next_at = max(self._next_at + FRAME_MS / 1000, time.monotonic() - 0.1)
        self._chunk += 1
        await self.send({"event": "media", "sequenceNumber": str(self._chunk + 1), "streamSid": self.stream_sid,
                         "media": {"track": "inbound", "chunk": str(self._chunk),
                                   "timestamp": str(self._chunk * FRAME_MS),
                                   "payload": base64.b64encode(ulaw_encode(pcm16)).decode()}})

    async def say(self, ms: float) -> None:
        for _ in range(round(ms / FRAME_MS)):
            pcm = tone(FRAME_MS, RATE_HZ, CALLER_HZ, phase=self._phase)
            self._phase += len(pcm) // 2
            await self._frame(pcm)

    async def pause(self, ms: float) -> None:
        for _ in range(round(ms / FRAME_MS)):
            await self._frame(silence(FRAME_MS, RATE_HZ))

    async def until(self, predicate: Any, timeout_s: float = 5.0, what: str = "") -> None:
        """Sends silence (the line stays open, as on a real call) until ``predicate()`` holds."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await self._frame(silence(FRAME_MS, RATE_HZ))

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": "CA0001"}})

    async def closed(self, timeout_s: float = 5.0) -> int | None:
        assert self._reader is not None
        await asyncio.wait_for(self._reader, timeout_s)
        return self.close_code

    def audio(self, after: float = 0.0, before: float = float("inf")) -> np.ndarray:
        chunks = [np.frombuffer(p, dtype="<i2") for t, p in self.media if after <= t < before]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")


async def _until_closed(twilio: FakeTwilio) -> int | None:
    try:
        return await twilio.closed()
    finally:
        await twilio.ws.close()


def _call_row(settings: Settings, call_id: str, timeout_s: float = 10.0) -> tuple[Any, ...]:
    """The call's row once the call writer has written its end."""
    path = settings.db.url.removeprefix("sqlite:///")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT channel, ended_reason, caller_id, caller_hash, tenant_id FROM calls WHERE id = ?",
                             (call_id,)).fetchone()
        if row is not None and row[1]:
            return tuple(row)
        time.sleep(0.1)
    raise AssertionError(f"call {call_id} was not recorded as ended")


# ---- signatures and TwiML -----------------------------------------------------------------------


@pytest.mark.unit
def test_our_signature_is_twilios() -> None:
    validator = RequestValidator(AUTH_TOKEN)
    url = "https://voice.bank.example/v1/twilio/voice?site=dubai"
    params = _form() | {"Body": "مرحبا & <hi>", "Empty": ""}
    ours = signature(AUTH_TOKEN, url, params.items())
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)
    assert signature_valid(AUTH_TOKEN, url, params.items(), validator.compute_signature(url, params))
    # Twilio may sign the URL with the default port spelled out; its library and we accept both forms.
    with_port = "https://voice.bank.example:443/v1/twilio/voice?site=dubai"
    assert signature_valid(AUTH_TOKEN, url, params.items(), validator.compute_signature(with_port, params))
    assert _port_variants("http://h:8080/x") == ["http://h:8080/x"]  # a non-default port is never dropped
    tampered = params | {"From": "+14155550111"}
    assert not signature_valid(AUTH_TOKEN, url, tampered.items(), ours)
    assert not signature_valid(AUTH_TOKEN, url.replace("dubai", "cairo"), params.items(), ours)
    assert not signature_valid("another-account-token", url, params.items(), ours)
    assert not signature_valid(AUTH_TOKEN, url, params.items(), "")


@pytest.mark.unit
def test_urls_come_from_public_url_or_the_request() -> None:
    assert signed_url("https://voice.bank.example/ivr/", "http://10.0.0.5:8000/v1/twilio/voice?a=1",
                      "/v1/twilio/voice", "a=1") == "https://voice.bank.example/ivr/v1/twilio/voice?a=1"
    assert signed_url(None, "http://10.0.0.5:8000/v1/twilio/voice", "/v1/twilio/voice", "") \
        == "http://10.0.0.5:8000/v1/twilio/voice"
    assert stream_url("https://voice.bank.example/ivr", "http://x/") == "wss://voice.bank.example/ivr/v1/twilio/stream"
    assert stream_url(None, "http://10.0.0.5:8000/") == "ws://10.0.0.5:8000/v1/twilio/stream"
    url, params = _twiml_params(connect_twiml("wss://h/v1/twilio/stream", {"token": "a.b.c", "from": "<&\">"}))
    assert url == "wss://h/v1/twilio/stream" and params == {"token": "a.b.c", "from": "<&\">"}


def test_a_signed_webhook_gets_twiml_with_a_call_token(gateway: Gateway) -> None:
    response = gateway.webhook(_form())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    url, params = _twiml_params(response.text)
    assert url == gateway.url.replace("http://", "ws://") + "/v1/twilio/stream"
    assert params["from"] == CALLER
    claims = jwt.decode(params["token"], options={"verify_signature": False})
    assert claims["typ"] == "call" and claims["tname"] == TENANT and claims["scope"] == "calls.join"
    assert claims["lang"] == "en" and len(claims["call"]) == 32
    assert claims["exp"] - claims["iat"] == gateway.settings.auth.call_token_ttl_s


@pytest.mark.parametrize("case", ["missing", "tampered_param", "other_url", "other_token", "sha256_shared_key"])
def test_a_badly_signed_webhook_is_refused(gateway: Gateway, case: str) -> None:
    reason = {"missing": "missing_signature", "sha256_shared_key": "unsupported_algorithm"}.get(case, "bad_signature")
    before = _counter("voiceai_twilio_rejected_total", reason)
    params = _form()
    if case == "missing":
        response = gateway.webhook(params, sign=False)
    elif case == "tampered_param":  # signed for one caller, sent with another
        good = RequestValidator(AUTH_TOKEN).compute_signature(gateway.voice_url, params)
        response = gateway.webhook(params | {"From": "+14155550111"}, signature_value=good)
    elif case == "other_url":
        response = gateway.webhook(params, url="https://attacker.example/v1/twilio/voice")
    elif case == "other_token":
        response = gateway.webhook(params, signature_value=RequestValidator("x" * 32).compute_signature(
            gateway.voice_url, params))
    else:
        response = gateway.webhook(params, headers={
            "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"})
    assert response.status_code == 403
    assert "token" not in response.text
    assert _counter("voiceai_twilio_rejected_total", reason) == before + 1


def test_public_url_is_what_signatures_cover_and_streams_use(tmp_path: Path) -> None:
    public = "https://voice.bank.example/ivr"
    settings = _settings(tmp_path, channels__twilio__public_url=public)
    with TestClient(create_app(settings, clients_factory=_fake_clients, kb_factory=None)) as client:
        params = _form()
        body = urlencode(params)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        good = RequestValidator(AUTH_TOKEN).compute_signature(f"{public}/v1/twilio/voice", params)
        local = RequestValidator(AUTH_TOKEN).compute_signature("http://testserver/v1/twilio/voice", params)
        ok = client.post("/v1/twilio/voice", content=body, headers=headers | {"X-Twilio-Signature": good})
        assert ok.status_code == 200, ok.text
        assert _twiml_params(ok.text)[0] == "wss://voice.bank.example/ivr/v1/twilio/stream"
        refused = client.post("/v1/twilio/voice", content=body, headers=headers | {"X-Twilio-Signature": local})
        assert refused.status_code == 403


def test_twilio_routes_are_404_without_an_auth_token(tmp_path: Path) -> None:
    settings = isolate(fast_settings(), tmp_path)
    with TestClient(create_app(settings, clients_factory=_fake_clients, kb_factory=None)) as client:
        assert client.post("/v1/twilio/voice", content=urlencode(_form())).status_code == 404
        with pytest.raises(Exception) as refused, client.websocket_connect("/v1/twilio/stream"):
            pass
        assert getattr(refused.value, "status_code", None) == 404


def test_an_unknown_answering_tenant_stops_the_gateway_at_startup(tmp_path: Path) -> None:
    settings = _settings(tmp_path, channels__twilio__tenant="no-such-bank")
    with pytest.raises(RuntimeError, match="no-such-bank"), \
            TestClient(create_app(settings, clients_factory=_fake_clients, kb_factory=None)):
        pass


# ---- whole calls over the stream ----------------------------------------------------------------


async def test_a_call_over_the_media_stream_with_a_barge_in(gateway: Gateway) -> None:
    token = await asyncio.to_thread(gateway.call_token)
    call_id = jwt.decode(token, options={"verify_signature": False})["call"]
    twilio = await FakeTwilio.open(gateway)
    try:
        await twilio.start({"token": token, "from": CALLER})
        # The greeting: paced 20 ms mu-law frames of the fake TTS's tone, a mark when its first phrase plays.
        await twilio.until(lambda: len(twilio.media) >= 25, what="500 ms of the greeting")
        assert twilio.marks and twilio.marks[0][1] == "phrase-1"
        greeting = twilio.audio()
        assert np.sqrt(np.mean(greeting.astype(np.float64) ** 2)) > 1000  # not silence
        assert abs(peak_hz(greeting, RATE_HZ) - BOT_HZ) < 10
        assert {len(p) for _, p in twilio.media} == {RATE_HZ * FRAME_MS // 1000 * 2}
        first, last = twilio.media[0][0], twilio.media[-1][0]
        assert (last - first) >= 0.020 * (len(twilio.media) - 1) * 0.8  # paced in real time, not a burst

        # The caller talks over the bot: Twilio is told to clear what it buffered, and no more of the
        # greeting comes.
        talk_from = time.monotonic()
        await twilio.say(900)
        await twilio.until(lambda: bool(twilio.clears), what="clear")
        cleared_at = twilio.clears[0]
        assert cleared_at - talk_from < 1.5
        assert not [t for t, _ in twilio.media if cleared_at < t < cleared_at + 0.25]

        # The caller's words ("hello" from the fake ASR) get the fake LLM's reply, marked when done.
        await twilio.until(lambda: any(n.startswith("turn-") for _, n in twilio.marks), timeout_s=8,
                           what="the reply's end mark")
        reply = twilio.audio(after=cleared_at + 0.25)
        assert len(reply) > RATE_HZ // 2 and abs(peak_hz(reply, RATE_HZ) - BOT_HZ) < 10
        names = [n for _, n in twilio.marks]
        assert names[-1] == "turn-1" and names.count("phrase-1") == 1 and len(names) >= 3

        # Keys reach the session.
        await twilio.send({"event": "dtmf", "streamSid": twilio.stream_sid, "sequenceNumber": "99",
                           "dtmf": {"track": "inbound_track", "digit": "5"}})
        session = gateway.app.state.host.active[call_id]
        await twilio.until(lambda: session.dtmf == ["5"], timeout_s=2, what="the key press")

        await twilio.stop()
        assert await _until_closed(twilio) == 1000
    finally:
        await twilio.ws.close()
    channel, reason, caller_id, caller_hash, _ = await asyncio.to_thread(_call_row, gateway.settings, call_id)
    assert channel == "twilio" and reason == "hangup"
    assert CALLER not in (caller_id or "") and caller_hash  # kept only as a peppered hash (not opted in)
    assert call_id not in gateway.app.state.host.active


async def test_the_transfer_key_dials_the_agents_after_the_hold_line(gateway: Gateway) -> None:
    """Key 0: "please hold" plays (its mark echoed), the stream closes, and Twilio's <Connect action> request
    gets <Dial> to the transfer target; asked again (or for a call that was not transferred): <Hangup/>."""
    response = await asyncio.to_thread(gateway.webhook, _form("CA0042"))
    root = ElementTree.fromstring(response.text)
    action = root.find("./Connect").attrib["action"]  # type: ignore[union-attr]
    token = _twiml_params(response.text)[1]["token"]
    call_id = jwt.decode(token, options={"verify_signature": False})["call"]
    assert action == f"{gateway.url}/v1/twilio/voice/after?call_id={call_id}"
    twilio = await FakeTwilio.open(gateway)
    try:
        await twilio.start({"token": token})
        await twilio.until(lambda: call_id in gateway.app.state.host.active, what="the call")
        await twilio.send({"event": "dtmf", "streamSid": twilio.stream_sid, "dtmf": {"digit": "0"}})
        assert await _until_closed(twilio) == 1000
    finally:
        await twilio.ws.close()
    assert "transfer" in [n for _, n in twilio.marks]
    after = {"CallSid": "CA0042", "AccountSid": "AC0001", "CallStatus": "in-progress"}
    dial = await asyncio.to_thread(gateway.webhook, after, to=action)
    target = gateway.settings.call.transfer.target
    assert dial.status_code == 200 and ElementTree.fromstring(dial.text).find("./Dial/Sip").text == target  # type: ignore[union-attr]
    again = await asyncio.to_thread(gateway.webhook, after, to=action)
    assert ElementTree.fromstring(again.text).find("./Hangup") is not None
    forged = await asyncio.to_thread(gateway.webhook, after, to=action, signature_value="bm90IGEgc2lnbmF0dXJl")
    assert forged.status_code == 403
    _, reason, *_ = await asyncio.to_thread(_call_row, gateway.settings, call_id)
    assert reason == "transferred"


async def test_junk_frames_are_counted_and_the_call_goes_on(gateway: Gateway) -> None:
    token = await asyncio.to_thread(gateway.call_token)
    call_id = jwt.decode(token, options={"verify_signature": False})["call"]
    reasons = ["media_before_start", "invalid_json", "bad_base64", "unknown_event", "too_large", "binary_frame",
               "bad_dtmf"]
    before = {r: _counter("voiceai_twilio_bad_frames_total", r) for r in reasons}
    twilio = await FakeTwilio.open(gateway)
    try:
        await twilio.send({"event": "media", "streamSid": twilio.stream_sid,
                           "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}})
        await twilio.send("{not json")
        await twilio.start({"token": token})
        await twilio.send({"event": "media", "streamSid": twilio.stream_sid, "media": {"payload": "***not base64"}})
        await twilio.send({"event": "teleport", "streamSid": twilio.stream_sid})
        await twilio.send("x" * (64 * 1024 + 1))
        await twilio.ws.send(b"\x00\x01")
        await twilio.send({"event": "dtmf", "streamSid": twilio.stream_sid, "dtmf": {"digit": "55"}})
        await twilio.send({"event": "dtmf", "streamSid": twilio.stream_sid, "dtmf": {"digit": "#"}})
        session = None
        deadline = time.monotonic() + 3
        while session is None or session.dtmf != ["#"]:
            assert time.monotonic() < deadline, "the call did not survive the junk"
            await twilio.pause(FRAME_MS)
            session = gateway.app.state.host.active.get(call_id)
        await twilio.until(lambda: len(twilio.media) > 5, what="the greeting")  # audio still flows both ways
        for reason in reasons:
            assert _counter("voiceai_twilio_bad_frames_total", reason) == before[reason] + 1, reason
        await twilio.stop()
        assert await _until_closed(twilio) == 1000
    finally:
        await twilio.ws.close()


@pytest.mark.parametrize("case", ["no_token", "garbage", "access_token", "reused", "alaw"])
async def test_a_stream_without_a_good_start_never_becomes_a_call(gateway: Gateway, case: str) -> None:
    host = gateway.app.state.host
    parameters: dict[str, str] = {}
    media_format = None
    if case == "garbage":
        parameters["token"] = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"
    elif case == "access_token":  # a valid token of this install, but not a call token
        ring = KeyRing.load_or_create(gateway.settings.auth.keys_dir)
        parameters["token"] = issue_access(ring, gateway.settings.auth, subject="u1", tenant_id="t1",
                                           tenant_name=TENANT, role="admin", principal_type="user")
    elif case == "reused":  # a second stream with the token of a call already joined
        parameters["token"] = await asyncio.to_thread(gateway.call_token)
        first = await FakeTwilio.open(gateway)
        await first.start(parameters)
        await first.until(lambda: bool(first.media), what="the first call's audio")
    elif case == "alaw":
        parameters["token"] = await asyncio.to_thread(gateway.call_token)
        media_format = {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1}
    active = set(host.active)
    twilio = await FakeTwilio.open(gateway)
    await twilio.start(parameters, media_format)
    code = await _until_closed(twilio)
    assert code == {"no_token": 4401, "garbage": 4401, "access_token": 4401, "reused": 4409, "alaw": 1003}[case]
    assert not twilio.media and set(host.active) <= active  # no call was started for it
    if case == "reused":
        await first.stop()
        assert await _until_closed(first) == 1000
