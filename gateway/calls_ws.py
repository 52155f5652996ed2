"""The call WebSocket (docs/CALL_PROTOCOL.md): binary PCM16 both ways, JSON events as text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from prometheus_client import Counter

from gateway.auth.deps import Principal, ws_subprotocol
from media_bridge.clients import BridgeClients
from media_bridge.session import CallSession, TurnRecord
from voiceai.config import Settings
from voiceai.db.writer import CallWriter, SpoolFull

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


class JoinedCalls:
    """Call ids already joined: a call token is good for one join (a leaked token cannot listen in).

    Entries are kept as long as a token for them could still be valid, then forgotten."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._at: OrderedDict[str, float] = OrderedDict()

    def claim(self, call_id: str) -> bool:
        now = time.monotonic()
        while self._at and next(iter(self._at.values())) < now - self.keep_s:
            self._at.popitem(last=False)
        if call_id in self._at:
            return False
        self._at[call_id] = now
        return True


async def serve_call(ws: WebSocket, settings: Settings, clients: BridgeClients, principal: Principal,
                     writer: CallWriter, joined: JoinedCalls) -> None:
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
    if language not in settings.asr.languages or rate not in SUPPORTED_RATES_HZ:
        await ws.close(code=1008, reason=f"language must be one of {settings.asr.languages}; sample_rate_hz "
                                         f"one of {SUPPORTED_RATES_HZ}")
        return
    call_id = principal.call_id or uuid.uuid4().hex
    if not joined.claim(call_id):
        JOIN_REFUSED.inc()
        await ws.close(code=4409, reason="this call was already joined")
        return
    transport = WebSocketTransport(ws, rate)
    tenant_id = principal.tenant_id
    started = time.time()
    with contextlib.suppress(SpoolFull):
        writer.call_started(tenant_id, call_id, "websocket", language, started)

    def on_turn(turn: TurnRecord) -> None:
        with contextlib.suppress(SpoolFull):  # logged and counted by the writer; the call goes on
            latency = turn.timings.as_dict()
            writer.turn(tenant_id, call_id, turn.index, "caller", turn.user_text, latency=latency)
            writer.turn(tenant_id, call_id, turn.index, "bot", turn.bot_text, interrupted=turn.interrupted,
                        latency={"sources": turn.sources, "fallbacks": turn.fallbacks})
            for n, action in enumerate(turn.actions):
                writer.action(tenant_id, call_id, turn.index, n, action)

    session = CallSession(call_id, settings, clients, transport, language=language,
                          greeting=params.get("greeting", "1") != "0", on_turn=on_turn, tenant=principal.tenant_name)
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
        with contextlib.suppress(SpoolFull):
            writer.call_ended(tenant_id, call_id, time.time(), session.ended_reason or "hangup")
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
