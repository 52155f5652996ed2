"""``SipCallTransport``: the ``CallTransport`` of one SIP call.

The bot's audio goes to the call's RTP session; call events have no place on a phone line (they are
logged at debug) except a barge-in, which drops the bot's audio still queued for RTP; a transfer is a
REFER in the call's dialog, done by the user agent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from media_bridge.sip.rtp import RtpSession

log = logging.getLogger(__name__)


class DialogControl(Protocol):
    """What the transport needs from the user agent's side of the call."""

    async def transfer(self, target: str) -> bool:
        """REFERs the caller to ``target`` and ends the dialog; True when the transfer was accepted."""
        ...


class SipCallTransport:
    """Moves one call's audio to RTP (8 kHz PCM16 both ways) and hands transfers to the dialog."""

    sample_rate_hz = 8000

    def __init__(self, rtp: RtpSession, dialog: DialogControl, call_id: str) -> None:
        self.rtp = rtp
        self.dialog = dialog
        self.call_id = call_id

    async def send_audio(self, pcm16: bytes) -> None:
        await self.rtp.send_pcm(pcm16)

    async def send_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "barge_in":  # the caller talks over the bot: nothing queued may still play
            self.rtp.clear_outbound()
        log.debug("call event", extra={"call_id": self.call_id, "event_type": event.get("type")})

    async def transfer(self, target: str) -> bool:
        """SIP REFER to ``target`` (the session calls this after its "please hold" line)."""
        return await self.dialog.transfer(target)
