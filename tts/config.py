"""Typed configuration of the TTS service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class VoiceConfig(BaseModel):
    """One voice the server offers."""

    id: str = Field(description="Voice id clients send, e.g. 'piper:en_US-joe-medium'.")
    backend: Literal["piper", "espeak", "xtts"] = Field(description="Engine that renders it.")
    languages: list[str] = Field(description="Languages it speaks.")
    model: str = Field(default="", description="Registry model name (piper, xtts).")
    espeak_voice: str = Field(default="", description="espeak-ng voice name (espeak backend).")
    speaker: str = Field(default="", description="XTTS studio speaker name (xtts backend).")


class ChunkerConfig(BaseModel):
    """How text is cut into phrases that are rendered one at a time."""

    first_phrase_max_chars: int = Field(
        default=60, ge=8, description="Longest first phrase; short so that the first audio comes fast."
    )
    max_phrase_chars: int = Field(
        default=200, ge=8, description="Longest later phrase; longer sentences are cut at a comma or a space."
    )
    min_phrase_chars: int = Field(
        default=8, ge=0, description="Shorter fragments ('1.', 'Yes.') are merged with the next phrase."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ChunkerConfig:
        if self.min_phrase_chars >= self.first_phrase_max_chars:
            raise ValueError("min_phrase_chars must be below first_phrase_max_chars")
        return self


class TtsConfig(BaseModel):
    """Voices, defaults per language and limits.

    XTTS v2 is opt-in: it is used only when a voice with ``backend = "xtts"`` is configured (the gpu
    profile does). Its weights are under the Coqui Public Model License (non-commercial use only).
    """

    voices: list[VoiceConfig] = [
        VoiceConfig(
            id="piper:en_US-joe-medium", backend="piper", languages=["en"], model="piper-en_US-joe-medium"
        ),
        VoiceConfig(id="espeak:ar", backend="espeak", languages=["ar"], espeak_voice="ar"),
        VoiceConfig(id="espeak:en", backend="espeak", languages=["en"], espeak_voice="en-us"),
    ]
    default_voice: dict[str, str] = Field(
        default={"en": "piper:en_US-joe-medium", "ar": "espeak:ar"},
        description="Voice used for each language when the request names none.",
    )
    fallback_voice: dict[str, str] = Field(
        default={"en": "espeak:en", "ar": "espeak:ar"},
        description="Voice used when the chosen one fails to render.",
    )
    max_text_chars: int = Field(default=4000, ge=1, description="Longest text one request may carry.")
    chunk_ms: int = Field(default=200, ge=20, description="Size of audio chunks sent to the client.")
    chunker: ChunkerConfig = ChunkerConfig()
    espeak_binary: str = Field(default="espeak-ng", description="espeak-ng executable.")
    espeak_wpm: int = Field(
        default=165, ge=80, le=450, description="espeak-ng speaking rate at speed 1.0, in words per minute."
    )
    espeak_timeout_s: float = Field(default=20.0, gt=0, description="Longest one espeak-ng phrase may take.")
    xtts_device: str = Field(default="cuda", description="Torch device for XTTS.")
    xtts_stream_chunk_tokens: int = Field(
        default=20, ge=1, description="XTTS GPT tokens per streamed audio piece; lower starts audio sooner."
    )
