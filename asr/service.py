"""gRPC ASR server: a thin adapter from ``voiceai.asr.v1.Asr`` onto ``RecognizerStream``."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from asr.api import AsrOptions, AsrResult, SpeechBoundary, Transcript
from asr.recognizer import AsrEngine
from voiceai import telemetry
from voiceai.asr.v1 import asr_pb2, asr_pb2_grpc
from voiceai.audio import check_format
from voiceai.config import Settings
from voiceai.serving import InvalidArgument, add_servicer, rpc

_BOUNDARY = {"speech_start": asr_pb2.SpeechEvent.TYPE_SPEECH_START,
             "speech_end": asr_pb2.SpeechEvent.TYPE_SPEECH_END}


def result_to_proto(result: AsrResult) -> asr_pb2.RecognizeResponse:
    if isinstance(result, SpeechBoundary):
        return asr_pb2.RecognizeResponse(speech_event=asr_pb2.SpeechEvent(
            type=_BOUNDARY[result.kind], timestamp_ms=result.timestamp_ms))
    return asr_pb2.RecognizeResponse(hypothesis=asr_pb2.Hypothesis(
        text=result.text, stable_text=result.stable_text, unstable_text=result.unstable_text,
        is_final=result.is_final, utterance_index=result.utterance_index, start_ms=result.start_ms,
        end_ms=result.end_ms, language=result.language, language_probability=result.language_probability,
        confidence=result.confidence, decode_ms=result.decode_ms,
        words=[asr_pb2.Word(text=w.text, start_ms=w.start_ms, end_ms=w.end_ms, probability=w.probability)
               for w in result.words]))


def options_from_proto(cfg: asr_pb2.RecognitionConfig) -> AsrOptions:
    rate = check_format(cfg.format, (8000, 48000))
    return AsrOptions(language=cfg.language or "auto", sample_rate_hz=rate, call_id=cfg.call_id,
                      interim_results=cfg.interim_results, interim_interval_ms=cfg.interim_interval_ms,
                      endpoint_silence_ms=cfg.endpoint_silence_ms, prompt=cfg.prompt)


class AsrServicer(asr_pb2_grpc.AsrServicer):
    def __init__(self, engine: AsrEngine) -> None:
        self.engine = engine

    @rpc("asr", "StreamingRecognize")
    async def StreamingRecognize(self, request_iterator, context: grpc.aio.ServicerContext):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("request") != "config":
            raise InvalidArgument("missing_config", "the first message must carry `config`")
        stream = self.engine.open_stream(options_from_proto(first.config))
        started = time.perf_counter()
        first_result = True

        async def pump() -> None:
            try:
                async for req in request_iterator:
                    kind = req.WhichOneof("request")
                    if kind == "audio":
                        await stream.push_audio(req.audio)
                    elif kind == "finalize":
                        await stream.finalize()
                    elif kind == "config":
                        raise InvalidArgument("late_config", "`config` may only be the first message")
                await stream.close()
            except Exception as err:  # surfaces through results() as the stream's status
                await stream.fail(err)

        pump_task = asyncio.get_running_loop().create_task(pump())
        try:
            async for result in stream.results():
                if first_result and isinstance(result, Transcript):
                    telemetry.FIRST_RESULT_SECONDS.labels("asr").observe(time.perf_counter() - started)
                    first_result = False
                yield result_to_proto(result)
        finally:
            if not pump_task.done():
                pump_task.cancel()
                await stream.abort()
            with contextlib.suppress(asyncio.CancelledError):
                await pump_task


class AsrService:
    """The ASR model server (``voiceai serve asr``)."""

    name = "asr"
    service_names = (asr_pb2.DESCRIPTOR.services_by_name["Asr"].full_name,)

    def __init__(self, settings: Settings, engine: AsrEngine | None = None) -> None:
        self.engine = engine or AsrEngine(settings)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(server, AsrServicer(self.engine), asr_pb2.DESCRIPTOR.services_by_name["Asr"])

    async def load(self) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self.engine.load)
        telemetry.MODEL_LOAD_SECONDS.labels("asr", self.engine.cfg.model).set(time.perf_counter() - started)

    async def close(self) -> None:
        await self.engine.close()


def build_service(settings: Settings) -> AsrService:
    return AsrService(settings)
