"""RTP media of a phone call (RFC 3550, G.711 per RFC 3551, keys per RFC 4733): packets, codecs, and
``RtpSession``, which carries one call's audio both ways over UDP. The jitter buffer and the SSRC guard
(pure receive-side logic) live in ``media_bridge.sip.jitter``.

Choices worth knowing:

- Caller audio is played out of a fixed-depth jitter buffer on a 20 ms monotonic clock. Once the first
  packet has arrived, ``on_audio`` gets exactly one 20 ms frame per tick for as long as the session is
  open: real audio, a concealment frame (the last frame, fading) or silence. Silence keeps flowing when
  the caller's stream stops (hold, DTX, a dead trunk) so the VAD and endpointer downstream see time pass;
  the SIP layer decides when a silent call is dead, not the media.
- Symmetric RTP: we latch onto the source address of the first acceptable packet and send there, whatever
  the SDP said; packets from any other address are dropped on the cheapest path we have.
- An SSRC change from the latched source is a new stream (re-INVITE, transfer): accepted, and the jitter
  buffer's sequence state starts over. A second SSRC interleaved with the current one is an intruder and
  dropped (``foreign_ssrc``): a new SSRC takes over only once the current one has been quiet for
  ``jitter.SSRC_TAKEOVER_S`` or the new one has sent ``jitter.SSRC_TAKEOVER_PACKETS`` packets in a row.
- We always send (encoded silence when the bot is quiet) while our direction allows, which keeps NAT
  pinholes open and the peer's jitter buffer fed; the RTP timestamp advances 160 every tick regardless.
- RTCP is not implemented: the RTCP port (RTP port + 1) is left for it in the range and nothing listens.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from media_bridge import g711
from media_bridge.sip import dtmf as dtmf_events
from media_bridge.sip.jitter import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE_HZ,
    SILENCE_FRAME,
    JitterBuffer,
    SsrcGuard,
)
from media_bridge.sip.sdp import DIRECTIONS

log = logging.getLogger(__name__)

#: Bot audio queued beyond this is dropped, oldest first (the caller of ``send_pcm`` paces in real time).
MAX_OUTBOUND_MS = 1000

RTP_DROPPED = Counter("voiceai_rtp_dropped_total", "RTP packets (and queued bot audio frames) dropped, by reason.",
                      ["reason"])
RTP_SSRC_CHANGES = Counter("voiceai_rtp_ssrc_changes_total", "New RTP streams accepted from a latched source.")
RTP_CONCEALED = Counter("voiceai_rtp_concealed_frames_total", "Caller frames made up for late or lost packets.")
_DROPPED_FOREIGN = RTP_DROPPED.labels("foreign_source")  # the flood path: no label lookup per packet

_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1); ``payload`` excludes header, CSRCs, extension and padding."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile-defined id, data: a multiple of 4 bytes)
    padding_bytes: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Read a packet strictly; raises ``RtpError`` with reason ``too_short``, ``version``,
        ``csrc_overrun``, ``extension_overrun`` or ``bad_padding``."""
        size = len(data)
        if size < _HEADER.size:
            raise RtpError("too_short")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise RtpError("version")
        csrc_count = first & 0x0F
        offset = _HEADER.size + 4 * csrc_count
        if offset > size:
            raise RtpError("csrc_overrun")
        csrcs = struct.unpack_from(f"!{csrc_count}I", data, _HEADER.size) if csrc_count else ()
        extension = None
        if first & 0x10:
            if offset + 4 > size:
                raise RtpError("extension_overrun")
            profile, words = struct.unpack_from("!HH", data, offset)
            end = offset + 4 + 4 * words
            if end > size:
                raise RtpError("extension_overrun")
            extension = (profile, bytes(data[offset + 4:end]))
            offset = end
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or offset + padding > size:
                raise RtpError("bad_padding")
        return cls(payload_type=second & 0x7F, sequence=sequence, timestamp=timestamp, ssrc=ssrc,
                   payload=bytes(data[offset:size - padding]), marker=bool(second & 0x80), csrcs=tuple(csrcs),
                   extension=extension, padding_bytes=padding)

    @staticmethod
    def build(*, payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False,
              csrcs: tuple[int, ...] = (), extension: tuple[int, bytes] | None = None,
              padding_bytes: int = 0) -> bytes:
        """Write a packet."""
        if not 0 <= payload_type <= 127 or not 0 <= sequence <= 0xFFFF or not 0 <= timestamp <= 0xFFFFFFFF:
            raise ValueError("payload type 0-127, sequence 0-65535, timestamp 0-2^32-1")
        if len(csrcs) > 15 or not 0 <= padding_bytes <= 255:
            raise ValueError("at most 15 CSRCs and 255 padding bytes")
        first = 0x80 | (0x20 if padding_bytes else 0) | (0x10 if extension else 0) | len(csrcs)
        parts = [_HEADER.pack(first, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc)]
        if csrcs:
            parts.append(struct.pack(f"!{len(csrcs)}I", *csrcs))
        if extension is not None:
            profile, data = extension
            if len(data) % 4:
                raise ValueError("extension data must be a multiple of 4 bytes")
            parts.append(struct.pack("!HH", profile, len(data) // 4) + data)
        parts.append(payload)
        if padding_bytes:
            parts.append(bytes(padding_bytes - 1) + bytes([padding_bytes]))
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        """This packet, written (``build`` with its fields)."""
        return self.build(payload_type=self.payload_type, sequence=self.sequence, timestamp=self.timestamp,
                          ssrc=self.ssrc, payload=self.payload, marker=self.marker, csrcs=self.csrcs,
                          extension=self.extension, padding_bytes=self.padding_bytes)


@dataclass(frozen=True)
class Codec:
    """A negotiated payload type."""

    name: str  # "PCMU" | "PCMA" | "telephone-event"
    payload_type: int
    clock_rate: int = 8000


PCMU = Codec("PCMU", 0)
PCMA = Codec("PCMA", 8)
TELEPHONE_EVENT = Codec("telephone-event", 101)
_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "PCMU": (g711.ulaw_encode, g711.ulaw_decode), "PCMA": (g711.alaw_encode, g711.alaw_decode)}


def _audio_codec(codec: Codec) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    functions = _CODECS.get(codec.name.upper())
    if functions is None or codec.clock_rate != SAMPLE_RATE_HZ:
        raise ValueError(f"unsupported audio codec {codec.name}/{codec.clock_rate} (PCMU/8000 or PCMA/8000)")
    return functions


@dataclass
class RtpStats:
    """One session's counters. ``max_send_gap_ms`` is the longest time between two packets we sent
    (20 ms when the sender keeps pace; time on hold does not count)."""

    packets_in: int = 0  # accepted (parsed, right payload type, source and stream)
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    lost: int = 0
    concealed: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    ssrc_changes: int = 0
    frames_played: int = 0
    frames_skipped: int = 0  # playout ticks missed because the event loop stalled
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    max_send_gap_ms: float = 0.0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.session._received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable from the peer: keep going
        log.debug("rtp socket error", extra={"call_id": self.session.call_id, "error": repr(exc)})


class RtpSession:
    """One call's RTP: caller audio through the jitter buffer to ``on_audio``, keys to ``on_dtmf``, bot
    audio from ``send_pcm`` out at 20 ms per packet. See the module docstring for the choices."""

    def __init__(self, local_host: str, port_range: tuple[int, int], codec: Codec, dtmf: Codec | None,
                 on_audio: Callable[[bytes], Awaitable[None]], on_dtmf: Callable[[str, int], Awaitable[None]],
                 jitter_ms: int = 60, call_id: str = "") -> None:
        self.local_host = local_host
        self.port_range = port_range
        self.call_id = call_id
        self.port = 0
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._stats = RtpStats()
        self._jitter = JitterBuffer(jitter_ms, decode=self._decode)
        self._guard = SsrcGuard()
        self._keys = dtmf_events.DtmfReceiver()
        self._key_queue: asyncio.Queue[dtmf_events.KeyPress] = asyncio.Queue()
        self._remote: tuple[str, int] | None = None
        self._latched: tuple[str, int] | None = None
        self._direction = "sendrecv"
        self._outbound = bytearray()
        self._key_outbound: deque[tuple[bytes, bool]] = deque()  # (payload, first of its press)
        self._key_timestamp: int | None = None
        self._sequence = secrets.randbelow(0x10000)
        self._timestamp = secrets.randbelow(0x100000000)
        self._ssrc = secrets.randbelow(0x100000000)
        self._talking = False
        self._sent_any = False
        self._last_sent_s: float | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._first_packet = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._warned_s: dict[str, float] = {}
        self.set_codec(codec, dtmf)

    @property
    def stats(self) -> RtpStats:
        """Live counters (the jitter buffer's folded in)."""
        jitter = self._jitter.stats
        s = self._stats
        s.lost, s.concealed, s.duplicates = jitter.lost, jitter.concealed, jitter.duplicates
        s.reordered, s.late, s.ssrc_changes = jitter.reordered, jitter.late, jitter.ssrc_changes
        return s

    async def start(self) -> int:
        """Bind the first free even port of ``port_range`` (inclusive; the odd one above is left for RTCP),
        starting at a random one, and start the send and playout loops. Returns the port."""
        low, high = self.port_range
        first_even = low + (low & 1)
        ports = list(range(first_even, high, 2))  # port + 1 must stay in range
        if not ports:
            raise ValueError(f"no even port with room for RTCP in {self.port_range}")
        offset = secrets.randbelow(len(ports))
        loop = asyncio.get_running_loop()
        for port in ports[offset:] + ports[:offset]:
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self),
                                                                   local_addr=(self.local_host, port))
            except OSError:
                continue
            self._transport = transport  # type: ignore[assignment]
            self.port = port
            break
        else:
            raise OSError(f"every RTP port in {self.port_range} is busy")
        self._spawn(self._send_loop(), "send")
        self._spawn(self._playout_loop(), "playout")
        self._spawn(self._key_loop(), "keys")
        return self.port

    def set_remote(self, host: str, port: int) -> None:
        """Where the SDP says to send. A changed address (a re-INVITE moved the media) forgets the latch."""
        remote = (host, port)
        if self._remote is not None and remote != self._remote:
            self._latched = None
        self._remote = remote

    def set_codec(self, codec: Codec, dtmf: Codec | None) -> None:
        """Switch the audio codec and the telephone-event payload type (None: keys not negotiated)."""
        self._encode, self._decode_audio = _audio_codec(codec)
        self._codec = codec
        self._dtmf = dtmf
        self._silence_payload = self._encode(SILENCE_FRAME)

    def set_direction(self, direction: str) -> None:
        """Our direction from the SDP; ``recvonly`` and ``inactive`` (we are on hold) stop sending."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self._direction = direction

    async def send_pcm(self, pcm16: bytes) -> None:
        """Queue bot audio (PCM16 8 kHz, any length; whole 20 ms frames avoid padding gaps)."""
        if len(pcm16) % 2:
            raise ValueError("PCM16 needs an even number of bytes")
        self._outbound += pcm16
        excess = len(self._outbound) - MAX_OUTBOUND_MS * FRAME_BYTES // FRAME_MS
        if excess > 0:
            excess += -excess % FRAME_BYTES
            del self._outbound[:excess]
            self._drop("send_overflow", excess // FRAME_BYTES)

    async def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Queue a key press (RFC 4733 events in place of audio); needs a negotiated telephone-event."""
        if self._dtmf is None:
            raise RuntimeError("telephone-event was not negotiated")
        payloads = dtmf_events.event_payloads(digit, duration_ms=duration_ms)
        self._key_outbound.extend((payload, i == 0) for i, payload in enumerate(payloads))

    def clear_outbound(self) -> None:
        """Forget queued bot audio (the caller barged in)."""
        self._outbound.clear()

    async def close(self) -> None:
        """Stop the loops and close the socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._transport is not None:
            self._transport.close()

    # -- receive ------------------------------------------------------------------------------------------

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        latched = self._latched
        if latched is not None and addr[:2] != latched:
            _DROPPED_FOREIGN.inc()
            self._stats.dropped_by_reason["foreign_source"] = self._stats.dropped_by_reason.get("foreign_source", 0) + 1
            self._warn("rtp from a foreign source dropped")
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self._drop("malformed")
            return
        is_key = self._dtmf is not None and packet.payload_type == self._dtmf.payload_type
        if not is_key and packet.payload_type != self._codec.payload_type:
            self._drop("payload_type")
            return
        now = time.monotonic()
        verdict = self._guard.check(packet.ssrc, now)
        if verdict == "intruder":
            self._drop("foreign_ssrc")
            return
        if verdict == "changed":
            RTP_SSRC_CHANGES.inc()
        if latched is None:
            self._latched = (addr[0], addr[1])
            log.info("rtp source latched", extra={"call_id": self.call_id, "remote": f"{addr[0]}:{addr[1]}"})
        self._stats.packets_in += 1
        self._stats.bytes_in += len(data)
        if is_key:
            self._jitter.push(packet, now, audio=False)  # retransmitted ends may repeat a number: no count
            try:
                event = dtmf_events.parse_event(packet.payload)
            except dtmf_events.DtmfError:
                self._drop("malformed")
                return
            for press in self._keys.feed(packet.timestamp, event, now):
                self._key_queue.put_nowait(press)
        else:
            reason = self._jitter.push(packet, now)
            if reason is not None:
                self._drop(reason)
        self._first_packet.set()

    def _decode(self, packet: RtpPacket) -> bytes:
        return self._decode_audio(packet.payload)

    def _drop(self, reason: str, count: int = 1) -> None:
        RTP_DROPPED.labels(reason).inc(count)
        self._stats.dropped_by_reason[reason] = self._stats.dropped_by_reason.get(reason, 0) + count

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_s.get(message, -1.0) >= 1.0:  # once a second at most: a flood must stay cheap
            self._warned_s[message] = now
            log.warning(message, extra={"call_id": self.call_id, "dropped": self._stats.dropped_by_reason})

    # -- loops --------------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(f"rtp-{name}-{self.call_id}")

    async def _playout_loop(self) -> None:
        await self._first_packet.wait()
        period = FRAME_MS / 1000
        deadline = time.monotonic()
        while True:
            now = time.monotonic()
            overflow = self._jitter.stats.overflow
            behind = int((now - deadline) / period)
            if behind >= 1:  # stalled: drop the missed ticks' frames rather than burst them downstream
                for _ in range(behind):
                    self._jitter.pop(now)
                self._stats.frames_skipped += behind
                deadline += behind * period
            frame = self._jitter.pop(now)
            if self._jitter.stats.overflow != overflow:
                self._drop("overflow", self._jitter.stats.overflow - overflow)
            for press in self._keys.poll(now):
                self._key_queue.put_nowait(press)
            if frame is not None:
                self._stats.frames_played += 1
                if frame.kind == "concealed":
                    RTP_CONCEALED.inc()
                try:
                    await self._on_audio(frame.pcm)
                except Exception as err:  # a failing consumer must not stop the caller's audio
                    log.warning("rtp on_audio failed", extra={"call_id": self.call_id, "error": repr(err)})
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def _key_loop(self) -> None:
        while True:
            press = await self._key_queue.get()
            try:
                await self._on_dtmf(press.digit, press.duration_ms)
            except Exception as err:
                log.warning("rtp on_dtmf failed", extra={"call_id": self.call_id, "error": repr(err)})

    async def _send_loop(self) -> None:
        period = FRAME_MS / 1000
        deadline = time.monotonic()
        while True:
            now = time.monotonic()
            behind = int((now - deadline) / period)
            if behind >= 1:  # stalled: the timestamp keeps real time, the missed packets are not sent
                deadline += behind * period
                self._timestamp = (self._timestamp + behind * FRAME_SAMPLES) & 0xFFFFFFFF
                del self._outbound[:behind * FRAME_BYTES]
            self._send_tick(now)
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def _send_tick(self, now: float) -> None:
        timestamp = self._timestamp
        self._timestamp = (timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        pcm = bytes(self._outbound[:FRAME_BYTES])
        del self._outbound[:FRAME_BYTES]
        destination = self._latched or self._remote
        if destination is None or self._transport is None or self._direction in ("recvonly", "inactive"):
            self._talking = False
            self._last_sent_s = None
            self._key_outbound.clear()
            return
        if self._key_outbound and self._dtmf is not None:
            payload, marker = self._key_outbound.popleft()
            if marker or self._key_timestamp is None:
                self._key_timestamp = timestamp  # every packet of a press carries the press's start
            data = RtpPacket.build(payload_type=self._dtmf.payload_type, sequence=self._sequence,
                                   timestamp=self._key_timestamp, ssrc=self._ssrc, payload=payload, marker=marker)
        else:
            if pcm:
                payload = self._encode(pcm.ljust(FRAME_BYTES, b"\0"))
                marker = not self._talking
                self._talking = True
            else:
                payload = self._silence_payload
                marker = not self._sent_any
                self._talking = False
            data = RtpPacket.build(payload_type=self._codec.payload_type, sequence=self._sequence,
                                   timestamp=timestamp, ssrc=self._ssrc, payload=payload, marker=marker)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._transport.sendto(data, destination)
        self._sent_any = True
        self._stats.packets_out += 1
        self._stats.bytes_out += len(data)
        if self._last_sent_s is not None:
            gap_ms = (now - self._last_sent_s) * 1000
            if gap_ms > self._stats.max_send_gap_ms:
                self._stats.max_send_gap_ms = gap_ms
        self._last_sent_s = now
