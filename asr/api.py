"""The VAD and ASR seams the media bridge talks to: plain dataclasses and client interfaces.

Each interface has two implementations with the same behaviour, picked by configuration:
in-process (no network) and gRPC (a separate server). Both raise ``voiceai.serving.ServiceError``
subclasses for bad input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

# ---- VAD -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VadOptions:
    """Per-stream VAD settings; zero values take the server's configuration."""

    sample_rate_hz: int = 16000
    threshold: float = 0.0
    min_silence_ms: int = 0
    min_speech_ms: int = 0
    stream_id: str = ""
    emit_probabilities: bool = False


@dataclass(frozen=True, slots=True)
class VadEvent:
    """Speech boundary (or per-window probability) in stream time."""

    kind: Literal["speech_start", "speech_end", "probability"]
    timestamp_ms: int
    probability: float
    speech_duration_ms: int = 0


class VadSession(Protocol):
    """One audio stream under detection."""

    async def send(self, pcm16: bytes) -> None:
        """Feeds PCM16 audio in the session's format."""

    def events(self) -> AsyncIterator[VadEvent]:
        """Yields events as they are found; ends after ``close``."""

    async def close(self) -> None: ...


class VadClient(Protocol):
    def open(self, options: VadOptions) -> VadSession: ...

    async def aclose(self) -> None: ...


# ---- ASR -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsrOptions:
    """Per-stream recognition settings; zero values take the server's configuration."""

    language: str = "auto"  # "ar", "en", "auto"
    sample_rate_hz: int = 16000
    call_id: str = ""
    interim_results: bool = True
    interim_interval_ms: int = 0
    endpoint_silence_ms: int = 0
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    probability: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """An interim or final hypothesis of one utterance."""

    text: str
    is_final: bool
    utterance_index: int
    start_ms: int
    end_ms: int
    language: str
    language_probability: float = 1.0
    confidence: float = 0.0
    stable_text: str = ""
    unstable_text: str = ""
    words: tuple[Word, ...] = field(default_factory=tuple)
    decode_ms: int = 0


@dataclass(frozen=True, slots=True)
class SpeechBoundary:
    """Speech start/end found by the ASR server's own VAD."""

    kind: Literal["speech_start", "speech_end"]
    timestamp_ms: int


AsrResult = Transcript | SpeechBoundary


class AsrSession(Protocol):
    """One recognition stream."""

    async def send_audio(self, pcm16: bytes) -> None: ...

    async def finalize(self) -> None:
        """Closes the current utterance now; its final transcript follows."""

    def results(self) -> AsyncIterator[AsrResult]:
        """Yields interim/final transcripts and speech boundaries; ends after ``close``."""

    async def close(self) -> None:
        """Ends the stream; a pending utterance is finalised first."""


class AsrClient(Protocol):
    def open(self, options: AsrOptions) -> AsrSession: ...

    async def aclose(self) -> None: ...
