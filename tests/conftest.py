"""Shared fixtures: settings on the real models directory, audio fixtures, server processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voiceai.config import Settings, load_settings

FIXTURES = Path(__file__).parent / "fixtures"
AUDIO = FIXTURES / "audio"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """CPU-profile settings as a developer's machine has them (models in ./models)."""
    return load_settings(profile="cpu", env={})


@pytest.fixture(scope="session")
def audio_texts() -> dict[str, dict[str, str]]:
    return json.loads((AUDIO / "TEXTS.json").read_text())


def audio_path(name: str) -> Path:
    return AUDIO / name
