"""Piper (VITS exported to ONNX) on CPU: the default English voice of the cpu profile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tts.backends import BackendCapabilities
from tts.config import VoiceConfig
from voiceai.models import get_spec, require

# Piper peak-normalises every sentence to full scale; a little headroom keeps resampling
# overshoot from clipping.
_VOLUME = 0.9


class PiperBackend:
    """Renders phrases with ``piper.PiperVoice``; the model file comes from the model registry."""

    name = "piper"
    # onnxruntime already spreads one inference over every core, so parallel phrases only contend.
    capabilities = BackendCapabilities(streams_within_phrase=False, max_concurrent_phrases=1)

    def __init__(self, voice: VoiceConfig, models_dir: Path) -> None:
        if not voice.model:
            raise ValueError(f"voice {voice.id!r}: a piper voice needs 'model' (a registry model name)")
        self._voice_cfg = voice
        self._models_dir = models_dir
        self._voice: Any = None

    @property
    def sample_rate_hz(self) -> int:
        return int(self._voice.config.sample_rate) if self._voice is not None else 0

    def load(self) -> None:
        from piper import PiperVoice

        folder = require(self._voice_cfg.model, self._models_dir)
        # Several Piper voices may share one folder: take the file this model's manifest names.
        onnx = [f.name for f in get_spec(self._voice_cfg.model).files if f.name.endswith(".onnx")]
        if len(onnx) != 1:
            raise ValueError(f"model {self._voice_cfg.model!r} must list exactly one .onnx file")
        self._voice = PiperVoice.load(folder / onnx[0])
        # The first inference of an ONNX model is several times slower than the next (graph
        # optimisation, allocations): pay it at load, not in a caller's first turn.
        for _ in self.synthesize_phrase("Hello, how can I help?", "en", 1.0):
            pass

    def synthesize_phrase(self, text: str, language: str, speed: float) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        if self._voice is None:
            raise RuntimeError("PiperBackend.synthesize_phrase called before load()")
        syn = SynthesisConfig(length_scale=self._voice.config.length_scale / speed, volume=_VOLUME)
        for chunk in self._voice.synthesize(text, syn_config=syn):
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)

    def close(self) -> None:
        self._voice = None
