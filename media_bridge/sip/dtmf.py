"""Phone keys as RTP telephone events (RFC 4733 §2.3): parsing, building, and one delivery per key press.

A key press travels as several packets sharing one RTP timestamp (the event's start): a first one with
the marker bit, duration updates while the key is held, and the end packet (E bit) sent three times.
``DtmfReceiver`` turns that stream into one ``KeyPress`` per press: when the first end packet arrives,
or, if every end packet was lost, when the next event starts or the event has been quiet for
``timeout_s``.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

#: Events 0-15 (RFC 4733 §3.2): the twelve keys of a phone plus the four of the rarely seen fourth column.
EVENT_DIGITS = "0123456789*#ABCD"

_PAYLOAD = struct.Struct("!BBH")
_MAX_DURATION = 0xFFFF


class DtmfError(ValueError):
    """A telephone-event payload that cannot be read."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event payload: ``duration`` is in RTP timestamp units (1/8 ms at 8 kHz)."""

    event: int
    end: bool
    volume: int  # power level in -dBm0, 0-63
    duration: int

    @property
    def digit(self) -> str | None:
        """The key ('0'-'9', '*', '#', 'A'-'D'), or None for other events (flash, modem tones)."""
        return EVENT_DIGITS[self.event] if self.event < len(EVENT_DIGITS) else None


@dataclass(frozen=True, slots=True)
class KeyPress:
    """A key the caller pressed, delivered once."""

    digit: str
    duration_ms: int


def parse_event(payload: bytes) -> TelephoneEvent:
    """Read the first event of a telephone-event payload (4 bytes: event, E|R|volume, duration)."""
    if len(payload) < _PAYLOAD.size:
        raise DtmfError(f"telephone-event payload needs 4 bytes, got {len(payload)}")
    event, flags, duration = _PAYLOAD.unpack_from(payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def build_event(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """Write a telephone-event payload."""
    if not 0 <= event <= 255 or not 0 <= volume <= 63 or not 0 <= duration <= _MAX_DURATION:
        raise ValueError("event 0-255, volume 0-63, duration 0-65535")
    return _PAYLOAD.pack(event, (0x80 if end else 0) | volume, duration)


def digit_event(digit: str) -> int:
    """The event number of a key ('0'-'9', '*', '#', 'A'-'D', case-insensitive)."""
    index = EVENT_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF key: {digit!r}")
    return index


def event_payloads(digit: str, *, duration_ms: int = 100, interval_ms: int = 20, volume: int = 10,
                   clock_rate: int = 8000, end_repeats: int = 3) -> list[bytes]:
    """The payloads of one key press, one per ``interval_ms``: updates with a growing duration, then the
    end packet ``end_repeats`` times (all share the event's RTP timestamp; the first carries the marker)."""
    event = digit_event(digit)
    units_per_ms = clock_rate // 1000
    total = min(duration_ms * units_per_ms, _MAX_DURATION)
    step = interval_ms * units_per_ms
    payloads = [build_event(event, end=False, volume=volume, duration=d) for d in range(step, total, step)]
    if not payloads:
        payloads.append(build_event(event, end=False, volume=volume, duration=min(step, total)))
    final = build_event(event, end=True, volume=volume, duration=total)
    return payloads + [final] * end_repeats


def build_event_packets(digit: str, *, payload_type: int = 101, sequence: int = 0, timestamp: int = 0,
                        ssrc: int = 0, duration_ms: int = 100, interval_ms: int = 20, volume: int = 10,
                        clock_rate: int = 8000) -> list[bytes]:
    """Whole RTP packets for one key press, to be sent ``interval_ms`` apart: consecutive sequence
    numbers, one timestamp, the marker bit on the first."""
    from media_bridge.sip.rtp import RtpPacket  # rtp imports this module

    payloads = event_payloads(digit, duration_ms=duration_ms, interval_ms=interval_ms, volume=volume,
                              clock_rate=clock_rate)
    return [RtpPacket.build(payload_type=payload_type, sequence=(sequence + i) & 0xFFFF, timestamp=timestamp,
                            ssrc=ssrc, payload=payload, marker=i == 0) for i, payload in enumerate(payloads)]


@dataclass
class _Press:
    key: tuple[int, int]  # (RTP timestamp, event)
    digit: str
    duration: int
    last_seen_s: float


class DtmfReceiver:
    """Turns telephone-event packets into key presses, each delivered exactly once.

    Pure and clock-free: the caller passes the arrival time, and calls ``poll`` now and then so that a
    press whose end packets were all lost still comes out after ``timeout_s``.
    """

    def __init__(self, *, clock_rate: int = 8000, timeout_s: float = 0.5) -> None:
        self.clock_rate = clock_rate
        self.timeout_s = timeout_s
        self._current: _Press | None = None
        self._done_order: deque[tuple[int, int]] = deque()
        self._done: set[tuple[int, int]] = set()

    def feed(self, timestamp: int, event: TelephoneEvent, now_s: float) -> list[KeyPress]:
        """One received packet (its RTP timestamp and payload); returns the presses it completes."""
        digit = event.digit
        key = (timestamp, event.event)
        if digit is None or key in self._done:  # not a key, or a retransmitted end of a delivered press
            return []
        presses: list[KeyPress] = []
        if self._current is not None and self._current.key != key:
            presses.append(self._finish())  # a new event began before the old one's end arrived
        if self._current is None:
            self._current = _Press(key=key, digit=digit, duration=event.duration, last_seen_s=now_s)
        else:
            self._current.duration = max(self._current.duration, event.duration)
            self._current.last_seen_s = now_s
        if event.end:
            presses.append(self._finish())
        return presses

    def poll(self, now_s: float) -> list[KeyPress]:
        """Deliver a press whose end never came once it has been quiet for ``timeout_s``."""
        if self._current is not None and now_s - self._current.last_seen_s >= self.timeout_s:
            return [self._finish()]
        return []

    def _finish(self) -> KeyPress:
        press = self._current
        assert press is not None
        self._current = None
        self._done.add(press.key)
        self._done_order.append(press.key)
        if len(self._done_order) > 32:
            self._done.discard(self._done_order.popleft())
        return KeyPress(digit=press.digit, duration_ms=press.duration * 1000 // self.clock_rate)
