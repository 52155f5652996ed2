"""Typed configuration of the TTS service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class VoiceConfig(BaseModel):
    """One voice the server offers."""

    id: str = Field(description="Voice id clients send, e.g. 'piper:en_US-joe-medium'.")
    backend: Literal["piper", "espeak", "xtts"] = Field(description="Engine that renders it.")
    languages: list[str] = Field(description="Languages it speaks.")
    model: str = Field("", description="Registry model name (piper, xtts).")
    espeak_voice: str = Field("", description="espeak-ng voice name (espeak backend).")
    speaker: str = Field("", description="XTTS studio speaker name (xtts backend).")


class TtsConfig(BaseModel):
    """Voices, defaults per language and limits."""

    voices: list[VoiceConfig] = [
        VoiceConfig(
            id="piper:en_US-joe-medium", backend="piper", languages=["en"], model="piper-en_US-joe-medium"
        ),
        VoiceConfig(id="espeak:ar", backend="espeak", languages=["ar"], espeak_voice="ar"),
        VoiceConfig(id="espeak:en", backend="espeak", languages=["en"], espeak_voice="en-us"),
    ]
    default_voice: dict[str, str] = Field(
        {"en": "piper:en_US-joe-medium", "ar": "espeak:ar"},
        description="Voice used for each language when the request names none.",
    )
    fallback_voice: dict[str, str] = Field(
        {"en": "espeak:en", "ar": "espeak:ar"},
        description="Voice used when the chosen one fails to render.",
    )
    max_text_chars: int = Field(4000, ge=1, description="Longest text one request may carry.")
    chunk_ms: int = Field(200, ge=20, description="Size of audio chunks sent to the client.")
    espeak_binary: str = Field("espeak-ng", description="espeak-ng executable.")
    xtts_device: str = Field("cuda", description="Torch device for XTTS.")
