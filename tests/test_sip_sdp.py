"""SDP offer/answer for G.711 calls: codec choice, telephone-event, refused streams, hold and resume."""

from __future__ import annotations

import pytest

from media_bridge.sip import sdp

pytestmark = pytest.mark.unit


def offer(m_lines: str, session_extra: str = "", c: str = "192.0.2.1") -> sdp.SessionDescription:
    text = f"v=0\r\no=- 1 1 IN IP4 {c}\r\ns=-\r\nc=IN IP4 {c}\r\nt=0 0\r\n{session_extra}{m_lines}"
    return sdp.parse_sdp(text.encode())


AUDIO = "m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n" \
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"


def test_the_offerers_first_accepted_codec_wins_and_telephone_event_is_kept() -> None:
    chosen = sdp.negotiate(offer(AUDIO), ["PCMU", "PCMA"])  # the offer lists PCMA first (an A-law trunk)
    assert chosen.codec == sdp.Format("PCMA", 8) and chosen.dtmf == sdp.Format("telephone-event", 101)
    assert (chosen.remote_host, chosen.remote_port, chosen.direction, chosen.on_hold) == (
        "192.0.2.1", 4000, "sendrecv", False)
    assert sdp.negotiate(offer(AUDIO), ["pcmu"]).codec.name == "PCMU"  # what we accept still limits it
    assert sdp.negotiate(offer(AUDIO), ["pcma"]).codec.name == "PCMA"


def test_static_payload_types_need_no_rtpmap_and_dynamic_pt_is_echoed() -> None:
    chosen = sdp.negotiate(offer("m=audio 4000 RTP/AVP 0 96\r\na=rtpmap:96 telephone-event/8000\r\n"), ["PCMU"])
    assert chosen.codec.payload_type == 0 and chosen.dtmf == sdp.Format("telephone-event", 96)
    no_dtmf = sdp.negotiate(offer("m=audio 4000 RTP/AVP 0\r\n"), ["PCMU"])
    assert no_dtmf.dtmf is None


def test_answer_mirrors_m_lines_and_refuses_the_others() -> None:
    o = offer("m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n" + AUDIO)
    chosen = sdp.negotiate(o, ["PCMU", "PCMA"])
    assert chosen.media_index == 1
    answer = sdp.build_answer(o, chosen, "198.51.100.7", 40002, 42, 1)
    parsed = sdp.parse_sdp(answer)
    assert [(m.kind, m.port) for m in parsed.media] == [("video", 0), ("audio", 40002)]
    assert parsed.media[1].formats == ["8", "101"] and parsed.connection == "198.51.100.7"
    assert "a=ptime:20" in answer and "a=sendrecv" in answer and "a=rtpmap:101 telephone-event/8000" in answer
    assert answer.endswith("\r\n") and "o=voiceai 42 1 IN IP4 198.51.100.7" in answer


@pytest.mark.parametrize(("m_lines", "warning"), [
    ("m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n", 304),
    ("m=audio 0 RTP/AVP 0\r\n", 304),  # the only audio stream is already refused
    ("m=audio 4000 RTP/AVP 9 18\r\na=rtpmap:9 G722/8000\r\n", 305),
    ("m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n", 305),
    ("m=audio 4000 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n", 305),
    ("m=audio 4000 RTP/SAVP 0\r\n", 305),  # SRTP is not offered by this UA
])
def test_not_acceptable_offers_name_a_warning(m_lines: str, warning: int) -> None:
    with pytest.raises(sdp.NotAcceptable) as caught:
        sdp.negotiate(offer(m_lines), ["PCMU", "PCMA"])
    assert caught.value.warning_code == warning


@pytest.mark.parametrize(("direction_line", "session_level", "c", "ours", "on_hold"), [
    ("a=sendonly\r\n", False, "192.0.2.1", "recvonly", True),
    ("a=inactive\r\n", False, "192.0.2.1", "inactive", True),
    ("a=recvonly\r\n", False, "192.0.2.1", "sendonly", False),
    ("a=sendrecv\r\n", False, "192.0.2.1", "sendrecv", False),
    ("a=sendonly\r\n", True, "192.0.2.1", "recvonly", True),
    ("", False, "0.0.0.0", "recvonly", True),  # RFC 2543 hold
])
def test_hold_is_read_from_the_offer(direction_line: str, session_level: bool, c: str, ours: str,
                                     on_hold: bool) -> None:
    o = offer(AUDIO if session_level else AUDIO + direction_line, direction_line if session_level else "", c=c)
    chosen = sdp.negotiate(o, ["PCMU"])
    assert (chosen.direction, chosen.on_hold) == (ours, on_hold)
    assert f"a={ours}" in sdp.build_answer(o, chosen, "192.0.2.10", 40000, 1, 2)


def test_media_level_connection_overrides_the_session_one() -> None:
    o = offer("m=audio 4000 RTP/AVP 0\r\nc=IN IP4 203.0.113.9\r\n")
    assert sdp.negotiate(o, ["PCMU"]).remote_host == "203.0.113.9"


def test_our_offer_and_its_answer() -> None:
    text = sdp.build_offer("192.0.2.10", 40000, ["PCMA", "PCMU"], 7, 1)
    parsed = sdp.parse_sdp(text)
    assert parsed.media[0].formats == ["8", "0", "101"]
    answer = offer("m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")
    chosen = sdp.accept_answer(answer, ["PCMA", "PCMU"])
    assert chosen.codec.name == "PCMU" and chosen.remote_port == 6000 and chosen.dtmf is not None


@pytest.mark.parametrize("body", [
    b"",  # no v=
    b"v=1\r\n",
    b"v=0\r\nthis is not sdp\r\n",
    b"v=0\r\nc=IN IP4\r\n",
    b"v=0\r\nm=audio x RTP/AVP 0\r\n",
    b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
    b"v=0\r\nm=audio 4000\r\n",
    b"v=0\r\nm=audio 4000 RTP/AVP 96\r\na=rtpmap:x PCMU/8000\r\n",
])
def test_malformed_sdp_is_rejected(body: bytes) -> None:
    with pytest.raises(sdp.SdpError):
        sdp.parse_sdp(body)


def test_audio_without_any_connection_is_malformed() -> None:
    o = sdp.parse_sdp(b"v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
    with pytest.raises(sdp.SdpError):
        sdp.negotiate(o, ["PCMU"])
