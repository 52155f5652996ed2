"""Browser callers over WebRTC: the bridge is an aiortc peer (docs/CALL_PROTOCOL.md, "WebRTC").

Signalling is one HTTP exchange (``gateway/webrtc_routes.py``): the page's complete offer in, our
complete answer out, both after ICE gathering (no trickle). Then:

- the caller's Opus track (decoded by aiortc to 48 kHz, usually stereo s16) is downmixed here to mono
  PCM16 48 kHz and pushed into the call session, which resamples it once to the models' 16 kHz;
- the bot's paced 20 ms frames at 48 kHz go out on ``BotAudioTrack``, which keeps its own 20 ms clock
  and sends silence while the bot is quiet;
- call events travel as JSON text on the data channel the page opens before its offer (``events``);
  the page sends ``hangup`` and ``ping`` on it, as on the call WebSocket.

A call starts (greeting, call record) only once the peer connection is up, so a browser that never
connects leaves no call behind; ``WebRtcConfig.connect_timeout_s`` bounds the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import aioice.ice
import av
import ifaddr
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription
from prometheus_client import Counter

from media_bridge.channels import WebRtcConfig
from media_bridge.host import CallHost, CallSpec
from media_bridge.session import CallSession

log = logging.getLogger(__name__)

CONNECTIONS = Counter("voiceai_webrtc_connections_total", "WebRTC peer connections after the answer, by outcome.",
                      ["outcome"])
BAD_MESSAGES = Counter("voiceai_webrtc_bad_messages_total", "Malformed data channel messages from callers.",
                       ["reason"])

SAMPLE_RATE_HZ = 48000  # Opus runs at 48 kHz: no resampling on the way in or out besides the session's own
FRAME_MS = 20
EVENTS_CHANNEL = "events"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_EARLY_EVENTS = 64  # events kept until the data channel opens (call.started, the first state...)
_CLOSE_GRACE_S = 1.0  # lets call.ended leave the data channel before the connection closes


class OfferError(Exception):
    """An offer we cannot answer: ``reason`` for metrics, ``status`` and ``message`` for the caller."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message


# ---- ICE host addresses ----------------------------------------------------------------------

_original_host_addresses = aioice.ice.get_host_addresses
_allowed_host_addresses: tuple[str, ...] = ()


def _restricted_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _allowed_host_addresses:
        return _original_host_addresses(use_ipv4, use_ipv6)
    versions = {4} if use_ipv4 else set()
    if use_ipv6:
        versions.add(6)
    return [a for a in _allowed_host_addresses if ipaddress.ip_address(a).version in versions]


def _local_addresses() -> set[str]:
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return found


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Limits the bridge's ICE host candidates to ``addresses`` (empty: every interface but loopback, aioice's
    default). Loopback is allowed here on purpose: aioice skips 127.0.0.1, which tests on one machine need.

    aioice gathers through a module function, so this holds for the whole process (the last config wins)."""
    global _allowed_host_addresses
    local = _local_addresses()
    kept = []
    for address in addresses:
        canonical = str(ipaddress.ip_address(address))
        if canonical in local:
            kept.append(canonical)
        else:
            log.warning("webrtc host address not on this machine; ignored", extra={"address": canonical})
    _allowed_host_addresses = tuple(kept)
    aioice.ice.get_host_addresses = _restricted_host_addresses


# ---- audio -----------------------------------------------------------------------------------


def to_mono_pcm16(frame: av.AudioFrame) -> bytes:
    """A decoded caller frame as mono PCM16LE at its own rate: channels averaged, nothing resampled."""
    if frame.format.name not in ("s16", "s16p"):
        raise ValueError(f"unexpected audio sample format {frame.format.name}")
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if channels > 1:
        # Packed s16 comes as one interleaved row, planar s16p as one row per channel.
        planes = data.reshape(-1, channels).T if not frame.format.is_planar else data
        data = planes.astype(np.int32).sum(axis=0) // channels
    return np.ascontiguousarray(data.reshape(-1), dtype="<i2").tobytes()


class BotAudioTrack(MediaStreamTrack):
    """The bot's voice as an outbound audio track: mono s16 48 kHz, 20 ms frames on the track's own clock.

    ``push`` takes the playout's paced frames; ``recv`` (called by aiortc's sender) hands out one frame per
    20 ms, silence when nothing is queued. Two real-time clocks meet here, so a burst starts one frame late
    (a 20 ms cushion against scheduling jitter) and the queue is capped: it never adds more than
    ``max_queue_ms`` of delay, which also bounds what still plays after a barge-in.
    """

    kind = "audio"

    def __init__(self, sample_rate_hz: int = SAMPLE_RATE_HZ, frame_ms: int = FRAME_MS,
                 max_queue_ms: int = 200) -> None:
        super().__init__()
        self.sample_rate_hz = sample_rate_hz
        self.frame_samples = sample_rate_hz * frame_ms // 1000
        self.frame_bytes = self.frame_samples * 2
        self._max_queue_bytes = sample_rate_hz * max_queue_ms // 1000 * 2
        self._time_base = fractions.Fraction(1, sample_rate_hz)
        self._queue = bytearray()
        self._playing = False
        self._armed = False
        self._start: float | None = None
        self._pts = 0
        self.frames_out = 0
        self.voiced_frames_out = 0
        self.dropped_bytes = 0

    def push(self, pcm16: bytes) -> None:
        self._queue += pcm16
        excess = len(self._queue) - self._max_queue_bytes
        if excess > 0:
            excess += excess % 2
            del self._queue[:excess]
            self.dropped_bytes += excess

    def clear(self) -> None:
        """Drops what is queued (a barge-in, or the call ended)."""
        self._queue.clear()
        self._playing = self._armed = False

    def _next_payload(self) -> bytes | None:
        if not self._playing:
            if not self._queue:
                return None
            if not self._armed and len(self._queue) < 2 * self.frame_bytes:
                self._armed = True
                return None
            self._playing = True
        if not self._queue:
            self._playing = self._armed = False
            return None
        payload = bytes(self._queue[:self.frame_bytes])
        del self._queue[:self.frame_bytes]
        if len(payload) < self.frame_bytes:
            payload += b"\0" * (self.frame_bytes - len(payload))
        return payload

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += self.frame_samples
            wait_s = self._start + self._pts / self.sample_rate_hz - now
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            elif wait_s < -0.1:
                # The loop stalled: carry on from now instead of sending a burst to catch up.
                self._start = now - self._pts / self.sample_rate_hz
        payload = self._next_payload()
        if payload is None:
            payload = b"\0" * self.frame_bytes
        else:
            self.voiced_frames_out += 1
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.planes[0].update(payload)
        frame.sample_rate = self.sample_rate_hz
        frame.pts = self._pts
        frame.time_base = self._time_base
        self.frames_out += 1
        return frame


# ---- the transport ---------------------------------------------------------------------------


class WebRtcTransport:
    """CallTransport over one peer connection: audio on ``BotAudioTrack``, events on the data channel.

    Events sent before the channel is open are kept (up to ``MAX_EARLY_EVENTS``) and sent when it opens,
    so the page sees ``call.started`` even when the call starts a moment before the channel is up."""

    sample_rate_hz = SAMPLE_RATE_HZ

    def __init__(self, track: BotAudioTrack) -> None:
        self.track = track
        self.channel: Any = None  # aiortc.RTCDataChannel once the page's channel arrived
        self._early: deque[str] = deque()
        self.events_dropped = 0
        self.closed = False

    async def send_audio(self, pcm16: bytes) -> None:
        if not self.closed:
            self.track.push(pcm16)

    async def send_event(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        if event.get("type") == "barge_in":  # the caller took the turn: what is queued must not play
            self.track.clear()
        text = json.dumps(event, ensure_ascii=False)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif channel is None or channel.readyState == "connecting":
            if len(self._early) < MAX_EARLY_EVENTS:
                self._early.append(text)
            else:
                self.events_dropped += 1
        # a closed channel: the caller is gone and the call is ending; nothing to tell them

    def attach(self, channel: Any) -> None:
        """The page's ``events`` channel arrived: send what waited for it now, or as soon as it opens."""
        self.channel = channel
        if channel.readyState == "open":
            self._flush_early()
        else:
            channel.on("open", self._flush_early)

    def _flush_early(self) -> None:
        while self._early and self.channel is not None and self.channel.readyState == "open":
            self.channel.send(self._early.popleft())

    async def drain(self, timeout_s: float = _CLOSE_GRACE_S) -> None:
        """Waits (a little) until the last events have left the data channel."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        deadline = time.monotonic() + timeout_s
        if channel.bufferedAmount > 0:
            sent = asyncio.Event()
            channel.bufferedAmountLowThreshold = 0
            channel.once("bufferedamountlow", sent.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sent.wait(), timeout_s)
        # Handed to SCTP is not yet received: a moment more before the connection closes under it.
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


# ---- one call ----------------------------------------------------------------------------------


_GONE = None  # in a call's inbox: the peer connection or its channel went away


class _PeerCall:
    """One peer connection and the call it carries; kept by ``WebRtcPeers`` until it ends."""

    def __init__(self, spec: CallSpec, pc: RTCPeerConnection) -> None:
        self.spec = spec
        self.pc = pc
        self.track = BotAudioTrack()
        self.transport = WebRtcTransport(self.track)
        self.caller_audio: MediaStreamTrack | None = None
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.gone = asyncio.Event()
        self.session: CallSession | None = None
        self.task: asyncio.Task | None = None
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.caller_audio is None:
            self.caller_audio = track

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != EVENTS_CHANNEL or self.transport.channel is not None:
            return  # nothing else is spoken on other channels
        self.transport.attach(channel)
        channel.on("message", self.inbox.put_nowait)
        channel.on("close", self._lost)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("webrtc connection state", extra={"call_id": self.spec.call_id, "state": state})
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self._lost()

    def _lost(self) -> None:
        self.gone.set()
        self.inbox.put_nowait(_GONE)

    async def shutdown(self, reason: str) -> None:
        """Ends the call (the server is stopping)."""
        if self.session is not None:
            await self.session.hangup(reason)
        self._lost()

    async def run(self, host: CallHost, connect_timeout_s: float) -> None:
        """Waits for the connection, runs the call to its end, closes the connection."""
        try:
            connected = asyncio.ensure_future(self.connected.wait())
            gone = asyncio.ensure_future(self.gone.wait())
            try:
                await asyncio.wait({connected, gone}, timeout=connect_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()
                gone.cancel()
            if not self.connected.is_set() or self.gone.is_set():
                outcome = "failed" if self.gone.is_set() else "timed_out"
                CONNECTIONS.labels(outcome).inc()
                log.info("webrtc peer did not connect", extra={"call_id": self.spec.call_id, "outcome": outcome})
                return
            CONNECTIONS.labels("connected").inc()
            await host.run(self.spec, self.transport, self._feed)
            await self.transport.drain()
        finally:
            self.transport.closed = True
            self.track.clear()
            self.track.stop()
            await self.pc.close()

    async def _feed(self, session: CallSession) -> None:
        """The caller's side: audio into the session, data channel messages answered, until they leave."""
        self.session = session
        pump = asyncio.create_task(self._pump_audio(session), name=f"webrtc-{self.spec.call_id}-audio")
        try:
            while True:
                message = await self.inbox.get()
                if message is _GONE:
                    return
                if await self._control(message, session):
                    return
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    async def _pump_audio(self, session: CallSession) -> None:
        track = self.caller_audio
        if track is None:
            return
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    await session.push_audio(to_mono_pcm16(frame))
        except MediaStreamError:
            self._lost()

    async def _control(self, message: str | bytes, session: CallSession) -> bool:
        """One message from the page; True when the caller hung up."""
        if isinstance(message, bytes):
            await self._bad_message("binary", "send JSON text on the events channel; audio goes on the track")
            return False
        if len(message) > MAX_MESSAGE_BYTES:
            await self._bad_message("text_too_large", f"message over {MAX_MESSAGE_BYTES} bytes")
            return False
        try:
            event = json.loads(message)
        except json.JSONDecodeError as err:
            await self._bad_message("invalid_json", f"message is not JSON: {err.msg} at {err.pos}")
            return False
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "hangup":
            session.ended_reason = "hangup"
            return True
        if kind == "ping":
            await self.transport.send_event({"type": "pong", "id": event.get("id")})
            return False
        await self._bad_message("unknown_type", f"unknown event type {kind!r}; expected hangup or ping")
        return False

    async def _bad_message(self, reason: str, message: str) -> None:
        BAD_MESSAGES.labels(reason).inc()
        log.warning("bad data channel message from caller", extra={"reason": reason, "call_id": self.spec.call_id})
        with contextlib.suppress(Exception):
            await self.transport.send_event({"type": "error", "code": "bad_frame", "reason": reason,
                                             "message": message, "fatal": False})


# ---- all calls -----------------------------------------------------------------------------------


def check_offer(sdp: str) -> None:
    """Raises OfferError unless ``sdp`` reads as an offer that sends audio (nothing is started before)."""
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("malformed_sdp", 400, "malformed SDP: an offer starts with 'v=0'")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as err:  # the parser asserts and indexes its way through; any failure is bad input
        raise OfferError("malformed_sdp", 400, f"malformed SDP ({type(err).__name__})") from None
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not audio:
        raise OfferError("no_audio", 400, "the offer has no audio m-line: add the microphone track "
                                          "(addTrack) before createOffer")
    if not any(m.port != 0 and m.direction in (None, "sendrecv", "sendonly") for m in audio):
        raise OfferError("no_audio", 400, "the offer's audio is not sent (recvonly or inactive): add the "
                                          "microphone track before createOffer")


class WebRtcPeers:
    """Every WebRTC call of this process: answers offers, keeps each peer connection and its call task
    referenced until the call ends, and closes them all on shutdown."""

    def __init__(self, host: CallHost, cfg: WebRtcConfig) -> None:
        self.host = host
        self.cfg = cfg
        self.calls: dict[str, _PeerCall] = {}
        restrict_host_addresses(cfg.host_addresses)

    def _rtc_config(self) -> RTCConfiguration:
        servers = [RTCIceServer(urls=s.urls, username=s.username,
                                credential=s.credential.get_secret_value() if s.credential else None)
                   for s in self.cfg.ice_servers]
        return RTCConfiguration(iceServers=servers)

    async def answer(self, spec: CallSpec, sdp: str) -> str:
        """The answer to the page's offer (all candidates in it); the call then starts in the background."""
        check_offer(sdp)
        pc = RTCPeerConnection(self._rtc_config())
        call = _PeerCall(spec, pc)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as err:  # missing ICE credentials, fingerprint, setup role...
                raise OfferError("malformed_sdp", 400, f"the offer could not be applied: {err}") from None
            if call.caller_audio is None:
                raise OfferError("no_audio", 400, "the offer has no audio track the bridge can receive")
            # Claimed only now that the offer is known good: a typo in the SDP does not burn the call token.
            if not self.host.joined.claim(spec.call_id):
                raise OfferError("already_joined", 409, "this call was already joined")
            pc.addTrack(call.track)
            try:  # aiortc gathers every candidate (host, STUN, TURN) in setLocalDescription
                await asyncio.wait_for(pc.setLocalDescription(await pc.createAnswer()), self.cfg.gather_timeout_s)
            except TimeoutError:
                raise OfferError("gather_timeout", 503, "the bridge could not gather its ICE candidates in "
                                 f"{self.cfg.gather_timeout_s:g} s (STUN/TURN unreachable?)") from None
        except BaseException:
            await pc.close()
            raise
        local = pc.localDescription
        call.task = asyncio.create_task(call.run(self.host, self.cfg.connect_timeout_s),
                                        name=f"webrtc-{spec.call_id}")
        self.calls[spec.call_id] = call
        call.task.add_done_callback(lambda _: self.calls.pop(spec.call_id, None))
        return str(local.sdp)

    async def close_all(self, reason: str = "server_shutdown", timeout_s: float = 5.0) -> None:
        """Ends every call and closes every peer connection (the process is stopping)."""
        calls = list(self.calls.values())
        for call in calls:
            await call.shutdown(reason)
        tasks = [c.task for c in calls if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for call in calls:
            with contextlib.suppress(Exception):
                await call.pc.close()
