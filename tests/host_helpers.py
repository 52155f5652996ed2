"""A ``CallHost`` on fake model clients, for transport tests (SIP, WebRTC, Twilio, LiveKit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from media_bridge.clients import BridgeClients
from media_bridge.host import CallHost, JoinedCalls
from tests.fakes import FakeAsrClient, FakeLlmClient, FakeTtsClient, FakeVadClient, fast_settings
from voiceai.config import Settings


@dataclass
class RecordingWriter:
    """Fake of ``voiceai.db.writer.CallWriter``: keeps what would be written, in order."""

    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def call_started(self, tenant_id: str, call_id: str, channel: str, language: str, started_at: float,
                     caller_id: str = "") -> None:
        self.records.append(("call_started", tenant_id, {"call_id": call_id, "channel": channel,
                                                         "language": language, "caller_id": caller_id}))

    def turn(self, tenant_id: str, call_id: str, turn: int, speaker: str, text: str, **kw: Any) -> None:
        self.records.append(("turn", tenant_id, {"call_id": call_id, "turn": turn, "speaker": speaker, "text": text}))

    def action(self, tenant_id: str, call_id: str, turn: int, index: int, action: dict[str, Any]) -> None:
        self.records.append(("action", tenant_id, {"call_id": call_id, "turn": turn, **action}))

    def call_ended(self, tenant_id: str, call_id: str, ended_at: float, reason: str, **kw: Any) -> None:
        self.records.append(("call_ended", tenant_id, {"call_id": call_id, "reason": reason}))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for k, _, r in self.records if k == kind]


def fake_host(settings: Settings | None = None, *, vad: Any = None, asr: Any = None, llm: Any = None,
              tts: Any = None) -> tuple[CallHost, RecordingWriter]:
    """A host whose calls run the real call loop on fake VAD/ASR/LLM/TTS (tests/fakes.py)."""
    clients = BridgeClients(vad or FakeVadClient(), asr or FakeAsrClient(), llm or FakeLlmClient(),
                            tts or FakeTtsClient(), FakeTtsClient(freq_hz=660.0, voice="espeak:fake"))
    writer = RecordingWriter()
    host = CallHost(settings or fast_settings(), clients, writer, JoinedCalls(keep_s=600))  # type: ignore[arg-type]
    return host, writer
