"""Runs calls for every transport (WebSocket, WebRTC, SIP, Twilio, LiveKit).

A transport only moves audio and events; the call's life is the same for all of them and lives here:
one join per call id, the call record and its turns written through the ``CallWriter``, the session
run until the caller's side ends (``feed`` returns) or the session ends, and the call record closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from media_bridge.clients import BridgeClients
from media_bridge.session import CallSession, CallTransport, TurnRecord
from voiceai.config import Settings
from voiceai.db.writer import CallWriter, SpoolFull

log = logging.getLogger(__name__)

CALLS_BY_CHANNEL = Counter("voiceai_calls_total", "Calls started, by channel.", ["channel"])

# Reads the caller's side until it hangs up; audio and keys go to the session.
Feed = Callable[[CallSession], Coroutine[Any, Any, None]]


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


@dataclass
class CallSpec:
    """Who is calling, on what: everything a call needs besides its transport."""

    call_id: str
    tenant_id: str
    tenant_name: str
    channel: str  # websocket | webrtc | sip | twilio | livekit
    language: str = "en"
    greeting: bool | None = None  # None: the configuration's call.greeting
    caller_id: str = ""  # the phone number or SIP user calling; stored only as a peppered hash


@dataclass
class CallHost:
    """What every transport shares: settings, model clients, the call writer, calls in progress."""

    settings: Settings
    clients: BridgeClients
    writer: CallWriter
    joined: JoinedCalls
    active: dict[str, CallSession] = field(default_factory=dict)

    async def run(self, spec: CallSpec, transport: CallTransport, feed: Feed) -> CallSession:
        """Runs one call to its end; ``feed`` reads the caller's side and returns when they hang up."""
        writer = self.writer
        CALLS_BY_CHANNEL.labels(spec.channel).inc()
        with contextlib.suppress(SpoolFull):  # logged and counted by the writer; the call goes on
            writer.call_started(spec.tenant_id, spec.call_id, spec.channel, spec.language, time.time(),
                                caller_id=spec.caller_id)

        def on_turn(turn: TurnRecord) -> None:
            with contextlib.suppress(SpoolFull):
                writer.turn(spec.tenant_id, spec.call_id, turn.index, "caller", turn.user_text,
                            latency=turn.timings.as_dict())
                writer.turn(spec.tenant_id, spec.call_id, turn.index, "bot", turn.bot_text,
                            interrupted=turn.interrupted,
                            latency={"sources": turn.sources, "fallbacks": turn.fallbacks})
                for n, action in enumerate(turn.actions):
                    writer.action(spec.tenant_id, spec.call_id, turn.index, n, action)

        session = CallSession(spec.call_id, self.settings, self.clients, transport, language=spec.language,
                              greeting=spec.greeting, on_turn=on_turn, tenant=spec.tenant_name)
        self.active[spec.call_id] = session
        runner = asyncio.create_task(session.run(), name=f"call-{spec.call_id}")
        reader = asyncio.create_task(feed(session), name=f"call-{spec.call_id}-reader")
        try:
            done, _ = await asyncio.wait({runner, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                if not reader.cancelled() and reader.exception() is not None:
                    log.warning("caller side failed", exc_info=reader.exception(),
                                extra={"call_id": spec.call_id, "channel": spec.channel})
                await session.hangup("hangup")
            await runner
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner
            self.active.pop(spec.call_id, None)
            with contextlib.suppress(SpoolFull):
                writer.call_ended(spec.tenant_id, spec.call_id, time.time(), session.ended_reason or "hangup")
        return session

    async def hangup_all(self, reason: str = "server_shutdown") -> None:
        """Ends every call in progress (the process is stopping)."""
        for session in list(self.active.values()):
            await session.hangup(reason)
