"""RTP: packets (strict parsing), the jitter buffer on a scripted clock, and RtpSession pairs over real
loopback UDP (tones, floods, symmetric latching, hold, keys)."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from media_bridge import g711
from media_bridge.sip.dtmf import build_event_packets
from media_bridge.sip.jitter import FRAME_BYTES, Frame, JitterBuffer, SsrcGuard
from media_bridge.sip.rtp import PCMA, PCMU, TELEPHONE_EVENT, Codec, RtpError, RtpPacket, RtpSession
from tests.fakes import peak_hz

pytestmark = pytest.mark.unit

LOCALHOST = "127.0.0.1"


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("voiceai_rtp_dropped_total", {"reason": reason}) or 0.0


# -- packets ---------------------------------------------------------------------------------------------


def test_packet_round_trip_with_every_optional_part() -> None:
    data = RtpPacket.build(payload_type=8, sequence=65535, timestamp=0xFFFFFFFF, ssrc=0xDEADBEEF, payload=b"abc",
                           marker=True, csrcs=(1, 2), extension=(0xBEDE, b"\x01\x02\x03\x04"), padding_bytes=3)
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (8, 65535, 0xFFFFFFFF,
                                                                                    0xDEADBEEF)
    assert packet.marker and packet.csrcs == (1, 2) and packet.extension == (0xBEDE, b"\x01\x02\x03\x04")
    assert packet.payload == b"abc" and packet.padding_bytes == 3
    assert packet.to_bytes() == data
    plain = RtpPacket.parse(RtpPacket.build(payload_type=0, sequence=1, timestamp=2, ssrc=3, payload=b"x" * 160))
    assert not plain.marker and plain.payload == b"x" * 160 and plain.csrcs == () and plain.extension is None


def _header(first: int) -> bytes:
    return bytes([first, 0]) + bytes(10)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "too_short"),
    (_header(0x80)[:11], "too_short"),
    (_header(0x40) + b"payload", "version"),  # version 1
    (_header(0xC0) + b"payload", "version"),  # version 3
    (_header(0x83) + bytes(8), "csrc_overrun"),  # three CSRCs announced, two present
    (_header(0x90), "extension_overrun"),  # extension bit, no extension header
    (_header(0x90) + b"\xbe\xde\x00\x02" + bytes(4), "extension_overrun"),  # two words announced, one present
    (_header(0xA0) + b"ab\x00", "bad_padding"),  # padding count 0
    (_header(0xA0) + b"ab\x04", "bad_padding"),  # more padding than payload
    (_header(0xA0), "bad_padding"),  # padding bit on a bare header: the count is a header byte
])
def test_malformed_packets_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError) as info:
        RtpPacket.parse(data)
    assert info.value.reason == reason


# -- jitter buffer ---------------------------------------------------------------------------------------


def frame_of(value: int) -> bytes:
    return np.full(FRAME_BYTES // 2, value, dtype="<i2").tobytes()


def value_of(pcm: bytes) -> int:
    return int(np.frombuffer(pcm, dtype="<i2")[0])


def pkt(seq: int, value: int | None = None, ssrc: int = 1) -> RtpPacket:
    return RtpPacket(payload_type=0, sequence=seq & 0xFFFF, timestamp=seq * 160, ssrc=ssrc,
                     payload=frame_of(seq % 30000 + 1 if value is None else value))


def buffer(depth_ms: int = 60) -> JitterBuffer:
    return JitterBuffer(depth_ms)  # no decode: payloads are already PCM


def test_nothing_plays_before_the_first_packet_has_waited_the_depth() -> None:
    jb = buffer(60)
    assert jb.pop(0.0) is None and jb.pop(1.0) is None
    assert jb.push(pkt(10), 1.0) is None
    assert jb.pop(1.02) is None and jb.pop(1.04) is None
    frame = jb.pop(1.06)
    assert frame is not None and frame.kind == "audio" and value_of(frame.pcm) == 11


def test_in_order_and_reordered_within_the_depth() -> None:
    jb = buffer(60)
    arrivals = [(1, 0.0), (3, 0.02), (2, 0.03), (4, 0.06), (6, 0.08), (5, 0.09)]
    for seq, t in arrivals:
        assert jb.push(pkt(seq), t) is None
    values = [value_of(f.pcm) for f in (jb.pop(0.06 + i * 0.02) for i in range(6)) if f is not None]
    assert values == [2, 3, 4, 5, 6, 7]
    assert jb.stats.reordered == 2 and jb.stats.lost == 0 and jb.stats.concealed == 0


def test_duplicates_are_dropped_before_and_after_playing() -> None:
    jb = buffer(20)
    assert jb.push(pkt(1), 0.0) is None
    assert jb.push(pkt(1), 0.001) == "duplicate"
    jb.push(pkt(2), 0.02)
    assert jb.pop(0.02) is not None  # plays 1
    assert jb.push(pkt(1), 0.03) == "duplicate"
    assert jb.stats.duplicates == 2


def run_clock(jb: JitterBuffer, arrivals: list[tuple[RtpPacket, float]], start_s: float, ticks: int) -> list[Frame]:
    """Push each packet when its arrival time comes and pop one frame per 20 ms tick, as the session does."""
    pending = sorted(arrivals, key=lambda item: item[1])
    frames = []
    for i in range(ticks):
        now = start_s + i * 0.02
        while pending and pending[0][1] <= now:
            jb.push(*pending.pop(0))
        frame = jb.pop(now)
        assert frame is not None
        frames.append(frame)
    return frames


def test_loss_is_concealed_and_the_frame_count_stays_time_correct() -> None:
    jb = buffer(40)
    arrivals = [(pkt(s), (s - 1) * 0.02) for s in range(1, 41) if s not in (5, 9, 10, 11, 12, 13)]
    frames = run_clock(jb, arrivals, 0.04, 40)  # one frame per tick, lost or not
    kinds = [f.kind for f in frames]
    assert kinds[4] == "concealed"
    assert kinds[8:13] == ["concealed", "concealed", "concealed", "silence", "silence"]
    assert jb.stats.lost == 6 and jb.stats.concealed == 4
    assert value_of(frames[8].pcm) == int(9 * 0.7)  # the last frame (seq 8, value 9), at -3 dB
    assert [value_of(f.pcm) for f in frames[13:20]] == [15, 16, 17, 18, 19, 20, 21]
    assert [value_of(f.pcm) for f in frames[-3:]] == [39, 40, 41]  # still 40 ms behind, no drift


def test_a_packet_after_its_turn_is_late() -> None:
    jb = buffer(20)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.04)
    jb.pop(0.02)  # 1
    frame = jb.pop(0.04)  # 2 is missing, 3 is here
    assert frame is not None and frame.kind == "concealed"
    assert jb.push(pkt(2), 0.05) == "late"
    assert jb.stats.late == 1
    frame = jb.pop(0.06)
    assert frame is not None and value_of(frame.pcm) == 4


def test_sequence_wrap_at_65535() -> None:
    jb = buffer(60)
    order = [65533, 65534, 0, 65535, 1, 2, 3]
    for i, seq in enumerate(order):
        assert jb.push(pkt(seq, value=seq % 1000), i * 0.02) is None
    values = [value_of(f.pcm) for f in (jb.pop(0.06 + i * 0.02) for i in range(7)) if f is not None]
    assert values == [533, 534, 535, 0, 1, 2, 3]
    assert jb.stats.lost == 0 and jb.stats.late == 0 and jb.stats.reordered == 1


def test_ssrc_change_starts_the_sequence_over() -> None:
    jb = buffer(20)
    for i, seq in enumerate(range(1000, 1005)):
        jb.push(pkt(seq, value=1, ssrc=7), i * 0.02)
    played = [jb.pop(0.02 + i * 0.02) for i in range(5)]
    assert all(f is not None and f.kind == "audio" for f in played)
    assert jb.push(pkt(5, value=2, ssrc=8), 0.12) is None  # far below 1005, but a new stream: not late
    jb.push(pkt(6, value=2, ssrc=8), 0.14)
    frames = [jb.pop(0.12 + i * 0.02) for i in range(4)]
    assert [f.kind for f in frames if f is not None] == ["concealed", "audio", "audio", "concealed"]
    assert [value_of(f.pcm) for f in frames if f is not None and f.kind == "audio"] == [2, 2]
    assert jb.stats.ssrc_changes == 1 and jb.stats.late == 0


def test_a_quiet_stream_keeps_playing_silence_then_rebuffers() -> None:
    jb = buffer(40)
    jb.push(pkt(1), 0.0)
    frames = [jb.pop(0.04 + i * 0.02) for i in range(60)]  # 1.2 s with only one packet
    assert all(f is not None for f in frames) and frames[-1] is not None and frames[-1].kind == "silence"
    jb.push(pkt(2), 1.5)
    pending = jb.pop(1.52)
    assert pending is not None and pending.kind == "silence"  # waiting out the depth again
    resumed = jb.pop(1.54)
    assert resumed is not None and resumed.kind == "audio" and jb.stats.lost == 0


def test_a_buffer_running_far_ahead_is_trimmed() -> None:
    jb = buffer(20)
    for seq in range(1, 41):  # a burst of 800 ms arriving at once
        jb.push(pkt(seq), 0.0)
    frame = jb.pop(0.02)
    assert frame is not None and value_of(frame.pcm) > 2 and jb.stats.overflow > 0


def test_ssrc_guard_drops_an_interleaved_stream_and_accepts_a_takeover() -> None:
    guard = SsrcGuard(takeover_s=0.1, takeover_packets=3)
    assert guard.check(1, 0.0) == "first"
    verdicts = []
    for i in range(10):  # two streams at once: the second never takes over
        verdicts.append(guard.check(1, 0.02 * i))
        verdicts.append(guard.check(2, 0.02 * i + 0.01))
    assert set(verdicts[1::2]) == {"intruder"} and guard.ssrc == 1
    # a seamless switch: the new stream wins after three packets in a row
    assert [guard.check(3, 0.2 + 0.02 * i) for i in range(3)] == ["intruder", "intruder", "changed"]
    # a switch after a pause wins at once
    assert guard.check(4, 1.0) == "changed" and guard.ssrc == 4


# -- sessions over loopback ------------------------------------------------------------------------------


def port_range() -> tuple[int, int]:
    base = random.randrange(20000, 60000, 2)
    return base, base + 200


class Endpoint:
    """An RtpSession with its received audio (and when each frame came) and keys."""

    def __init__(self, codec: Codec = PCMU, dtmf: Codec | None = TELEPHONE_EVENT, jitter_ms: int = 60) -> None:
        self.frames: list[bytes] = []
        self.frame_times: list[float] = []
        self.keys: list[tuple[str, int]] = []
        self.session = RtpSession(LOCALHOST, port_range(), codec, dtmf, self._audio, self._key, jitter_ms=jitter_ms)

    async def _audio(self, pcm: bytes) -> None:
        self.frames.append(pcm)
        self.frame_times.append(time.monotonic())

    async def _key(self, digit: str, duration_ms: int) -> None:
        self.keys.append((digit, duration_ms))

    def audio(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.frames), dtype="<i2")


async def pair(codec: Codec = PCMU) -> tuple[Endpoint, Endpoint]:
    a, b = Endpoint(codec), Endpoint(codec)
    await a.session.start()
    await b.session.start()
    a.session.set_remote(LOCALHOST, b.session.port)
    b.session.set_remote(LOCALHOST, a.session.port)
    return a, b


def tone(seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return (np.sin(2 * np.pi * hz * t) * 12000).astype("<i2").tobytes()


class RawPeer:
    """A bare UDP socket playing a misbehaving (or NATed) peer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (LOCALHOST, port))

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(2048))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peers() -> Iterator[list[RawPeer]]:
    peers: list[RawPeer] = []
    yield peers
    for peer in peers:
        peer.close()


def raw_peer(peers: list[RawPeer]) -> RawPeer:
    peers.append(RawPeer())
    return peers[-1]


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=["PCMU", "PCMA"])
async def test_a_tone_crosses_between_two_sessions(codec: Codec) -> None:
    a, b = await pair(codec)
    try:
        await a.session.send_pcm(tone(0.6))
        await asyncio.sleep(1.0)
    finally:
        await a.session.close()
        await b.session.close()
    received = b.audio()
    start = int(np.nonzero(np.abs(received) > 2000)[0][0])
    assert abs(peak_hz(received[start:start + 4000], 8000) - 440) < 5
    assert len(received[start:][np.abs(received[start:]) > 2000]) > 0.4 * 4800
    assert b.session.stats.lost == 0 and b.session.stats.packets_in > 30
    assert all(len(f) == FRAME_BYTES for f in b.frames)
    assert a.session.stats.max_send_gap_ms < 250  # a packet every tick (loose: CI machines stall)


async def test_wrong_payload_type_is_dropped_and_counted(raw_peers: list[RawPeer]) -> None:
    b = Endpoint()
    await b.session.start()
    peer = raw_peer(raw_peers)
    before = dropped("payload_type")
    try:
        for seq in range(20):
            pt = 0 if seq % 2 else 9  # G.722 was not negotiated
            peer.send(RtpPacket.build(payload_type=pt, sequence=seq, timestamp=seq * 160, ssrc=5,
                                      payload=bytes(160)), b.session.port)
        peer.send(b"\x80\x00garbage", b.session.port)
        await asyncio.sleep(0.2)
    finally:
        await b.session.close()
    assert dropped("payload_type") - before == 10
    reasons = b.session.stats.dropped_by_reason
    assert reasons["payload_type"] == 10 and reasons["malformed"] == 1
    assert b.session.stats.packets_in == 10


async def test_a_flood_from_a_second_source_does_not_reach_the_call(raw_peers: list[RawPeer]) -> None:
    a, b = await pair(PCMU)
    flooder = raw_peer(raw_peers)
    before = dropped("foreign_source")
    try:
        await a.session.send_pcm(tone(0.2))
        await asyncio.sleep(0.3)  # latched, audio flowing
        latched = b.session._latched
        frames_before, t0 = len(b.frames), time.monotonic()
        flood = [RtpPacket.build(payload_type=0, sequence=i, timestamp=i * 160, ssrc=666, payload=bytes(160))
                 for i in range(2000)]
        for i in range(0, 2000, 50):  # 2000 packets in ~0.4 s, while the good stream carries a tone
            if i % 250 == 0:
                await a.session.send_pcm(tone(0.1))
            for data in flood[i:i + 50]:
                flooder.send(data, b.session.port)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        frames_during, elapsed = len(b.frames) - frames_before, time.monotonic() - t0
    finally:
        await a.session.close()
        await b.session.close()
    assert b.session._latched == latched
    assert dropped("foreign_source") - before >= 1900  # loopback may drop a few under load, never accept them
    assert b.session.stats.dropped_by_reason.get("foreign_source", 0) >= 1900
    assert abs(frames_during - elapsed / 0.02) <= 6
    gaps = np.diff(b.frame_times[frames_before:])
    assert gaps.max() < 0.12  # a frame every 20 ms throughout (margin for a loaded CI machine, not for a stall)
    assert b.session.stats.lost == 0
    received = b.audio()[frames_before * 160:]
    start = int(np.nonzero(np.abs(received) > 2000)[0][0])
    assert abs(peak_hz(received[start:start + 800], 8000) - 440) < 15


async def test_replies_go_to_the_latched_source_not_the_sdp_address(raw_peers: list[RawPeer]) -> None:
    b = Endpoint()
    await b.session.start()
    caller, sdp_address = raw_peer(raw_peers), raw_peer(raw_peers)
    b.session.set_remote(LOCALHOST, sdp_address.port)  # what the SDP said; the NAT maps the caller elsewhere
    try:
        await asyncio.sleep(0.1)
        for seq in range(10):
            caller.send(RtpPacket.build(payload_type=0, sequence=seq, timestamp=seq * 160, ssrc=5,
                                        payload=bytes(160)), b.session.port)
            await asyncio.sleep(0.02)
        sdp_address.received()
        caller.received()
        await asyncio.sleep(0.2)
        to_sdp, to_caller = sdp_address.received(), caller.received()
    finally:
        await b.session.close()
    assert to_sdp == []
    assert len(to_caller) >= 8
    assert all(RtpPacket.parse(p).payload_type == 0 for p in to_caller)


async def test_hold_stops_sending_and_resuming_starts_again() -> None:
    a, b = await pair(PCMU)
    try:
        await asyncio.sleep(0.2)
        a.session.set_direction("inactive")
        await asyncio.sleep(0.03)
        held = a.session.stats.packets_out
        await asyncio.sleep(0.3)
        still_held = a.session.stats.packets_out
        a.session.set_direction("sendrecv")
        await asyncio.sleep(0.2)
        resumed = a.session.stats.packets_out
        with pytest.raises(ValueError):
            a.session.set_direction("sideways")
    finally:
        await a.session.close()
        await b.session.close()
    assert held > 5 and still_held == held
    assert resumed - still_held >= 7
    assert b.session.stats.frames_played > 20  # the held side's peer keeps playing (silence) to its call


async def test_keys_arrive_once_per_press() -> None:
    a, b = await pair(PCMU)
    try:
        await a.session.send_dtmf("5")
        await a.session.send_dtmf("5")
        await a.session.send_dtmf("#", duration_ms=200)
        await asyncio.sleep(0.8)
    finally:
        await a.session.close()
        await b.session.close()
    assert b.keys == [("5", 100), ("5", 100), ("#", 200)]
    assert b.session.stats.lost == 0  # key packets take sequence numbers but are not missing audio


async def test_keys_from_a_trunk_with_retransmitted_ends(raw_peers: list[RawPeer]) -> None:
    b = Endpoint()
    await b.session.start()
    trunk = raw_peer(raw_peers)
    try:
        seq = 100
        for i, digit in enumerate("12"):
            for data in build_event_packets(digit, sequence=seq, timestamp=1000 + i * 4000, ssrc=9):
                trunk.send(data, b.session.port)
                seq += 1
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
    finally:
        await b.session.close()
    assert b.keys == [("1", 100), ("2", 100)]


async def test_busy_ports_are_skipped_and_close_is_idempotent() -> None:
    base = random.randrange(20000, 60000, 2)
    blockers = []
    for port in (base, base + 2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCALHOST, port))
        blockers.append(sock)
    session = RtpSession(LOCALHOST, (base, base + 5), PCMU, None, Endpoint()._audio, Endpoint()._key)
    try:
        assert await session.start() == base + 4
    finally:
        await session.close()
        await session.close()
        for sock in blockers:
            sock.close()
    with pytest.raises(ValueError):
        RtpSession(LOCALHOST, (base, base + 5), Codec("G722", 9), None, Endpoint()._audio, Endpoint()._key)


async def test_a_new_ssrc_is_accepted_but_an_interleaved_one_is_dropped(raw_peers: list[RawPeer]) -> None:
    b = Endpoint(jitter_ms=20)
    await b.session.start()
    trunk = raw_peer(raw_peers)
    before = dropped("foreign_ssrc")

    def send(ssrc: int, seq: int, value: int) -> None:
        trunk.send(RtpPacket.build(payload_type=0, sequence=seq, timestamp=seq * 160, ssrc=ssrc,
                                   payload=bytes([value]) * 160), b.session.port)

    try:
        for seq in range(10):
            send(1, 1000 + seq, 0x10)
            send(2, 50 + seq, 0x20)  # a second stream at once: the intruder
            await asyncio.sleep(0.02)
        for seq in range(10, 20):  # the trunk switches streams after a transfer: new SSRC, new numbering
            send(3, seq, 0x30)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    finally:
        await b.session.close()
    assert dropped("foreign_ssrc") - before >= 10
    assert b.session.stats.ssrc_changes == 1
    assert b.session.stats.late == 0
    first_samples = [int(np.frombuffer(f, dtype="<i2")[0]) for f in b.frames]
    old, intruder, new = (int(np.frombuffer(g711.ulaw_decode(bytes([v])), dtype="<i2")[0]) for v in (0x10, 0x20, 0x30))
    assert intruder not in first_samples
    assert first_samples.count(old) >= 7 and first_samples.count(new) >= 7  # both streams played in turn
