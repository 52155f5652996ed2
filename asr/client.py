"""VAD and ASR clients: in-process and gRPC implementations of the seams in ``asr.api``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from asr.api import (
    AsrClient,
    AsrOptions,
    AsrResult,
    SpeechBoundary,
    Transcript,
    VadClient,
    VadEvent,
    VadOptions,
    Word,
)
from asr.recognizer import AsrEngine, RecognizerStream
from asr.vad import SpeechSegmenter
from asr.vad_service import VadEngine
from voiceai import telemetry
from voiceai.asr.v1 import asr_pb2, asr_pb2_grpc
from voiceai.common.v1 import audio_pb2
from voiceai.config import Settings
from voiceai.serving import error_from_rpc, message_size_options
from voiceai.vad.v1 import vad_pb2, vad_pb2_grpc

_CLOSE = object()


def _pcm16(rate_hz: int) -> audio_pb2.AudioFormat:
    return audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16LE, sample_rate_hz=rate_hz, channels=1)


class _GrpcStream:
    """A bidi stream fed from a queue, with errors mapped to ServiceError."""

    def __init__(self, call: grpc.aio.StreamStreamCall, queue: asyncio.Queue) -> None:
        self._call = call
        self._queue = queue

    async def send(self, message) -> None:
        await self._queue.put(message)

    async def close(self) -> None:
        await self._queue.put(_CLOSE)

    def cancel(self) -> None:
        self._call.cancel()

    async def responses(self) -> AsyncIterator:
        try:
            async for response in self._call:
                yield response
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise error_from_rpc(err) from None


def _open_bidi(method, first) -> _GrpcStream:
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait(first)

    async def requests():
        while (item := await queue.get()) is not _CLOSE:
            yield item

    call = method(requests(), metadata=telemetry.inject_metadata())
    return _GrpcStream(call, queue)


# ---- VAD --------------------------------------------------------------------------------------


class InProcessVadSession:
    def __init__(self, segmenter: SpeechSegmenter) -> None:
        self._segmenter = segmenter
        self._events: asyncio.Queue = asyncio.Queue()

    async def send(self, pcm16: bytes) -> None:
        from voiceai.audio import pcm16_to_float

        for event in await self._segmenter.process_async(pcm16_to_float(pcm16)):
            self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[VadEvent]:
        while (item := await self._events.get()) is not _CLOSE:
            yield item

    async def close(self) -> None:
        end = self._segmenter.force_end()
        if end is not None:
            self._events.put_nowait(end)
        self._events.put_nowait(_CLOSE)


class InProcessVadClient:
    """VAD without a network hop: the media bridge's default (barge-in wants every millisecond)."""

    def __init__(self, engine: VadEngine) -> None:
        self.engine = engine

    def open(self, options: VadOptions) -> InProcessVadSession:
        return InProcessVadSession(self.engine.open(options))

    async def aclose(self) -> None:
        return None


_VAD_KINDS = {vad_pb2.EVENT_TYPE_SPEECH_START: "speech_start", vad_pb2.EVENT_TYPE_SPEECH_END: "speech_end",
              vad_pb2.EVENT_TYPE_PROBABILITY: "probability"}


class GrpcVadSession:
    def __init__(self, stub: vad_pb2_grpc.VadStub, options: VadOptions) -> None:
        config = vad_pb2.DetectConfig(format=_pcm16(options.sample_rate_hz), threshold=options.threshold,
                                      min_silence_ms=options.min_silence_ms, min_speech_ms=options.min_speech_ms,
                                      stream_id=options.stream_id, emit_probabilities=options.emit_probabilities)
        self._stream = _open_bidi(stub.StreamDetect, vad_pb2.DetectRequest(config=config))

    async def send(self, pcm16: bytes) -> None:
        await self._stream.send(vad_pb2.DetectRequest(audio=pcm16))

    async def events(self) -> AsyncIterator[VadEvent]:
        async for r in self._stream.responses():
            yield VadEvent(_VAD_KINDS[r.type], r.timestamp_ms, r.probability, r.speech_duration_ms)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self._stream.close()


class GrpcVadClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=message_size_options())
        self._stub = vad_pb2_grpc.VadStub(self._channel)

    def open(self, options: VadOptions) -> GrpcVadSession:
        return GrpcVadSession(self._stub, options)

    async def aclose(self) -> None:
        await self._channel.close()


# ---- ASR --------------------------------------------------------------------------------------


class InProcessAsrSession:
    def __init__(self, stream: RecognizerStream) -> None:
        self._stream = stream

    async def send_audio(self, pcm16: bytes) -> None:
        await self._stream.push_audio(pcm16)

    async def finalize(self) -> None:
        await self._stream.finalize()

    def results(self) -> AsyncIterator[AsrResult]:
        return self._stream.results()

    async def close(self) -> None:
        await self._stream.close()

    async def abort(self) -> None:
        await self._stream.abort()


class InProcessAsrClient:
    def __init__(self, engine: AsrEngine) -> None:
        self.engine = engine

    def open(self, options: AsrOptions) -> InProcessAsrSession:
        return InProcessAsrSession(self.engine.open_stream(options))

    async def aclose(self) -> None:
        await self.engine.close()


def transcript_from_proto(h: asr_pb2.Hypothesis) -> Transcript:
    return Transcript(
        text=h.text, is_final=h.is_final, utterance_index=h.utterance_index, start_ms=h.start_ms,
        end_ms=h.end_ms, language=h.language, language_probability=h.language_probability,
        confidence=h.confidence, stable_text=h.stable_text, unstable_text=h.unstable_text,
        words=tuple(Word(w.text, w.start_ms, w.end_ms, w.probability) for w in h.words), decode_ms=h.decode_ms)


class GrpcAsrSession:
    def __init__(self, stub: asr_pb2_grpc.AsrStub, options: AsrOptions) -> None:
        config = asr_pb2.RecognitionConfig(
            format=_pcm16(options.sample_rate_hz), language=options.language, call_id=options.call_id,
            interim_results=options.interim_results, interim_interval_ms=options.interim_interval_ms,
            endpoint_silence_ms=options.endpoint_silence_ms, prompt=options.prompt)
        self._stream = _open_bidi(stub.StreamingRecognize, asr_pb2.RecognizeRequest(config=config))

    async def send_audio(self, pcm16: bytes) -> None:
        await self._stream.send(asr_pb2.RecognizeRequest(audio=pcm16))

    async def finalize(self) -> None:
        await self._stream.send(asr_pb2.RecognizeRequest(finalize=asr_pb2.Finalize()))

    async def results(self) -> AsyncIterator[AsrResult]:
        async for r in self._stream.responses():
            if r.WhichOneof("response") == "hypothesis":
                yield transcript_from_proto(r.hypothesis)
            else:
                start = r.speech_event.type == asr_pb2.SpeechEvent.TYPE_SPEECH_START
                yield SpeechBoundary("speech_start" if start else "speech_end", r.speech_event.timestamp_ms)

    async def close(self) -> None:
        await self._stream.close()

    async def abort(self) -> None:
        self._stream.cancel()


class GrpcAsrClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=message_size_options())
        self._stub = asr_pb2_grpc.AsrStub(self._channel)

    def open(self, options: AsrOptions) -> GrpcAsrSession:
        return GrpcAsrSession(self._stub, options)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._channel.close()


# ---- factories --------------------------------------------------------------------------------


async def make_vad_client(settings: Settings) -> VadClient:
    """gRPC when ``servers.vad.address`` is set, else in-process (loads Silero)."""
    if settings.servers.vad.address:
        return GrpcVadClient(settings.servers.vad.address)
    engine = VadEngine(settings)
    await asyncio.to_thread(engine.load)
    return InProcessVadClient(engine)


async def make_asr_client(settings: Settings) -> AsrClient:
    """gRPC when ``servers.asr.address`` is set, else in-process (loads Silero and Whisper)."""
    if settings.servers.asr.address:
        return GrpcAsrClient(settings.servers.asr.address)
    engine = AsrEngine(settings)
    await asyncio.to_thread(engine.load)
    return InProcessAsrClient(engine)
