"""TTS backends: each renders one phrase with one engine, and nothing else.

Validation, phrase splitting, resampling, chunking, metrics, threads and fallback live in
``tts.engine``; a backend only turns a phrase into float32 samples at its native rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tts.config import TtsConfig, VoiceConfig


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What the engine may rely on; callers branch on these, never on the backend's name."""

    streams_within_phrase: bool  # yields several pieces per phrase as they are generated
    max_concurrent_phrases: int  # phrases it may render at once (threads the engine gives it)
    device: str = "cpu"


class TtsBackend(Protocol):
    """One loaded voice engine."""

    name: str  # "piper", "espeak", "xtts": the metric label
    capabilities: BackendCapabilities

    @property
    def sample_rate_hz(self) -> int:
        """Native rate of the samples ``synthesize_phrase`` yields (known after ``load``)."""
        ...

    def load(self) -> None:
        """Loads the model; blocking, called once from a worker thread."""

    def synthesize_phrase(self, text: str, language: str, speed: float) -> Iterator[np.ndarray]:
        """Renders one phrase as mono float32 pieces in [-1, 1]; blocking, run in a worker thread.

        ``speed`` is 0.5..2.0 (1.0 normal). Raises on failure (the engine falls back).
        """
        ...

    def close(self) -> None:
        """Frees the model."""


def make_backend(voice: VoiceConfig, cfg: TtsConfig, models_dir: Path) -> TtsBackend:
    """Builds (without loading) the backend that renders ``voice``."""
    if voice.backend == "piper":
        from tts.backends.piper import PiperBackend

        return PiperBackend(voice, models_dir)
    if voice.backend == "espeak":
        from tts.backends.espeak import EspeakBackend

        return EspeakBackend(voice, cfg)
    if voice.backend == "xtts":
        from tts.backends.xtts import XttsBackend

        return XttsBackend(voice, cfg, models_dir)
    raise ValueError(f"voice {voice.id!r}: unknown backend {voice.backend!r}")
