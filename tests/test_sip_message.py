"""SIP message parsing and writing: round trips, compact forms, limits, and what a rejection carries."""

from __future__ import annotations

import pytest

from media_bridge.sip.message import (
    NameAddr,
    SipMessage,
    SipParseError,
    SipUri,
    Via,
    answerable,
    canonical_name,
    make_response,
    parse_message,
    split_list,
)

pytestmark = pytest.mark.unit

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
INVITE = (
    b"INVITE sip:1000@192.0.2.10:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bKold, SIP/2.0/UDP [2001:db8::1]:5080;branch=z9hG4bKv6\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice, A." <sip:+971500000001@192.0.2.1>;tag=1928301774\r\n'
    b"To: <sip:1000@192.0.2.10>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1:5060;transport=udp>\r\n"
    b"Record-Route: <sip:192.0.2.5;lr>, <sip:192.0.2.6;lr>\r\n"
    b"Subject: folded\r\n  over two lines\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def test_invite_parses_with_multiple_vias_and_round_trips() -> None:
    msg = parse_message(INVITE)
    assert msg.method == "INVITE" and msg.uri == "sip:1000@192.0.2.10:5060"
    vias = msg.vias
    assert [(v.host, v.port, v.branch) for v in vias] == [
        ("192.0.2.1", 5060, "z9hG4bK776asdhds"), ("192.0.2.2", 5070, "z9hG4bKold"), ("2001:db8::1", 5080, "z9hG4bKv6")]
    assert "rport" in vias[0].params and vias[0].params["rport"] == ""
    assert msg.from_.display == "Alice, A." and msg.from_.tag == "1928301774"
    assert msg.to.tag == ""
    assert msg.cseq == (314159, "INVITE")
    assert msg.get_all("record-route") == ["<sip:192.0.2.5;lr>", "<sip:192.0.2.6;lr>"]
    assert msg.get("subject") == "folded over two lines"
    assert msg.body == SDP
    again = parse_message(msg.to_bytes())
    assert again.headers == msg.headers and again.body == msg.body and again.uri == msg.uri


def test_compact_forms_and_case_insensitive_names() -> None:
    data = (b"BYE sip:bot@192.0.2.10 SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
            b"f: <sip:a@192.0.2.1>;tag=1\r\nt: <sip:bot@192.0.2.10>;tag=2\r\ni: xyz\r\nCSEQ: 2 BYE\r\n"
            b"m: <sip:a@192.0.2.1>\r\nc: text/plain\r\nk: timer\r\nL: 0\r\n\r\n")
    msg = parse_message(data)
    assert msg.call_id == "xyz" and msg.get("Call-ID") == "xyz" and msg.get("i") == "xyz"
    assert msg.get("content-type") == "text/plain" and msg.get("supported") == "timer"
    assert msg.vias[0].port is None and msg.to.tag == "2"
    written = msg.to_bytes()
    assert b"Via: SIP/2.0/UDP" in written and b"Call-ID: xyz" in written and b"CSeq: 2 BYE" in written
    assert canonical_name("www-authenticate") == "WWW-Authenticate" and canonical_name("l") == "Content-Length"


def test_response_parses_and_make_response_copies_the_dialog_headers() -> None:
    msg = parse_message(INVITE)
    resp = make_response(msg, 200, to_tag="abc")
    parsed = parse_message(resp.to_bytes())
    assert parsed.status == 200 and parsed.reason == "OK" and not parsed.is_request
    assert parsed.to.tag == "abc" and parsed.from_.tag == "1928301774"
    assert parsed.get_all("via") == msg.get_all("via") and parsed.cseq == (314159, "INVITE")
    assert make_response(msg, 100, to_tag="abc").to.tag == ""  # 100 Trying carries no tag


@pytest.mark.parametrize(("data", "reason", "answer"), [
    (INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 1), "bad_version", True),
    (INVITE.replace(b"INVITE sip:1000", b"INV(TE sip:1000", 1), "bad_start_line", True),
    (INVITE.replace(b"sip:1000@192.0.2.10:5060 ", b"http://x ", 1), "bad_start_line", True),
    (INVITE[:-10], "content_length_mismatch", True),
    (INVITE.replace(b"Max-Forwards: 70", b"X-Big: " + b"a" * 5000), "header_too_long", True),
    (INVITE.replace(b"Max-Forwards: 70", b"\r\n".join(b"X-%d: 1" % i for i in range(100))), "too_many_headers", True),
    (INVITE.replace(b"Max-Forwards: 70", b"NoColonHere"), "bad_header", True),
    (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), "cseq_mismatch", True),
    (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: x INVITE"), "bad_header", False),
    (INVITE.replace(b"Content-Length: ", b"Content-Length: -"), "bad_content_length", True),
    (INVITE.split(b"\r\n\r\n")[0], "truncated", True),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", "not_sip", False),
    (b"hello world", "not_sip", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not_sip", False),
    (b"\xff\xfe INVITE", "not_sip", False),
])
def test_rejections_name_a_reason_and_keep_what_can_answer_them(data: bytes, reason: str, answer: bool) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    assert caught.value.reason == reason
    assert answerable(caught.value.partial) is answer


def test_missing_via_cannot_be_answered() -> None:
    data = b"".join(line + b"\r\n" for line in INVITE.split(b"\r\n") if not line.startswith(b"Via"))
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    assert caught.value.reason == "missing_header" and not answerable(caught.value.partial)


def test_extra_bytes_after_the_body_are_discarded() -> None:
    msg = parse_message(INVITE + b"garbage")
    assert msg.body == SDP


def test_uri_name_addr_via_and_list_helpers() -> None:
    uri = SipUri.parse("sip:+971500000001:secret@[2001:db8::1]:5062;transport=udp;lr?subject=x")
    assert (uri.user, uri.host, uri.port, uri.params) == ("+971500000001", "2001:db8::1", 5062,
                                                          {"transport": "udp", "lr": ""})
    assert str(SipUri.parse("sip:192.0.2.5;lr")) == "sip:192.0.2.5;lr"
    with pytest.raises(ValueError):
        SipUri.parse("http://example.com")
    with pytest.raises(ValueError):
        SipUri.parse("sip:a@host:99999")
    addr = NameAddr.parse('"Bob" <sip:bob@example.com>;tag=xyz;x=1')
    assert (addr.display, addr.uri, addr.tag) == ("Bob", "sip:bob@example.com", "xyz")
    assert NameAddr.parse("sip:bob@example.com;tag=9").tag == "9"  # addr-spec: params belong to the header
    via = Via.parse("SIP/2.0/udp host.example.com;branch=z9hG4bKx;received=192.0.2.9")
    assert (via.transport, via.host, via.port, via.params["received"]) == ("UDP", "host.example.com", None, "192.0.2.9")
    assert split_list('"a, b" <sip:x>, <sip:y;p=1,2>') == ['"a, b" <sip:x>', "<sip:y;p=1,2>"]


def test_message_header_editing() -> None:
    msg = SipMessage(method="OPTIONS", uri="sip:x@y")
    msg.add("Via", "SIP/2.0/UDP a;branch=1")
    msg.add("v", "SIP/2.0/UDP b;branch=2")
    msg.set("via", "SIP/2.0/UDP c;branch=3")
    assert msg.get_all("via") == ["SIP/2.0/UDP c;branch=3"]
    msg.remove("V")
    assert msg.get_all("via") == []
