"""The scaffold every gRPC model server shares.

A service implements ``ModelService``: it registers its servicer, loads its model (off the event
loop) and closes. ``run_server`` adds what every server has: the standard health service (NOT_SERVING
until the model is loaded), server reflection, a Prometheus side port, trace export, a stream cap
and graceful shutdown on SIGTERM/SIGINT.

RPC methods are wrapped with ``rpc(...)``, which owns the span (parented by the caller's trace
context from metadata), the request and active-stream metrics, and the mapping of ``ServiceError``
to a precise gRPC status with a log line and a ``voiceai_bad_input_total`` count.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from voiceai import telemetry
from voiceai.config import ServerConfig, TelemetryConfig
from voiceai.grpc_wire import Undecodable, lenient_deserializer

log = logging.getLogger(__name__)

REASON_METADATA_KEY = "voiceai-reason"
LIVENESS_INTERVAL_S = 1.0

# Large enough for a whole utterance of audio in one message, small enough to refuse abuse.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def message_size_options() -> list[tuple[str, int]]:
    """gRPC channel/server options that raise the message size limit to ``MAX_MESSAGE_BYTES``."""
    return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


class ServiceError(Exception):
    """An error with a gRPC status; ``reason`` is a short metric label (e.g. ``bad_sample_rate``)."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ModelService(Protocol):
    """What a model server provides to ``run_server``."""

    name: str  # short name: "vad", "asr", "nlu", "tts"
    service_names: tuple[str, ...]  # full gRPC service names, for health and reflection

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def load(self) -> None:
        """Loads models; runs after the port is open, while health says NOT_SERVING."""

    async def close(self) -> None: ...

    # Optional: ``def healthy(self) -> bool`` -- checked every second after load; False turns the
    # health service NOT_SERVING (e.g. the NLU server's engine process died).


def _checked(request: Any) -> Any:
    """Refuses an undecodable request; wraps a request stream so that each message is checked."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.reason, request.message)
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return request


async def _checked_stream(requests: AsyncIterator) -> AsyncIterator:
    async for item in requests:
        if isinstance(item, Undecodable):
            raise InvalidArgument(item.reason, item.message)
        yield item


def add_servicer(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor) -> None:
    """Registers a servicer's methods (wrapped with ``rpc``) with lenient request decoding.

    Used instead of the generated ``add_XServicer_to_server`` so that a request protobuf refuses
    to parse (invalid UTF-8 in a string field) gets INVALID_ARGUMENT naming the field, not INTERNAL.
    """
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for m in service.methods:
        factory = factories[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = factory(
            getattr(servicer, m.name),
            request_deserializer=lenient_deserializer(GetMessageClass(m.input_type)),
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def rpc(service: str, method: str) -> Callable:
    """Decorates a servicer method (coroutine or async generator) with spans, metrics and errors."""
    tracer = trace.get_tracer(f"voiceai.{service}")

    def decorate(fn: Callable) -> Callable:
        span_name = f"{service}.{method}"

        async def _fail(context: grpc.aio.ServicerContext, err: ServiceError) -> None:
            telemetry.BAD_INPUT.labels(service, err.reason).inc()
            log.warning("request refused", extra={"service": service, "method": method,
                                                   "reason": err.reason, "detail": err.message})
            # The reason label travels too, so gRPC clients raise the same error as in-process ones.
            context.set_trailing_metadata(((REASON_METADATA_KEY, err.reason),))
            await context.abort(err.code, err.message)

        def _start(context: grpc.aio.ServicerContext) -> Any:
            # Parented by the caller's trace context. The span is not made "current" across a
            # stream's yields: each resumption of an async generator may run in another context,
            # and attaching there breaks OpenTelemetry's context tokens.
            parent = telemetry.extract_context(context.invocation_metadata())
            return tracer.start_span(span_name, context=parent)

        def _finish(span: Any, code: grpc.StatusCode, started: float) -> None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.set_attribute("voiceai.duration_ms", round((time.perf_counter() - started) * 1000, 1))
            span.end()
            telemetry.GRPC_REQUESTS.labels(service, method, code.name).inc()

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
                span = _start(context)
                started = time.perf_counter()
                code = grpc.StatusCode.OK
                telemetry.ACTIVE_STREAMS.labels(service).inc()
                try:
                    # aclosing: when the client goes away, the servicer's own cleanup runs now.
                    async with contextlib.aclosing(fn(self, _checked(request), context)) as items:
                        async for item in items:
                            yield item
                except ServiceError as err:
                    code = err.code
                    await _fail(context, err)
                except (asyncio.CancelledError, GeneratorExit):
                    # grpc.aio closes the generator (GeneratorExit) or cancels the task when the
                    # client disconnects or cancels.
                    code = grpc.StatusCode.CANCELLED
                    log.info("client went away", extra={"service": service, "method": method})
                    raise
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                    raise
                except Exception:
                    code = grpc.StatusCode.INTERNAL
                    log.exception("request failed", extra={"service": service, "method": method})
                    await context.abort(grpc.StatusCode.INTERNAL, f"{span_name} failed; see server log")
                finally:
                    telemetry.ACTIVE_STREAMS.labels(service).dec()
                    _finish(span, code, started)

            return stream_wrapper

        @functools.wraps(fn)
        async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = _start(context)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                with trace.use_span(span, end_on_exit=False):
                    return await fn(self, _checked(request), context)
            except ServiceError as err:
                code = err.code
                await _fail(context, err)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("request failed", extra={"service": service, "method": method})
                await context.abort(grpc.StatusCode.INTERNAL, f"{span_name} failed; see server log")
            finally:
                _finish(span, code, started)

        return unary_wrapper

    return decorate


@dataclass
class RunningServer:
    """A started server, for tests and `voiceai up` that run servers inside one process."""

    server: grpc.aio.Server
    port: int
    metrics_port: int
    health: health.aio.HealthServicer  # type: ignore[name-defined]
    service: ModelService
    _metrics_httpd: Any = None
    _liveness: asyncio.Task | None = None

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
        for name in ("", *self.service.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        await self.service.close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()


async def start_server(service: ModelService, cfg: ServerConfig) -> RunningServer:
    """Opens the gRPC and metrics ports, then loads the model; health turns SERVING when it is ready."""
    from prometheus_client import start_http_server

    server = grpc.aio.server(
        options=[*message_size_options(), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=cfg.max_concurrent_streams,
    )
    service.add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *service.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    if port == 0:
        raise OSError(f"cannot bind {cfg.host}:{cfg.port}")
    await server.start()
    httpd, _thread = start_http_server(cfg.metrics_port, addr=cfg.host)
    metrics_port = httpd.server_port
    log.info("listening", extra={"service": service.name, "port": port, "metrics_port": metrics_port})
    running = RunningServer(server, port, metrics_port, health_servicer, service, httpd)
    started = time.perf_counter()
    try:
        await service.load()
    except BaseException:
        await running.stop(0)
        raise
    log.info("model loaded", extra={"service": service.name,
                                    "load_s": round(time.perf_counter() - started, 2)})
    for name in ("", *service.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if hasattr(service, "healthy"):
        running._liveness = asyncio.get_running_loop().create_task(_watch_liveness(service, health_servicer))
    return running


async def _watch_liveness(service: ModelService, health_servicer: Any) -> None:
    """Mirrors ``service.healthy()`` into the health service (SERVING / NOT_SERVING)."""
    serving = True
    while True:
        await asyncio.sleep(LIVENESS_INTERVAL_S)
        try:
            ok = bool(service.healthy())  # type: ignore[attr-defined]
        except Exception:
            ok = False
        if ok != serving:
            serving = ok
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            log.warning("health changed", extra={"service": service.name, "serving": ok})
            for name in ("", *service.service_names):
                await health_servicer.set(name, status)


async def run_server(service: ModelService, cfg: ServerConfig, tel: TelemetryConfig) -> None:
    """Runs one model server until SIGTERM or SIGINT, then drains for ``cfg.grace_s``."""
    telemetry.setup_tracing(f"voiceai-{service.name}", tel.otlp_endpoint)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # The stop signal also interrupts a long model load (e.g. waiting for a vLLM that is not up).
    starting = asyncio.get_running_loop().create_task(start_server(service, cfg))
    stopper = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await service.close()
        log.info("stopped while loading", extra={"service": service.name})
        return
    stopper.cancel()
    running = starting.result()
    # A line for people and scripts that started us with port 0.
    print(f"voiceai {service.name} serving on {cfg.host}:{running.port} "
          f"(metrics on {cfg.host}:{running.metrics_port})", flush=True)
    await stop.wait()
    log.info("shutting down", extra={"service": service.name})
    await running.stop(cfg.grace_s)


async def wait_for_serving(address: str, timeout_s: float = 60.0, service: str = "") -> None:
    """Polls the health service of a server until it reports SERVING."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.aio.AioRpcError as err:
                last_error = err.code().name
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout_s:.0f}s (last: {last_error})")


_ERRORS_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.code: cls for cls in (InvalidArgument, ResourceExhausted, Unavailable, DeadlineExceeded, NotFound)
}


def error_from_rpc(err: grpc.aio.AioRpcError) -> ServiceError:
    """Maps a gRPC failure back to the ServiceError an in-process backend would have raised.

    gRPC clients use it so that callers handle both client implementations the same way.
    """
    reason = err.code().name.lower()
    for key, value in err.trailing_metadata() or ():
        if key == REASON_METADATA_KEY and isinstance(value, str):
            reason = value
    cls = _ERRORS_BY_CODE.get(err.code())
    if cls is None:
        generic = ServiceError(reason, err.details() or err.code().name)
        generic.code = err.code()
        return generic
    return cls(reason, err.details() or "")
