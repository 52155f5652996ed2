"""Callers for the transport benchmark: one client per way of reaching the bot, all with the same shape.

Each client dials the gateway its own way (WebSocket, WebRTC, SIP, Twilio Media Streams), takes 20 ms
frames of PCM16 at its own ``rate_hz`` from the benchmark's paced driver and sends each at once, and
notes the arrival time of every frame of bot audio that has energy in it (``loud_at``). None of them
buffers what it receives before noting it, so every transport is measured to the caller's socket.

The clients are written from the protocols (docs/CALL_PROTOCOL.md, RFC 3261/3550, Twilio's Media
Streams), not from the bridge's code: they import only codecs and helpers, never the bridge's SIP or
RTP internals.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import fractions
import json
import secrets
import struct
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree import ElementTree

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.caller import call_ws_url
from media_bridge.g711 import ulaw_decode, ulaw_encode
from media_bridge.webrtc import restrict_host_addresses, to_mono_pcm16

FRAME_MS = 20
LOUD_PEAK = 2000  # a bot frame with a sample above this (-24 dBFS) is speech; the fake TTS peaks at 6550
OPEN_TIMEOUT_S = 15.0


def is_loud(pcm16: bytes) -> bool:
    """True when a frame of PCM16 has bot speech in it (peak level above ``LOUD_PEAK``)."""
    if len(pcm16) < 2:
        return False
    samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2").astype(np.int32)
    return bool(np.abs(samples).max() > LOUD_PEAK)


class CallerClient(abc.ABC):
    """One call from the caller's side: ``open``, ``send`` paced frames, watch ``loud_at``, ``close``."""

    name: ClassVar[str]
    rate_hz: ClassVar[int]

    def __init__(self) -> None:
        self.loud_at: list[float] = []  # monotonic arrival times of bot frames with speech in them
        self.frames_in = 0

    def heard(self, pcm16: bytes, arrival_s: float) -> None:
        self.frames_in += 1
        if is_loud(pcm16):
            self.loud_at.append(arrival_s)

    def first_loud_after(self, t_s: float) -> float | None:
        return next((t for t in self.loud_at if t > t_s), None)

    def quiet_for(self, seconds: float) -> bool:
        """No bot speech arrived in the last ``seconds``."""
        return not self.loud_at or time.monotonic() - self.loud_at[-1] >= seconds

    @abc.abstractmethod
    async def open(self) -> None:
        """Dials; returns once caller audio can flow."""

    @abc.abstractmethod
    async def send(self, pcm16: bytes) -> None:
        """Sends one 20 ms frame of caller audio now."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Hangs up and frees everything; safe after a failed ``open``."""


# ---- WebSocket ----------------------------------------------------------------------------------------


class WebSocketCaller(CallerClient):
    """The call WebSocket (docs/CALL_PROTOCOL.md): PCM16 at 16 kHz both ways, no greeting asked for."""

    name = "websocket"
    rate_hz = 16000

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()

    async def open(self) -> None:
        ws_url = await call_ws_url(self.url, "en", query=f"sample_rate_hz={self.rate_hz}&greeting=0")
        self._ws = await connect(ws_url, max_size=2**22, open_timeout=OPEN_TIMEOUT_S)
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, bytes):
                    self.heard(message, time.monotonic())
                elif json.loads(message).get("type") == "call.ended":
                    self._ended.set()
        self._ended.set()

    async def send(self, pcm16: bytes) -> None:
        assert self._ws is not None
        await self._ws.send(pcm16)

    async def close(self) -> None:
        if self._ws is None:
            return
        with contextlib.suppress(Exception):
            await self._ws.send(json.dumps({"type": "hangup"}))
            await asyncio.wait_for(self._ended.wait(), 3)
        await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


# ---- WebRTC -------------------------------------------------------------------------------------------


class _QueuedTrack(MediaStreamTrack):
    """The caller's microphone: hands aiortc's sender each frame the driver queues, as soon as it is queued
    (the driver paces; this track does not)."""

    kind = "audio"

    def __init__(self, rate_hz: int) -> None:
        super().__init__()
        self.rate_hz = rate_hz
        self._frames: asyncio.Queue[bytes] = asyncio.Queue()
        self._pts = 0
        self._time_base = fractions.Fraction(1, rate_hz)

    def put(self, pcm16: bytes) -> None:
        self._frames.put_nowait(pcm16)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pcm16 = await self._frames.get()
        samples = np.frombuffer(pcm16, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.rate_hz, self._pts, self._time_base
        self._pts += samples.shape[1]
        return frame


class WebRtcCaller(CallerClient):
    """A peer like the call page: Opus microphone track and an ``events`` data channel (aiortc), offer and
    answer over ``POST /v1/calls/{id}/webrtc``.

    aiortc's receiver holds 4 packets (80 ms) in its jitter buffer before the decoder sees them. That
    buffer is the caller's (a browser has its own, adaptive one), so ``loud_at`` takes each frame's time
    from the arrival of its RTP packet, and ``played_at`` keeps the time the decoded frame came out."""

    name = "webrtc"
    rate_hz = 48000

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.played_at: list[float] = []  # loud frames as the decoder handed them out
        self.unmapped_frames = 0  # loud frames whose RTP arrival was not found (played time used)
        self._pc: RTCPeerConnection | None = None
        self._track = _QueuedTrack(self.rate_hz)
        self._channel: Any = None
        self._started = asyncio.Event()
        self._ended = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._packet_arrival: dict[int, float] = {}  # RTP timestamp -> arrival
        self._first_timestamp: int | None = None

    async def open(self) -> None:
        restrict_host_addresses(["127.0.0.1"])  # aioice leaves loopback out; the gateway is on loopback
        async with httpx.AsyncClient(base_url=self.url, timeout=OPEN_TIMEOUT_S) as http:
            resp = await http.post("/v1/calls", json={"language": "en"})
            resp.raise_for_status()
            call_id, token = resp.json()["call_id"], resp.json()["token"]
            pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only
            self._channel = pc.createDataChannel("events")
            self._channel.on("message", self._on_event)
            pc.addTrack(self._track)
            pc.on("track", self._on_track)
            for transceiver in pc.getTransceivers():
                self._tap(transceiver.receiver)
            await pc.setLocalDescription(await pc.createOffer())
            resp = await http.post(f"/v1/calls/{call_id}/webrtc", headers={"Authorization": f"Bearer {token}"},
                                   json={"sdp": pc.localDescription.sdp, "type": "offer"})
            resp.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=resp.json()["sdp"], type="answer"))
        await asyncio.wait_for(self._started.wait(), OPEN_TIMEOUT_S)

    def _tap(self, receiver: Any) -> None:
        # Notes when each RTP packet reaches the caller, before aiortc's jitter buffer holds it back.
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            if self._first_timestamp is None:
                self._first_timestamp = packet.timestamp
            self._packet_arrival.setdefault(packet.timestamp, time.monotonic())
            await original(packet, arrival_time_ms)

        setattr(receiver, "_handle_rtp_packet", handle)  # noqa: B010 - an instance attribute shadows the method

    def _on_event(self, text: Any) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            kind = json.loads(text).get("type")
            if kind == "call.started":
                self._started.set()
            elif kind == "call.ended":
                self._ended.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def read() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    if isinstance(frame, av.AudioFrame):
                        self._decoded(frame, time.monotonic())

        self._readers.append(asyncio.create_task(read()))

    def _decoded(self, frame: av.AudioFrame, out_s: float) -> None:
        pcm16 = to_mono_pcm16(frame)
        arrival = None
        if self._first_timestamp is not None and frame.pts is not None:
            # aiortc counts decoded pts from its first packet's RTP timestamp (both at Opus's 48 kHz clock).
            arrival = self._packet_arrival.get((frame.pts + self._first_timestamp) & 0xFFFFFFFF)
        if is_loud(pcm16):
            self.played_at.append(out_s)
            self.unmapped_frames += arrival is None
        self.heard(pcm16, arrival if arrival is not None else out_s)

    async def send(self, pcm16: bytes) -> None:
        self._track.put(pcm16)

    async def close(self) -> None:
        if self._pc is None:
            return
        if self._channel is not None and self._channel.readyState == "open":
            with contextlib.suppress(Exception):
                self._channel.send(json.dumps({"type": "hangup"}))
                await asyncio.wait_for(self._ended.wait(), 3)
        self._track.stop()
        await self._pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


# ---- SIP ----------------------------------------------------------------------------------------------


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_datagram(data)


def _header(head: list[str], *names: str) -> str:
    """The first header among ``names`` (full and compact forms), case-insensitively; "" if absent."""
    wanted = {n.lower() for n in names}
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in wanted:
            return value.strip()
    return ""


_RTP_HEADER = struct.Struct("!BBHII")
_PCMU = 0


class SipCaller(CallerClient):
    """A phone on a SIP trunk: INVITE with a G.711 mu-law offer over UDP, then RTP from a plain UDP socket,
    20 ms per packet as the driver paces it; received RTP is decoded the moment it arrives (no jitter
    buffer on this side, so what is measured is the bridge's)."""

    name = "sip"
    rate_hz = 8000

    def __init__(self, sip_port: int, host: str = "127.0.0.1", called: str = "1000") -> None:
        super().__init__()
        self.host, self.sip_port, self.called = host, sip_port, called
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._responses: asyncio.Queue[tuple[int, list[str], bytes]] = asyncio.Queue()
        self._call_id = uuid.uuid4().hex
        self._from_tag = uuid.uuid4().hex[:12]
        self._to = f"<sip:{called}@{host}:{sip_port}>"
        self._target = f"sip:{called}@{host}:{sip_port}"
        self._remote_rtp: tuple[str, int] | None = None
        self._sequence = secrets.randbelow(0x10000)
        self._timestamp = secrets.randbelow(0x100000000)
        self._ssrc = secrets.randbelow(0x100000000)
        self._first_packet = True

    def _on_sip(self, data: bytes) -> None:
        head_text, _, body = data.partition(b"\r\n\r\n")
        head = head_text.decode("utf-8", "replace").split("\r\n")
        if head[0].startswith("SIP/2.0 "):
            self._responses.put_nowait((int(head[0].split()[1]), head, body))

    def _on_rtp(self, data: bytes) -> None:
        now = time.monotonic()
        if len(data) < _RTP_HEADER.size:
            return
        first, second = data[0], data[1]
        offset = _RTP_HEADER.size + 4 * (first & 0x0F)
        if first & 0x10 and len(data) >= offset + 4:  # header extension
            offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
        end = len(data) - (data[-1] if first & 0x20 else 0)
        if second & 0x7F == _PCMU and offset < end:
            self.heard(ulaw_decode(data[offset:end]), now)

    def _request(self, method: str, cseq: int, *, uri: str, to: str, body: bytes = b"",
                 extra: str = "") -> bytes:
        assert self._sip is not None
        port = self._sip.get_extra_info("sockname")[1]
        head = (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.host}:{port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:+971500000009@{self.host}>;tag={self._from_tag}\r\nTo: {to}\r\n"
                f"Call-ID: {self._call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@{self.host}:{port}>\r\n"
                f"User-Agent: voiceai-bench\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def _final(self, request: bytes, timeout_s: float) -> tuple[int, list[str], bytes]:
        """Sends ``request`` (again every 500 ms until something answers) and returns its final response."""
        assert self._sip is not None
        deadline = time.monotonic() + timeout_s
        answered = False
        while time.monotonic() < deadline:
            if not answered:
                self._sip.sendto(request, (self.host, self.sip_port))
            try:
                status, head, body = await asyncio.wait_for(self._responses.get(), 0.5)
            except TimeoutError:
                continue
            answered = True
            if status >= 200:
                return status, head, body
        raise TimeoutError("no final SIP response")

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self._on_sip),
                                                           local_addr=(self.host, 0))
        self._rtp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self._on_rtp),
                                                           local_addr=(self.host, 0))
        rtp_port = self._rtp.get_extra_info("sockname")[1]
        offer = (f"v=0\r\no=- 1 1 IN IP4 {self.host}\r\ns=bench\r\nc=IN IP4 {self.host}\r\nt=0 0\r\n"
                 f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                 "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n").encode()
        invite = self._request("INVITE", 1, uri=self._target, to=self._to, body=offer,
                               extra="Content-Type: application/sdp\r\n")
        status, head, body = await self._final(invite, OPEN_TIMEOUT_S)
        if status != 200:
            raise RuntimeError(f"INVITE answered {status}")
        self._to = _header(head, "to", "t")
        contact = _header(head, "contact", "m")
        if "<" in contact:
            self._target = contact.split("<", 1)[1].split(">", 1)[0]
        self._remote_rtp = _rtp_address(body.decode("utf-8", "replace"))
        assert self._sip is not None
        self._sip.sendto(self._request("ACK", 1, uri=self._target, to=self._to), (self.host, self.sip_port))

    async def send(self, pcm16: bytes) -> None:
        assert self._rtp is not None and self._remote_rtp is not None
        header = _RTP_HEADER.pack(0x80, _PCMU | (0x80 if self._first_packet else 0), self._sequence,
                                  self._timestamp, self._ssrc)
        self._rtp.sendto(header + ulaw_encode(pcm16), self._remote_rtp)
        self._first_packet = False
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + len(pcm16) // 2) & 0xFFFFFFFF

    async def close(self) -> None:
        if self._sip is not None and self._remote_rtp is not None:
            with contextlib.suppress(TimeoutError):
                await self._final(self._request("BYE", 2, uri=self._target, to=self._to), 3)
        for transport in (self._rtp, self._sip):
            if transport is not None:
                transport.close()


def _rtp_address(sdp: str) -> tuple[str, int]:
    """Where the answer's first audio stream wants RTP (session or media c= line, m=audio port)."""
    host, port = "", 0
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("c=IN IP4 "):
            host = line.split()[-1]
        elif line.startswith("m=audio ") and not port:
            port = int(line.split()[1])
    if not host or not port:
        raise RuntimeError("the SDP answer has no audio address")
    return host, port


# ---- Twilio Media Streams -----------------------------------------------------------------------------


class TwilioCaller(CallerClient):
    """Twilio's side of a Media Stream: the signed voice webhook, the TwiML's stream URL and token, then
    JSON frames of base64 mu-law at 8 kHz; marks are echoed back as Twilio does."""

    name = "twilio"
    rate_hz = 8000
    stream_sid = "MZbench0001"

    def __init__(self, url: str, auth_token: str) -> None:
        super().__init__()
        self.url, self.auth_token = url, auth_token
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._chunk = 0

    async def open(self) -> None:
        try:
            from twilio.request_validator import RequestValidator
        except ImportError as err:  # a dev dependency: the carrier's own signing, not ours
            raise RuntimeError("the Twilio caller needs Twilio's helper library: .venv/bin/pip install 'twilio>=9'") \
                from err
        voice_url = f"{self.url}/v1/twilio/voice"
        form = {"CallSid": "CAbench" + uuid.uuid4().hex[:8], "AccountSid": "ACbench", "From": "+14155550100",
                "To": "+14155550199", "Direction": "inbound", "CallStatus": "ringing"}
        signature = RequestValidator(self.auth_token).compute_signature(voice_url, form)
        async with httpx.AsyncClient(timeout=OPEN_TIMEOUT_S) as http:
            resp = await http.post(voice_url, content=urlencode(form), headers={
                "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
            resp.raise_for_status()
        stream = ElementTree.fromstring(resp.text).find("./Connect/Stream")
        if stream is None:
            raise RuntimeError("the TwiML has no <Connect><Stream>")
        parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        self._ws = await connect(stream.attrib["url"], open_timeout=OPEN_TIMEOUT_S)
        self._reader = asyncio.create_task(self._read(self._ws))
        await self._ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self._ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
                                        "start": {"accountSid": "ACbench", "streamSid": self.stream_sid,
                                                  "callSid": form["CallSid"], "tracks": ["inbound"],
                                                  "customParameters": parameters,
                                                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                                  "channels": 1}}}))

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                now = time.monotonic()
                message = json.loads(raw)
                if message.get("event") == "media":
                    self.heard(ulaw_decode(base64.b64decode(message["media"]["payload"])), now)
                elif message.get("event") == "mark":
                    await ws.send(json.dumps({"event": "mark", "streamSid": self.stream_sid,
                                              "mark": message["mark"]}))

    async def send(self, pcm16: bytes) -> None:
        assert self._ws is not None
        self._chunk += 1
        await self._ws.send(json.dumps({
            "event": "media", "sequenceNumber": str(self._chunk + 1), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self._chunk), "timestamp": str(self._chunk * FRAME_MS),
                      "payload": base64.b64encode(ulaw_encode(pcm16)).decode()}}))

    async def close(self) -> None:
        if self._ws is None:
            return
        with contextlib.suppress(Exception):
            await self._ws.send(json.dumps({"event": "stop", "streamSid": self.stream_sid,
                                            "stop": {"callSid": "CAbench"}}))
            if self._reader is not None:
                await asyncio.wait_for(asyncio.shield(self._reader), 3)
        await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
