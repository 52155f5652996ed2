"""WebRTC signalling for browser callers (docs/CALL_PROTOCOL.md, "WebRTC").

``GET /v1/calls/{call_id}/webrtc`` tells the page whether to try WebRTC and with which ICE servers;
``POST /v1/calls/{call_id}/webrtc`` takes its complete offer and returns our complete answer (no trickle
ICE). Both need the call's token (``Authorization: Bearer <call token>``), as the WebSocket does; the
offer joins the call once. The media side is ``media_bridge/webrtc.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from prometheus_client import Counter
from pydantic import BaseModel, Field

from gateway.auth.deps import Principal, require_call
from media_bridge.channels import WebRtcConfig
from media_bridge.host import CallHost, CallSpec
from media_bridge.webrtc import OfferError, WebRtcPeers

log = logging.getLogger(__name__)

OFFERS = Counter("voiceai_webrtc_offers_total", "WebRTC offers, by result (answered or why refused).", ["result"])
MAX_SDP_CHARS = 64 * 1024


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Nested inside the gateway's own lifespan: the host exists while this runs, and calls end here first.
    yield
    peers: WebRtcPeers | None = getattr(app.state, "webrtc", None)
    if peers is not None:
        await peers.close_all()


router = APIRouter(tags=["calls"], lifespan=_lifespan)


class Offer(BaseModel):
    """The page's offer, with every ICE candidate it gathered."""

    sdp: str = Field(max_length=MAX_SDP_CHARS)
    type: str = "offer"
    language: str | None = Field(None, max_length=8, description="en or ar; default: the call token's language.")


def _config(request: Request) -> WebRtcConfig:
    host: CallHost = request.app.state.host
    return host.settings.channels.webrtc


def _peers(request: Request) -> WebRtcPeers:
    peers: WebRtcPeers | None = getattr(request.app.state, "webrtc", None)
    if peers is None:
        peers = request.app.state.webrtc = WebRtcPeers(request.app.state.host, _config(request))
    return peers


def _is_anonymous(request: Request, principal: Principal) -> bool:
    """A call token of the anonymous calls tenant may have been minted by anyone on the public page."""
    anonymous = getattr(getattr(request.app.state, "platform", None), "anonymous_tenant", None)
    return principal.principal_type in ("call", "dev") and anonymous is not None and principal.tenant_id == anonymous[0]


@router.get("/v1/calls/{call_id}/webrtc")
async def webrtc_config(request: Request, call_id: str,
                        principal: Annotated[Principal, Depends(require_call("call_id"))]) -> dict[str, Any]:
    """Whether the page should try WebRTC for this call, the ICE servers for its RTCPeerConnection, and how
    long to wait for media before falling back to the WebSocket. TURN credentials are left out for
    anonymous callers unless ``channels.webrtc.turn_credentials_for_anonymous`` is set."""
    cfg = _config(request)
    with_credentials = cfg.turn_credentials_for_anonymous or not _is_anonymous(request, principal)
    servers = []
    for server in cfg.ice_servers:
        entry: dict[str, Any] = {"urls": server.urls}
        if with_credentials and server.username is not None:
            entry["username"] = server.username
        if with_credentials and server.credential is not None:
            entry["credential"] = server.credential.get_secret_value()
        if not with_credentials and any(u.startswith(("turn:", "turns:")) for u in server.urls):
            continue  # a TURN server without its credentials is of no use to the browser
        servers.append(entry)
    return {"enabled": cfg.enabled, "ice_servers": servers, "connect_timeout_s": cfg.connect_timeout_s}


@router.post("/v1/calls/{call_id}/webrtc")
async def webrtc_offer(request: Request, call_id: str, body: Offer,
                       principal: Annotated[Principal, Depends(require_call("call_id"))]) -> dict[str, str]:
    """Answers the page's offer; the call (greeting included) starts once the peer connection is up."""
    host: CallHost = request.app.state.host
    language = body.language or principal.language or "en"
    try:
        if not _config(request).enabled:
            raise OfferError("disabled", 404, "WebRTC is off on this server (channels.webrtc.enabled); use the "
                                              "call WebSocket")
        if body.type != "offer":
            raise OfferError("malformed_sdp", 400, f"type must be 'offer', not {body.type!r}")
        if language not in host.settings.asr.languages:
            raise OfferError("bad_language", 400, f"language must be one of {host.settings.asr.languages}")
        spec = CallSpec(call_id, principal.tenant_id, principal.tenant_name, "webrtc", language)
        sdp = await _peers(request).answer(spec, body.sdp)
    except OfferError as err:
        OFFERS.labels(err.reason).inc()
        log.info("webrtc offer refused", extra={"reason": err.reason, "call_id": call_id})
        raise HTTPException(err.status, err.message) from None
    OFFERS.labels("answered").inc()
    return {"sdp": sdp, "type": "answer"}
