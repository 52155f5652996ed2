"""The NLU gRPC server: ``voiceai.nlu.v1.Nlu`` over the in-process generator.

``voiceai serve nlu`` builds it with ``build_service``; ``voiceai.serving`` adds health (NOT_SERVING
until ``load`` has launched the engine and warmed it), reflection, metrics and shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc

from nlu.generator import Generator
from nlu.wire import event_to_proto, params_from_proto
from voiceai import telemetry
from voiceai.config import Settings
from voiceai.nlu.v1 import nlu_pb2
from voiceai.serving import ModelService, add_servicer, rpc

log = logging.getLogger(__name__)

SERVICE_NAME = "voiceai.nlu.v1.Nlu"


class NluServicer:
    """Thin proto <-> dataclass layer; the generator owns validation, timeouts and errors."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    @rpc("nlu", "Generate")
    async def Generate(
        self, request: nlu_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[nlu_pb2.GenerateResponse]:
        """Streams deltas, tool calls and one final message; cancelling the call stops the engine."""
        params = params_from_proto(request)
        events = self.generator.generate(params)
        try:
            async for event in events:
                yield event_to_proto(event)
        finally:
            # Runs on client cancellation too: closing the generator closes the engine stream.
            await events.aclose()


class NluService:
    """The ``ModelService`` of the NLU server."""

    name = "nlu"
    service_names: tuple[str, ...] = (SERVICE_NAME,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.generator = Generator(settings)
        self.servicer = NluServicer(self.generator)

    def healthy(self) -> bool:
        """False once a launched engine process has exited (health turns NOT_SERVING)."""
        engine = self.generator.engine
        return engine is None or engine.running

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_servicer(server, self.servicer, nlu_pb2.DESCRIPTOR.services_by_name["Nlu"])

    async def load(self) -> None:
        """Launches (or reaches) the engine and warms it; health stays NOT_SERVING until then."""
        started = time.perf_counter()
        await self.generator.wait_ready()
        if self.settings.nlu.engine.launch.enabled and not self.settings.nlu.engine.base_url:
            model = self.settings.nlu.engine.launch.model
        else:
            model = self.settings.nlu.engine.model
        if self.settings.nlu.warmup:
            await self.generator.warm_up()
        telemetry.MODEL_LOAD_SECONDS.labels("nlu", model).set(time.perf_counter() - started)
        log.info("engine warmed up", extra={"model": model, "base_url": self.generator.base_url})

    async def close(self) -> None:
        await self.generator.aclose()


def build_service(settings: Settings) -> ModelService:
    """Factory used by ``voiceai serve nlu``."""
    return NluService(settings)
