"""The caller side of `bench_sip.py`: a raw SIP UAC and lean RTP callers, all on one event loop.

Written small on purpose so that, on a machine shared with the bridge, the load generator costs as
little CPU as possible: one SIP socket for every dialog, one RTP socket per call read straight from the
event loop's selector, and one 20 ms tick that sends every call's next packet. Each datagram carries
the kernel's arrival time (``SO_TIMESTAMPNS``), so a gap measured here is a gap on the wire, not a
moment when this event loop was busy. All times are ``time.time()`` seconds (the kernel stamps with
the same wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from media_bridge import g711
from media_bridge.sip.rtp import PCMA, PCMU, RtpPacket

# Linux's SO_TIMESTAMPNS (asm-generic/socket.h); Python's socket module does not name it.
SO_TIMESTAMPNS = 35
T1_S = 0.5  # RFC 3261 retransmission start
FRAME_MS = 20
FRAME_SAMPLES = 160
Datagram = Callable[[bytes, tuple[str, int], float], None]
_COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length",
            "c": "content-type"}


class UdpEndpoint:
    """A non-blocking UDP socket on 127.0.0.1 read by the running loop; ``on_datagram(data, addr, arrival_s)``."""

    def __init__(self, on_datagram: Datagram, rcvbuf_bytes: int = 1 << 20) -> None:
        self.on_datagram = on_datagram
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        self.kernel_time = False
        if sys.platform == "linux":
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_time = True
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.send_errors = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _, addr = self.sock.recvmsg(4096, 64)
            except ConnectionRefusedError:  # an ICMP error from an earlier send: the next read goes on
                continue
            except OSError:  # BlockingIOError: drained
                return
            arrival = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    arrival = seconds + nanoseconds / 1e9
            self.on_datagram(data, (addr[0], addr[1]), arrival)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:  # a full send buffer or a refused port: counted, the tick goes on
            self.send_errors += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


# ---- caller media ---------------------------------------------------------------------------------


def _caller_frames(burst_frames: int) -> dict[int, tuple[list[bytes], bytes]]:
    """Per payload type: a continuous 220 Hz tone cut into 20 ms G.711 frames, and one silent frame."""
    t = np.arange(burst_frames * FRAME_SAMPLES) / 8000
    pcm = (np.sin(2 * math.pi * 220 * t) * 0.3 * 32767).astype("<i2").tobytes()
    frames = [pcm[i * 320:(i + 1) * 320] for i in range(burst_frames)]
    silent = bytes(320)
    return {PCMA.payload_type: ([g711.alaw_encode(f) for f in frames], g711.alaw_encode(silent)),
            PCMU.payload_type: ([g711.ulaw_encode(f) for f in frames], g711.ulaw_encode(silent))}


@dataclass
class SpeechPattern:
    """What every caller says: a ``burst_ms`` tone every ``every_ms``, the first after ``first_ms`` plus
    a random share of ``every_ms`` (so callers do not all talk at once)."""

    burst_ms: int = 1000
    every_ms: int = 4000
    first_ms: int = 1500

    def __post_init__(self) -> None:
        self.frames = _caller_frames(self.burst_ms // FRAME_MS)


class CallerMedia:
    """One call's RTP as the caller: sends the pattern, times every packet the bridge sends back.

    Gaps between consecutive arrivals count from ``warmup_s`` after the first packet until ``stop_measuring``;
    those over ``long_gap_ms`` are also kept as (start_s, end_s).
    """

    def __init__(self, pattern: SpeechPattern, warmup_s: float = 1.0, long_gap_ms: float = 60.0) -> None:
        self.pattern = pattern
        self.warmup_s = warmup_s
        self.long_gap_ms = long_gap_ms
        self.long_gaps: list[tuple[float, float]] = []
        self.endpoint = UdpEndpoint(self._received)
        self.remote: tuple[str, int] | None = None
        self.payload_type = PCMA.payload_type
        self.first_packet_s: float | None = None
        self.first_packet = asyncio.Event()
        self.last_packet_s: float | None = None
        self.measure_until_s = math.inf
        self.packets_in = 0
        self.talk_spurts = 0  # packets with the marker bit: the first one, then each start of bot speech
        self.gaps_ms: list[float] = []
        self.packets_out = 0
        self._ssrc = random.getrandbits(32)
        self._sequence = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self._tick = 0
        every = pattern.every_ms // FRAME_MS
        self._first_burst = (pattern.first_ms // FRAME_MS) + random.randrange(every)

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def max_gap_ms(self) -> float:
        return max(self.gaps_ms, default=0.0)

    def stop_measuring(self) -> None:
        self.measure_until_s = time.time()

    def _received(self, data: bytes, addr: tuple[str, int], arrival_s: float) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        self.packets_in += 1
        if data[1] & 0x80:
            self.talk_spurts += 1
        last, self.last_packet_s = self.last_packet_s, arrival_s
        if self.first_packet_s is None:
            self.first_packet_s = arrival_s
            self.first_packet.set()
            return
        if last is not None and arrival_s - self.first_packet_s >= self.warmup_s and arrival_s <= self.measure_until_s:
            gap_ms = (arrival_s - last) * 1000
            self.gaps_ms.append(gap_ms)
            if gap_ms > self.long_gap_ms:
                self.long_gaps.append((last, arrival_s))

    def tick(self) -> None:
        """Sends this call's next 20 ms packet (called by ``MediaPump`` every 20 ms)."""
        if self.remote is None:
            return
        burst, silent = self.pattern.frames[self.payload_type]
        every = self.pattern.every_ms // FRAME_MS
        k = self._tick - self._first_burst
        in_cycle = k % every if k >= 0 else every
        talking = in_cycle < len(burst)
        payload = burst[in_cycle] if talking else silent
        data = RtpPacket.build(payload_type=self.payload_type, sequence=self._sequence, timestamp=self._timestamp,
                               ssrc=self._ssrc, payload=payload, marker=talking and in_cycle == 0)
        self.endpoint.sendto(data, self.remote)
        self.packets_out += 1
        self._tick += 1
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & 0xFFFFFFFF

    def close(self) -> None:
        self.endpoint.close()


class MediaPump:
    """One task that sends every registered call's next packet each 20 ms; a late tick is skipped, not
    burst (as a phone would), and its lateness is recorded. A tick later than ``stall_ms`` is kept as a
    stall of this process, (start_s, end_s): a gap the callers saw during one was likely the machine's."""

    def __init__(self, stall_ms: float = 30.0) -> None:
        self.calls: set[CallerMedia] = set()
        self.stall_ms = stall_ms
        self.stalls: list[tuple[float, float]] = []
        self.max_late_ms = 0.0
        self.skipped_ticks = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="media-pump")

    async def _run(self) -> None:
        period = FRAME_MS / 1000
        deadline = time.monotonic()
        while True:
            now = time.monotonic()
            late_s = now - deadline
            self.max_late_ms = max(self.max_late_ms, late_s * 1000)
            if late_s * 1000 > self.stall_ms:
                wall = time.time()
                self.stalls.append((wall - late_s - FRAME_MS / 1000, wall))
            behind = int((now - deadline) / period)
            if behind >= 1:
                deadline += behind * period
                self.skipped_ticks += behind
            for call in list(self.calls):
                call.tick()
            deadline += period
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def during_stall(self, gap: tuple[float, float]) -> bool:
        """Whether this process stalled for at least half of ``gap``'s excess over 20 ms, overlapping it."""
        start, end = gap
        need_s = 0.5 * max(0.0, end - start - FRAME_MS / 1000)
        return any(s < end and e > start and e - s >= need_s for s, e in self.stalls)

    def reset_lateness(self) -> None:
        self.max_late_ms = 0.0
        self.skipped_ticks = 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ---- SIP ----------------------------------------------------------------------------------------


@dataclass
class SipMsg:
    """A parsed SIP message: the start line, headers by lowercase full name (in order), the body."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> SipMsg:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # folded continuation
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers.append((_COMPACT.get(name, name), value.strip()))
        return cls(lines[0], headers, body)

    def get(self, name: str) -> str:
        return next((v for n, v in self.headers if n == name), "")

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def status(self) -> int | None:
        if not self.start.startswith("SIP/2.0 "):
            return None
        return int(self.start.split()[1])

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = self.get("cseq").partition(" ")
        return int(number), method.strip().upper()


def _uri_of(name_addr: str) -> str:
    if "<" in name_addr:
        return name_addr.split("<", 1)[1].split(">", 1)[0]
    return name_addr.split(";", 1)[0].strip()


def _answer_media(body: bytes) -> tuple[str, int, int] | None:
    """(host, port, first payload type) of the audio stream in an SDP answer."""
    host, port, payload_type = "", 0, -1
    for line in body.decode("ascii", "replace").splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio "):
            parts = line.split()
            port, payload_type = int(parts[1]), int(parts[3])
    return (host, port, payload_type) if host and port else None


@dataclass
class Dialog:
    """One call from the UAC's side; times are ``time.time()`` seconds."""

    call_id: str
    from_tag: str
    media: CallerMedia
    invite_sent_s: float = 0.0
    status: int = 0  # the INVITE's final status (0: none came)
    ok_s: float | None = None  # 200 OK arrival
    ack_sent_s: float | None = None
    to_header: str = ""
    target: str = ""  # the bridge's Contact URI
    cseq: int = 1
    bridge_bye: bool = False  # the bridge hung up on us
    bye_status: int = 0
    final: asyncio.Future[SipMsg] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def setup_ms(self) -> float | None:
        return (self.ok_s - self.invite_sent_s) * 1000 if self.ok_s is not None else None

    @property
    def media_ms(self) -> float | None:
        """INVITE sent -> the call is ACKed and the bridge's first RTP packet is here."""
        first = self.media.first_packet_s
        if self.ack_sent_s is None or first is None:
            return None
        return (max(self.ack_sent_s, first) - self.invite_sent_s) * 1000


class SipUac:
    """A minimal SIP UAC over UDP: INVITE (offering PCMA, PCMU, telephone-event), ACK, BYE; answers the
    bridge's BYE. Enough for a benchmark against our own user agent, not a general phone."""

    def __init__(self, bridge: tuple[str, int], called: str = "1000") -> None:
        self.bridge = bridge
        self.called = called
        self.endpoint = UdpEndpoint(self._received)
        self.dialogs: dict[str, Dialog] = {}
        self._pending: dict[tuple[str, int, str], asyncio.Future[SipMsg]] = {}
        self._provisional: set[str] = set()  # call-ids whose INVITE got a 1xx: stop resending it

    def _headers(self, dialog: Dialog, method: str, cseq: int, branch: str, to: str) -> list[str]:
        me = f"127.0.0.1:{self.endpoint.port}"
        return [f"Via: SIP/2.0/UDP {me};branch={branch};rport", "Max-Forwards: 70",
                f"From: <sip:+971500000001@127.0.0.1>;tag={dialog.from_tag}", f"To: {to}",
                f"Call-ID: {dialog.call_id}", f"CSeq: {cseq} {method}", f"Contact: <sip:caller@{me}>",
                "User-Agent: voiceai-bench-uac"]

    @staticmethod
    def _build(start: str, headers: list[str], body: bytes = b"", content_type: str = "") -> bytes:
        extra = [f"Content-Type: {content_type}"] if content_type else []
        head = "\r\n".join([start, *headers, *extra, f"Content-Length: {len(body)}", "", ""])
        return head.encode() + body

    def _offer(self, rtp_port: int) -> bytes:
        session = random.getrandbits(31)
        return ("v=0\r\n" f"o=- {session} 1 IN IP4 127.0.0.1\r\n" "s=-\r\n" "c=IN IP4 127.0.0.1\r\n" "t=0 0\r\n"
                f"m=audio {rtp_port} RTP/AVP 8 0 101\r\n" "a=rtpmap:8 PCMA/8000\r\n" "a=rtpmap:0 PCMU/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\n" "a=fmtp:101 0-16\r\n" "a=ptime:20\r\n"
                "a=sendrecv\r\n").encode()

    async def invite(self, media: CallerMedia, timeout_s: float = 10.0) -> Dialog:
        """Calls the bridge; returns when the INVITE has a final response (ACKed) or ``timeout_s`` passed."""
        dialog = Dialog(uuid.uuid4().hex, uuid.uuid4().hex[:12], media)
        self.dialogs[dialog.call_id] = dialog
        bridge_uri = f"sip:{self.called}@{self.bridge[0]}:{self.bridge[1]}"
        branch = "z9hG4bK" + uuid.uuid4().hex
        data = self._build(f"INVITE {bridge_uri} SIP/2.0",
                           self._headers(dialog, "INVITE", 1, branch, f"<{bridge_uri}>"),
                           self._offer(media.port), "application/sdp")
        dialog.invite_sent_s = time.time()
        deadline = dialog.invite_sent_s + timeout_s
        interval = T1_S
        self.endpoint.sendto(data, self.bridge)
        while not dialog.final.done() and time.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(dialog.final), min(interval, max(0.0, deadline - time.time())))
            if not dialog.final.done() and dialog.call_id not in self._provisional:
                self.endpoint.sendto(data, self.bridge)
                interval = min(interval * 2, 4.0)
        if not dialog.final.done():
            return dialog
        final = dialog.final.result()
        dialog.status = final.status or 0
        if dialog.status >= 300:  # non-2xx: the ACK belongs to the INVITE transaction
            self._ack(dialog, final, branch)
        return dialog

    def _ack(self, dialog: Dialog, response: SipMsg, branch: str | None = None) -> None:
        target = dialog.target or f"sip:{self.called}@{self.bridge[0]}:{self.bridge[1]}"
        headers = self._headers(dialog, "ACK", 1, branch or "z9hG4bK" + uuid.uuid4().hex, response.get("to"))
        self.endpoint.sendto(self._build(f"ACK {target} SIP/2.0", headers), self.bridge)
        if dialog.ack_sent_s is None:
            dialog.ack_sent_s = time.time()

    async def bye(self, dialog: Dialog, timeout_s: float = 5.0) -> int:
        """Hangs up; returns the BYE's final status (0: none came, or the bridge had hung up)."""
        if dialog.bridge_bye or dialog.status != 200:
            return 0
        dialog.cseq += 1
        key = (dialog.call_id, dialog.cseq, "BYE")
        future: asyncio.Future[SipMsg] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        data = self._build(f"BYE {dialog.target} SIP/2.0",
                           self._headers(dialog, "BYE", dialog.cseq, "z9hG4bK" + uuid.uuid4().hex, dialog.to_header))
        deadline = time.time() + timeout_s
        interval = T1_S
        try:
            while time.time() < deadline:
                self.endpoint.sendto(data, self.bridge)
                with contextlib.suppress(TimeoutError):
                    dialog.bye_status = (await asyncio.wait_for(asyncio.shield(future), interval)).status or 0
                    return dialog.bye_status
                interval = min(interval * 2, 4.0)
            return 0
        finally:
            self._pending.pop(key, None)

    def _received(self, data: bytes, addr: tuple[str, int], arrival_s: float) -> None:
        if not data.strip():
            return
        try:
            msg = SipMsg.parse(data)
            number, method = msg.cseq
        except (ValueError, IndexError):
            return
        dialog = self.dialogs.get(msg.get("call-id"))
        if dialog is None:
            return
        status = msg.status
        if status is None:  # a request from the bridge: BYE (it hung up) or anything else: 200
            self._answer(msg, addr)
            if method == "BYE":
                dialog.bridge_bye = True
                dialog.media.stop_measuring()
            return
        if method == "INVITE":
            if status < 200:
                self._provisional.add(dialog.call_id)
            elif 200 <= status < 300:
                if dialog.ok_s is None:
                    dialog.ok_s = arrival_s
                    dialog.to_header = msg.get("to")
                    contact = msg.get("contact")
                    dialog.target = _uri_of(contact) if contact else dialog.target
                    answer = _answer_media(msg.body)
                    if answer is not None:
                        host, port, payload_type = answer
                        dialog.media.payload_type = payload_type
                        dialog.media.remote = (host, port)
                self._ack(dialog, msg)  # also for each retransmitted 200
            if status >= 200 and not dialog.final.done():
                dialog.final.set_result(msg)
            return
        future = self._pending.get((dialog.call_id, number, method))
        if future is not None and not future.done() and status >= 200:
            future.set_result(msg)

    def _answer(self, request: SipMsg, addr: tuple[str, int]) -> None:
        headers = [f"Via: {v}" for v in request.get_all("via")]
        to = request.get("to")
        headers += [f"From: {request.get('from')}", f"To: {to}", f"Call-ID: {request.get('call-id')}",
                    f"CSeq: {request.get('cseq')}"]
        self.endpoint.sendto(self._build("SIP/2.0 200 OK", headers), addr)

    def close(self) -> None:
        self.endpoint.close()


__all__ = ["CallerMedia", "Dialog", "MediaPump", "SipUac", "SpeechPattern", "UdpEndpoint"]
