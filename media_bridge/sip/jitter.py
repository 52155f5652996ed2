"""The receive side of RTP, without I/O: the jitter buffer that turns caller packets into one 20 ms frame
per tick, and the guard that tells a new stream from an intruder by SSRC.

Both are pure (no clock, no socket): the caller passes arrival and playout times, so tests drive them
on a scripted clock. ``RtpSession`` (``media_bridge.sip.rtp``) wires them to the socket and the loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from media_bridge.sip.rtp import RtpPacket

SAMPLE_RATE_HZ = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2  # PCM16
SILENCE_FRAME = bytes(FRAME_BYTES)
SSRC_TAKEOVER_S = 0.1
SSRC_TAKEOVER_PACKETS = 3


@dataclass
class Frame:
    """One 20 ms frame of caller audio out of the jitter buffer."""

    pcm: bytes  # PCM16 little-endian, 8 kHz mono, 320 bytes
    kind: str  # "audio" | "concealed" (the last frame, fading) | "silence"


@dataclass
class JitterStats:
    """What the jitter buffer saw; every field counts packets except ``concealed`` (frames)."""

    lost: int = 0  # sequence numbers never received in time
    concealed: int = 0
    duplicates: int = 0
    reordered: int = 0  # arrived after a higher sequence number, still in time
    late: int = 0  # arrived after their turn to play
    overflow: int = 0  # dropped because the buffer ran too far ahead of the playout
    ssrc_changes: int = 0


_CONCEALMENT_GAINS = (0.7, 0.4, 0.2)  # about -3, -8 and -14 dB, then silence


class JitterBuffer:
    """Reorders caller packets by sequence number and plays them out one 20 ms frame per ``pop``.

    Pure (no clock, no I/O): ``push`` takes the arrival time, ``pop`` the playout time; the session calls
    ``pop`` every 20 ms. Nothing comes out before the first packet has waited ``depth_ms``; from then on
    every ``pop`` returns a frame. A missing packet with later ones already here is lost and concealed;
    with nothing here at all the buffer has run dry: it conceals, then plays silence, and waits
    ``depth_ms`` again after the next packet before resuming (a new talk spurt). Sequence numbers are
    extended past the 16-bit wrap; a new SSRC starts the sequence state over.
    """

    def __init__(self, depth_ms: int = 60, *, decode: Callable[[RtpPacket], bytes] | None = None,
                 max_depth_ms: int | None = None) -> None:
        self.depth_s = depth_ms / 1000
        depth_frames = -(-depth_ms // FRAME_MS)
        self.max_frames = max((max_depth_ms or 0) // FRAME_MS, 2 * depth_frames + 5)
        self.decode = decode or (lambda packet: packet.payload)
        self.stats = JitterStats()
        self._started = False
        self._last: bytes | None = None
        self._loss_run = 0
        self._reset()

    def _reset(self) -> None:
        self._ssrc: int | None = None
        self._slots: dict[int, bytes | None] = {}  # extended sequence -> PCM, None: a slot without audio
        self._highest: int | None = None
        self._next: int | None = None  # next extended sequence to play; None until the first frame
        self._buffering = True
        self._buffering_since: float | None = None
        self._pending: deque[bytes] = deque()  # the rest of packets longer than a frame
        self._played: set[int] = set()
        self._played_order: deque[int] = deque()
        self._late_run = 0

    def _extend(self, sequence: int) -> int:
        if self._highest is None:
            return sequence + 0x10000
        delta = (sequence - self._highest) & 0xFFFF
        return self._highest + (delta - 0x10000 if delta >= 0x8000 else delta)

    def push(self, packet: RtpPacket, arrival_s: float, *, audio: bool = True) -> str | None:
        """Queue a packet; returns None, or why it was dropped (``late``, ``duplicate``, ``overflow``).
        ``audio=False`` marks a packet that takes a sequence number but no playout time (a key event)."""
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.stats.ssrc_changes += 1
                self._reset()
            self._ssrc = packet.ssrc
        ext = self._extend(packet.sequence)
        if self._next is not None and ext < self._next:
            self._late_run += 1
            if self._late_run <= 25:
                if ext in self._played:
                    self.stats.duplicates += 1
                    return "duplicate"
                self.stats.late += 1
                return "late"
            self._reset()  # half a second of nothing but old numbers: the sender started over
            self._ssrc = packet.ssrc
            ext = self._extend(packet.sequence)
        elif self._next is not None and ext - self._next > 50 * self.max_frames:
            self._reset()  # a jump far ahead: the sender started over
            self._ssrc = packet.ssrc
            ext = self._extend(packet.sequence)
        self._late_run = 0
        if ext in self._slots:
            self.stats.duplicates += 1
            return "duplicate"
        if self._highest is None or ext > self._highest:
            self._highest = ext
        else:
            self.stats.reordered += 1
        self._slots[ext] = self.decode(packet) if audio else None
        if self._buffering and self._buffering_since is None:
            self._buffering_since = arrival_s
        return None

    def pop(self, now_s: float) -> Frame | None:
        """The frame to play at ``now_s``; None only before the first packet has waited ``depth_ms``."""
        if self._pending:
            return self._play(self._pending.popleft())
        if self._buffering:
            if self._buffering_since is None or now_s < self._buffering_since + self.depth_s:
                return self._conceal() if self._started else None
            self._buffering = False
            self._started = True
            first = min(self._slots) if self._slots else None
            if first is not None and (self._next is None or first > self._next):
                if self._next is not None:
                    self.stats.lost += first - self._next  # the tail of the last spurt never came
                self._next = first
        assert self._next is not None or not self._slots
        if self._next is None:
            return self._underrun()
        while self._highest is not None and self._highest - self._next >= self.max_frames:
            if self._next in self._slots:  # too far behind the newest packet: skip ahead
                del self._slots[self._next]
                self.stats.overflow += 1
                self._mark_played(self._next)
            else:
                self.stats.lost += 1
            self._next += 1
        while self._next in self._slots:
            pcm = self._slots.pop(self._next)
            self._mark_played(self._next)
            self._next += 1
            if pcm is not None:
                return self._play(pcm)
        if self._slots:  # later packets are here, this one is not: lost
            self.stats.lost += 1
            self._next += 1
            return self._conceal()
        return self._underrun()

    def _underrun(self) -> Frame:
        self._buffering = True
        self._buffering_since = None
        return self._conceal()

    def _play(self, pcm: bytes) -> Frame:
        if len(pcm) > FRAME_BYTES:
            self._pending.extend(pcm[i:i + FRAME_BYTES] for i in range(FRAME_BYTES, len(pcm), FRAME_BYTES))
            pcm = pcm[:FRAME_BYTES]
        if len(pcm) < FRAME_BYTES:
            pcm = pcm + bytes(FRAME_BYTES - len(pcm))
        self._loss_run = 0
        self._last = pcm
        return Frame(pcm, "audio")

    def _conceal(self) -> Frame:
        self._loss_run += 1
        if self._last is None or self._loss_run > len(_CONCEALMENT_GAINS):
            return Frame(SILENCE_FRAME, "silence")
        self.stats.concealed += 1
        faded = np.frombuffer(self._last, dtype="<i2") * _CONCEALMENT_GAINS[self._loss_run - 1]
        return Frame(faded.astype("<i2").tobytes(), "concealed")

    def _mark_played(self, ext: int) -> None:
        self._played.add(ext)
        self._played_order.append(ext)
        if len(self._played_order) > 256:
            self._played.discard(self._played_order.popleft())


class SsrcGuard:
    """Decides whether a packet's SSRC is the current stream, a new stream taking over, or an intruder."""

    def __init__(self, *, takeover_s: float = SSRC_TAKEOVER_S, takeover_packets: int = SSRC_TAKEOVER_PACKETS) -> None:
        self.takeover_s = takeover_s
        self.takeover_packets = takeover_packets
        self.ssrc: int | None = None
        self._last_seen_s = 0.0
        self._candidate: int | None = None
        self._candidate_run = 0

    def check(self, ssrc: int, now_s: float) -> str:
        """``current``, ``first``, ``changed`` (the new one is now current) or ``intruder`` (drop it)."""
        if ssrc == self.ssrc:
            self._last_seen_s = now_s
            self._candidate = None
            return "current"
        verdict = "changed"
        if self.ssrc is None:
            verdict = "first"
        elif now_s - self._last_seen_s < self.takeover_s:
            self._candidate_run = self._candidate_run + 1 if ssrc == self._candidate else 1
            self._candidate = ssrc
            if self._candidate_run < self.takeover_packets:
                return "intruder"
        self.ssrc = ssrc
        self._last_seen_s = now_s
        self._candidate = None
        return verdict

