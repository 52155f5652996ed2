"""The two ``LlmClient`` implementations and the factory that picks one from configuration."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc

from nlu.api import GenerateParams, LlmClient, LlmEvent
from nlu.generator import Generator
from nlu.wire import event_from_proto, params_to_proto
from voiceai.config import Settings
from voiceai.nlu.v1 import nlu_pb2
from voiceai.serving import error_from_rpc, message_size_options
from voiceai.telemetry import inject_metadata

GENERATE_METHOD = "/voiceai.nlu.v1.Nlu/Generate"
# The server enforces timeout_ms; the gRPC deadline only catches a server that stopped answering.
DEADLINE_MARGIN_S = 5.0


class InProcessLlmClient:
    """Runs the generator inside the caller's process (it talks to the engine over HTTP)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    async def generate(self, params: GenerateParams) -> AsyncGenerator[LlmEvent, None]:
        events = self.generator.generate(params)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def aclose(self) -> None:
        await self.generator.aclose()


class GrpcLlmClient:
    """Talks to an NLU server; closing the event iterator cancels the RPC (and the engine's work)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> grpc.aio.UnaryStreamMultiCallable:
        # Created on first use: a grpc.aio channel belongs to the event loop that is running then.
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=message_size_options())
        return self._channel.unary_stream(
            GENERATE_METHOD,
            request_serializer=nlu_pb2.GenerateRequest.SerializeToString,
            response_deserializer=nlu_pb2.GenerateResponse.FromString,
        )

    async def generate(self, params: GenerateParams) -> AsyncGenerator[LlmEvent, None]:
        timeout_s = params.timeout_ms / 1000 + DEADLINE_MARGIN_S if params.timeout_ms else None
        call = self._stub()(params_to_proto(params), metadata=inject_metadata(), timeout=timeout_s)
        try:
            async for resp in call:
                event = event_from_proto(resp)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()  # no-op once the call has finished

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


def make_llm_client(settings: Settings) -> LlmClient:
    """gRPC when ``servers.nlu.address`` is set, else in-process (which launches the local engine)."""
    address = settings.servers.nlu.address
    if address:
        return GrpcLlmClient(address)
    return InProcessLlmClient(Generator(settings))
