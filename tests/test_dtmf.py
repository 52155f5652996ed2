"""RFC 4733 telephone events: payloads, whole key-press packets, and one delivery per key press."""

from __future__ import annotations

import pytest

from media_bridge.sip.dtmf import (
    EVENT_DIGITS,
    DtmfError,
    DtmfReceiver,
    KeyPress,
    TelephoneEvent,
    build_event,
    build_event_packets,
    parse_event,
)
from media_bridge.sip.rtp import RtpPacket

pytestmark = pytest.mark.unit


def feed_packets(receiver: DtmfReceiver, packets: list[bytes], start_s: float = 0.0) -> list[KeyPress]:
    """Feed packets 20 ms apart, as a sender would pace them."""
    presses: list[KeyPress] = []
    for i, data in enumerate(packets):
        packet = RtpPacket.parse(data)
        presses += receiver.feed(packet.timestamp, parse_event(packet.payload), start_s + i * 0.02)
    return presses


def test_payload_round_trip_and_flags() -> None:
    payload = build_event(11, end=True, volume=10, duration=1234)
    assert payload == bytes([11, 0x80 | 10]) + (1234).to_bytes(2, "big")
    assert parse_event(payload) == TelephoneEvent(event=11, end=True, volume=10, duration=1234)
    assert parse_event(payload).digit == "#"
    assert parse_event(bytes([16, 0, 0, 0])).digit is None  # flash is not a key


def test_short_payload_is_an_error() -> None:
    with pytest.raises(DtmfError):
        parse_event(b"\x05\x80\x00")
    with pytest.raises(ValueError):
        build_event(1, end=False, volume=64, duration=0)


def test_key_press_packets_share_a_timestamp_and_end_three_times() -> None:
    packets = [RtpPacket.parse(p) for p in build_event_packets("7", sequence=65534, timestamp=9000, ssrc=42,
                                                               duration_ms=100)]
    assert [p.marker for p in packets] == [True] + [False] * (len(packets) - 1)
    assert {p.timestamp for p in packets} == {9000}
    assert [p.sequence for p in packets][:3] == [65534, 65535, 0]  # consecutive across the wrap
    events = [parse_event(p.payload) for p in packets]
    assert [e.end for e in events[-3:]] == [True, True, True] and not any(e.end for e in events[:-3])
    assert events[-1].duration == 800  # 100 ms at 8 kHz
    assert all(e.event == 7 for e in events)


def test_one_press_with_three_end_packets_is_one_digit() -> None:
    presses = feed_packets(DtmfReceiver(), build_event_packets("5", duration_ms=160))
    assert presses == [KeyPress("5", 160)]


def test_two_presses_of_the_same_key_are_two_digits() -> None:
    receiver = DtmfReceiver()
    first = build_event_packets("3", timestamp=1000, sequence=10)
    second = build_event_packets("3", timestamp=1000 + 8000, sequence=20, duration_ms=240)
    assert feed_packets(receiver, first + second) == [KeyPress("3", 100), KeyPress("3", 240)]


def test_lost_end_packets_deliver_on_the_next_event() -> None:
    receiver = DtmfReceiver()
    first = build_event_packets("1", timestamp=1000, sequence=10)[:-3]  # every end packet lost
    second = build_event_packets("2", timestamp=5000, sequence=20)
    presses = feed_packets(receiver, first)
    assert presses == []
    presses = feed_packets(receiver, second, start_s=1.0)
    assert presses[0].digit == "1" and presses[0].duration_ms == 80  # the last update it saw: 4 x 20 ms
    assert presses[1:] == [KeyPress("2", 100)]


def test_lost_end_packets_deliver_after_the_timeout() -> None:
    receiver = DtmfReceiver(timeout_s=0.5)
    assert feed_packets(receiver, build_event_packets("9")[:-3]) == []
    assert receiver.poll(0.3) == []
    assert receiver.poll(0.7) == [KeyPress("9", 80)]
    assert receiver.poll(2.0) == []  # delivered once


def test_a_late_retransmission_after_the_next_press_is_ignored() -> None:
    receiver = DtmfReceiver()
    first = build_event_packets("4", timestamp=1000, sequence=10)
    second = build_event_packets("6", timestamp=3000, sequence=20)
    presses = feed_packets(receiver, first[:-1] + second[:2] + first[-1:] + second[2:])
    assert [p.digit for p in presses] == ["4", "6"]


def test_all_sixteen_events() -> None:
    receiver = DtmfReceiver()
    presses: list[KeyPress] = []
    for i, digit in enumerate(EVENT_DIGITS):
        presses += feed_packets(receiver, build_event_packets(digit, timestamp=i * 4000, sequence=i * 10),
                                start_s=float(i))
    assert "".join(p.digit for p in presses) == "0123456789*#ABCD"
    assert build_event_packets("a")[0] == build_event_packets("A")[0]
    with pytest.raises(ValueError):
        build_event_packets("E")


def test_other_events_are_ignored() -> None:
    receiver = DtmfReceiver()
    flash = build_event(16, end=True, volume=10, duration=800)
    assert receiver.feed(100, parse_event(flash), 0.0) == []
    assert receiver.poll(10.0) == []
