"""The SIP user agent against real peers nobody here wrote (sipp, Kamailio) and against broken input.

Each call runs the real call loop on fake models (tests/host_helpers.py): the greeting is a tone sent as
RTP, the caller's audio (sipp pcap) goes through the bridge's RtpSession. sipp's exit code says whether
its scenario (tests/sip/*.xml) saw every message it expected, with the checks written in it (codec
chosen, hold answered recvonly...).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from media_bridge.channels import SipConfig
from media_bridge.host import CallHost
from media_bridge.sip.message import make_response, parse_message
from media_bridge.sip.transport import SipCallTransport
from media_bridge.sip.ua import SipServer, Timers
from tests.fakes import fast_settings
from tests.host_helpers import RecordingWriter, fake_host
from tests.sip_helpers import KAMAILIO, PCAP_DIR, SIPP, UdpPeer, free_udp_port, kamailio_proxy, run_sipp
from voiceai.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

needs_sipp = pytest.mark.skipif(SIPP is None, reason="sipp not installed (apt-get install sip-tester)")
needs_kamailio = pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed (apt-get install kamailio)")
TENANT = ("tenant-1", "acme")


@dataclass
class Bridge:
    server: SipServer
    host: CallHost
    writer: RecordingWriter
    port: int
    called: list[str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_session(self, timeout_s: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.host.active:
                return next(iter(self.host.active.values()))
            await asyncio.sleep(0.02)
        raise AssertionError("no call started")

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not (self.host.active or self.server.calls):
                break
            await asyncio.sleep(0.05)
        assert not self.host.active and not self.server.calls, "calls still in progress"


@contextlib.asynccontextmanager
async def bridge(settings: Settings | None = None, tenant_delay_s: float = 0.0, timers: Timers | None = None,
                 **cfg: Any) -> AsyncIterator[Bridge]:
    host, writer = fake_host(settings or fast_settings(call__greeting=True))
    base = free_udp_port() % 20000 + 20000
    options: dict[str, Any] = {"port": free_udp_port(), "bind": "127.0.0.1", "rtp_port_min": base,
                               "rtp_port_max": base + 200, **cfg}
    sip_cfg = SipConfig(**options)
    called: list[str] = []

    async def tenant_for(user: str) -> tuple[str, str]:
        called.append(user)
        if tenant_delay_s:
            await asyncio.sleep(tenant_delay_s)
        if user == "nobody":
            raise LookupError(user)
        return TENANT

    server = SipServer(host, sip_cfg, tenant_for, timers)
    await server.start()
    try:
        yield Bridge(server, host, writer, server.port, called)
    finally:
        await server.stop()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# ---- calls from sipp -------------------------------------------------------------------------------


@needs_sipp
async def test_sipp_call_answered_with_pcmu_and_caller_hangs_up(workdir: Path) -> None:
    async with bridge() as b:
        setup_before = metric("voiceai_sip_setup_seconds_count")
        result = await run_sipp("uac_call.xml", b.target, workdir, offer_pts="0 8", expect_pt="0", hold_ms=1500,
                                media="")
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    started = b.writer.of_kind("call_started")
    ended = b.writer.of_kind("call_ended")
    assert len(started) == 1 and started[0]["channel"] == "sip"
    assert started[0]["caller_id"] == "+971500000001"
    assert len(started[0]["call_id"]) == 32 and "@" not in started[0]["call_id"]  # ours, not the SIP Call-ID
    assert ended == [{"call_id": started[0]["call_id"], "reason": "hangup"}]
    assert b.called == ["1000"]
    assert metric("voiceai_sip_setup_seconds_count") == setup_before + 1


@needs_sipp
@pytest.mark.skipif(not (PCAP_DIR / "g711a.pcap").exists(), reason="sipp's g711a.pcap is missing")
async def test_sipp_call_with_pcma_audio_reaches_the_rtp_session(workdir: Path) -> None:
    play = (f'<nop><action><exec play_pcap_audio="{PCAP_DIR / "g711a.pcap"}"/></action></nop>')
    async with bridge() as b:  # the offerer's order decides (sdp.negotiate): an A-law trunk lists PCMA first
        task = asyncio.create_task(run_sipp("uac_call.xml", b.target, workdir, offer_pts="8 0", expect_pt="8",
                                            hold_ms=3000, media=play))
        session = await b.wait_session()
        transport = session.transport
        assert isinstance(transport, SipCallTransport)
        result = await task
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    stats = transport.rtp.stats
    assert stats.packets_in > 50, stats
    assert stats.packets_out > 0, stats  # the greeting went out as RTP


@needs_sipp
async def test_sipp_cancel_before_answer_gets_487(workdir: Path) -> None:
    async with bridge(tenant_delay_s=1.5) as b:
        result = await run_sipp("uac_cancel.xml", b.target, workdir)
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert b.writer.of_kind("call_started") == []


@needs_sipp
async def test_sipp_video_only_offer_gets_488(workdir: Path) -> None:
    async with bridge() as b:
        result = await run_sipp("uac_video_only.xml", b.target, workdir)
        assert result.rc == 0, result.explain()
        assert not b.server.calls
    assert b.writer.of_kind("call_started") == []


@needs_sipp
async def test_sipp_options(workdir: Path) -> None:
    async with bridge() as b:
        result = await run_sipp("uac_options.xml", b.target, workdir)
        assert result.rc == 0, result.explain()


@needs_sipp
async def test_sipp_hold_and_resume_by_reinvite(workdir: Path) -> None:
    async with bridge() as b:
        task = asyncio.create_task(run_sipp("uac_hold.xml", b.target, workdir))
        session = await b.wait_session()
        rtp = session.transport.rtp
        directions: list[str] = []
        original = rtp.set_direction

        def record(direction: str) -> None:
            directions.append(direction)
            original(direction)

        rtp.set_direction = record
        result = await task
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert directions == ["recvonly", "sendrecv"]
    assert b.writer.of_kind("call_ended")[0]["reason"] == "hangup"


@needs_sipp
async def test_sipp_transfer_by_refer_after_dtmf(workdir: Path) -> None:
    settings = fast_settings(call__greeting=True, call__transfer__target="sip:agents@127.0.0.1:5099")
    async with bridge(settings) as b:
        task = asyncio.create_task(run_sipp("uac_refer.xml", b.target, workdir, media=""))
        session = await b.wait_session()
        await asyncio.sleep(0.3)
        await session.push_dtmf("0", 100)  # the transfer key
        result = await task
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert b.writer.of_kind("call_ended")[0]["reason"] == "transferred"


@needs_sipp
@pytest.mark.skipif(not (PCAP_DIR / "dtmf_2833_0.pcap").exists(), reason="sipp's dtmf_2833_0.pcap is missing")
async def test_sipp_rtp_dtmf_key_asks_for_transfer(workdir: Path) -> None:
    play = f'<nop><action><exec play_pcap_audio="{PCAP_DIR / "dtmf_2833_0.pcap"}"/></action></nop>'
    async with bridge() as b:
        result = await run_sipp("uac_refer.xml", b.target, workdir, media=play)
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert b.writer.of_kind("call_ended")[0]["reason"] == "transferred"


@needs_sipp
async def test_sipp_bot_hangs_up_with_bye(workdir: Path) -> None:
    async with bridge(fast_settings(call__greeting=True, call__max_call_s=1.5)) as b:
        result = await run_sipp("uac_wait_bye.xml", b.target, workdir, via_regexp="Via: SIP/2.0/UDP")
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert b.writer.of_kind("call_ended")[0]["reason"] == "max_duration"


@needs_sipp
@needs_kamailio
@pytest.mark.parametrize("who_hangs_up", ["caller", "bot"])
async def test_call_through_kamailio_record_route(workdir: Path, who_hangs_up: str) -> None:
    settings = fast_settings(call__greeting=True, call__max_call_s=1.5 if who_hangs_up == "bot" else 60.0)
    async with bridge(settings) as b, kamailio_proxy(workdir, b.port) as proxy_port:
        target = f"127.0.0.1:{proxy_port}"
        if who_hangs_up == "caller":
            result = await run_sipp("uac_call.xml", target, workdir, offer_pts="0 8", expect_pt="0", hold_ms=1000,
                                    media="")
        else:
            # The bridge's BYE must follow the route set: its top Via is then Kamailio's.
            result = await run_sipp("uac_wait_bye.xml", target, workdir,
                                    via_regexp=f"Via: SIP/2.0/UDP 127.0.0.1:{proxy_port};branch")
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert "Record-Route" in result.messages or "record-route" in result.messages.lower()
    reason = b.writer.of_kind("call_ended")[0]["reason"]
    assert reason == ("hangup" if who_hangs_up == "caller" else "max_duration")


@needs_sipp
async def test_good_call_survives_garbage_sprayed_at_the_port(workdir: Path) -> None:
    async with bridge() as b:
        bad_before = metric("voiceai_sip_bad_messages_total", reason="not_sip")
        peer = UdpPeer()
        stop = asyncio.Event()

        async def spray() -> int:
            sent = 0
            junk = [b"\x00\xff" * 300, b"HELLO WORLD\r\n\r\n", b"INVITE\r\n", b"SIP/2.0 200\r\n\r\n", b"\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4]
            while not stop.is_set():
                peer.send(junk[sent % len(junk)], b.port)
                sent += 1
                await asyncio.sleep(0.002)
            return sent

        sprayer = asyncio.create_task(spray())
        try:
            result = await run_sipp("uac_call.xml", b.target, workdir, offer_pts="0 8", expect_pt="0", hold_ms=1500,
                                    media="")
        finally:
            stop.set()
            sent = await sprayer
            peer.close()
        assert result.rc == 0, result.explain()
        await b.wait_idle()
    assert sent > 100
    assert metric("voiceai_sip_bad_messages_total", reason="not_sip") > bad_before
    assert b.writer.of_kind("call_ended")[0]["reason"] == "hangup"


# ---- broken input over raw UDP -----------------------------------------------------------------------


def request(method: str = "OPTIONS", *, uri: str = "sip:1000@127.0.0.1", port: int = 5060, body: bytes = b"",
            extra: str = "", content_length: int | None = None, to_tag: str = "", start_line: str | None = None,
            call_id: str | None = None, cseq: int = 1) -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex
    to = f"<sip:1000@127.0.0.1>{';tag=' + to_tag if to_tag else ''}"
    head = (f"{start_line or f'{method} {uri} SIP/2.0'}\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
            f"From: <sip:+971500000002@127.0.0.1>;tag=abc\r\nTo: {to}\r\n"
            f"Call-ID: {call_id or uuid.uuid4().hex}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}"
            f"Content-Length: {len(body) if content_length is None else content_length}\r\n\r\n")
    return head.encode() + body


async def exchange(b: Bridge, data: bytes, timeout_s: float = 1.0) -> bytes | None:
    peer = UdpPeer()
    try:
        peer.send(data.replace(b"127.0.0.1:5060", f"127.0.0.1:{peer.port}".encode()), b.port)
        while True:
            reply = await peer.recv(timeout_s)
            if reply is None or not reply.startswith(b"SIP/2.0 100 "):
                return reply
    finally:
        peer.close()


def status_line(reply: bytes | None) -> str:
    assert reply is not None, "no answer"
    return reply.split(b"\r\n", 1)[0].decode()


async def until_ok(peer: UdpPeer, timeout_s: float = 2.0) -> bytes:
    """The first 200 the peer receives (skipping 100 Trying)."""
    while (reply := await peer.recv(timeout_s)) is not None:
        if reply.startswith(b"SIP/2.0 200"):
            return reply
    raise AssertionError("no 200 OK")


def to_tag_of(response: bytes) -> str:
    return parse_message(response).to.tag


def reply_to(data: bytes, status: int = 200) -> bytes:
    """A peer's answer to a request the bridge sent it."""
    return make_response(parse_message(data), status, to_tag="peer").to_bytes()


AUDIO_SDP = (b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=audio 49170 RTP/AVP 0\r\n")
VIDEO_SDP = (b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             b"m=video 49170 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")


BAD_REQUESTS = [
    ("malformed start line", request(start_line="OPTIONS  SIP/2.0"), "SIP/2.0 400 Bad Request-Line"),
    ("truncated body", request("INVITE", body=AUDIO_SDP, content_length=len(AUDIO_SDP) + 50,
                               extra="Content-Type: application/sdp\r\n"), "SIP/2.0 400 Content-Length mismatch"),
    ("huge header", request(extra="X-Big: " + "a" * 5000 + "\r\n"), "SIP/2.0 400 Header line too long"),
    ("too many headers", request(extra="".join(f"X-H{i}: {i}\r\n" for i in range(120))),
     "SIP/2.0 400 Too many headers"),
    ("unknown method", request("FROB"), "SIP/2.0 501 Not Implemented"),
    ("unsupported method", request("SUBSCRIBE"), "SIP/2.0 405 Method Not Allowed"),
    ("register", request("REGISTER"), "SIP/2.0 405 Method Not Allowed"),
    ("sdp without audio", request("INVITE", body=VIDEO_SDP, extra="Content-Type: application/sdp\r\n"),
     "SIP/2.0 488 Not Acceptable Here"),
    ("bye for unknown dialog", request("BYE", to_tag="nope"), "SIP/2.0 481 Call/Transaction Does Not Exist"),
    ("cancel for unknown invite", request("CANCEL"), "SIP/2.0 481 Call/Transaction Does Not Exist"),
    ("unknown called number", request("INVITE", uri="sip:nobody@127.0.0.1", body=AUDIO_SDP,
                                      extra="Content-Type: application/sdp\r\n"), "SIP/2.0 404 Not Found"),
    ("wrong content type", request("INVITE", body=b"hello", extra="Content-Type: text/plain\r\n"),
     "SIP/2.0 415 Unsupported Media Type"),
]


@pytest.mark.parametrize(("name", "data", "expected"), BAD_REQUESTS,
                         ids=[str(case[0]).replace(" ", "_") for case in BAD_REQUESTS])
async def test_bad_input_is_answered(name: str, data: bytes, expected: str) -> None:
    async with bridge() as b:
        reply = await exchange(b, data)
        assert status_line(reply).startswith(expected), reply
        if expected.startswith("SIP/2.0 488"):
            assert b"Warning: 304 " in (reply or b"")
        # The server still answers a good request afterwards.
        assert status_line(await exchange(b, request())) == "SIP/2.0 200 OK"


async def test_options_answer_lists_methods_and_compact_form_request_works() -> None:
    async with bridge() as b:
        compact = (b"OPTIONS sip:1000@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKc1;rport\r\n"
                   b"f: <sip:a@127.0.0.1>;tag=1\r\nt: <sip:1000@127.0.0.1>\r\ni: compact-1\r\nCSEQ: 7 OPTIONS\r\n"
                   b"l: 0\r\n\r\n")
        reply = await exchange(b, compact)
        assert status_line(reply) == "SIP/2.0 200 OK"
        assert reply is not None and b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS" in reply
        assert b"Accept: application/sdp" in reply and b"CSeq: 7 OPTIONS" in reply
        assert b";rport=" in reply and b";received=127.0.0.1" in reply


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("over max_message_bytes", request(extra="X-Pad: " + "p" * 3000 + "\r\n") * 1, "too_large"),
    ("not sip", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100), "not_sip"),
    ("no via", b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", "missing_header"),
], ids=["over_max_message_bytes", "not_sip", "no_via"])
async def test_bad_input_is_dropped_and_counted(name: str, data: bytes, reason: str) -> None:
    async with bridge(max_message_bytes=2048) as b:
        before = metric("voiceai_sip_bad_messages_total", reason=reason)
        assert await exchange(b, data, timeout_s=0.5) is None
        assert metric("voiceai_sip_bad_messages_total", reason=reason) == before + 1
        assert status_line(await exchange(b, request())) == "SIP/2.0 200 OK"


async def test_invite_retransmission_is_not_a_new_call_and_busy_over_max_calls() -> None:
    async with bridge(max_calls=1) as b:
        peer = UdpPeer()
        try:
            invite = request("INVITE", port=peer.port, body=AUDIO_SDP, extra="Content-Type: application/sdp\r\n")
            peer.send(invite, b.port)
            peer.send(invite, b.port)  # a retransmission: answered from the transaction
            replies = []
            while (reply := await peer.recv(1.0)) is not None:
                replies.append(status_line(reply))
                if len([r for r in replies if r.startswith("SIP/2.0 200")]) >= 2:
                    break
            assert "SIP/2.0 200 OK" in replies
            assert len(b.server.calls) == 1
            second = request("INVITE", port=peer.port, body=AUDIO_SDP, extra="Content-Type: application/sdp\r\n")
            peer.send(second, b.port)
            busy = None
            while (reply := await peer.recv(1.0)) is not None:
                if not reply.startswith(b"SIP/2.0 200"):
                    busy = status_line(reply)
                    break
            assert busy == "SIP/2.0 486 Busy Here"
        finally:
            peer.close()


async def test_late_offer_invite_gets_our_offer_and_the_answer_comes_in_the_ack() -> None:
    async with bridge() as b:
        peer = UdpPeer()
        try:
            call_id = uuid.uuid4().hex
            peer.send(request("INVITE", port=peer.port, call_id=call_id), b.port)
            ok = await until_ok(peer)
            assert b"m=audio " in ok and b"RTP/AVP 0 8 101" in ok
            tag = to_tag_of(ok)
            answer = AUDIO_SDP.replace(b"49170", str(free_udp_port()).encode())
            ack = request("ACK", port=peer.port, call_id=call_id, to_tag=tag, body=answer,
                          extra="Content-Type: application/sdp\r\n")
            peer.send(ack, b.port)
            session = await b.wait_session()
            assert isinstance(session.transport, SipCallTransport)
            await asyncio.sleep(0.7)
            assert all(not r.startswith(b"SIP/2.0 200") for r in [await peer.recv(0.1) or b""])  # acked: no resend
            peer.send(request("BYE", port=peer.port, call_id=call_id, to_tag=tag, cseq=2), b.port)
            reply = await peer.recv(2.0)
            assert status_line(reply) == "SIP/2.0 200 OK"
            await b.wait_idle()
        finally:
            peer.close()
    assert b.writer.of_kind("call_ended")[0]["reason"] == "hangup"


# ---- dialog paths over raw UDP ----------------------------------------------------------------------


def invite_from(peer: UdpPeer, call_id: str, record_routes: tuple[str, ...] = ()) -> bytes:
    """An INVITE with an offer whose Contact points back at ``peer`` (where the bridge sends its requests)."""
    extra = "".join(f"Record-Route: {rr}\r\n" for rr in record_routes)
    extra += f"Contact: <sip:caller@127.0.0.1:{peer.port}>\r\nContent-Type: application/sdp\r\n"
    return request("INVITE", port=peer.port, call_id=call_id, body=AUDIO_SDP, extra=extra)


async def test_a_200_never_acked_is_resent_with_backoff_then_the_call_ends_with_bye() -> None:
    timers = Timers(t1_s=0.02, t2_s=0.08)  # 64×T1 = 1.28 s instead of 32 s
    async with bridge(timers=timers) as b:
        peer = UdpPeer()
        try:
            call_id = uuid.uuid4().hex
            peer.send(invite_from(peer, call_id), b.port)
            oks: list[float] = []
            tags: set[str] = set()
            bye = None
            while (reply := await peer.recv(2.0)) is not None:
                if reply.startswith(b"SIP/2.0 200"):
                    oks.append(time.monotonic())
                    tags.add(to_tag_of(reply))
                elif reply.startswith(b"BYE "):
                    bye = reply
                    break
            bye_at = time.monotonic()
            assert bye is not None, f"no BYE after {len(oks)} 200s"
            assert bye.startswith(f"BYE sip:caller@127.0.0.1:{peer.port} SIP/2.0\r\n".encode())
            message = parse_message(bye)
            assert message.cseq == (1, "BYE") and message.call_id == call_id
            assert message.to.tag == "abc" and {message.from_.tag} == tags  # the dialog's tags, swapped
            peer.send(reply_to(bye), b.port)
            await b.wait_idle(2.0)
            assert await peer.recv(4 * timers.t2_s) is None  # the 200 and the BYE both stopped
        finally:
            peer.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(oks)]
    assert 8 <= len(oks) <= 25, gaps  # 1 + 3 doubling (T1, 2T1, 4T1) + about 14 T2-spaced ones in 1.28 s
    assert gaps[0] < timers.t2_s / 2 < gaps[-1] < timers.t2_s + 0.1, gaps  # T1 first, T2 at the end
    assert timers.transaction_s - 0.2 < bye_at - oks[0] < timers.transaction_s + 1.0
    assert b.writer.of_kind("call_ended")[0]["reason"] == "no_ack"


async def test_a_bot_hang_up_before_the_ack_waits_64_t1_for_it_then_byes_and_leaves_no_task() -> None:
    timers = Timers(t1_s=0.02, t2_s=0.08)
    before = asyncio.all_tasks()
    async with bridge(fast_settings(call__greeting=True, call__max_call_s=0.3), timers=timers) as b:
        peer = UdpPeer()
        try:
            peer.send(invite_from(peer, uuid.uuid4().hex), b.port)
            ok_at = bye = None
            while (reply := await peer.recv(2.0)) is not None:
                if reply.startswith(b"SIP/2.0 200") and ok_at is None:
                    ok_at = time.monotonic()
                elif reply.startswith(b"BYE "):
                    bye = reply
                    break
            assert ok_at is not None and bye is not None
            assert time.monotonic() - ok_at > timers.transaction_s - 0.2  # not at 0.3 s: the ACK was awaited
            peer.send(reply_to(bye), b.port)
            await b.wait_idle(2.0)
        finally:
            peer.close()
    assert b.writer.of_kind("call_ended")[0]["reason"] == "max_duration"
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == []


async def test_info_dtmf_relay_delivers_the_key_to_the_session() -> None:
    async with bridge() as b:
        peer = UdpPeer()
        try:
            call_id = uuid.uuid4().hex
            peer.send(invite_from(peer, call_id), b.port)
            tag = to_tag_of(await until_ok(peer))
            peer.send(request("ACK", port=peer.port, call_id=call_id, to_tag=tag), b.port)
            session = await b.wait_session()
            keys: list[tuple[str, int]] = []
            two_keys = asyncio.Event()
            original = session.push_dtmf

            async def record(digit: str, duration_ms: int = 0) -> None:
                keys.append((digit, duration_ms))
                if len(keys) == 2:
                    two_keys.set()
                await original(digit, duration_ms)

            session.push_dtmf = record

            def info(cseq: int, body: bytes, content_type: str = "application/dtmf-relay") -> bytes:
                return request("INFO", port=peer.port, call_id=call_id, to_tag=tag, cseq=cseq, body=body,
                               extra=f"Content-Type: {content_type}\r\n")

            for data, expected in [
                (info(2, b"Signal=5\r\nDuration=160\r\n"), "SIP/2.0 200 OK"),
                (info(3, b"Signal=X\r\nDuration=160\r\n"), "SIP/2.0 200 OK"),  # not a key: ignored
                (info(4, b"Signal=7\r\n", content_type="application/json"), "SIP/2.0 200 OK"),  # not dtmf-relay
                (info(5, b"signal = #\r\n"), "SIP/2.0 200 OK"),  # no duration: 0
                (info(5, b"Signal=9\r\n"), "SIP/2.0 500 CSeq out of order"),  # a new branch, an old CSeq
            ]:
                peer.send(data, b.port)
                assert status_line(await peer.recv(2.0)) == expected
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(two_keys.wait(), 2.0)
            assert keys == [("5", 160), ("#", 0)]
            assert session.dtmf == ["5", "#"]
            peer.send(request("BYE", port=peer.port, call_id=call_id, to_tag=tag, cseq=6), b.port)
            assert status_line(await peer.recv(2.0)) == "SIP/2.0 200 OK"
            await b.wait_idle()
        finally:
            peer.close()


@pytest.mark.parametrize("router", ["strict", "loose"])
async def test_the_bridges_bye_follows_the_route_set(router: str) -> None:
    """RFC 3261 §12.2.1.1: a loose first route stays a Route; a strict one (no ``lr``, RFC 2543) becomes the
    Request-URI and the remote target goes last in the Routes. Either way the BYE goes to the first route."""
    async with bridge(fast_settings(call__greeting=True, call__max_call_s=1.0)) as b:
        caller, proxy = UdpPeer(), UdpPeer()
        try:
            first = f"<sip:127.0.0.1:{proxy.port}{';lr' if router == 'loose' else ''}>"
            second = "<sip:192.0.2.7:5070;lr>"
            call_id = uuid.uuid4().hex
            caller.send(invite_from(caller, call_id, record_routes=(first, second)), b.port)
            ok = await until_ok(caller)
            assert parse_message(ok).get_all("record-route") == [first, second]
            caller.send(request("ACK", port=caller.port, call_id=call_id, to_tag=to_tag_of(ok)), b.port)
            bye = await proxy.recv(5.0)  # the bot hangs up at max_call_s
            assert bye is not None and bye.startswith(b"BYE "), bye
            message = parse_message(bye)
            target = f"sip:caller@127.0.0.1:{caller.port}"
            if router == "strict":
                assert message.uri == f"sip:127.0.0.1:{proxy.port}"
                assert message.get_all("route") == [second, f"<{target}>"]
            else:
                assert message.uri == target
                assert message.get_all("route") == [first, second]
            proxy.send(reply_to(bye), b.port)
            await b.wait_idle()
        finally:
            caller.close()
            proxy.close()
    assert b.writer.of_kind("call_ended")[0]["reason"] == "max_duration"
