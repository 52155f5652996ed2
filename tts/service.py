"""The TTS gRPC server (``voiceai serve tts``): thin proto <-> dataclass conversion around TtsEngine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from tts.api import AudioChunk, SynthesisRequest, VoiceInfo
from tts.engine import TtsEngine
from voiceai.config import Settings
from voiceai.serving import add_servicer, rpc
from voiceai.tts.v1 import tts_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = "voiceai.tts.v1.Tts"


# ---- proto <-> dataclasses --------------------------------------------------------------------


def request_from_proto(msg: tts_pb2.SynthesizeRequest) -> SynthesisRequest:
    return SynthesisRequest(text=msg.text, language=msg.language, voice=msg.voice, speed=msg.speed,
                            sample_rate_hz=msg.sample_rate_hz, call_id=msg.call_id)


def request_to_proto(req: SynthesisRequest) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(text=req.text, language=req.language, voice=req.voice, speed=req.speed,
                                     sample_rate_hz=req.sample_rate_hz, call_id=req.call_id)


def chunk_to_proto(chunk: AudioChunk) -> tts_pb2.SynthesizeResponse:
    return tts_pb2.SynthesizeResponse(
        chunk=tts_pb2.AudioChunk(audio=chunk.pcm16, sample_rate_hz=chunk.sample_rate_hz,
                                 sequence=chunk.sequence, text=chunk.text),
        voice=chunk.voice,
    )


def chunk_from_proto(msg: tts_pb2.SynthesizeResponse) -> AudioChunk:
    c = msg.chunk
    return AudioChunk(pcm16=c.audio, sample_rate_hz=c.sample_rate_hz, sequence=c.sequence, text=c.text,
                      voice=msg.voice)


def voice_to_proto(v: VoiceInfo) -> tts_pb2.Voice:
    return tts_pb2.Voice(id=v.id, languages=list(v.languages), backend=v.backend,
                         sample_rate_hz=v.sample_rate_hz, is_default=v.is_default)


def voice_from_proto(v: tts_pb2.Voice) -> VoiceInfo:
    return VoiceInfo(id=v.id, languages=tuple(v.languages), backend=v.backend,
                     sample_rate_hz=v.sample_rate_hz, is_default=v.is_default)


# ---- servicer ---------------------------------------------------------------------------------


class TtsServicer:
    """voiceai.tts.v1.Tts over a TtsEngine."""

    def __init__(self, engine: TtsEngine) -> None:
        self._engine = engine

    @rpc("tts", "Synthesize")
    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        async with contextlib.aclosing(self._engine.synthesize(request_from_proto(request))) as chunks:
            async for chunk in chunks:
                yield chunk_to_proto(chunk)

    @rpc("tts", "ListVoices")
    async def ListVoices(
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        return tts_pb2.ListVoicesResponse(voices=[voice_to_proto(v) for v in self._engine.voices()])


class TtsService:
    """The ModelService that ``voiceai serve tts`` runs."""

    name = "tts"
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: Settings, engine: TtsEngine | None = None) -> None:
        self.engine = engine or TtsEngine(settings)
        self._servicer = TtsServicer(self.engine)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(server, self._servicer, tts_pb2.DESCRIPTOR.services_by_name["Tts"])

    async def load(self) -> None:
        await asyncio.to_thread(self.engine.load)

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)


def build_service(settings: Settings) -> TtsService:
    """The TTS model service for ``voiceai serve tts``."""
    return TtsService(settings)
