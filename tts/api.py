"""The TTS seam the media bridge talks to: plain dataclasses and the client interface.

Two implementations share it: in-process and gRPC. Both raise ``voiceai.serving.ServiceError``
subclasses for bad input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    text: str
    language: str = "en"
    voice: str = ""  # empty: the language's default voice
    speed: float = 1.0
    sample_rate_hz: int = 0  # 0: the voice's native rate
    call_id: str = ""


@dataclass(frozen=True, slots=True)
class AudioChunk:
    pcm16: bytes  # mono PCM16LE
    sample_rate_hz: int
    sequence: int
    text: str = ""  # the phrase, on its first chunk
    voice: str = ""


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    id: str
    languages: tuple[str, ...]
    backend: str
    sample_rate_hz: int
    is_default: bool


class TtsClient(Protocol):
    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        """Streams audio; the first chunk comes as soon as the first phrase is rendered.

        Closing the iterator early (``aclose``) stops synthesis.
        """

    async def voices(self) -> list[VoiceInfo]: ...

    async def aclose(self) -> None: ...
