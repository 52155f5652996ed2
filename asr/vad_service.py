"""gRPC VAD server (``voiceai serve vad``): Silero over ``voiceai.vad.v1.Vad``.

The media bridge normally runs the same ``SpeechSegmenter`` in-process (a network hop slows
barge-in); this server exists for deployments that want VAD elsewhere and for parity tests.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from asr.api import VadEvent, VadOptions
from asr.vad import SegmenterOptions, SileroVadModel, SpeechSegmenter
from voiceai import models, telemetry
from voiceai.audio import Pcm16Assembler, check_format
from voiceai.config import Settings
from voiceai.serving import InvalidArgument, ResourceExhausted, add_servicer, rpc
from voiceai.vad.v1 import vad_pb2, vad_pb2_grpc

_EVENT_TYPES = {"speech_start": vad_pb2.EVENT_TYPE_SPEECH_START, "speech_end": vad_pb2.EVENT_TYPE_SPEECH_END,
                "probability": vad_pb2.EVENT_TYPE_PROBABILITY}


class VadEngine:
    """The Silero model plus per-stream segmenters; shared by the server and in-process clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.vad
        self.model: SileroVadModel | None = None

    def load(self) -> None:
        path = models.require(self.cfg.model, self.settings.models_dir) / "silero_vad.onnx"
        self.model = SileroVadModel(path)

    def open(self, options: VadOptions) -> SpeechSegmenter:
        if self.model is None:
            raise RuntimeError("VadEngine.load() has not run")
        return SpeechSegmenter(self.model, SegmenterOptions.resolve(
            self.cfg, options.sample_rate_hz, options.threshold, options.min_silence_ms,
            options.min_speech_ms, options.emit_probabilities))

    def max_samples(self, sample_rate_hz: int) -> int:
        return self.cfg.max_stream_s * sample_rate_hz


def event_to_proto(event: VadEvent) -> vad_pb2.DetectResponse:
    return vad_pb2.DetectResponse(type=_EVENT_TYPES[event.kind], timestamp_ms=event.timestamp_ms,
                                  probability=event.probability, speech_duration_ms=event.speech_duration_ms)


class VadServicer(vad_pb2_grpc.VadServicer):
    def __init__(self, engine: VadEngine) -> None:
        self.engine = engine

    @rpc("vad", "StreamDetect")
    async def StreamDetect(self, request_iterator, context: grpc.aio.ServicerContext):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("request") != "config":
            raise InvalidArgument("missing_config", "the first message must carry `config`")
        cfg = first.config
        rate = check_format(cfg.format, frozenset({8000, 16000}))
        segmenter = self.engine.open(VadOptions(rate, cfg.threshold, cfg.min_silence_ms, cfg.min_speech_ms,
                                                cfg.stream_id, cfg.emit_probabilities))
        assembler = Pcm16Assembler()
        max_samples = self.engine.max_samples(rate)
        async for req in request_iterator:
            if req.WhichOneof("request") != "audio":
                raise InvalidArgument("late_config", "`config` may only be the first message")
            samples = assembler.push(req.audio)
            if segmenter.samples_seen + len(samples) > max_samples:
                raise ResourceExhausted("stream_too_long",
                                        f"stream passed its maximum of {self.engine.cfg.max_stream_s} s")
            with telemetry.timed("vad", "window_batch"):
                events = await segmenter.process_async(samples)
            for event in events:
                yield event_to_proto(event)
        end = segmenter.force_end()
        if end is not None:
            yield event_to_proto(end)


class VadService:
    name = "vad"
    service_names = (vad_pb2.DESCRIPTOR.services_by_name["Vad"].full_name,)

    def __init__(self, settings: Settings) -> None:
        self.engine = VadEngine(settings)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(server, VadServicer(self.engine), vad_pb2.DESCRIPTOR.services_by_name["Vad"])

    async def load(self) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self.engine.load)
        telemetry.MODEL_LOAD_SECONDS.labels("vad", self.engine.cfg.model).set(time.perf_counter() - started)

    async def close(self) -> None:
        return None


def build_service(settings: Settings) -> VadService:
    return VadService(settings)
