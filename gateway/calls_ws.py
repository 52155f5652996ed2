"""The call WebSocket (docs/CALL_PROTOCOL.md): binary PCM16 both ways, JSON events as text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from prometheus_client import Counter

from gateway.auth.deps import Principal, ws_subprotocol
from media_bridge.host import CallHost, CallSpec
from media_bridge.session import CallSession

log = logging.getLogger(__name__)

BAD_FRAMES = Counter("voiceai_ws_bad_frames_total", "Malformed WebSocket frames from callers.", ["reason"])
JOIN_REFUSED = Counter("voiceai_call_join_refused_total", "Second joins of a call with the same call token.")

SUPPORTED_RATES_HZ = (8000, 16000, 24000, 48000)
MAX_TEXT_FRAME_BYTES = 64 * 1024
MAX_AUDIO_FRAME_BYTES = 64 * 1024


class WebSocketTransport:
    """CallTransport over a Starlette WebSocket; one lock keeps frames from interleaving."""

    def __init__(self, ws: WebSocket, sample_rate_hz: int) -> None:
        self.ws = ws
        self.sample_rate_hz = sample_rate_hz
        self._lock = asyncio.Lock()
        self.closed = False

    async def send_audio(self, pcm16: bytes) -> None:
        if self.closed:
            return
        async with self._lock:
            await self.ws.send_bytes(pcm16)

    async def send_event(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        async with self._lock:
            await self.ws.send_text(json.dumps(event, ensure_ascii=False))


async def serve_call(ws: WebSocket, host: CallHost, principal: Principal) -> None:
    """Runs one caller's WebSocket until either side hangs up.

    ``principal`` passed the ``calls.join`` check: a call token (its own call id; it joins once) or a
    user allowed to join calls (a new call id). The tenant is the principal's, never a parameter.
    """
    params = ws.query_params
    language = params.get("language") or principal.language or "en"
    try:
        rate = int(params.get("sample_rate_hz", "16000"))
    except ValueError:
        rate = -1
    await ws.accept(subprotocol=ws_subprotocol(ws))
    if language not in host.settings.asr.languages or rate not in SUPPORTED_RATES_HZ:
        await ws.close(code=1008, reason=f"language must be one of {host.settings.asr.languages}; sample_rate_hz "
                                         f"one of {SUPPORTED_RATES_HZ}")
        return
    call_id = principal.call_id or uuid.uuid4().hex
    if not host.joined.claim(call_id):
        JOIN_REFUSED.inc()
        await ws.close(code=4409, reason="this call was already joined")
        return
    transport = WebSocketTransport(ws, rate)
    greeting = params["greeting"] != "0" if "greeting" in params else None  # None: call.greeting
    spec = CallSpec(call_id, principal.tenant_id, principal.tenant_name, "websocket", language, greeting=greeting)
    try:
        await host.run(spec, transport, lambda session: _read(ws, session, transport))
    finally:
        transport.closed = True
        with contextlib.suppress(Exception):
            await ws.close()


async def _read(ws: WebSocket, session: CallSession, transport: WebSocketTransport) -> None:
    """Caller frames: audio to the session, control events handled, junk answered and counted."""
    while True:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > MAX_AUDIO_FRAME_BYTES:
                await _bad_frame(transport, "audio_too_large",
                                 f"audio frame of {len(data)} bytes; send at most {MAX_AUDIO_FRAME_BYTES}")
                continue
            await session.push_audio(data)
            continue
        if text is None:
            continue
        if len(text) > MAX_TEXT_FRAME_BYTES:
            await _bad_frame(transport, "text_too_large", f"text frame over {MAX_TEXT_FRAME_BYTES} bytes")
            continue
        try:
            event = json.loads(text)
        except json.JSONDecodeError as err:
            await _bad_frame(transport, "invalid_json", f"text frame is not JSON: {err.msg} at {err.pos}")
            continue
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "hangup":
            session.ended_reason = "hangup"
            return
        if kind == "ping":
            await transport.send_event({"type": "pong", "id": event.get("id")})
            continue
        await _bad_frame(transport, "unknown_type", f"unknown event type {kind!r}; expected hangup or ping")


async def _bad_frame(transport: WebSocketTransport, reason: str, message: str) -> None:
    BAD_FRAMES.labels(reason).inc()
    log.warning("bad frame from caller", extra={"reason": reason})
    with contextlib.suppress(Exception):
        await transport.send_event({"type": "error", "code": "bad_frame", "reason": reason, "message": message,
                                    "fatal": False})
