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


@pytest.fixture(scope="module")
def asr_engine(settings):
    """The real recogniser (Whisper from the models directory), loaded once per module."""
    from asr.recognizer import AsrEngine

    engine = AsrEngine(settings)
    engine.load()
    return engine


@pytest.fixture
async def asr_client(asr_engine):
    """An in-process client of ``asr_engine`` for one test."""
    from asr.client import InProcessAsrClient

    yield InProcessAsrClient(asr_engine)
    if asr_engine.scheduler:  # the scheduler's worker belongs to this test's event loop
        await asr_engine.scheduler.close()
        asr_engine.scheduler = None


def audio_path(name: str) -> Path:
    return AUDIO / name
