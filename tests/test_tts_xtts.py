"""XTTS v2 wiring. It cannot run here (no GPU, no coqui-tts, no weights), so these tests cover:

- the missing-dependency path: the exact install command in the error;
- the gpu profile's config reaching the backend;
- the calls made into coqui-tts, against stand-in modules shaped like its real API
  (``Xtts.init_from_config``, ``load_checkpoint``, ``speaker_manager.speakers``, ``inference_stream``).

What would enable a real test: a CUDA machine with ``pip install 'voiceai[gpu]'`` and the XTTS v2
snapshot in ``models/xtts-v2``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from tts.backends import make_backend
from tts.backends.xtts import INSTALL_COMMAND, XTTS_SAMPLE_RATE_HZ, XttsBackend
from tts.config import TtsConfig, VoiceConfig
from tts.engine import TtsEngine
from voiceai.config import load_settings

pytestmark = pytest.mark.unit

XTTS_VOICE = VoiceConfig(id="xtts:ar", backend="xtts", languages=["ar"], model="xtts-v2", speaker="Ana Florence")
COQUI_MODULES = ("TTS", "TTS.tts", "TTS.tts.configs", "TTS.tts.configs.xtts_config", "TTS.tts.models",
                 "TTS.tts.models.xtts")


def hide_coqui(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in COQUI_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # `import` raises ImportError


def test_missing_coqui_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hide_coqui(monkeypatch)
    backend = XttsBackend(XTTS_VOICE, TtsConfig(), tmp_path)
    with pytest.raises(ImportError) as caught:
        backend.load()
    assert INSTALL_COMMAND == "pip install 'voiceai[gpu]'"
    assert INSTALL_COMMAND in str(caught.value)


def test_gpu_profile_wires_xtts_voices(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_coqui(monkeypatch)
    settings = load_settings(profile="gpu", env={})
    engine = TtsEngine(settings)  # builds backends without loading anything
    voices = {v.id: v for v in engine.voices()}
    assert voices["xtts:en"].backend == voices["xtts:ar"].backend == "xtts"
    assert voices["xtts:ar"].is_default and voices["xtts:en"].is_default
    assert voices["xtts:ar"].sample_rate_hz == XTTS_SAMPLE_RATE_HZ
    assert settings.tts.fallback_voice["ar"] == "espeak:ar"
    with pytest.raises(ImportError, match=r"pip install 'voiceai\[gpu\]'"):
        engine.load()
    engine.close()


def test_xtts_is_opt_in() -> None:
    cpu = load_settings(profile="cpu", env={})
    assert all(v.backend != "xtts" for v in cpu.tts.voices)


def test_bad_xtts_voice_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'model' and 'speaker'"):
        make_backend(XTTS_VOICE.model_copy(update={"speaker": ""}), TtsConfig(), tmp_path)


# ---- against stand-ins shaped like coqui-tts ---------------------------------------------------


class FakeTensor:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def float(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.values


class FakeXtts:
    calls: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, config: Any) -> None:
        self.config = config
        self.speaker_manager: Any = None

    @staticmethod
    def init_from_config(config: Any) -> FakeXtts:
        FakeXtts.calls.append(("init_from_config", config))
        return FakeXtts(config)

    def load_checkpoint(self, config: Any, checkpoint_dir: str, use_deepspeed: bool) -> None:
        FakeXtts.calls.append(("load_checkpoint", (checkpoint_dir, use_deepspeed)))
        self.speaker_manager = types.SimpleNamespace(
            speakers={"Ana Florence": {"gpt_cond_latent": "LATENT", "speaker_embedding": "EMBEDDING"}})

    def cuda(self) -> FakeXtts:
        FakeXtts.calls.append(("cuda", None))
        return self

    def inference_stream(self, text: str, language: str, gpt_cond_latent: Any, speaker_embedding: Any,
                         **kwargs: Any) -> Any:
        FakeXtts.calls.append(("inference_stream", (text, language, gpt_cond_latent, speaker_embedding, kwargs)))
        for _ in range(3):
            yield FakeTensor(np.full((1, 2400), 0.1, dtype=np.float32))


class FakeXttsConfig:
    languages: ClassVar[list[str]] = ["en", "ar"]

    def load_json(self, path: str) -> None:
        FakeXtts.calls.append(("load_json", path))


def fake_coqui(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeXtts.calls = []
    for name in COQUI_MODULES:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["TTS.tts.configs.xtts_config"].XttsConfig = FakeXttsConfig  # type: ignore[attr-defined]
    sys.modules["TTS.tts.models.xtts"].Xtts = FakeXtts  # type: ignore[attr-defined]


def xtts_models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "xtts-v2"
    folder.mkdir()
    for name in ("model.pth", "config.json", "vocab.json", "speakers_xtts.pth"):
        (folder / name).write_bytes(b"stand-in")
    return tmp_path


def test_calls_into_coqui(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_coqui(monkeypatch)
    models_dir = xtts_models_dir(tmp_path)
    cfg = TtsConfig(xtts_stream_chunk_tokens=12)
    ar = XttsBackend(XTTS_VOICE, cfg, models_dir)
    en = XttsBackend(XTTS_VOICE.model_copy(update={"id": "xtts:en", "languages": ["en"]}), cfg, models_dir)
    ar.load()
    en.load()
    names = [name for name, _ in FakeXtts.calls]
    assert names == ["load_json", "init_from_config", "load_checkpoint", "cuda"]  # one model for both voices
    assert FakeXtts.calls[2][1] == (str(models_dir / "xtts-v2"), False)

    pieces = list(ar.synthesize_phrase("مرحبا", "ar", 1.25))
    assert len(pieces) == 3 and all(p.shape == (2400,) and p.dtype == np.float32 for p in pieces)
    text, language, latent, embedding, kwargs = FakeXtts.calls[-1][1]
    assert (text, language, latent, embedding) == ("مرحبا", "ar", "LATENT", "EMBEDDING")
    assert kwargs == {"stream_chunk_size": 12, "speed": 1.25, "enable_text_splitting": False}
    ar.close()
    en.close()


def test_unknown_speaker_lists_known_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_coqui(monkeypatch)
    backend = XttsBackend(XTTS_VOICE.model_copy(update={"speaker": "Nobody"}), TtsConfig(),
                          xtts_models_dir(tmp_path))
    with pytest.raises(ValueError, match="'Nobody' not found; known speakers include: Ana Florence"):
        backend.load()
    backend.close()
