"""SIP messages (RFC 3261 §7, §20): a strict parser with limits, and the writer.

Anything arriving on the SIP port is untrusted: a message is parsed whole or rejected with a reason
(the ``voiceai_sip_bad_messages_total`` label). A rejection carries what could be read of the message
so that the server can still answer 400 when it knows where to (a Via, a CSeq), and drop it otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SIP_VERSION = "SIP/2.0"
CRLF = "\r\n"
MAX_HEADERS = 100
MAX_HEADER_LINE_BYTES = 4096

# RFC 3261 §7.3.3 and the registry of compact forms.
COMPACT_FORMS = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "e": "content-encoding", "f": "from",
    "i": "call-id", "k": "supported", "l": "content-length", "m": "contact", "o": "event", "r": "refer-to",
    "s": "subject", "t": "to", "u": "allow-events", "v": "via", "x": "session-expires",
}
_CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version",
    "rack": "RAck", "rseq": "RSeq",
}
# Headers whose comma-separated values are separate entries (§7.3.1); others keep commas as text.
_LIST_HEADERS = {"via", "route", "record-route", "contact"}
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9]{2}) (.*)$")
_REQUEST_URI = re.compile(r"^(sips?|tel):\S+$", re.IGNORECASE)

REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 415: "Unsupported Media Type", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "Version Not Supported", 513: "Message Too Large",
}


def canonical_name(name: str) -> str:
    """``call-id`` -> ``Call-ID``; compact forms are written out in full."""
    low = name.lower()
    low = COMPACT_FORMS.get(low, low)
    return _CANONICAL.get(low) or "-".join(part.capitalize() for part in low.split("-"))


def split_list(value: str) -> list[str]:
    """Splits a header value on commas outside quotes and angle brackets."""
    parts: list[str] = []
    depth_angle = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth_angle += 1
        elif ch == ">":
            depth_angle = max(0, depth_angle - 1)
        elif ch == "," and depth_angle == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def parse_params(text: str) -> dict[str, str]:
    """``;a=1;b;c="x"`` -> ``{"a": "1", "b": "", "c": "x"}`` (names lower-cased)."""
    params: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return params


def format_params(params: dict[str, str]) -> str:
    return "".join(f";{k}={v}" if v != "" else f";{k}" for k, v in params.items())


@dataclass
class SipUri:
    """``sip:user@host:port;params`` (the parts this UA needs)."""

    scheme: str
    user: str
    host: str
    port: int | None = None
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        scheme, sep, rest = text.strip().partition(":")
        if not sep or scheme.lower() not in ("sip", "sips", "tel"):
            raise ValueError("not a SIP URI")
        rest = rest.split("?", 1)[0]
        hostpart, _, params = rest.partition(";")
        user = ""
        if "@" in hostpart:
            user, _, hostpart = hostpart.rpartition("@")
            user = user.split(":", 1)[0]
        host, port = split_host_port(hostpart)
        if scheme.lower() == "tel":
            user, host = hostpart, ""
        elif not host:
            raise ValueError("SIP URI without a host")
        return cls(scheme.lower(), user, host, port, parse_params(params))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}:{userinfo}{host}{port}{format_params(self.params)}"


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host:port`` / ``[v6]:port`` -> (host, port or None); raises ValueError on a bad port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if port_text:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError("port out of range")
        return host, port
    return host, None


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: ``"Display" <uri>;params``."""

    uri: str
    display: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if "<" in text:
            display, _, rest = text.partition("<")
            uri, close, params = rest.partition(">")
            if not close:
                raise ValueError("unclosed <")
            return cls(uri.strip(), display.strip().strip('"'), parse_params(params))
        # addr-spec without brackets: parameters after ';' belong to the header (§20.10).
        uri, _, params = text.partition(";")
        return cls(uri.strip(), "", parse_params(params))

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass
class Via:
    """One Via entry: ``SIP/2.0/UDP host:port;branch=...;rport;received=...``."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Via:
        proto, _, rest = text.strip().partition(" ")
        parts = proto.split("/")
        if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0":
            raise ValueError("bad Via protocol")
        sent_by, _, params = rest.strip().partition(";")
        host, port = split_host_port(sent_by)
        if not host:
            raise ValueError("Via without a host")
        return cls(parts[2].upper(), host, port, parse_params(params))

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"


@dataclass
class SipMessage:
    """A request (``method`` set) or a response (``status`` set); headers in order, names lower-case."""

    method: str = ""
    uri: str = ""
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str = "") -> str:
        name = COMPACT_FORMS.get(name.lower(), name.lower())
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = COMPACT_FORMS.get(name.lower(), name.lower())
        return [value for key, value in self.headers if key == name]

    def add(self, name: str, value: str) -> None:
        name = COMPACT_FORMS.get(name.lower(), name.lower())
        self.headers.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replaces every ``name`` header with one value (kept at the first one's position)."""
        name = COMPACT_FORMS.get(name.lower(), name.lower())
        out: list[tuple[str, str]] = []
        done = False
        for key, old in self.headers:
            if key == name:
                if not done:
                    out.append((key, value))
                    done = True
            else:
                out.append((key, old))
        if not done:
            out.append((name, value))
        self.headers = out

    def remove(self, name: str) -> None:
        name = COMPACT_FORMS.get(name.lower(), name.lower())
        self.headers = [(k, v) for k, v in self.headers if k != name]

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method); raises ValueError when malformed."""
        number, _, method = self.get("cseq").strip().partition(" ")
        method = method.strip()
        if not number.isdigit() or not _TOKEN.match(method) or int(number) >= 2**31:
            raise ValueError("bad CSeq")
        return int(number), method.upper()

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.get_all("via")]

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self.get("from"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self.get("to"))

    def to_bytes(self) -> bytes:
        """The message as sent: full header names, Content-Length computed from the body."""
        if self.method:
            lines = [f"{self.method} {self.uri} {SIP_VERSION}"]
        else:
            lines = [f"{SIP_VERSION} {self.status} {self.reason}"]
        lines += [f"{canonical_name(k)}: {v}" for k, v in self.headers if k != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + self.body


class SipParseError(ValueError):
    """A message that cannot be used. ``reason`` is the metric label; ``partial`` is what could be read
    (answer 400 to it when it is a request with a Via and a CSeq); ``status`` the status to answer."""

    def __init__(self, reason: str, detail: str, partial: SipMessage | None = None, status: int = 400) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.partial = partial
        self.status = status


def parse_message(data: bytes, max_headers: int = MAX_HEADERS,
                  max_header_line_bytes: int = MAX_HEADER_LINE_BYTES) -> SipMessage:
    """Parses one datagram (RFC 3261 §7); raises ``SipParseError``.

    The whole head is always read (bounded by the datagram size) so that a rejected request still has
    its Via/CSeq for the 400."""
    head_end = data.find(b"\r\n\r\n")
    sep_len = 4
    if head_end < 0:
        head_end = data.find(b"\n\n")
        sep_len = 2
    truncated_head = head_end < 0
    head_bytes = data if truncated_head else data[:head_end]
    rest = b"" if truncated_head else data[head_end + sep_len:]
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("not_sip", "head is not UTF-8") from None
    lines = head.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    msg = SipMessage()
    status_match = _STATUS_LINE.match(start)
    if status_match:
        msg.status = int(status_match.group(1))
        msg.reason = status_match.group(2)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not parts[2].upper().startswith("SIP/"):
            raise SipParseError("not_sip", "start line is neither a request nor a status line")
        msg.method, msg.uri = parts[0], parts[1]

    problem: SipParseError | None = None

    def fail(reason: str, detail: str, status: int = 400) -> None:
        nonlocal problem
        if problem is None:
            problem = SipParseError(reason, detail, msg, status)

    if msg.method:
        if not _TOKEN.match(msg.method):
            fail("bad_start_line", "Bad Request-Line: method")
        elif not _REQUEST_URI.match(msg.uri):
            fail("bad_start_line", "Bad Request-Line: Request-URI")
        elif start.split(" ")[2] != SIP_VERSION:
            fail("bad_version", "Version Not Supported", 505)

    # Unfold continuation lines (§7.3.1), then split name: value.
    raw_lines: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and raw_lines:
            raw_lines[-1] += " " + line.strip()
        elif line.strip():
            raw_lines.append(line)
    if len(raw_lines) > max_headers:
        fail("too_many_headers", f"Too many headers (limit {max_headers})")
    for line in raw_lines:
        if len(line.encode("utf-8")) > max_header_line_bytes:
            fail("header_too_long", f"Header line too long (limit {max_header_line_bytes} bytes)")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            fail("bad_header", "Malformed header line")
            continue
        key = COMPACT_FORMS.get(name.lower(), name.lower())
        values = split_list(value) if key in _LIST_HEADERS else [value.strip()]
        for v in values:
            msg.headers.append((key, v))

    if truncated_head:
        fail("truncated", "Message truncated (no end of headers)")
    length_text = msg.get("content-length")
    if length_text:
        if not length_text.strip().isdigit():
            fail("bad_content_length", "Bad Content-Length")
        else:
            length = int(length_text)
            if length > len(rest):
                fail("content_length_mismatch", "Content-Length mismatch")
            msg.body = rest[:length]  # extra bytes after the body are discarded (§18.3)
    else:
        msg.body = rest
    if problem is not None:
        raise problem

    for required in ("via", "from", "to", "call-id", "cseq"):
        if not msg.get(required):
            raise SipParseError("missing_header", f"Missing {canonical_name(required)} header", msg)
    try:
        _, cseq_method = msg.cseq
        msg.vias  # noqa: B018 - parses every Via (raises on a bad one)
        msg.from_  # noqa: B018
        msg.to  # noqa: B018
    except ValueError as err:
        raise SipParseError("bad_header", f"Malformed header: {err}", msg) from None
    if msg.method and cseq_method != msg.method.upper():
        raise SipParseError("cseq_mismatch", "CSeq method does not match the request", msg)
    return msg


def answerable(msg: SipMessage | None) -> bool:
    """Whether a (possibly partial) request can be answered: a readable Via, Call-ID, From/To and CSeq."""
    if msg is None or not msg.method or msg.method.upper() == "ACK":
        return False
    try:
        return bool(msg.vias) and bool(msg.call_id) and bool(msg.cseq) and bool(msg.get("from") and msg.get("to"))
    except ValueError:
        return False


def make_response(request: SipMessage, status: int, reason: str | None = None, to_tag: str = "") -> SipMessage:
    """A response to ``request`` (§8.2.6): Via, From, To (+ our tag), Call-ID, CSeq copied."""
    resp = SipMessage(status=status, reason=reason or REASONS.get(status, "Unknown"))
    for via in request.get_all("via"):
        resp.add("via", via)
    resp.add("from", request.get("from"))
    to = request.get("to")
    if to_tag and status > 100:
        try:
            if not NameAddr.parse(to).tag:
                to = f"{to};tag={to_tag}"
        except ValueError:
            pass
    resp.add("to", to)
    resp.add("call-id", request.call_id)
    resp.add("cseq", request.get("cseq"))
    return resp
