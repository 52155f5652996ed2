"""XTTS v2 through coqui-tts on a GPU: the production voice of the gpu profile.

Opt-in: it loads only when a voice with ``backend = "xtts"`` is configured. The XTTS v2 weights are
licensed under the Coqui Public Model License 1.0.0, which allows NON-COMMERCIAL use only; a
commercial deployment needs another licence from the rights holder, or Piper voices instead.

coqui-tts and torch are optional dependencies (``pip install 'voiceai[gpu]'``) and are imported only
when an XTTS voice loads. Voices that name the same model share one copy of it in GPU memory and
take turns on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tts.backends import BackendCapabilities
from tts.config import TtsConfig, VoiceConfig
from voiceai.models import require

log = logging.getLogger(__name__)

INSTALL_COMMAND = "pip install 'voiceai[gpu]'"
LICENSE_NOTE = "XTTS v2 weights: Coqui Public Model License 1.0.0, non-commercial use only"
XTTS_SAMPLE_RATE_HZ = 24000


class _SharedModel:
    """One loaded XTTS model, its users, and the lock that makes them take turns."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.users = 0


_shared: dict[tuple[str, str], _SharedModel] = {}
_shared_lock = threading.Lock()


def import_xtts() -> tuple[Any, Any]:
    """The coqui-tts classes, or an ImportError that says how to install them."""
    try:
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts
    except ImportError as err:
        raise ImportError(
            f"XTTS voices need coqui-tts and torch, which are not installed ({err}). "
            f"Install them with: {INSTALL_COMMAND}   (or configure Piper/espeak voices only)"
        ) from err
    return XttsConfig, Xtts


def _load_model(checkpoint_dir: Path, device: str) -> Any:
    XttsConfig, Xtts = import_xtts()
    config = XttsConfig()
    config.load_json(str(checkpoint_dir / "config.json"))
    model = Xtts.init_from_config(config)
    model.load_checkpoint(config, checkpoint_dir=str(checkpoint_dir), use_deepspeed=False)
    if device.startswith("cuda"):
        model.cuda()
    else:
        model.to(device)
    return model


class XttsBackend:
    """Streams phrases from ``Xtts.inference_stream`` with a studio speaker's latents."""

    name = "xtts"

    def __init__(self, voice: VoiceConfig, cfg: TtsConfig, models_dir: Path) -> None:
        if not voice.model or not voice.speaker:
            raise ValueError(f"voice {voice.id!r}: an xtts voice needs 'model' and 'speaker'")
        self._voice = voice
        self._models_dir = models_dir
        self._device = cfg.xtts_device
        self._stream_chunk_tokens = cfg.xtts_stream_chunk_tokens
        # One GPU generation at a time per model; the shared lock serialises voices on one model.
        self.capabilities = BackendCapabilities(streams_within_phrase=True, max_concurrent_phrases=1,
                                                device=self._device)
        self._shared: _SharedModel | None = None
        self._key: tuple[str, str] | None = None
        self._latents: tuple[Any, Any] | None = None

    @property
    def sample_rate_hz(self) -> int:
        return XTTS_SAMPLE_RATE_HZ

    def load(self) -> None:
        import_xtts()  # fail with the install command before looking for weights
        folder = require(self._voice.model, self._models_dir)
        key = (str(folder), self._device)
        with _shared_lock:
            shared = _shared.get(key)
            if shared is None:
                log.warning("loading XTTS v2", extra={"voice": self._voice.id, "license": LICENSE_NOTE})
                shared = _shared[key] = _SharedModel(_load_model(folder, self._device))
            shared.users += 1
        self._shared, self._key = shared, key
        model = shared.model
        speakers = model.speaker_manager.speakers if model.speaker_manager is not None else {}
        if self._voice.speaker not in speakers:
            known = ", ".join(sorted(speakers)[:20]) or "none (speakers_xtts.pth missing?)"
            raise ValueError(f"voice {self._voice.id!r}: XTTS speaker {self._voice.speaker!r} not found; "
                             f"known speakers include: {known}")
        latents = speakers[self._voice.speaker]
        self._latents = (latents["gpt_cond_latent"], latents["speaker_embedding"])
        unsupported = [lang for lang in self._voice.languages if lang not in model.config.languages]
        if unsupported:
            raise ValueError(f"voice {self._voice.id!r}: XTTS does not speak {', '.join(unsupported)}")

    def synthesize_phrase(self, text: str, language: str, speed: float) -> Iterator[np.ndarray]:
        if self._shared is None or self._latents is None:
            raise RuntimeError("XttsBackend.synthesize_phrase called before load()")
        shared = self._shared
        gpt_cond_latent, speaker_embedding = self._latents
        with shared.lock:
            stream = shared.model.inference_stream(
                text, language, gpt_cond_latent, speaker_embedding,
                stream_chunk_size=self._stream_chunk_tokens, speed=speed, enable_text_splitting=False,
            )
        while True:
            # The lock is held per generation step, not per phrase, so that two voices on one model
            # interleave instead of one waiting for the other's whole phrase.
            with shared.lock:
                piece = next(stream, None)
            if piece is None:
                return
            yield piece.float().cpu().numpy().reshape(-1)

    def close(self) -> None:
        if self._shared is None or self._key is None:
            return
        with _shared_lock:
            self._shared.users -= 1
            if self._shared.users <= 0:
                _shared.pop(self._key, None)
        self._shared = self._latents = None
