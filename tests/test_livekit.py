"""The LiveKit agent against the real SDK (livekit.rtc, livekit.api), without a LiveKit server.

No server can run here, so the tests use what the SDK does locally: an ``rtc.AudioSource`` feeding a
``LocalAudioTrack`` that an ``rtc.AudioStream`` reads back (the same native audio pipeline a room uses),
and an unconnected ``rtc.Room`` whose events are emitted by hand. What stays unverified is listed in
media_bridge/livekit_agent.py's docstring: connecting, publishing and subscribing on a real server.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jwt
import numpy as np
import pytest
from livekit import rtc
from pydantic import SecretStr

from media_bridge.channels import LiveKitConfig
from media_bridge.livekit_agent import (
    EVENTS_TOPIC,
    CallerWatch,
    LiveKitAgent,
    LiveKitError,
    LiveKitTransport,
    pcm16_frame,
)
from tests.fakes import fast_settings, peak_hz, silence, tone
from tests.host_helpers import fake_host
from tests.servers import free_port

pytestmark = pytest.mark.unit

RATE_HZ = 48000
FRAME_MS = 20
SECRET = "s3cr3t-" * 6
BOT_HZ = 440.0  # the fake TTS's tone (tests/fakes.py)


def _cfg(**over: Any) -> LiveKitConfig:
    return LiveKitConfig(**({"url": "ws://127.0.0.1:7880", "api_key": "APIkey1", "api_secret": SecretStr(SECRET),
                             "token_ttl_s": 600} | over))


@dataclass
class FakePublisher:
    """Stands in for ``rtc.LocalParticipant.publish_data`` (publishing needs a connected room)."""

    sent: list[tuple[dict[str, Any], bool, str]] = field(default_factory=list)

    async def publish_data(self, payload: bytes | str, *, reliable: bool = True,
                           destination_identities: list[str] | None = None, topic: str = "") -> None:
        self.sent.append((json.loads(payload), reliable, topic))

    def types(self) -> list[str]:
        return [e["type"] for e, _, _ in self.sent]


@dataclass
class FakeParticipant:
    """What the agent reads of an ``rtc.RemoteParticipant`` (real ones come only from a server)."""

    identity: str
    attributes: dict[str, str] = field(default_factory=dict)


class Listener:
    """Reads a local track back through ``rtc.AudioStream``, as a subscriber would hear it."""

    def __init__(self, track: rtc.Track) -> None:
        self.stream = rtc.AudioStream(track, sample_rate=RATE_HZ, num_channels=1)
        self.frames: list[tuple[float, np.ndarray]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.stream:
            self.frames.append((time.monotonic(), np.frombuffer(bytes(event.frame.data), dtype="<i2")))

    def audio(self, after: float = 0.0) -> np.ndarray:
        chunks = [f for t, f in self.frames if t >= after]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")

    def heard(self, after: float = 0.0) -> bool:
        return bool(len(self.audio(after))) and int(np.abs(self.audio(after)).max()) > 1000

    async def close(self) -> None:
        await self.stream.aclose()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _loud(samples: np.ndarray) -> np.ndarray:
    return samples[np.abs(samples) > 0] if samples.size else samples


# ---- tokens -----------------------------------------------------------------------------------


def test_agent_and_caller_tokens_carry_exactly_their_grants() -> None:
    agent = LiveKitAgent(fake_host()[0], _cfg())
    claims = jwt.decode(agent.mint_token("room-7", "voiceai-agent", agent=True), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "voiceai-agent" and claims["iss"] == "APIkey1" and claims["kind"] == "agent"
    video = claims["video"]
    assert video["room"] == "room-7" and video["roomJoin"] is True
    assert video["canPublish"] and video["canSubscribe"] and video["canPublishData"] and video["agent"]
    assert claims["exp"] - claims["nbf"] == 600

    caller = jwt.decode(agent.mint_token("room-7", "caller-1", agent=False, name="Web caller"), SECRET,
                        algorithms=["HS256"])
    video = caller["video"]
    assert caller["sub"] == "caller-1" and caller["name"] == "Web caller" and caller.get("kind") != "agent"
    assert video["room"] == "room-7" and video["roomJoin"] is True
    assert video["canPublishSources"] == ["microphone"] and video["canPublishData"] is False
    assert video["canUpdateOwnMetadata"] is False
    assert not any(video.get(k) for k in ("roomAdmin", "roomCreate", "roomList", "roomRecord", "agent"))

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(agent.mint_token("room-7", "caller-1", agent=False), "another-secret-" * 3, algorithms=["HS256"])
    with pytest.raises(LiveKitError, match="api_key"):
        LiveKitAgent(fake_host()[0], _cfg(api_key=None)).mint_token("r", "i", agent=True)


# ---- audio through the SDK's local objects ------------------------------------------------------


def test_pcm16_becomes_an_audio_frame() -> None:
    pcm = tone(FRAME_MS, RATE_HZ, BOT_HZ)
    frame = pcm16_frame(pcm, RATE_HZ)
    assert (frame.sample_rate, frame.num_channels, frame.samples_per_channel) == (RATE_HZ, 1, 960)
    assert bytes(frame.data) == pcm and abs(frame.duration - 0.020) < 1e-9
    with pytest.raises(ValueError, match="even"):
        pcm16_frame(pcm[:-1], RATE_HZ)


async def test_the_transport_plays_audio_publishes_events_and_clears_on_barge_in() -> None:
    source = rtc.AudioSource(RATE_HZ, 1, queue_size_ms=2000)
    listener = Listener(rtc.LocalAudioTrack.create_audio_track("voiceai-bot", source))
    publisher = FakePublisher()
    transport = LiveKitTransport(source, publisher)
    assert transport.sample_rate_hz == RATE_HZ
    try:
        for i in range(25):  # 500 ms, paced as the playout paces it
            await transport.send_audio(tone(FRAME_MS, RATE_HZ, BOT_HZ, phase=i * 960))
            await asyncio.sleep(FRAME_MS / 1000)
        await asyncio.sleep(0.2)
        played = _loud(listener.audio())
        assert len(played) > RATE_HZ * 0.3 and abs(peak_hz(played, RATE_HZ) - BOT_HZ) < 5

        await transport.send_event({"type": "bot.text", "turn": 1, "text": "مرحبا، كيف أساعدك؟"})
        assert publisher.sent[-1] == ({"type": "bot.text", "turn": 1, "text": "مرحبا، كيف أساعدك؟"}, True,
                                      EVENTS_TOPIC)

        # A second of audio captured at once sits in the source's queue; a barge-in drops it.
        for i in range(50):
            await transport.send_audio(tone(FRAME_MS, RATE_HZ, BOT_HZ, phase=i * 960))
        assert source.queued_duration > 0.8
        await asyncio.sleep(0.1)
        await transport.send_event({"type": "barge_in", "turn": 1, "played_text": ""})
        cleared_at = time.monotonic()
        assert source.queued_duration == 0.0 and publisher.types()[-1] == "barge_in"
        await asyncio.sleep(0.6)
        assert not listener.heard(after=cleared_at + 0.1), "the cleared audio still played"

        transport.closed = True
        await transport.send_event({"type": "state", "state": "ended"})
        assert publisher.types()[-1] == "barge_in"  # nothing is published once the call is over
    finally:
        await listener.close()
        await source.aclose()


# ---- the call, with the room's events emitted locally --------------------------------------------


class Caller:
    """A caller's microphone: a local track the agent subscribes to, fed in real time."""

    def __init__(self) -> None:
        self.source = rtc.AudioSource(RATE_HZ, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        self._phase = 0

    async def say(self, ms: float, freq_hz: float = 220.0) -> None:
        for _ in range(round(ms / FRAME_MS)):
            await self.source.capture_frame(pcm16_frame(tone(FRAME_MS, RATE_HZ, freq_hz, phase=self._phase), RATE_HZ))
            self._phase += RATE_HZ * FRAME_MS // 1000
            await asyncio.sleep(FRAME_MS / 1000)

    async def pause(self, ms: float) -> None:
        for _ in range(round(ms / FRAME_MS)):
            await self.source.capture_frame(pcm16_frame(silence(FRAME_MS, RATE_HZ), RATE_HZ))
            await asyncio.sleep(FRAME_MS / 1000)


async def _until(predicate: Any, timeout_s: float, what: str, caller: Caller | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if caller is not None:
            await caller.pause(FRAME_MS)
        else:
            await asyncio.sleep(0.02)


async def test_a_whole_call_in_a_room_until_the_caller_leaves() -> None:
    host, writer = fake_host(fast_settings(call__greeting=True))
    agent = LiveKitAgent(host, _cfg())
    room = rtc.Room()  # never connected: its events are emitted below as the server would cause them
    watch = CallerWatch(room, "voiceai-agent")
    bot_source = rtc.AudioSource(RATE_HZ, 1, queue_size_ms=200)
    bot = Listener(rtc.LocalAudioTrack.create_audio_track("voiceai-bot", bot_source))
    publisher = FakePublisher()
    transport = LiveKitTransport(bot_source, publisher)
    caller, someone = Caller(), Caller()
    person = FakeParticipant("caller-1", {"sip.phoneNumber": "+971501234567"})
    call = asyncio.create_task(agent.run_call(watch, transport, "room-7", "tenant-1", "acme", "en"))
    try:
        await asyncio.sleep(0.05)
        assert not host.active  # no call before the caller's audio
        room.emit("track_subscribed", caller.track, None, FakeParticipant("voiceai-agent"))  # our own: ignored
        room.emit("track_subscribed", caller.track, None, person)
        room.emit("track_subscribed", someone.track, None, FakeParticipant("supervisor"))  # not the caller
        await _until(lambda: bool(host.active), 2, "the call to start", caller)
        call_id = next(iter(host.active))
        assert writer.of_kind("call_started")[0] == {"call_id": call_id, "channel": "livekit", "language": "en",
                                                     "caller_id": "+971501234567"}

        # The greeting, then a turn: the caller's audio goes through AudioStream into the session, the
        # reply's audio through our AudioSource out to a subscriber.
        await _until(lambda: bot.heard(), 3, "the greeting", caller)
        await _until(lambda: "turn" not in publisher.types() and not host.active[call_id].playout.active, 3,
                     "the greeting's end", caller)
        await caller.say(600)
        said_at = time.monotonic()
        await _until(lambda: "turn" in publisher.types(), 5, "the reply", caller)
        reply = _loud(bot.audio(after=said_at))
        assert len(reply) > RATE_HZ * 0.1 and abs(peak_hz(reply, RATE_HZ) - BOT_HZ) < 5
        turn = next(e for e, _, _ in publisher.sent if e["type"] == "turn")
        assert turn["user_text"] == "hello" and turn["bot_text"]
        assert all(topic == EVENTS_TOPIC and reliable for _, reliable, topic in publisher.sent)

        room.emit("sip_dtmf_received", rtc.SipDTMF(code=5, digit="5", participant=person))  # type: ignore[arg-type]
        await _until(lambda: host.active[call_id].dtmf == ["5"], 1, "the key")

        room.emit("participant_disconnected", FakeParticipant("supervisor"))  # someone else leaving: no effect
        await asyncio.sleep(0.1)
        assert not call.done()
        room.emit("participant_disconnected", person)
        session = await asyncio.wait_for(call, 3)
        assert session.ended_reason == "hangup" and watch.left_reason == "caller_left"
        assert writer.of_kind("call_ended")[-1] == {"call_id": call_id, "reason": "hangup"}
        assert not host.active
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await bot.close()
        for source in (bot_source, caller.source, someone.source):
            await source.aclose()


async def test_the_call_ends_when_the_room_closes() -> None:
    host, writer = fake_host()
    room = rtc.Room()
    watch = CallerWatch(room, "voiceai-agent")
    source = rtc.AudioSource(RATE_HZ, 1)
    caller = Caller()
    call = asyncio.create_task(LiveKitAgent(host, _cfg()).run_call(watch, LiveKitTransport(source, None), "r", "t",
                                                                   "acme", "ar"))
    try:
        room.emit("track_subscribed", caller.track, None, FakeParticipant("caller-1"))
        await _until(lambda: bool(host.active), 2, "the call to start")
        room.emit("disconnected", 1)
        await asyncio.wait_for(call, 3)
        assert watch.left_reason == "room_closed" and writer.of_kind("call_ended")
    finally:
        await asyncio.gather(call, return_exceptions=True)
        await source.aclose()
        await caller.source.aclose()


async def test_no_caller_means_no_call() -> None:
    host, writer = fake_host()
    room = rtc.Room()
    source = rtc.AudioSource(RATE_HZ, 1)
    try:
        agent = LiveKitAgent(host, _cfg(caller_timeout_s=0.2))
        with pytest.raises(LiveKitError, match="no caller"):
            await agent.run_call(CallerWatch(room, "voiceai-agent"), LiveKitTransport(source, None), "r", "t", "a",
                                 "en")
        watch = CallerWatch(room, "voiceai-agent")
        waiting = asyncio.create_task(agent.run_call(watch, LiveKitTransport(source, None), "r", "t", "a", "en"))
        await asyncio.sleep(0.05)
        room.emit("disconnected", 1)
        with pytest.raises(LiveKitError, match="room closed"):
            await waiting
        assert not writer.records and not host.active
    finally:
        await source.aclose()


async def test_join_where_no_server_listens_fails_clearly_and_leaves_nothing_running() -> None:
    host, writer = fake_host()
    before = set(asyncio.all_tasks())
    url = f"ws://127.0.0.1:{free_port()}"
    agent = LiveKitAgent(host, _cfg(url=url, connect_timeout_s=1.0))
    started = time.monotonic()
    with pytest.raises(LiveKitError, match="could not join LiveKit room 'room-7'") as err:
        await agent.join("room-7", "tenant-1", "acme", "en")
    assert url in str(err.value) and time.monotonic() - started < 10
    await asyncio.sleep(0.05)
    assert set(asyncio.all_tasks()) == before
    assert not writer.records and not host.active
    with pytest.raises(LiveKitError, match="url is not set"):
        await LiveKitAgent(host, _cfg(url=None)).join("room-7", "tenant-1", "acme", "en")


class FakeLiveKitApi:
    """Fake of ``livekit.api.LiveKitAPI`` (the server API needs a server): records SIP transfer requests."""

    requests: ClassVar[list[Any]] = []
    fail = False

    def __init__(self, url: str | None, api_key: str | None, api_secret: str | None) -> None:
        self.sip = self
        self.opened_with = (url, api_key, api_secret)

    async def __aenter__(self) -> FakeLiveKitApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def transfer_sip_participant(self, request: Any) -> None:
        if FakeLiveKitApi.fail:
            raise ConnectionError("twirp error: unavailable")
        FakeLiveKitApi.requests.append(request)


@pytest.mark.parametrize("server_ok", [True, False])
async def test_a_phone_caller_in_the_room_is_transferred_through_the_sip_api(server_ok: bool) -> None:
    from livekit import api

    FakeLiveKitApi.requests, FakeLiveKitApi.fail = [], not server_ok
    host, writer = fake_host(fast_settings(call__greeting=True, call__transfer__target="tel:+97142000000"))
    agent = LiveKitAgent(host, _cfg(), api_factory=FakeLiveKitApi)
    room = rtc.Room()
    watch = CallerWatch(room, "voiceai-agent")
    bot_source = rtc.AudioSource(RATE_HZ, 1, queue_size_ms=200)
    transport = LiveKitTransport(bot_source, FakePublisher())
    caller = Caller()
    phone = FakeParticipant("sip_+971501234567", {"sip.phoneNumber": "+971501234567"})
    call = asyncio.create_task(agent.run_call(watch, transport, "room-9", "tenant-1", "acme", "en"))
    try:
        room.emit("track_subscribed", caller.track, None, phone)
        await _until(lambda: bool(host.active), 2, "the call to start", caller)
        room.emit("sip_dtmf_received", rtc.SipDTMF(code=0, digit="0", participant=phone))  # type: ignore[arg-type]
        session = await asyncio.wait_for(call, 8)
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        for source in (bot_source, caller.source):
            await source.aclose()
    if server_ok:
        (request,) = FakeLiveKitApi.requests
        assert isinstance(request, api.TransferSIPParticipantRequest)
        assert (request.room_name, request.participant_identity, request.transfer_to) == (
            "room-9", "sip_+971501234567", "tel:+97142000000")
        assert session.ended_reason == "transferred"
    else:
        assert session.ended_reason == "transfer_failed"
    assert writer.of_kind("call_ended")[-1]["reason"] == session.ended_reason


async def test_a_web_caller_in_the_room_cannot_be_transferred() -> None:
    transport = LiveKitTransport(rtc.AudioSource(RATE_HZ, 1), FakePublisher())
    assert await transport.transfer("sip:agents@pbx") is False
