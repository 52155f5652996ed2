"""``Dialog``: one SIP call's dialog (we are the UAS, RFC 3261 §12) and the media it drives.

The dialog holds what lives as long as the call: the tags, the route set and remote target, both CSeq
counters, the offer/answer state (RFC 3264) and the RTP session it points at what was negotiated. It
builds the requests we send in the dialog (BYE, REFER), routing them loosely or, behind an RFC 2543
strict router, with the remote target as the last Route. The user agent (``media_bridge.sip.ua``) owns
the socket and the transactions: it hands the dialog the requests that belong to it and sends the
dialog's requests for it. The dialog is also the ``DialogControl`` of the call's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING

from media_bridge.sip import sdp
from media_bridge.sip.message import NameAddr, SipMessage, SipUri
from media_bridge.sip.rtp import Codec, RtpSession

if TYPE_CHECKING:
    from media_bridge.session import CallSession
    from media_bridge.sip.ua import SipServer

log = logging.getLogger(__name__)

_SIPFRAG_STATUS = re.compile(rb"^\s*SIP/2\.0\s+([1-6][0-9]{2})")
_DTMF_SIGNALS = "0123456789*#ABCD"


def new_tag() -> str:
    """A random From/To tag."""
    return uuid.uuid4().hex[:16]


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie."""
    return "z9hG4bK" + uuid.uuid4().hex


def hostport(host: str, port: int) -> str:
    """``host:port`` for a SIP header, the host bracketed when it is IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(uri: str) -> tuple[str, int]:
    """Where to send a request for ``uri``: its maddr or host (resolved when a name), its port or 5060."""
    parsed = SipUri.parse(uri)
    host = parsed.params.get("maddr") or parsed.host
    port = parsed.port or 5060
    try:
        ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        host = str(infos[0][4][0])
    return host, port


def dtmf_relay_key(body: bytes) -> tuple[str, int] | None:
    """The key and its duration (ms, 0 when not given) in an ``application/dtmf-relay`` INFO body
    (``Signal=5`` / ``Duration=160`` lines); None when it names no key."""
    fields = {}
    for line in body.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition("=")
        fields[name.strip().lower()] = value.strip()
    digit = fields.get("signal", "")
    if len(digit) != 1 or digit not in _DTMF_SIGNALS:
        return None
    duration = fields.get("duration", "")
    return digit, int(duration) if duration.isdigit() else 0


class Dialog:
    """One call's dialog and its media, created from the INVITE that started it (see the module docstring)."""

    def __init__(self, server: SipServer, invite: SipMessage) -> None:
        self.server = server
        self.call_id = uuid.uuid4().hex  # ours; the SIP Call-ID stays in SIP
        self.sip_call_id = invite.call_id
        self.local_tag = new_tag()
        self.local_party = f"{invite.get('to')};tag={self.local_tag}"
        self.remote_party = invite.get("from")
        contact = invite.get("contact")
        self.remote_target = NameAddr.parse(contact).uri if contact else invite.from_.uri
        self.route_set = list(invite.get_all("record-route"))
        self.remote_cseq = invite.cseq[0]
        self.local_cseq = 0
        self.state = "early"  # early -> confirmed -> terminated
        self.answered = False  # our 200 OK went out
        self.cancelled = False
        self.rtp: RtpSession | None = None
        self.session: CallSession | None = None
        self.ended = asyncio.Event()
        self.acks: dict[int, asyncio.Event] = {}  # CSeq of an INVITE we answered 2xx -> its ACK
        self.offer_pending = False  # we sent an offer in a 200 (INVITE without SDP): the answer comes in the ACK
        self.sdp_session_id = int(time.time())
        self.sdp_version = 0
        self.negotiated: sdp.Negotiated | None = None
        self.in_use: tuple[sdp.Format, sdp.Format | None] | None = None  # the RTP session's codecs
        self.notify_waiter: asyncio.Future[int] | None = None
        self._bye_task: asyncio.Task | None = None
        try:
            self.caller_user = SipUri.parse(invite.from_.uri).user
        except ValueError:
            self.caller_user = ""

    @property
    def key(self) -> tuple[str, str]:
        """How the user agent finds this dialog: (SIP Call-ID, our tag)."""
        return (self.sip_call_id, self.local_tag)

    # ---- media callbacks ---------------------------------------------------------------------

    async def on_audio(self, pcm16: bytes) -> None:
        if self.session is not None:
            await self.session.push_audio(pcm16)

    async def on_dtmf(self, digit: str, duration_ms: int) -> None:
        if self.session is not None:
            await self.session.push_dtmf(digit, duration_ms)

    async def feed(self, session: CallSession) -> None:
        """The caller's side for ``CallHost.run``: media flows by callbacks; returns when the dialog ends."""
        self.session = session
        await self.ended.wait()

    # ---- requests from the caller ------------------------------------------------------------

    def accept_cseq(self, cseq: int) -> bool:
        """Takes a new in-dialog request's CSeq; False when it is not above the last one (answer 500)."""
        if cseq <= self.remote_cseq:
            return False
        self.remote_cseq = cseq
        return True

    def on_request(self, method: str, req: SipMessage) -> None:
        """A BYE, INFO or NOTIFY in this dialog, already answered 200 by the user agent."""
        if method == "BYE":
            log.info("sip caller hung up", extra={"call_id": self.call_id})
            self.remote_ended("hangup")
        elif method == "INFO":
            key = None
            if req.get("content-type").lower().startswith("application/dtmf-relay"):
                key = dtmf_relay_key(req.body)
            if key is not None:
                self.server.spawn(self.on_dtmf(*key), f"sip-dtmf-{self.call_id}")
        elif method == "NOTIFY":  # about our REFER: the sipfrag's final status ends the wait
            match = _SIPFRAG_STATUS.match(req.body)
            waiter = self.notify_waiter
            if match and waiter is not None and not waiter.done() and int(match.group(1)) >= 200:
                waiter.set_result(int(match.group(1)))

    def on_ack(self, req: SipMessage) -> None:
        """The ACK of a 2xx we sent: stops its retransmission, confirms the dialog, takes a late answer."""
        acked = self.acks.pop(req.cseq[0], None)
        if acked is None:
            return
        acked.set()
        if self.state == "early":
            self.state = "confirmed"
        if self.offer_pending:
            self.offer_pending = False
            try:
                self.apply(sdp.accept_answer(sdp.parse_sdp(req.body), self.server.cfg.codecs))
            except (sdp.SdpError, sdp.NotAcceptable) as err:
                log.info("sip answer in ack unusable; ending the call", extra={"call_id": self.call_id,
                                                                             "detail": str(err)})
                self.server.spawn(self.bye(), f"sip-bye-{self.call_id}")

    # ---- ending ------------------------------------------------------------------------------

    def remote_ended(self, reason: str) -> None:
        """The caller hung up (BYE) or the dialog failed: the session ends with ``reason``."""
        self.state = "terminated"
        if self.session is not None:
            self.server.spawn(self.session.hangup(reason), f"sip-hangup-{self.call_id}")
        self.ended.set()

    async def bye(self, wait_ack: bool = True) -> None:
        """Ends the dialog from our side (bot hang-up, transfer done, shutdown); safe to call twice.

        A dialog whose 200 OK is not yet acknowledged waits for the ACK first (RFC 3261 §15)."""
        if self._bye_task is None:
            if self.state == "early" and self.answered and wait_ack and self.acks:
                await self._acks_or_timeout()
            if self.state == "terminated" or self._bye_task is not None or not self.answered:
                self.state = "terminated"
                self.ended.set()
                if self._bye_task is None:
                    return
            else:
                self.state = "terminated"
                self._bye_task = self.server.spawn(self.request("BYE"), f"sip-bye-{self.call_id}")
        # Shielded: a cancelled caller (the session's transfer timeout) leaves the BYE retransmitting.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._bye_task)
        self.ended.set()

    async def _acks_or_timeout(self) -> None:
        """Waits (64×T1 at most) for the ACKs of the 2xx we sent; the waiters never outlive the wait."""
        waiters = [asyncio.ensure_future(acked.wait()) for acked in self.acks.values()]
        try:
            await asyncio.wait(waiters, timeout=self.server.timers.transaction_s)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def transfer(self, target: str) -> bool:
        """Blind transfer (RFC 3515): REFER, then the NOTIFY with the final sipfrag, then BYE."""
        if self.state != "confirmed":
            return False
        uri = target
        if not target.lower().startswith(("sip:", "sips:", "tel:")):
            uri = f"sip:{target}@{self.server.host_addr}"
        self.notify_waiter = asyncio.get_running_loop().create_future()
        referred_by = NameAddr.parse(self.local_party).uri
        headers = [("refer-to", f"<{uri}>"), ("referred-by", f"<{referred_by}>")]
        resp = await self.request("REFER", headers)
        if resp is None or not 200 <= resp.status < 300:
            log.info("sip transfer refused", extra={"call_id": self.call_id, "status": resp.status if resp else 0})
            return False
        try:
            code = await asyncio.wait_for(self.notify_waiter, self.server.timers.transaction_s)
        except TimeoutError:
            return False
        if not 200 <= code < 300:
            log.info("sip transfer failed", extra={"call_id": self.call_id, "status": code})
            return False
        await self.bye()
        return True

    # ---- requests we send --------------------------------------------------------------------

    def build_request(self, method: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> tuple[SipMessage, str]:
        """The next in-dialog request (RFC 3261 §12.2.1.1) and the URI of its next hop.

        Behind a strict router (a first route without ``lr``) that router becomes the Request-URI and the
        remote target goes last in the Route headers (the RFC 2543 fallback)."""
        self.local_cseq += 1
        target = self.remote_target
        routes = [NameAddr.parse(r).uri for r in self.route_set]
        uri, route_headers = target, list(self.route_set)
        if routes and "lr" not in SipUri.parse(routes[0]).params:
            uri, route_headers = routes[0], [*self.route_set[1:], f"<{target}>"]
        contact = hostport(self.server.host_addr, self.server.port)
        req = SipMessage(method=method, uri=uri)
        req.add("via", f"SIP/2.0/UDP {contact};branch={new_branch()};rport")
        for route in route_headers:
            req.add("route", route)
        req.add("max-forwards", "70")
        req.add("from", self.local_party)
        req.add("to", self.remote_party)
        req.add("call-id", self.sip_call_id)
        req.add("cseq", f"{self.local_cseq} {method}")
        req.add("contact", f"<sip:{contact}>")
        req.add("user-agent", self.server.cfg.user_agent)
        for name, value in headers or []:
            req.add(name, value)
        req.body = body
        return req, routes[0] if routes else target

    async def request(self, method: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> SipMessage | None:
        """Sends an in-dialog request and waits for its final response; None when none came."""
        req, next_hop = self.build_request(method, headers, body)
        try:
            addr = await resolve(next_hop)
        except (ValueError, OSError):
            log.warning("sip request has no reachable destination", extra={"call_id": self.call_id, "method": method})
            return None
        return await self.server.send_request(req, addr, self.call_id)

    # ---- offer/answer ------------------------------------------------------------------------

    def next_sdp_version(self) -> int:
        self.sdp_version += 1
        return self.sdp_version

    def local_sdp(self, offer: sdp.SessionDescription | None, chosen: sdp.Negotiated | None, port: int) -> bytes:
        """The SDP for our 200 to an (re-)INVITE: the answer to ``offer`` (applied to the RTP session), or,
        for an INVITE without one, our offer, whose answer then comes in the ACK."""
        version = self.next_sdp_version()
        host = self.server.host_addr
        if offer is not None and chosen is not None:
            self.apply(chosen)
            return sdp.build_answer(offer, chosen, host, port, self.sdp_session_id, version).encode()
        self.offer_pending = True
        return sdp.build_offer(host, port, self.server.cfg.codecs, self.sdp_session_id, version).encode()

    def apply(self, chosen: sdp.Negotiated) -> None:
        """Points the RTP session at what was negotiated (new address, codec, hold/resume)."""
        rtp = self.rtp
        if rtp is None:
            return
        old = self.negotiated
        if self.in_use != (chosen.codec, chosen.dtmf):
            rtp.set_codec(*rtp_codecs(chosen.codec, chosen.dtmf))
            self.in_use = (chosen.codec, chosen.dtmf)
        if not sdp.is_null_address(chosen.remote_host) and (
                old is None or (old.remote_host, old.remote_port) != (chosen.remote_host, chosen.remote_port)):
            rtp.set_remote(chosen.remote_host, chosen.remote_port)
        if old is None or old.direction != chosen.direction:
            rtp.set_direction(chosen.direction)
        self.negotiated = chosen


def rtp_codecs(codec: sdp.Format, dtmf: sdp.Format | None) -> tuple[Codec, Codec | None]:
    """The RTP session's audio codec and telephone-event for formats from the SDP."""
    return (Codec(codec.name, codec.payload_type, codec.clock_rate),
            Codec(dtmf.name, dtmf.payload_type, dtmf.clock_rate) if dtmf else None)
