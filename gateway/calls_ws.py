"""The call WebSocket (docs/CALL_PROTOCOL.md): binary PCM16 both ways, JSON events as text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from prometheus_client import Counter

from gateway.store import CallRecord, CallStore
from media_bridge.clients import BridgeClients
from media_bridge.session import CallSession, TurnRecord
from rag.store import TENANT_RE
from voiceai.config import Settings

log = logging.getLogger(__name__)

BAD_FRAMES = Counter("voiceai_ws_bad_frames_total", "Malformed WebSocket frames from callers.", ["reason"])

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


async def serve_call(ws: WebSocket, settings: Settings, clients: BridgeClients, store: CallStore) -> None:
    """Runs one caller's WebSocket until either side hangs up."""
    params = ws.query_params
    language = params.get("language", "en")
    try:
        rate = int(params.get("sample_rate_hz", "16000"))
    except ValueError:
        rate = -1
    # The caller's tenant: from the call token once the platform's auth lands; a query parameter until then.
    tenant = params.get("tenant") or settings.kb.default_tenant
    if not TENANT_RE.match(tenant):
        await ws.close(code=1008, reason="tenant must be 1-63 characters of a-z, 0-9, '-' or '_'")
        return
    if language not in settings.asr.languages or rate not in SUPPORTED_RATES_HZ:
        await ws.close(code=1008, reason=f"language must be one of {settings.asr.languages}; sample_rate_hz "
                                         f"one of {SUPPORTED_RATES_HZ}")
        return
    await ws.accept()
    call_id = uuid.uuid4().hex
    transport = WebSocketTransport(ws, rate)
    record = CallRecord(call_id=call_id, channel="websocket", language=language)
    store.add(record)

    def on_turn(turn: TurnRecord) -> None:
        record.turns.append(turn)

    session = CallSession(call_id, settings, clients, transport, language=language,
                          greeting=params.get("greeting", "1") != "0", on_turn=on_turn, tenant=tenant)
    runner = asyncio.create_task(session.run(), name=f"call-{call_id}")
    reader = asyncio.create_task(_read(ws, session, transport), name=f"call-{call_id}-reader")
    try:
        done, _ = await asyncio.wait({runner, reader}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done:
            await session.hangup("hangup")
        await runner
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        record.state = "ended"
        record.ended_reason = session.ended_reason
        record.ended_at = time.time()
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
