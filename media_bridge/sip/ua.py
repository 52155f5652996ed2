"""``SipServer``: the bridge as a SIP user agent server on UDP (RFC 3261, RFC 3264, RFC 3581, RFC 3515).

An INVITE becomes a call on the ``CallHost``: 100 Trying, the SDP answer once the RTP session is bound,
the 200 OK retransmitted until the ACK, then the call loop until one side sends BYE. In the dialog the
caller may put the bot on hold (re-INVITE), press keys (RTP or INFO), or leave (BYE); the bot may hang
up (BYE) or transfer the caller (REFER).

Everything arriving is untrusted: a message that is too large, malformed or not SIP is counted
(``voiceai_sip_bad_messages_total{reason}``), answered 400 when it can be, and otherwise dropped; no
message stops the server. Logs carry no phone numbers except in the ``pii`` field.
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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from media_bridge.channels import SipConfig
from media_bridge.host import CallHost, CallSpec
from media_bridge.session import CallSession
from media_bridge.sip import sdp
from media_bridge.sip.message import (
    REASONS,
    NameAddr,
    SipMessage,
    SipParseError,
    SipUri,
    answerable,
    make_response,
    parse_message,
)
from media_bridge.sip.rtp import Codec, RtpSession
from media_bridge.sip.transport import SipCallTransport

log = logging.getLogger(__name__)

BAD_MESSAGES = Counter("voiceai_sip_bad_messages_total", "SIP datagrams rejected, by reason.", ["reason"])
REQUESTS = Counter("voiceai_sip_requests_total", "SIP requests received, by method.", ["method"])
RESPONSES = Counter("voiceai_sip_responses_total", "SIP responses sent, by status code.", ["code"])
SETUP_SECONDS = Histogram("voiceai_sip_setup_seconds", "From an INVITE received to its 200 OK sent.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

T1_S = 0.5  # RFC 3261 §17.1.1.1 round-trip estimate
T2_S = 4.0  # longest retransmission interval
TRANSACTION_S = 64 * T1_S  # Timers B/F/H/J: how long a transaction lives
STOP_BYE_S = 2.0  # at shutdown, how long BYEs may wait for their 200
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY"
KNOWN_METHODS = {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO", "PRACK", "SUBSCRIBE", "NOTIFY",
                 "UPDATE", "MESSAGE", "REFER", "PUBLISH"}
_SIPFRAG_STATUS = re.compile(rb"^\s*SIP/2\.0\s+([1-6][0-9]{2})")

# The called user and the tenant that answers: (tenant_id, tenant_name); LookupError: no such number.
TenantLookup = Callable[[str], Awaitable[tuple[str, str]]]


def _new_tag() -> str:
    return uuid.uuid4().hex[:16]


def _new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _masked(user: str) -> str:
    """A caller's number for logs outside the PII field: its last two digits only."""
    return ("*" * max(0, len(user) - 2)) + user[-2:] if user else ""


@dataclass
class _ServerTxn:
    """A request we answer: its last response is resent when the request is retransmitted."""

    request: SipMessage
    addr: tuple[str, int]
    last: bytes | None = None
    status: int = 0
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    call: _Call | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        try:
            self.server._on_datagram(data, (addr[0], addr[1]))
        except Exception:  # one bad message never stops the server
            log.exception("sip datagram handling failed")

    def error_received(self, exc: Exception) -> None:
        log.debug("sip socket error", extra={"error": repr(exc)})


class _Call:
    """One call's dialog (we are the UAS) and its media; implements ``DialogControl`` for the transport."""

    def __init__(self, server: SipServer, invite: SipMessage, txn: _ServerTxn) -> None:
        self.server = server
        self.invite = invite
        self.txn = txn
        self.call_id = uuid.uuid4().hex  # ours; the SIP Call-ID stays in SIP
        self.sip_call_id = invite.call_id
        self.local_tag = _new_tag()
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

    # ---- ending ------------------------------------------------------------------------------

    def remote_ended(self, reason: str) -> None:
        """The caller hung up (BYE) or the dialog failed: the session ends with ``reason``."""
        self.state = "terminated"
        if self.session is not None:
            self.server._spawn(self.session.hangup(reason), f"sip-hangup-{self.call_id}")
        self.ended.set()

    async def bye(self, wait_ack: bool = True) -> None:
        """Ends the dialog from our side (bot hang-up, transfer done, shutdown); safe to call twice.

        A dialog whose 200 OK is not yet acknowledged waits for the ACK first (RFC 3261 §15)."""
        if self._bye_task is None:
            if self.state == "early" and self.answered and wait_ack and self.acks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.wait([asyncio.ensure_future(e.wait()) for e in self.acks.values()]),
                                           TRANSACTION_S)
            if self.state == "terminated" or self._bye_task is not None or not self.answered:
                self.state = "terminated"
                self.ended.set()
                if self._bye_task is None:
                    return
            else:
                self.state = "terminated"
                self._bye_task = self.server._spawn(self.server._request(self, "BYE"), f"sip-bye-{self.call_id}")
        # Shielded: a cancelled caller (the session's transfer timeout) leaves the BYE retransmitting.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._bye_task)
        self.ended.set()

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
        resp = await self.server._request(self, "REFER", headers)
        if resp is None or not 200 <= resp.status < 300:
            log.info("sip transfer refused", extra={"call_id": self.call_id, "status": resp.status if resp else 0})
            return False
        try:
            code = await asyncio.wait_for(self.notify_waiter, TRANSACTION_S)
        except TimeoutError:
            return False
        if not 200 <= code < 300:
            log.info("sip transfer failed", extra={"call_id": self.call_id, "status": code})
            return False
        await self.bye()
        return True

    # ---- offer/answer ------------------------------------------------------------------------

    def next_sdp_version(self) -> int:
        self.sdp_version += 1
        return self.sdp_version

    def apply(self, chosen: sdp.Negotiated) -> None:
        """Points the RTP session at what was negotiated (new address, codec, hold/resume)."""
        rtp = self.rtp
        if rtp is None:
            return
        old = self.negotiated
        if self.in_use != (chosen.codec, chosen.dtmf):
            dtmf = chosen.dtmf
            rtp.set_codec(Codec(chosen.codec.name, chosen.codec.payload_type, chosen.codec.clock_rate),
                          Codec(dtmf.name, dtmf.payload_type, dtmf.clock_rate) if dtmf else None)
            self.in_use = (chosen.codec, chosen.dtmf)
        if not sdp.is_null_address(chosen.remote_host) and (
                old is None or (old.remote_host, old.remote_port) != (chosen.remote_host, chosen.remote_port)):
            rtp.set_remote(chosen.remote_host, chosen.remote_port)
        if old is None or old.direction != chosen.direction:
            rtp.set_direction(chosen.direction)
        self.negotiated = chosen


class SipServer:
    """The SIP user agent: answers INVITEs with calls on ``host`` (see the module docstring)."""

    def __init__(self, host: CallHost, cfg: SipConfig, tenant_for: TenantLookup) -> None:
        self.host = host
        self.cfg = cfg
        self.tenant_for = tenant_for
        self.host_addr = cfg.public_address or cfg.bind  # written into Contact, Via and SDP
        self.port = cfg.port or 0
        self.calls: dict[tuple[str, str], _Call] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._server_txns: dict[tuple[str, str, int, str], _ServerTxn] = {}
        self._client_txns: dict[tuple[str, str], asyncio.Future[SipMessage]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._bad_logged: dict[str, float] = {}

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds UDP ``cfg.bind:cfg.port`` (TCP is not served)."""
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.cfg.bind, self.cfg.port or 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        if self.cfg.tcp:
            log.warning("sip over tcp is not served; udp only")
        log.info("sip listening", extra={"bind": self.cfg.bind, "port": self.port})

    async def stop(self) -> None:
        """Ends every call (BYE, bounded), then closes the socket."""
        self._stopping = True
        for call in list(self.calls.values()):
            call.cancelled = True
        byes = [call.bye(wait_ack=False) for call in list(self.calls.values())]
        if byes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*byes, return_exceptions=True), STOP_BYE_S)
        for call in list(self.calls.values()):
            call.remote_ended("shutdown")
        calls = [t for t in self._tasks if t.get_name() == "sip-invite" and not t.done()]
        if calls:  # each ends when its session has cleaned up
            await asyncio.wait(calls, timeout=5.0)
        rest = [t for t in self._tasks if not t.done()]  # retransmissions, BYEs still waiting
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sip task failed", exc_info=task.exception(), extra={"task": task.get_name()})

    # ---- wire --------------------------------------------------------------------------------

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _bad(self, reason: str, addr: tuple[str, int], detail: str = "") -> None:
        BAD_MESSAGES.labels(reason).inc()
        now = time.monotonic()
        if now - self._bad_logged.get(reason, -1.0) >= 1.0:  # a flood is counted, logged once a second
            self._bad_logged[reason] = now
            log.info("sip message rejected", extra={"reason": reason, "detail": detail, "peer": addr[0]})

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > self.cfg.max_message_bytes:
            self._bad("too_large", addr, f"{len(data)} bytes")
            return
        if not data.strip():
            return  # keep-alive (RFC 5626 CRLF)
        try:
            msg = parse_message(data)
        except SipParseError as err:
            self._bad(err.reason, addr, err.detail)
            if answerable(err.partial):
                assert err.partial is not None
                self._answer_stateless(err.partial, addr, err.status, err.detail)
            return
        if msg.is_request:
            method = msg.method.upper()
            REQUESTS.labels(method if method in KNOWN_METHODS else "other").inc()
            self._on_request(msg, addr)
        else:
            self._on_response(msg)

    def _response_addr(self, request: SipMessage, addr: tuple[str, int]) -> tuple[str, int]:
        """RFC 3261 §18.2.2 with RFC 3581: maddr, else received/rport, else the sent-by."""
        via = request.vias[0]
        if via.params.get("maddr"):
            return via.params["maddr"], via.port or 5060
        host = via.params.get("received") or via.host
        rport = via.params.get("rport")
        return host, int(rport) if rport and rport.isdigit() else (via.port or 5060)

    def _stamp_via(self, request: SipMessage, addr: tuple[str, int]) -> None:
        vias = request.get_all("via")
        top = request.vias[0]
        if top.host != addr[0]:
            top.params["received"] = addr[0]
        if "rport" in top.params:
            top.params["rport"] = str(addr[1])
            top.params["received"] = addr[0]
        request.remove("via")
        for value in [str(top), *vias[1:]]:
            request.add("via", value)

    def _answer_stateless(self, request: SipMessage, addr: tuple[str, int], status: int, reason: str) -> None:
        with contextlib.suppress(ValueError):
            self._stamp_via(request, addr)
            resp = make_response(request, status, reason, to_tag=_new_tag())
            resp.add("server", self.cfg.user_agent)
            self._send(resp.to_bytes(), self._response_addr(request, addr))
            RESPONSES.labels(str(status)).inc()

    # ---- requests ----------------------------------------------------------------------------

    @staticmethod
    def _txn_key(request: SipMessage, method: str) -> tuple[str, str, int, str]:
        return (request.vias[0].branch, request.call_id, request.cseq[0], method)

    def _on_request(self, req: SipMessage, addr: tuple[str, int]) -> None:
        self._stamp_via(req, addr)
        method = req.method.upper()
        if method == "ACK":
            self._on_ack(req)
            return
        key = self._txn_key(req, method)
        known = self._server_txns.get(key)
        if known is not None:  # a retransmission: answered from the transaction
            if known.last is not None:
                self._send(known.last, known.addr)
            return
        txn = _ServerTxn(req, self._response_addr(req, addr))
        self._server_txns[key] = txn
        asyncio.get_running_loop().call_later(TRANSACTION_S + 5, self._server_txns.pop, key, None)
        if method == "INVITE":
            self._spawn(self._on_invite(txn), "sip-invite")
        elif method == "CANCEL":
            self._on_cancel(txn)
        elif method == "OPTIONS":
            self._respond(txn, 200, headers=[("allow", ALLOW), ("accept", "application/sdp"),
                                             ("accept-language", "en, ar")])
        elif method in ("BYE", "INFO", "NOTIFY"):
            self._in_dialog(txn, method)
        elif method in KNOWN_METHODS:
            self._respond(txn, 405, headers=[("allow", ALLOW)])
        else:
            self._respond(txn, 501, headers=[("allow", ALLOW)])

    def _respond(self, txn: _ServerTxn, status: int, reason: str | None = None,
                 headers: list[tuple[str, str]] | None = None, body: bytes = b"", to_tag: str = "") -> None:
        req = txn.request
        resp = make_response(req, status, reason, to_tag=to_tag or (txn.call.local_tag if txn.call else _new_tag()))
        resp.add("server", self.cfg.user_agent)
        for name, value in headers or []:
            resp.add(name, value)
        resp.body = body
        data = resp.to_bytes()
        txn.last = data
        txn.status = status
        self._send(data, txn.addr)
        RESPONSES.labels(str(status)).inc()
        if status >= 200 and req.method.upper() == "INVITE":
            # Final INVITE responses (2xx from the dialog, others from the transaction) are resent
            # until the ACK (Timers G/H; RFC 3261 §13.3.1.4).
            ack = txn.acked
            if 200 <= status < 300 and txn.call is not None:
                ack = txn.call.acks.setdefault(req.cseq[0], asyncio.Event())
            self._spawn(self._resend_until(data, txn.addr, ack, txn.call if status < 300 else None),
                        f"sip-resend-{status}")

    async def _resend_until(self, data: bytes, addr: tuple[str, int], acked: asyncio.Event, call: _Call | None) -> None:
        interval = T1_S
        deadline = time.monotonic() + TRANSACTION_S
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acked.wait(), min(interval, deadline - time.monotonic()))
            if acked.is_set() or (call is not None and call.state == "terminated"):
                return
            if time.monotonic() >= deadline:
                break
            self._send(data, addr)
            interval = min(interval * 2, T2_S)
        if call is not None and call.state != "terminated":
            log.warning("sip ack never came; ending the call", extra={"call_id": call.call_id})
            if call.session is not None:
                await call.session.hangup("no_ack")
            await call.bye(wait_ack=False)

    def _call_for(self, req: SipMessage) -> _Call | None:
        return self.calls.get((req.call_id, req.to.tag))

    def _on_cancel(self, txn: _ServerTxn) -> None:
        invite = self._server_txns.get(self._txn_key(txn.request, "INVITE"))
        if invite is None:
            self._respond(txn, 481)
            return
        self._respond(txn, 200)
        if invite.status < 200 and invite.call is not None:
            call = invite.call
            call.cancelled = True
            self._respond(invite, 487)
            self.calls.pop(call.key, None)
            call.remote_ended("cancelled")

    def _on_ack(self, req: SipMessage) -> None:
        txn = self._server_txns.get(self._txn_key(req, "INVITE"))
        if txn is not None and txn.status >= 300:
            txn.acked.set()  # ACK of an error response: same transaction
            return
        call = self._call_for(req)
        if call is None:
            return
        acked = call.acks.pop(req.cseq[0], None)
        if acked is None:
            return
        acked.set()
        if call.state == "early":
            call.state = "confirmed"
        if call.offer_pending:
            call.offer_pending = False
            try:
                call.apply(sdp.accept_answer(sdp.parse_sdp(req.body), self.cfg.codecs))
            except (sdp.SdpError, sdp.NotAcceptable) as err:
                log.info("sip answer in ack unusable; ending the call", extra={"call_id": call.call_id,
                                                                             "detail": str(err)})
                self._spawn(call.bye(), f"sip-bye-{call.call_id}")

    def _in_dialog(self, txn: _ServerTxn, method: str) -> None:
        req = txn.request
        call = self._call_for(req)
        if call is None or call.state == "terminated":
            self._respond(txn, 481)
            return
        txn.call = call
        cseq = req.cseq[0]
        if cseq <= call.remote_cseq:
            self._respond(txn, 500, "CSeq out of order")
            return
        call.remote_cseq = cseq
        if method == "BYE":
            self._respond(txn, 200)
            log.info("sip caller hung up", extra={"call_id": call.call_id})
            call.remote_ended("hangup")
        elif method == "INFO":
            self._respond(txn, 200)
            if req.get("content-type").lower().startswith("application/dtmf-relay"):
                self._dtmf_info(call, req.body)
        else:  # NOTIFY about our REFER
            self._respond(txn, 200)
            match = _SIPFRAG_STATUS.match(req.body)
            waiter = call.notify_waiter
            if match and waiter is not None and not waiter.done() and int(match.group(1)) >= 200:
                waiter.set_result(int(match.group(1)))

    def _dtmf_info(self, call: _Call, body: bytes) -> None:
        fields = {}
        for line in body.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition("=")
            fields[name.strip().lower()] = value.strip()
        digit = fields.get("signal", "")
        if len(digit) == 1 and digit in "0123456789*#ABCD":
            duration = int(fields["duration"]) if fields.get("duration", "").isdigit() else 0
            self._spawn(call.on_dtmf(digit, duration), f"sip-dtmf-{call.call_id}")

    # ---- INVITE ------------------------------------------------------------------------------

    def _answer_headers(self, txn: _ServerTxn) -> list[tuple[str, str]]:
        headers = [("record-route", rr) for rr in txn.request.get_all("record-route")]
        return [*headers, ("contact", f"<sip:{_hostport(self.host_addr, self.port)}>"), ("allow", ALLOW),
                ("content-type", "application/sdp")]

    def _offer_from(self, txn: _ServerTxn) -> sdp.SessionDescription | None:
        """The request's SDP offer, None when it has none; raises SdpError / ValueError (415)."""
        req = txn.request
        if not req.body:
            return None
        content_type = req.get("content-type").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            raise ValueError("content type")
        return sdp.parse_sdp(req.body)

    def _reject_offer(self, txn: _ServerTxn, err: Exception) -> None:
        if isinstance(err, sdp.NotAcceptable):
            self._respond(txn, 488, headers=[("warning", f'{err.warning_code} {self.host_addr} "{err.text}"')])
        elif isinstance(err, sdp.SdpError):
            self._bad("bad_sdp", txn.addr, str(err))
            self._respond(txn, 400, "Bad SDP")
        else:
            self._respond(txn, 415, headers=[("accept", "application/sdp")])

    async def _on_invite(self, txn: _ServerTxn) -> None:
        req = txn.request
        if req.to.tag:
            await self._on_reinvite(txn)
            return
        started = time.monotonic()
        if len(self.calls) >= self.cfg.max_calls:
            self._respond(txn, 486)
            return
        self._respond(txn, 100)
        try:
            offer = self._offer_from(txn)
            chosen = sdp.negotiate(offer, self.cfg.codecs) if offer is not None else None
        except (sdp.SdpError, sdp.NotAcceptable, ValueError) as err:
            self._reject_offer(txn, err)
            return
        call = _Call(self, req, txn)
        txn.call = call
        self.calls[call.key] = call
        try:
            await self._run_call(call, txn, offer, chosen, started)
        finally:
            self.calls.pop(call.key, None)
            if call.rtp is not None:
                with contextlib.suppress(Exception):
                    await call.rtp.close()

    async def _run_call(self, call: _Call, txn: _ServerTxn, offer: sdp.SessionDescription | None,
                        chosen: sdp.Negotiated | None, started: float) -> None:
        req = txn.request
        try:
            called = SipUri.parse(req.uri).user
        except ValueError:
            called = ""
        try:
            tenant_id, tenant_name = await self.tenant_for(called)
        except LookupError:
            self._respond(txn, 404)
            return
        except Exception:
            log.exception("sip tenant lookup failed", extra={"call_id": call.call_id})
            self._respond(txn, 503)
            return
        if call.cancelled:
            return
        formats = sdp.our_formats(self.cfg.codecs)
        codec, dtmf = (chosen.codec, chosen.dtmf) if chosen is not None else (formats[0], formats[-1])
        call.in_use = (codec, dtmf)
        rtp = RtpSession(self.cfg.bind, (self.cfg.rtp_port_min, self.cfg.rtp_port_max),
                         Codec(codec.name, codec.payload_type, codec.clock_rate),
                         Codec(dtmf.name, dtmf.payload_type, dtmf.clock_rate) if dtmf else None,
                         call.on_audio, call.on_dtmf, jitter_ms=self.cfg.jitter_ms, call_id=call.call_id)
        call.rtp = rtp
        try:
            port = await rtp.start()
        except Exception:
            log.exception("sip rtp session failed to start", extra={"call_id": call.call_id})
            self._respond(txn, 503)
            return
        if call.cancelled:
            return
        if offer is not None and chosen is not None:
            call.apply(chosen)
            body = sdp.build_answer(offer, chosen, self.host_addr, port, call.sdp_session_id, call.next_sdp_version())
        else:
            call.offer_pending = True
            body = sdp.build_offer(self.host_addr, port, self.cfg.codecs, call.sdp_session_id,
                                   call.next_sdp_version())
        call.answered = True
        self._respond(txn, 200, headers=self._answer_headers(txn), body=body.encode())
        SETUP_SECONDS.observe(time.monotonic() - started)
        log.info("sip call answered", extra={
            "call_id": call.call_id, "codec": codec.name, "setup_ms": round((time.monotonic() - started) * 1000, 1),
            "caller": _masked(call.caller_user), "pii": {"caller": call.caller_user, "called": called}})
        spec = CallSpec(call.call_id, tenant_id, tenant_name, "sip", self.cfg.language, greeting=True,
                        caller_id=call.caller_user)
        try:
            await self.host.run(spec, SipCallTransport(rtp, call, call.call_id), call.feed)
        finally:
            if not self._stopping:  # stop() sends (and bounds) the BYEs itself
                await call.bye()  # the bot hung up (no-op when the caller did)

    async def _on_reinvite(self, txn: _ServerTxn) -> None:
        req = txn.request
        call = self._call_for(req)
        if call is None or call.state == "terminated":
            self._respond(txn, 481)
            return
        if req.cseq[0] <= call.remote_cseq:
            self._respond(txn, 500, "CSeq out of order")
            return
        call.remote_cseq = req.cseq[0]
        txn.call = call
        if call.rtp is None:
            self._respond(txn, 491)
            return
        try:
            offer = self._offer_from(txn)
            chosen = sdp.negotiate(offer, self.cfg.codecs) if offer is not None else None
        except (sdp.SdpError, sdp.NotAcceptable, ValueError) as err:
            self._reject_offer(txn, err)  # the call goes on as it was
            return
        version = call.next_sdp_version()
        if offer is not None and chosen is not None:
            call.apply(chosen)
            body = sdp.build_answer(offer, chosen, self.host_addr, call.rtp.port, call.sdp_session_id, version)
            log.info("sip re-invite", extra={"call_id": call.call_id, "direction": chosen.direction,
                                             "on_hold": chosen.on_hold})
        else:
            call.offer_pending = True
            body = sdp.build_offer(self.host_addr, call.rtp.port, self.cfg.codecs, call.sdp_session_id, version)
        self._respond(txn, 200, headers=self._answer_headers(txn)[len(req.get_all("record-route")):],
                      body=body.encode())

    # ---- requests we send --------------------------------------------------------------------

    async def _destination(self, uri: str) -> tuple[str, int]:
        parsed = SipUri.parse(uri)
        host = parsed.params.get("maddr") or parsed.host
        port = parsed.port or 5060
        try:
            ipaddress.ip_address(host)
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            host = str(infos[0][4][0])
        return host, port

    async def _request(self, call: _Call, method: str, headers: list[tuple[str, str]] | None = None,
                       body: bytes = b"") -> SipMessage | None:
        """Sends an in-dialog request and waits for its final response (Timers E/F); None on timeout."""
        call.local_cseq += 1
        target = call.remote_target
        routes = [NameAddr.parse(r).uri for r in call.route_set]
        uri, route_headers = target, list(call.route_set)
        if routes and "lr" not in SipUri.parse(routes[0]).params:  # strict router (RFC 2543)
            uri, route_headers = routes[0], [*call.route_set[1:], f"<{target}>"]
        branch = _new_branch()
        req = SipMessage(method=method, uri=uri)
        req.add("via", f"SIP/2.0/UDP {_hostport(self.host_addr, self.port)};branch={branch};rport")
        for route in route_headers:
            req.add("route", route)
        req.add("max-forwards", "70")
        req.add("from", call.local_party)
        req.add("to", call.remote_party)
        req.add("call-id", call.sip_call_id)
        req.add("cseq", f"{call.local_cseq} {method}")
        req.add("contact", f"<sip:{_hostport(self.host_addr, self.port)}>")
        req.add("user-agent", self.cfg.user_agent)
        for name, value in headers or []:
            req.add(name, value)
        req.body = body
        try:
            addr = await self._destination(routes[0] if routes else target)
        except (ValueError, OSError):
            log.warning("sip request has no reachable destination", extra={"call_id": call.call_id, "method": method})
            return None
        future: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        key = (branch, method)
        self._client_txns[key] = future
        data = req.to_bytes()
        interval = T1_S
        deadline = time.monotonic() + TRANSACTION_S
        try:
            while True:
                self._send(data, addr)
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info("sip request timed out", extra={"call_id": call.call_id, "method": method})
                    return None
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), min(interval, left))
                interval = min(interval * 2, T2_S)
        finally:
            self._client_txns.pop(key, None)

    def _on_response(self, resp: SipMessage) -> None:
        try:
            key = (resp.vias[0].branch, resp.cseq[1])
        except (ValueError, IndexError):
            return
        future = self._client_txns.get(key)
        if future is not None and not future.done() and resp.status >= 200:
            future.set_result(resp)


__all__ = ["REASONS", "SipServer"]
