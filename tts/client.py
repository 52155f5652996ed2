"""The two TtsClient implementations, and the factory that picks one from config.

The media bridge and ``voiceai tts`` call ``make_tts_client(settings)``: a gRPC client when
``servers.tts.address`` (VOICEAI_TTS_ADDRESS) is set, else an in-process engine. Both raise
``voiceai.serving.ServiceError`` subclasses for bad input, and both stop synthesis when the caller
closes the iterator (``aclose``), e.g. on barge-in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import grpc

from tts.api import AudioChunk, SynthesisRequest, TtsClient, VoiceInfo
from tts.engine import TtsEngine
from tts.service import chunk_from_proto, request_to_proto, voice_from_proto
from voiceai import telemetry
from voiceai.config import Settings
from voiceai.serving import error_from_rpc, message_size_options
from voiceai.tts.v1 import tts_pb2, tts_pb2_grpc


class InProcessTtsClient:
    """Runs the engine in this process; loads it (in a thread) on first use if it is not loaded.

    Callers that care about the first request's latency call ``await client.voices()`` at start-up.
    """

    def __init__(self, engine: TtsEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self._load_lock = asyncio.Lock()

    async def _ready(self) -> None:
        if not self._engine.loaded:
            async with self._load_lock:
                if not self._engine.loaded:
                    await asyncio.to_thread(self._engine.load)

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        self._engine.validate(request)  # bad input fails without waiting for a model load
        await self._ready()
        async with contextlib.aclosing(self._engine.synthesize(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def voices(self) -> list[VoiceInfo]:
        await self._ready()
        return self._engine.voices()

    async def aclose(self) -> None:
        if self._owns_engine:
            await asyncio.to_thread(self._engine.close)


class GrpcTtsClient:
    """Talks to a ``voiceai serve tts`` server."""

    def __init__(self, address: str, timeout_s: float | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=message_size_options())
        self._stub = tts_pb2_grpc.TtsStub(self._channel)
        self._timeout_s = timeout_s

    async def synthesize(self, request: SynthesisRequest) -> AsyncGenerator[AudioChunk, None]:
        call = self._stub.Synthesize(request_to_proto(request), timeout=self._timeout_s,
                                     metadata=telemetry.inject_metadata())
        try:
            async for response in call:
                yield chunk_from_proto(response)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()  # a no-op when the stream ended; stops the server's work when we left early

    async def voices(self) -> list[VoiceInfo]:
        try:
            response = await self._stub.ListVoices(tts_pb2.ListVoicesRequest(), timeout=self._timeout_s,
                                                   metadata=telemetry.inject_metadata())
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from err
        return [voice_from_proto(v) for v in response.voices]

    async def aclose(self) -> None:
        await self._channel.close(None)


def make_tts_client(settings: Settings) -> TtsClient:
    """gRPC when ``servers.tts.address`` is set, else in-process (the engine loads on first use)."""
    address = settings.servers.tts.address
    if address:
        return GrpcTtsClient(address)
    return InProcessTtsClient(TtsEngine(settings), owns_engine=True)
