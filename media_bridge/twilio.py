"""Twilio Media Streams: the carrier's side of a phone call, as JSON over a WebSocket.

A call reaches us in two steps (docs/CALL_PROTOCOL.md, "Twilio Media Streams"):

1. Twilio POSTs the voice webhook (form-encoded, signed with ``X-Twilio-Signature``); we answer TwiML
   that connects the call to our stream WebSocket and hands Twilio a one-call token as a
   ``<Parameter>``.
2. Twilio opens the stream and sends JSON text frames: ``connected``, ``start`` (with our parameters),
   ``media`` (20 ms of 8 kHz mu-law, base64), ``dtmf``, ``mark`` (echoes of ours), ``stop``. We answer
   ``media`` (the bot's audio), ``mark`` (where each bot phrase and reply ends in the audio) and
   ``clear`` (drop what Twilio still buffers: the caller interrupted the bot).

This module is the protocol only (signatures, TwiML, frames, the transport); the gateway
(``gateway/twilio_routes.py``) owns authentication and runs the call on the ``CallHost``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree

from prometheus_client import Counter

from media_bridge.g711 import ulaw_decode, ulaw_encode
from media_bridge.session import CallSession

log = logging.getLogger(__name__)

REJECTED = Counter("voiceai_twilio_rejected_total", "Twilio webhook requests refused, by reason.", ["reason"])
BAD_FRAMES = Counter("voiceai_twilio_bad_frames_total", "Malformed or unexpected Media Streams frames, by reason.",
                     ["reason"])

RATE_HZ = 8000  # Media Streams carry 8 kHz mono mu-law, both ways
ENCODING = "audio/x-mulaw"
MAX_FRAME_BYTES = 64 * 1024  # a real media frame is ~250 bytes; 64 KiB is junk or an attack
START_TIMEOUT_S = 10.0  # from the socket's accept to Twilio's ``start`` frame
STREAM_PATH = "/v1/twilio/stream"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# What the route hands the protocol: the next frame (text or bytes), or None once the socket closed.
Receive = Callable[[], Awaitable[str | bytes | None]]
SendText = Callable[[str], Awaitable[None]]


# ---- the webhook: signatures and TwiML ---------------------------------------------------------


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` of a form POST: base64(HMAC-SHA1(auth token, URL + each param's name and
    value, sorted by name then value)). Repeated identical pairs count once, as Twilio's own helper has it."""
    payload = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given and with its default port added or removed: Twilio signs whichever form the
    webhook was configured with, and its own helper library accepts both."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if default is None or not host:
        return [url]
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    elif parts.port == default:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    else:
        return [url]
    return [url, other]


def signature_valid(auth_token: str, url: str, params: Iterable[tuple[str, str]], given: str | None) -> bool:
    """Whether ``given`` is Twilio's signature of this request (compared in constant time)."""
    if not given:
        return False
    pairs = list(params)
    ok = False
    for candidate in _port_variants(url):  # both compared, always: no early exit to time
        ok |= hmac.compare_digest(signature(auth_token, candidate, pairs).encode(), given.encode())
    return ok


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm a ``X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=...`` header names, upper
    case; absent (the classic auth token signature): HMAC_SHA1."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def signed_url(public_url: str | None, request_url: str, path: str, query: str) -> str:
    """The URL Twilio signed: ``public_url`` (the gateway as Twilio sees it, maybe with a path prefix the
    proxy strips) + the path + the query, when configured; else the request's own URL.

    Forwarded headers are not consulted on purpose: behind a TLS-terminating proxy the request's URL is
    ``http://`` while Twilio signed ``https://``, and guessing from X-Forwarded-* would make whether a
    signature verifies depend on how each proxy is set up. Set ``channels.twilio.public_url`` instead.
    """
    if not public_url:
        return request_url
    return public_url.rstrip("/") + path + (f"?{query}" if query else "")


def stream_url(public_url: str | None, base_url: str) -> str:
    """The stream's WebSocket URL for the TwiML: wss for an https gateway, ws for http."""
    base = (public_url or base_url).rstrip("/")
    scheme, sep, rest = base.partition("://")
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme)
    return f"{ws_scheme}{sep}{rest}{STREAM_PATH}"


def connect_twiml(url: str, parameters: Mapping[str, str], action: str | None = None) -> str:
    """``<Response><Connect action=...><Stream url=...>`` with one ``<Parameter>`` per entry (escaped by
    ElementTree).

    ``<Connect>`` makes the stream bidirectional: Twilio plays the ``media`` we send and honours
    ``clear`` and ``mark``. When we close the stream the call leaves ``<Connect>``: Twilio then requests
    ``action`` (signed, like the voice webhook) for what comes next, which is how a transfer reaches a
    person (``dial_twiml``); without an action the call hangs up."""
    response = ElementTree.Element("Response")
    connect = ElementTree.SubElement(response, "Connect")
    if action:
        connect.set("action", action)
    stream = ElementTree.SubElement(connect, "Stream", url=url)
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")


def dial_twiml(target: str | None) -> str:
    """What the call does after its stream: ``<Dial>`` the transfer target (a SIP URI, or a number, with or
    without ``tel:``), or ``<Hangup/>`` when the bot was not transferring."""
    response = ElementTree.Element("Response")
    if target:
        dial = ElementTree.SubElement(response, "Dial")
        kind = "Sip" if target.lower().startswith(("sip:", "sips:")) else "Number"
        ElementTree.SubElement(dial, kind).text = target if kind == "Sip" else target.removeprefix("tel:")
    else:
        ElementTree.SubElement(response, "Hangup")
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, encoding="unicode")


# ---- the stream: frames in --------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStart:
    """What Twilio's ``start`` frame says about the stream."""

    stream_sid: str
    call_sid: str
    account_sid: str
    parameters: dict[str, str]  # our TwiML <Parameter>s, as Twilio relays them
    encoding: str
    sample_rate_hz: int
    channels: int

    @property
    def format_ok(self) -> bool:
        return self.encoding == ENCODING and self.sample_rate_hz == RATE_HZ and self.channels == 1


class StreamRefused(Exception):
    """The stream cannot start: the socket is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _bad(reason: str) -> None:
    BAD_FRAMES.labels(reason).inc()
    log.warning("bad media stream frame", extra={"reason": reason})


def parse_frame(frame: str | bytes) -> dict[str, Any] | None:
    """One frame as a JSON object with an ``event``; anything else is counted and None."""
    if isinstance(frame, bytes):
        _bad("binary_frame")
        return None
    if len(frame) > MAX_FRAME_BYTES:
        _bad("too_large")
        return None
    try:
        message = json.loads(frame)
    except json.JSONDecodeError:
        _bad("invalid_json")
        return None
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        _bad("no_event")
        return None
    return message


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _start_of(message: dict[str, Any]) -> StreamStart:
    start = message.get("start")
    if not isinstance(start, dict):
        raise StreamRefused(1008, "start without its start object")
    fmt = _object(start.get("mediaFormat"))
    custom = _object(start.get("customParameters"))
    sid = message.get("streamSid") or start.get("streamSid")
    if not isinstance(sid, str) or not sid:
        raise StreamRefused(1008, "start without a streamSid")
    try:
        rate, channels = int(fmt.get("sampleRate", 0)), int(fmt.get("channels", 0))
    except (TypeError, ValueError):
        rate, channels = 0, 0
    return StreamStart(stream_sid=sid, call_sid=str(start.get("callSid", "")),
                       account_sid=str(start.get("accountSid", "")),
                       parameters={str(k): str(v) for k, v in custom.items()},
                       encoding=str(fmt.get("encoding", "")), sample_rate_hz=rate, channels=channels)


async def wait_for_start(receive: Receive, timeout_s: float = START_TIMEOUT_S) -> StreamStart | None:
    """Reads frames until ``start``; None if the socket closed (or ``stop`` came) first.

    Media before the start has no call to go to: dropped and counted. Raises ``StreamRefused`` for a start
    we cannot take (no streamSid, another audio format) and ``TimeoutError`` past ``timeout_s``.
    """
    async with asyncio.timeout(timeout_s):
        while (frame := await receive()) is not None:
            message = parse_frame(frame)
            if message is None:
                continue
            event = message["event"]
            if event == "start":
                start = _start_of(message)
                if not start.format_ok:
                    raise StreamRefused(1003, f"unsupported media format {start.encoding}/{start.sample_rate_hz}/"
                                              f"{start.channels}; expected {ENCODING}/{RATE_HZ}/1")
                return start
            if event == "stop":
                return None
            if event == "media":
                _bad("media_before_start")
            elif event not in ("connected", "mark", "dtmf"):
                _bad("unknown_event")
    return None


async def read_stream(receive: Receive, session: CallSession, transport: TwilioTransport) -> None:
    """The caller's side after ``start``: audio and keys to the session; returns on ``stop`` or a close."""
    while (frame := await receive()) is not None:
        message = parse_frame(frame)
        if message is None:
            continue
        event = message["event"]
        if event == "media":
            media = message.get("media")
            if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
                _bad("media_without_payload")
                continue
            if media.get("track", "inbound") != "inbound":  # only the caller's leg is ours to hear
                continue
            try:
                codes = base64.b64decode(media["payload"], validate=True)
            except (binascii.Error, ValueError):
                _bad("bad_base64")
                continue
            if codes:
                await session.push_audio(ulaw_decode(codes))
        elif event == "dtmf":
            dtmf = message.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
            if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#ABCD":
                _bad("bad_dtmf")
                continue
            await session.push_dtmf(digit)
        elif event == "mark":
            mark = message.get("mark")
            if isinstance(mark, dict) and isinstance(mark.get("name"), str):
                transport.mark_played(mark["name"])
        elif event == "stop":
            return
        elif event in ("connected", "start"):
            _bad("unexpected_" + event)
        else:
            _bad("unknown_event")


# ---- the stream: frames out -------------------------------------------------------------------


@dataclass
class TwilioTransport:
    """``CallTransport`` over a Media Stream: the bot's PCM16 as mu-law ``media`` frames, and the session's
    events translated to what Twilio understands.

    - ``barge_in`` -> ``clear``: Twilio buffers the audio we send and plays it out itself; after a
      barge-in that buffer must go, or the caller keeps hearing the bot it just interrupted.
    - ``bot.text`` -> ``mark`` ``phrase-<n>``: sent when a phrase's first frame went out, so Twilio echoes it
      back when the caller starts hearing that phrase.
    - ``turn`` (not interrupted) -> ``mark`` ``turn-<index>``: sent after the reply's last frame, so its echo
      says the caller heard the whole reply.
    - Everything else (state, transcripts...) has no place in the Twilio protocol and is dropped.

    ``transfer`` sends a ``transfer`` mark, waits (bounded) for Twilio to echo it, i.e. for the caller to
    have heard "please hold", then hands the target to ``on_transfer``; the stream then closes and Twilio
    asks the ``<Connect action>`` webhook, which dials the target.
    """

    send_text: SendText
    stream_sid: str
    sample_rate_hz: int = RATE_HZ
    closed: bool = False
    marks_sent: list[str] = field(default_factory=list)
    marks_played: list[str] = field(default_factory=list)  # echoed by Twilio once played (or cleared)
    clears_sent: int = 0
    on_transfer: Callable[[str], None] | None = None
    transfer_wait_s: float = 3.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _transfer_heard: asyncio.Event = field(default_factory=asyncio.Event)
    _phrases: int = 0

    async def _send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        async with self._lock:  # one frame at a time: audio, marks and clears keep their order
            await self.send_text(json.dumps(message, separators=(",", ":")))

    async def send_audio(self, pcm16: bytes) -> None:
        payload = base64.b64encode(ulaw_encode(pcm16)).decode()
        await self._send({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})

    async def send_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "barge_in":
            self.clears_sent += 1
            await self._send({"event": "clear", "streamSid": self.stream_sid})
        elif kind == "bot.text":
            self._phrases += 1
            await self._mark(f"phrase-{self._phrases}")
        elif kind == "turn" and not event.get("interrupted"):
            await self._mark(f"turn-{event.get('turn')}")

    async def _mark(self, name: str) -> None:
        self.marks_sent.append(name)
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def transfer(self, target: str) -> bool:
        if self.on_transfer is None or self.closed:
            return False
        await self._mark("transfer")
        with contextlib.suppress(TimeoutError):  # Twilio may be slow to echo: hand over anyway
            await asyncio.wait_for(self._transfer_heard.wait(), self.transfer_wait_s)
        self.on_transfer(target)
        return True

    def mark_played(self, name: str) -> None:
        if name in self.marks_sent:
            self.marks_played.append(name)
            if name == "transfer":
                self._transfer_heard.set()
        else:
            _bad("unknown_mark")
