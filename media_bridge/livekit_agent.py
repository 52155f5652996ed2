"""LiveKit rooms: the bridge joins a room as the agent participant and runs the call there.

The agent publishes one audio track ("voiceai-bot", an ``rtc.AudioSource`` at
``channels.livekit.sample_rate_hz``), subscribes to the caller's microphone, and sends the call's events
as reliable data packets on the ``voiceai.events`` topic (the same JSON as the WebSocket's events,
docs/CALL_PROTOCOL.md). The call ends when the caller leaves or the room closes.

What was verified here, without a LiveKit server (none can run on this machine): token minting
(decoded with pyjwt), PCM16 <-> ``rtc.AudioFrame``, and a whole call through the SDK's own local
objects: the caller's audio captured into a local ``AudioSource`` and read back by ``rtc.AudioStream``
into the session, the bot's audio out through our ``AudioSource`` and read back the same way, barge-in
clearing the source's queue, and the room's events (``track_subscribed``, ``participant_disconnected``,
``disconnected``, ``sip_dtmf_received``) emitted on a real, unconnected ``rtc.Room``. ``join`` against a
URL where nothing listens fails with ``LiveKitError`` and leaves no task behind.

Unverified (needs a LiveKit server): ``Room.connect`` succeeding, ``publish_track`` and the bot's track
reaching a subscriber, receiving a remote participant's track, ``publish_data`` delivery, and the
events' timing on a real room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

from livekit import api, rtc

from media_bridge.channels import LiveKitConfig
from media_bridge.host import CallHost, CallSpec
from media_bridge.session import CallSession

log = logging.getLogger(__name__)

EVENTS_TOPIC = "voiceai.events"
BOT_TRACK = "voiceai-bot"
SOURCE_QUEUE_MS = 200  # the playout already paces frames in real time; this only absorbs jitter
CALLER_NUMBER_ATTRIBUTE = "sip.phoneNumber"  # set by LiveKit SIP on phone participants


class LiveKitError(Exception):
    """The agent could not join the room, or nobody came to talk to."""


class DataPublisher(Protocol):
    """``rtc.LocalParticipant``'s ``publish_data``, as the transport uses it."""

    async def publish_data(self, payload: bytes | str, *, reliable: bool = True,
                           destination_identities: list[str] = ..., topic: str = "") -> None: ...


def pcm16_frame(pcm16: bytes, sample_rate_hz: int) -> rtc.AudioFrame:
    """Mono little-endian PCM16 as an ``rtc.AudioFrame`` (the SDK copies the samples)."""
    if len(pcm16) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm16)}")
    return rtc.AudioFrame(pcm16, sample_rate_hz, 1, len(pcm16) // 2)


class LiveKitTransport:
    """``CallTransport`` into a room: audio into the agent's ``AudioSource``, events as data packets.

    A barge-in also clears the source's queue: audio already captured but not yet sent is dropped,
    so the caller stops hearing the bot at once (the session has already stopped sending)."""

    def __init__(self, source: rtc.AudioSource, publisher: DataPublisher | None,
                 transfer_to: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.source = source
        self.publisher = publisher
        self.sample_rate_hz = source.sample_rate
        self.closed = False
        self.transfer_to = transfer_to  # set for a caller on the phone (a LiveKit SIP participant)

    async def transfer(self, target: str) -> bool:
        """Hands a phone caller to ``target`` (LiveKit SIP transfer); a web caller cannot be transferred."""
        if self.transfer_to is None:
            log.warning("transfer asked for a caller who is not a SIP participant; only the event is sent")
            return False
        return await self.transfer_to(target)

    async def send_audio(self, pcm16: bytes) -> None:
        if self.closed:
            return
        await self.source.capture_frame(pcm16_frame(pcm16, self.sample_rate_hz))

    async def send_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "barge_in":
            self.source.clear_queue()
        if self.closed or self.publisher is None:
            return
        await self.publisher.publish_data(json.dumps(event, ensure_ascii=False), reliable=True, topic=EVENTS_TOPIC)


class CallerWatch:
    """The caller's side of a room, from its events: their audio track, their keys, their leaving.

    The first remote participant whose audio track is subscribed is the caller; other participants
    (a supervisor listening in, a second agent) are ignored. Attach before connecting, so no event is
    missed."""

    def __init__(self, room: rtc.Room, agent_identity: str) -> None:
        self.agent_identity = agent_identity
        self.identity: str | None = None
        self.caller_number = ""
        self.is_sip = False  # the caller is a LiveKit SIP participant (a phone call bridged into the room)
        self.left = asyncio.Event()
        self.left_reason = ""
        self.keys: asyncio.Queue[str] = asyncio.Queue()
        self._track: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
        room.on("track_subscribed", self._on_track)
        room.on("participant_disconnected", self._on_participant_left)
        room.on("disconnected", self._on_room_closed)
        room.on("sip_dtmf_received", self._on_dtmf)

    def _on_track(self, track: rtc.Track, publication: Any, participant: rtc.RemoteParticipant) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or participant.identity == self.agent_identity:
            return
        if self.identity is None:
            self.identity = participant.identity
            self.caller_number = participant.attributes.get(CALLER_NUMBER_ATTRIBUTE, "")
            self.is_sip = (getattr(participant, "kind", None) == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
                           or bool(self.caller_number))
        if participant.identity == self.identity and not self._track.done():
            self._track.set_result(track)

    def _on_participant_left(self, participant: rtc.RemoteParticipant) -> None:
        if self.identity is not None and participant.identity == self.identity:
            self._leave("caller_left")

    def _on_room_closed(self, reason: Any = None) -> None:
        self._leave("room_closed")

    def _on_dtmf(self, dtmf: rtc.SipDTMF) -> None:
        if dtmf.participant is None or dtmf.participant.identity == self.identity:
            self.keys.put_nowait(dtmf.digit)

    def _leave(self, reason: str) -> None:
        if not self.left.is_set():
            self.left_reason = reason
            self.left.set()

    async def caller_track(self, timeout_s: float) -> rtc.Track:
        """The caller's audio track once subscribed; LiveKitError if the room closes or nobody comes."""
        left: asyncio.Future[Any] = asyncio.ensure_future(self.left.wait())
        waiting: set[asyncio.Future[Any]] = {self._track, left}
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await left
        if self._track.done():
            return self._track.result()
        raise LiveKitError("the room closed before a caller joined" if done else
                           f"no caller published audio within {timeout_s:g} s")

    async def feed(self, session: CallSession, track: rtc.Track, sample_rate_hz: int) -> None:
        """Caller audio (and keys) into the session until the caller leaves or the room closes."""
        stream = rtc.AudioStream(track, sample_rate=sample_rate_hz, num_channels=1)

        async def audio() -> None:
            async for event in stream:
                await session.push_audio(bytes(event.frame.data))

        async def keys() -> None:
            while True:
                await session.push_dtmf(await self.keys.get())

        tasks = {asyncio.ensure_future(audio()), asyncio.ensure_future(keys()),
                 asyncio.ensure_future(self.left.wait())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await stream.aclose()


class LiveKitAgent:
    """Joins LiveKit rooms as the bot and runs one call per room on the ``CallHost``."""

    def __init__(self, host: CallHost, cfg: LiveKitConfig, api_factory: Callable[..., Any] = api.LiveKitAPI) -> None:
        self.host = host
        self.cfg = cfg
        self.api_factory = api_factory  # the server API client (tests pass a recording fake)

    async def transfer_sip(self, room_name: str, identity: str, target: str) -> bool:
        """Transfers the room's SIP participant to ``target`` (a SIP URI or ``tel:`` number) through the
        server API (SIP REFER on LiveKit's side); False when the server refuses or cannot be reached."""
        secret = self.cfg.api_secret.get_secret_value() if self.cfg.api_secret else None
        request = api.TransferSIPParticipantRequest(room_name=room_name, participant_identity=identity,
                                                    transfer_to=target, play_dialtone=False)
        try:
            async with self.api_factory(self.cfg.url, self.cfg.api_key, secret) as server:
                await server.sip.transfer_sip_participant(request)
        except Exception as err:  # an API error or an unreachable server: the call ends as transfer_failed
            log.warning("livekit sip transfer failed", extra={"room": room_name, "error": repr(err)})
            return False
        return True

    def mint_token(self, room: str, identity: str, *, agent: bool, name: str = "") -> str:
        """A room token: the agent may publish audio and data and subscribe; a caller may join this room,
        publish their microphone and listen, nothing more (no data, no metadata, no other source)."""
        if not (self.cfg.api_key and self.cfg.api_secret):
            raise LiveKitError("channels.livekit.api_key and api_secret are needed to mint room tokens")
        if agent:
            grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                                     can_publish_data=True, agent=True)
        else:
            grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                                     can_publish_data=False, can_publish_sources=["microphone"],
                                     can_update_own_metadata=False)
        token = (api.AccessToken(self.cfg.api_key, self.cfg.api_secret.get_secret_value())
                 .with_identity(identity).with_grants(grants).with_ttl(timedelta(seconds=self.cfg.token_ttl_s)))
        if name:
            token = token.with_name(name)
        if agent:
            token = token.with_kind("agent")
        return token.to_jwt()

    async def join(self, room_name: str, tenant_id: str, tenant_name: str, language: str) -> CallSession:
        """Joins ``room_name``, waits for the caller's audio, runs the call to its end and leaves.

        Raises LiveKitError when the server cannot be reached or no caller comes within
        ``channels.livekit.caller_timeout_s``."""
        if not self.cfg.url:
            raise LiveKitError("channels.livekit.url is not set")
        token = self.mint_token(room_name, self.cfg.agent_identity, agent=True)
        room = rtc.Room()
        watch = CallerWatch(room, self.cfg.agent_identity)
        try:
            await room.connect(self.cfg.url, token, rtc.RoomOptions(auto_subscribe=True,
                                                                    connect_timeout=self.cfg.connect_timeout_s))
        except rtc.ConnectError as err:
            raise LiveKitError(f"could not join LiveKit room {room_name!r} at {self.cfg.url}: {err.message}") from None
        source = rtc.AudioSource(self.cfg.sample_rate_hz, 1, queue_size_ms=SOURCE_QUEUE_MS)
        transport = LiveKitTransport(source, room.local_participant)
        try:
            track = rtc.LocalAudioTrack.create_audio_track(BOT_TRACK, source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
            return await self.run_call(watch, transport, room_name, tenant_id, tenant_name, language)
        finally:
            transport.closed = True
            with contextlib.suppress(Exception):
                await room.disconnect()
            await source.aclose()

    async def run_call(self, watch: CallerWatch, transport: LiveKitTransport, room_name: str, tenant_id: str,
                       tenant_name: str, language: str) -> CallSession:
        """The call in a joined room: waits for the caller, then runs it on the host until they leave."""
        track = await watch.caller_track(self.cfg.caller_timeout_s)
        if watch.is_sip and watch.identity is not None:
            identity = watch.identity
            transport.transfer_to = lambda target: self.transfer_sip(room_name, identity, target)
        spec = CallSpec(uuid.uuid4().hex, tenant_id, tenant_name, "livekit", language, caller_id=watch.caller_number)
        log.info("livekit call started", extra={"call_id": spec.call_id, "room": room_name})
        return await self.host.run(spec, transport, lambda s: watch.feed(s, track, transport.sample_rate_hz))
