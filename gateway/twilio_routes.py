"""Twilio Media Streams routes: the signed voice webhook (answers TwiML) and the stream WebSocket.

Both answer 404 unless ``channels.twilio.auth_token`` is set. The handler is built once at startup
(this router's lifespan, which FastAPI runs inside the app's, after the platform and the call host):
the answering tenant is resolved there, so a ``channels.twilio.tenant`` that does not exist (or no
tenant at all: neither it nor ``auth.anonymous_calls_tenant`` set) stops the gateway from starting with
a message saying so, as a bad ``auth.anonymous_calls_tenant`` does, rather than failing live calls.

The webhook is authenticated by Twilio's signature; the stream by the one-call token the webhook put in
its TwiML (``calls.join`` for that call id, one join). The token is checked even with ``auth.enabled``
false: the gateway issued it for exactly this stream.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, Response

from gateway.auth.deps import AuthContext, Principal, authorize
from gateway.auth.roles import Permission
from gateway.auth.tokens import AuthError, issue_call_token, verify
from gateway.calls_ws import JOIN_REFUSED
from media_bridge.channels import TwilioConfig
from media_bridge.host import CallHost, CallSpec
from media_bridge.twilio import (
    REJECTED,
    STREAM_PATH,
    Receive,
    StreamRefused,
    TwilioTransport,
    connect_twiml,
    dial_twiml,
    read_stream,
    signature_algorithm,
    signature_valid,
    signed_url,
    stream_url,
    wait_for_start,
)

log = logging.getLogger(__name__)

VOICE_PATH = "/v1/twilio/voice"
AFTER_PATH = "/v1/twilio/voice/after"
MAX_PENDING_TRANSFERS = 10000
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass
class TwilioChannel:
    """The Twilio channel's handlers, with the answering tenant resolved."""

    cfg: TwilioConfig
    auth_token: str
    auth: AuthContext
    host: CallHost
    tenant_id: str
    tenant_name: str
    transfers: dict[str, str] = field(default_factory=dict)  # call id -> target, until Twilio asks (after())

    async def _signed_form(self, request: Request) -> dict[str, str]:
        """The webhook's form parameters, once X-Twilio-Signature is checked; else 403."""
        body = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True) if content_type == FORM_TYPE \
            else []
        url = signed_url(self.cfg.public_url, str(request.url), request.url.path, request.url.query)
        given = request.headers.get("x-twilio-signature")
        algorithm = signature_algorithm(request.headers.get("x-twilio-webhooks-signature-settings"))
        reason = ""
        if algorithm != "HMAC_SHA1":  # a SharedKey secret, not the auth token: not configured here
            reason = "unsupported_algorithm"
        elif not given:
            reason = "missing_signature"
        elif not signature_valid(self.auth_token, url, params, given):
            reason = "bad_signature"
        if reason:
            REJECTED.labels(reason).inc()
            log.warning("twilio webhook refused", extra={"reason": reason, "signed_url": url,
                                                         "client": request.client.host if request.client else ""})
            raise HTTPException(403, "invalid X-Twilio-Signature")
        return dict(params)

    async def answer(self, request: Request) -> Response:
        """The voice webhook: checks the signature, mints a call token, answers TwiML to connect the stream."""
        form = await self._signed_form(request)
        call_id = uuid.uuid4().hex
        token = issue_call_token(self.auth.ring, self.auth.cfg, tenant_id=self.tenant_id, tenant_name=self.tenant_name,
                                 call_id=call_id, language=self.cfg.language)
        parameters = {"token": token}
        if form.get("From"):  # relayed back to us in the stream's start: the caller id of the call record
            parameters["from"] = form["From"]
        log.info("twilio call answered", extra={"call_id": call_id, "tenant": self.tenant_name,
                                                "call_sid": form.get("CallSid", "")})
        base = (self.cfg.public_url or str(request.base_url)).rstrip("/")
        twiml = connect_twiml(stream_url(self.cfg.public_url, str(request.base_url)), parameters,
                              action=f"{base}{AFTER_PATH}?call_id={call_id}")
        return Response(twiml, media_type="text/xml")

    async def after(self, request: Request) -> Response:
        """Twilio asks what comes after the stream (``<Connect action>``): the transfer, else hang up."""
        await self._signed_form(request)
        target = self.transfers.pop(request.query_params.get("call_id", ""), None)
        log.info("twilio stream over", extra={"call_id": request.query_params.get("call_id", ""),
                                              "transferred": target is not None})
        return Response(dial_twiml(target), media_type="text/xml")

    def _transferring(self, call_id: str) -> Callable[[str], None]:
        def remember(target: str) -> None:
            self.transfers[call_id] = target
            while len(self.transfers) > MAX_PENDING_TRANSFERS:  # Twilio never came back for the oldest
                self.transfers.pop(next(iter(self.transfers)))

        return remember

    async def serve(self, ws: WebSocket) -> None:
        """One Media Stream: waits for ``start``, checks its token, runs the call until ``stop`` or a close."""
        await ws.accept()
        receive = _receiver(ws)
        try:
            start = await wait_for_start(receive)
            if start is None:
                return
            principal = await self._join(start.parameters.get("token"))
        except StreamRefused as err:
            REJECTED.labels(f"stream_{err.reason}").inc()
            log.warning("twilio stream refused", extra={"reason": err.reason, "code": err.code})
            with contextlib.suppress(Exception):
                await ws.close(code=err.code, reason=err.reason)
            return
        except TimeoutError:
            REJECTED.labels("stream_no_start").inc()
            with contextlib.suppress(Exception):
                await ws.close(code=1008, reason="no start frame")
            return
        assert principal.call_id is not None  # _join refuses tokens without one
        transport = TwilioTransport(ws.send_text, start.stream_sid,
                                    on_transfer=self._transferring(principal.call_id))
        spec = CallSpec(principal.call_id, principal.tenant_id, principal.tenant_name, "twilio",
                        principal.language or self.cfg.language, caller_id=start.parameters.get("from", ""))
        log.info("twilio stream started", extra={"call_id": spec.call_id, "call_sid": start.call_sid})
        try:
            await self.host.run(spec, transport, lambda session: read_stream(receive, session, transport))
        finally:
            transport.closed = True
            with contextlib.suppress(Exception):
                await ws.close()

    async def _join(self, token: str | None) -> Principal:
        """The call token's principal, once per call id; else StreamRefused (4401, 4403, 4409)."""
        if not token:
            raise StreamRefused(4401, "missing")
        try:
            principal = Principal.from_claims(verify(self.auth.ring, self.auth.cfg, token, "call"))
            if self.auth.principal_active is not None and not await self.auth.principal_active(principal):
                raise AuthError("inactive", message="this tenant is disabled")
            authorize(principal, Permission.CALLS_JOIN, call_id=principal.call_id)
        except AuthError as err:
            raise StreamRefused(4401 if err.status == 401 else 4403, err.reason) from None
        if principal.call_id is None:
            raise StreamRefused(4403, "not_a_call_token")
        if not self.host.joined.claim(principal.call_id):
            JOIN_REFUSED.inc()
            raise StreamRefused(4409, "already_joined")
        return principal


def _receiver(ws: WebSocket) -> Receive:
    async def receive() -> str | bytes | None:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    return receive


async def start_twilio(app: Any) -> TwilioChannel | None:
    """The channel's handlers, or None when ``channels.twilio.auth_token`` is unset (the routes answer 404)."""
    host: CallHost = app.state.host
    cfg = host.settings.channels.twilio
    if cfg.auth_token is None:
        return None
    if cfg.language not in host.settings.asr.languages:
        raise RuntimeError(f"channels.twilio.language is {cfg.language!r}; expected one of "
                           f"{host.settings.asr.languages}")
    platform = app.state.platform
    try:
        tenant = await platform.tenant_named(cfg.tenant)
    except LookupError as err:
        raise RuntimeError(f"channels.twilio cannot answer calls: {err} (set channels.twilio.tenant to an existing "
                           "tenant, or auth.anonymous_calls_tenant)") from None
    if not cfg.public_url:
        log.warning("channels.twilio.public_url is not set: signatures are checked against each request's own URL, "
                    "which differs from Twilio's behind a TLS-terminating proxy")
    return TwilioChannel(cfg, cfg.auth_token.get_secret_value(), platform.auth, host, tenant[0], tenant[1])


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.twilio = await start_twilio(app)
    yield


router = APIRouter(tags=["twilio"], lifespan=_lifespan)


def _channel(app: Any) -> TwilioChannel | None:
    return getattr(app.state, "twilio", None)


@router.post(VOICE_PATH, include_in_schema=False)
async def voice(request: Request) -> Response:
    """Twilio's voice webhook (form-encoded, signed): TwiML connecting the call to the media stream."""
    channel = _channel(request.app)
    if channel is None:
        raise HTTPException(404, "Not Found")
    return await channel.answer(request)


@router.post(AFTER_PATH, include_in_schema=False)
async def after_stream(request: Request) -> Response:
    """Twilio's ``<Connect action>`` request when a stream ends (signed): dial the transfer or hang up."""
    channel = _channel(request.app)
    if channel is None:
        raise HTTPException(404, "Not Found")
    return await channel.after(request)


@router.websocket(STREAM_PATH)
async def stream(ws: WebSocket) -> None:
    """Twilio's Media Stream for one call (docs/CALL_PROTOCOL.md)."""
    channel = _channel(ws.app)
    if channel is None:
        try:
            await ws.send_denial_response(PlainTextResponse("Not Found", status_code=404))
        except RuntimeError:  # the server lacks the denial extension: a plain refusal (HTTP 403)
            await ws.close()
        return
    await channel.serve(ws)
