"""``SipServer``: the bridge as a SIP user agent server on UDP (RFC 3261, RFC 3264, RFC 3581, RFC 3515).

An INVITE becomes a call on the ``CallHost``: 100 Trying, the SDP answer once the RTP session is bound,
the 200 OK retransmitted until the ACK, then the call loop until one side sends BYE. In the dialog the
caller may put the bot on hold (re-INVITE), press keys (RTP or INFO), or leave (BYE); the bot may hang
up (BYE) or transfer the caller (REFER).

The server owns the socket and the transactions (retransmissions, Timers E-J via ``Timers``) and
dispatches each request; per-call state and the requests sent in a call live in ``dialog.Dialog``.

Everything arriving is untrusted: a message that is too large, malformed or not SIP is counted
(``voiceai_sip_bad_messages_total{reason}``), answered 400 when it can be, and otherwise dropped; no
message stops the server. Logs carry no phone numbers except in the ``pii`` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from media_bridge.channels import SipConfig
from media_bridge.host import CallHost, CallSpec
from media_bridge.sip import sdp
from media_bridge.sip.dialog import Dialog, hostport, new_tag, rtp_codecs
from media_bridge.sip.message import (
    REASONS,
    SipMessage,
    SipParseError,
    SipUri,
    answerable,
    make_response,
    parse_message,
)
from media_bridge.sip.rtp import RtpSession
from media_bridge.sip.transport import SipCallTransport
from voiceai.tasks import TaskSet

log = logging.getLogger(__name__)

BAD_MESSAGES = Counter("voiceai_sip_bad_messages_total", "SIP datagrams rejected, by reason.", ["reason"])
REQUESTS = Counter("voiceai_sip_requests_total", "SIP requests received, by method.", ["method"])
RESPONSES = Counter("voiceai_sip_responses_total", "SIP responses sent, by status code.", ["code"])
SETUP_SECONDS = Histogram("voiceai_sip_setup_seconds", "From an INVITE received to its 200 OK sent.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

STOP_BYE_S = 2.0  # at shutdown, how long BYEs may wait for their 200
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY"
KNOWN_METHODS = {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO", "PRACK", "SUBSCRIBE", "NOTIFY",
                 "UPDATE", "MESSAGE", "REFER", "PUBLISH"}

# The called user and the tenant that answers: (tenant_id, tenant_name); LookupError: no such number.
TenantLookup = Callable[[str], Awaitable[tuple[str, str]]]


@dataclass(frozen=True)
class Timers:
    """RFC 3261 §17 timer values; the defaults are the RFC's (tests shorten them)."""

    t1_s: float = 0.5  # round-trip estimate: the first retransmission interval
    t2_s: float = 4.0  # the longest retransmission interval

    @property
    def transaction_s(self) -> float:
        """Timers B/F/H/J (64×T1): how long a transaction lives, and how long a 2xx waits for its ACK."""
        return 64 * self.t1_s


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
    call: Dialog | None = None


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


class SipServer:
    """The SIP user agent: answers INVITEs with calls on ``host`` (see the module docstring)."""

    def __init__(self, host: CallHost, cfg: SipConfig, tenant_for: TenantLookup, timers: Timers | None = None) -> None:
        self.host = host
        self.cfg = cfg
        self.tenant_for = tenant_for
        self.timers = timers or Timers()
        self.host_addr = cfg.public_address or cfg.bind  # written into Contact, Via and SDP
        self.port = cfg.port or 0
        self.calls: dict[tuple[str, str], Dialog] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._server_txns: dict[tuple[str, str, int, str], _ServerTxn] = {}
        self._client_txns: dict[tuple[str, str], asyncio.Future[SipMessage]] = {}
        self._tasks = TaskSet(log, "sip task failed")
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

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Runs ``coro`` as a task the server tracks (and cancels at ``stop``); failures are logged."""
        return self._tasks.spawn(coro, name)

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
            resp = make_response(request, status, reason, to_tag=new_tag())
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
        asyncio.get_running_loop().call_later(self.timers.transaction_s + 5, self._server_txns.pop, key, None)
        if method == "INVITE":
            self.spawn(self._on_invite(txn), "sip-invite")
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
        resp = make_response(req, status, reason, to_tag=to_tag or (txn.call.local_tag if txn.call else new_tag()))
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
            self.spawn(self._resend_until(data, txn.addr, ack, txn.call if status < 300 else None),
                        f"sip-resend-{status}")

    async def _resend_until(self, data: bytes, addr: tuple[str, int], acked: asyncio.Event,
                            call: Dialog | None) -> None:
        """Resends a final INVITE response until ``acked`` (Timers G/H); a 2xx never ACKed ends its call."""
        interval = self.timers.t1_s
        deadline = time.monotonic() + self.timers.transaction_s
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acked.wait(), min(interval, deadline - time.monotonic()))
            if acked.is_set() or (call is not None and call.state == "terminated"):
                return
            if time.monotonic() >= deadline:
                break
            self._send(data, addr)
            interval = min(interval * 2, self.timers.t2_s)
        if call is not None and call.state != "terminated":
            log.warning("sip ack never came; ending the call", extra={"call_id": call.call_id})
            if call.session is not None:
                await call.session.hangup("no_ack")
            await call.bye(wait_ack=False)

    def _call_for(self, req: SipMessage) -> Dialog | None:
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
        if call is not None:
            call.on_ack(req)  # the ACK of a 2xx is its own transaction, the dialog's

    def _dialog_for(self, txn: _ServerTxn) -> Dialog | None:
        """The dialog of an in-dialog request, its CSeq taken; None once answered 481 or 500."""
        call = self._call_for(txn.request)
        if call is None or call.state == "terminated":
            self._respond(txn, 481)
            return None
        txn.call = call
        if not call.accept_cseq(txn.request.cseq[0]):
            self._respond(txn, 500, "CSeq out of order")
            return None
        return call

    def _in_dialog(self, txn: _ServerTxn, method: str) -> None:
        call = self._dialog_for(txn)
        if call is not None:
            self._respond(txn, 200)
            call.on_request(method, txn.request)

    # ---- INVITE ------------------------------------------------------------------------------

    def _answer_headers(self, txn: _ServerTxn, record_route: bool = True) -> list[tuple[str, str]]:
        """Headers of our 200 to an INVITE; a re-INVITE's leaves out the Record-Route (the route set is set)."""
        headers = [("record-route", rr) for rr in txn.request.get_all("record-route")] if record_route else []
        return [*headers, ("contact", f"<sip:{hostport(self.host_addr, self.port)}>"), ("allow", ALLOW),
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

    def _negotiate(self, txn: _ServerTxn) -> tuple[sdp.SessionDescription | None, sdp.Negotiated | None] | None:
        """The (re-)INVITE's offer and what we choose from it, (None, None) without an offer; None once the
        offer has been rejected (400, 415 or 488)."""
        try:
            offer = self._offer_from(txn)
            return offer, sdp.negotiate(offer, self.cfg.codecs) if offer is not None else None
        except (sdp.SdpError, sdp.NotAcceptable, ValueError) as err:
            self._reject_offer(txn, err)
            return None

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
        negotiated = self._negotiate(txn)
        if negotiated is None:
            return
        call = Dialog(self, req)
        txn.call = call
        self.calls[call.key] = call
        try:
            await self._run_call(call, txn, *negotiated, started)
        finally:
            self.calls.pop(call.key, None)
            if call.rtp is not None:
                with contextlib.suppress(Exception):
                    await call.rtp.close()

    async def _run_call(self, call: Dialog, txn: _ServerTxn, offer: sdp.SessionDescription | None,
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
        rtp = RtpSession(self.cfg.bind, (self.cfg.rtp_port_min, self.cfg.rtp_port_max), *rtp_codecs(codec, dtmf),
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
        body = call.local_sdp(offer, chosen, port)
        call.answered = True
        self._respond(txn, 200, headers=self._answer_headers(txn), body=body)
        SETUP_SECONDS.observe(time.monotonic() - started)
        log.info("sip call answered", extra={
            "call_id": call.call_id, "codec": codec.name, "setup_ms": round((time.monotonic() - started) * 1000, 1),
            "caller": _masked(call.caller_user), "pii": {"caller": call.caller_user, "called": called}})
        spec = CallSpec(call.call_id, tenant_id, tenant_name, "sip", self.cfg.language,
                        caller_id=call.caller_user)
        try:
            await self.host.run(spec, SipCallTransport(rtp, call, call.call_id), call.feed)
        finally:
            if not self._stopping:  # stop() sends (and bounds) the BYEs itself
                await call.bye()  # the bot hung up (no-op when the caller did)

    async def _on_reinvite(self, txn: _ServerTxn) -> None:
        call = self._dialog_for(txn)
        if call is None:
            return
        if call.rtp is None:
            self._respond(txn, 491)
            return
        negotiated = self._negotiate(txn)
        if negotiated is None:
            return  # the call goes on as it was
        offer, chosen = negotiated
        body = call.local_sdp(offer, chosen, call.rtp.port)
        if chosen is not None:
            log.info("sip re-invite", extra={"call_id": call.call_id, "direction": chosen.direction,
                                             "on_hold": chosen.on_hold})
        self._respond(txn, 200, headers=self._answer_headers(txn, record_route=False), body=body)

    # ---- requests we send --------------------------------------------------------------------

    async def send_request(self, req: SipMessage, addr: tuple[str, int], call_id: str) -> SipMessage | None:
        """Sends ``req`` to ``addr`` as a client transaction, retransmitting (Timers E/F) until its final
        response, which it returns; None when none came within 64×T1."""
        future: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        method = req.method
        key = (req.vias[0].branch, method)
        self._client_txns[key] = future
        data = req.to_bytes()
        interval = self.timers.t1_s
        deadline = time.monotonic() + self.timers.transaction_s
        try:
            while True:
                self._send(data, addr)
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info("sip request timed out", extra={"call_id": call_id, "method": method})
                    return None
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), min(interval, left))
                interval = min(interval * 2, self.timers.t2_s)
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


__all__ = ["REASONS", "SipServer", "Timers"]
