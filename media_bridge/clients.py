"""The model clients one bridge process uses, picked from configuration."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from asr.api import AsrClient, VadClient
from asr.client import make_asr_client, make_vad_client
from media_bridge.resilience import CircuitBreaker
from nlu.api import LlmClient
from nlu.client import make_llm_client
from tts.api import TtsClient
from tts.client import InProcessTtsClient, make_tts_client
from tts.config import TtsConfig
from tts.engine import TtsEngine
from voiceai.config import Settings


@dataclass
class BridgeClients:
    """VAD, ASR, LLM and TTS seams, plus a local fallback voice that needs no server."""

    vad: VadClient
    asr: AsrClient
    llm: LlmClient
    tts: TtsClient
    fallback_tts: TtsClient
    # Circuit breakers per dependency, shared by every call using these clients (None: per call).
    breakers: dict[str, CircuitBreaker] | None = field(default=None)
    # The knowledge base (rag.service.KnowledgeBase) replies are grounded in; None: no grounding.
    kb: Any = None

    async def aclose(self) -> None:
        for client in (self.vad, self.asr, self.llm, self.tts, self.fallback_tts):
            with contextlib.suppress(Exception):
                await client.aclose()


def fallback_tts_settings(settings: Settings) -> Settings:
    """The same settings with only the fallback (espeak-ng) voices: they run anywhere, instantly."""
    cfg = settings.tts
    wanted = set(cfg.fallback_voice.values())
    voices = [v for v in cfg.voices if v.id in wanted]
    fallback = settings.model_copy(deep=True)
    fallback.tts = TtsConfig.model_validate({**cfg.model_dump(), "voices": [v.model_dump() for v in voices],
                                             "default_voice": dict(cfg.fallback_voice)})
    return fallback


async def make_bridge_clients(settings: Settings) -> BridgeClients:
    """VAD in-process unless ``servers.vad.address`` is set; the others as configured."""
    fallback_engine = TtsEngine(fallback_tts_settings(settings))
    await asyncio.to_thread(fallback_engine.load)
    return BridgeClients(
        vad=await make_vad_client(settings),
        asr=await make_asr_client(settings),
        llm=make_llm_client(settings),
        tts=make_tts_client(settings),
        fallback_tts=InProcessTtsClient(fallback_engine),
        breakers={name: CircuitBreaker(name, settings.call.breaker) for name in ("asr", "llm", "tts")},
    )
