"""Session descriptions (RFC 4566) and the G.711 offer/answer (RFC 3264) of a phone call.

The bridge takes one audio stream: the first audio m-line with a codec it accepts (PCMU/PCMA, the
first the offer lists), plus RFC 4733 telephone-event when the offer has it. Every other
m-line is refused with port 0, as the answer must mirror the offer's m-lines. Hold is read from the
offer's direction (``a=sendonly``/``a=inactive``, or the old ``c=0.0.0.0``) and answered with the
complementary direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATIC_PAYLOADS = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
DTMF_PAYLOAD_TYPE = 101  # what we offer for telephone-event when we make the offer
PTIME_MS = 20


class SdpError(ValueError):
    """The body is not a usable session description."""


class NotAcceptable(ValueError):
    """No stream the bridge can take: answer 488 with ``Warning: <warning_code> ...`` (RFC 3261 §20.43:
    304 media type not available, 305 incompatible media format)."""

    def __init__(self, warning_code: int, text: str) -> None:
        super().__init__(text)
        self.warning_code = warning_code
        self.text = text


@dataclass(frozen=True)
class Format:
    """A negotiated payload type (``rtp.Codec`` carries the same three fields)."""

    name: str
    payload_type: int
    clock_rate: int = 8000


@dataclass
class Media:
    """One m-line and its attributes."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    direction: str | None = None
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    attributes: list[str] = field(default_factory=list)

    def format_of(self, payload_type: int) -> tuple[str, int] | None:
        if payload_type in self.rtpmap:
            return self.rtpmap[payload_type]
        return STATIC_PAYLOADS.get(payload_type)


@dataclass
class SessionDescription:
    origin: str = ""
    connection: str | None = None
    direction: str | None = None
    media: list[Media] = field(default_factory=list)


def parse_sdp(body: bytes | str) -> SessionDescription:
    """Parses the lines this UA needs (v, o, c, m, a=rtpmap, direction); raises ``SdpError``."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    sdp = SessionDescription()
    current: Media | None = None
    seen_version = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError("bad SDP line")
        kind, value = line[0], line[2:]
        if kind == "v":
            if value != "0":
                raise SdpError("unsupported SDP version")
            seen_version = True
        elif kind == "o":
            sdp.origin = value
        elif kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError("bad c= line")
            address = parts[2].split("/")[0]
            if current is None:
                sdp.connection = address
            else:
                current.connection = address
        elif kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError("bad m= line")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                raise SdpError("bad m= port") from None
            if not 0 <= port < 65536:
                raise SdpError("bad m= port")
            current = Media(parts[0].lower(), port, parts[2], parts[3:])
            sdp.media.append(current)
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if current is None:
                    sdp.direction = name
                else:
                    current.direction = name
            elif name == "rtpmap" and current is not None:
                pt_text, _, encoding = arg.partition(" ")
                enc_parts = encoding.strip().split("/")
                try:
                    current.rtpmap[int(pt_text)] = (enc_parts[0], int(enc_parts[1]) if len(enc_parts) > 1 else 8000)
                except (ValueError, IndexError):
                    raise SdpError("bad rtpmap") from None
            elif current is not None:
                current.attributes.append(value)
    if not seen_version:
        raise SdpError("no v= line")
    return sdp


@dataclass
class Negotiated:
    """The outcome of an offer/answer: what to send, where, and in which direction."""

    codec: Format
    dtmf: Format | None
    remote_host: str
    remote_port: int
    direction: str  # ours: sendrecv | sendonly | recvonly | inactive
    media_index: int
    on_hold: bool = False


def _media_direction(sdp: SessionDescription, media: Media) -> str:
    return media.direction or sdp.direction or "sendrecv"


def is_null_address(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def negotiate(offer: SessionDescription, codecs: list[str]) -> Negotiated:
    """Picks the stream and codec for an offer: the offer's first codec among ``codecs`` (ours are offered in
    their order when we make the offer).

    Raises ``NotAcceptable`` when there is no audio m-line (304) or none with a common codec (305)."""
    audio = [(i, m) for i, m in enumerate(offer.media) if m.kind == "audio" and m.port != 0]
    if not audio:
        raise NotAcceptable(304, "Media type not available: no audio stream")
    wanted = [c.upper() for c in codecs]
    for index, media in audio:
        if not media.proto.upper().startswith("RTP/AVP"):
            continue
        offered: dict[str, Format] = {}
        dtmf: Format | None = None
        for fmt in media.formats:
            try:
                pt = int(fmt)
            except ValueError:
                continue
            known = media.format_of(pt)
            if known is None:
                continue
            name, rate = known
            if name.upper() in wanted and rate == 8000:
                offered.setdefault(name.upper(), Format(name.upper(), pt, rate))
            elif name.lower() == "telephone-event" and rate == 8000 and dtmf is None:
                dtmf = Format("telephone-event", pt, rate)
        # The offerer's order decides: G.711 costs us the same either way, and a trunk in an A-law region
        # (the UAE, Europe) lists PCMA first. ``codecs`` is the set we accept.
        chosen = next(iter(offered.values()), None)
        if chosen is None:
            continue
        host = media.connection or offer.connection
        if host is None:
            raise SdpError("no c= line for the audio stream")
        theirs = _media_direction(offer, media)
        on_hold = theirs in ("sendonly", "inactive") or is_null_address(host)
        direction = _ANSWER_DIRECTION[theirs]
        if is_null_address(host) and direction == "sendrecv":
            direction = "recvonly"  # RFC 2543 hold: they want nothing sent
        return Negotiated(chosen, dtmf, host, media.port, direction, index, on_hold)
    raise NotAcceptable(305, "Incompatible media format: no common audio codec")


def _header(local_host: str, session_id: int, version: int) -> list[str]:
    family = "IP6" if ":" in local_host else "IP4"
    return ["v=0", f"o=voiceai {session_id} {version} IN {family} {local_host}", "s=voiceai",
            f"c=IN {family} {local_host}", "t=0 0"]


def _audio_lines(port: int, formats: list[Format], direction: str) -> list[str]:
    lines = [f"m=audio {port} RTP/AVP {' '.join(str(f.payload_type) for f in formats)}"]
    for f in formats:
        lines.append(f"a=rtpmap:{f.payload_type} {f.name}/{f.clock_rate}")
        if f.name == "telephone-event":
            lines.append(f"a=fmtp:{f.payload_type} 0-16")
    lines += [f"a=ptime:{PTIME_MS}", f"a={direction}"]
    return lines


def build_answer(offer: SessionDescription, chosen: Negotiated, local_host: str, local_port: int,
                 session_id: int, version: int) -> str:
    """The answer: the chosen stream with one codec (+ telephone-event), every other m-line refused."""
    lines = _header(local_host, session_id, version)
    for index, media in enumerate(offer.media):
        if index == chosen.media_index:
            formats = [chosen.codec] + ([chosen.dtmf] if chosen.dtmf else [])
            lines += _audio_lines(local_port, formats, chosen.direction)
        else:
            lines.append(f"m={media.kind} 0 {media.proto} {' '.join(media.formats)}")
    return "\r\n".join(lines) + "\r\n"


def our_formats(codecs: list[str]) -> list[Format]:
    """What we offer (late offer): our G.711 codecs in order, then telephone-event."""
    static = {name: pt for pt, (name, _) in STATIC_PAYLOADS.items()}
    formats = [Format(c.upper(), static[c.upper()]) for c in codecs if c.upper() in static]
    return [*formats, Format("telephone-event", DTMF_PAYLOAD_TYPE)]


def build_offer(local_host: str, local_port: int, codecs: list[str], session_id: int, version: int,
                direction: str = "sendrecv") -> str:
    """Our offer (an INVITE that came without SDP)."""
    lines = _header(local_host, session_id, version) + _audio_lines(local_port, our_formats(codecs), direction)
    return "\r\n".join(lines) + "\r\n"


def accept_answer(answer: SessionDescription, codecs: list[str]) -> Negotiated:
    """Reads the answer to our offer: the first accepted audio stream and its first codec we offered."""
    return negotiate(answer, codecs)
