"""Logs, Prometheus metrics and OpenTelemetry traces shared by every voiceai process.

Log messages are static strings. Anything that may identify a caller (transcripts, prompts, tool
arguments, phone numbers) goes into the ``pii`` field of ``extra=``, which the formatter drops
unless redaction is switched off for local debugging.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram

from voiceai.pii import redact, redact_obj

# ---- metrics ---------------------------------------------------------------------------------

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)

GRPC_REQUESTS = Counter(
    "voiceai_grpc_requests_total", "gRPC calls finished, by status code.", ["service", "method", "code"]
)
INFERENCE_SECONDS = Histogram(
    "voiceai_inference_seconds",
    "Wall time of one model call (decode, window, generation, synthesis).",
    ["service", "kind"],
    buckets=_LATENCY_BUCKETS_S,
)
ACTIVE_STREAMS = Gauge("voiceai_active_streams", "Streams being served now.", ["service"])
QUEUE_DEPTH = Gauge("voiceai_queue_depth", "Model calls waiting for the model.", ["service"])
MODEL_LOAD_SECONDS = Gauge("voiceai_model_load_seconds", "Time the model took to load.", ["service", "model"])
BAD_INPUT = Counter("voiceai_bad_input_total", "Requests refused for bad input, by reason.", ["service", "reason"])
FIRST_RESULT_SECONDS = Histogram(
    "voiceai_first_result_seconds",
    "From request start to the first useful result (first token, first audio chunk).",
    ["service"],
    buckets=_LATENCY_BUCKETS_S,
)


# ---- logging ---------------------------------------------------------------------------------

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _scrub(fields: dict[str, Any], redact_pii: bool) -> dict[str, Any]:
    """The record's extra fields for output: ``pii`` dropped, and every other string value run through
    the PII redactor as a safety net (an error message quoting a caller's number, say)."""
    if not redact_pii:
        return fields
    out = {k: v for k, v in fields.items() if k != "pii"}
    out = redact_obj(out)
    if "pii" in fields:
        out["pii"] = "[redacted]"
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the ``pii`` field is dropped and other text is PII-redacted when
    redaction is on."""

    def __init__(self, redact_pii: bool = True) -> None:
        super().__init__()
        self.redact_pii = redact_pii

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(message) if self.redact_pii else message,
        }
        out.update(_scrub({k: v for k, v in record.__dict__.items() if k not in _RESERVED}, self.redact_pii))
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            out["exc"] = redact(exc) if self.redact_pii else exc
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for terminals; redacts like `JsonFormatter`."""

    def __init__(self, redact_pii: bool = True) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self.redact_pii = redact_pii

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        if self.redact_pii:
            base = redact(base)
        fields = _scrub({k: v for k, v in record.__dict__.items() if k not in _RESERVED}, self.redact_pii)
        return f"{base} {fields}" if fields else base


def setup_logging(level: str = "INFO", json_lines: bool = True, redact_pii: bool = True) -> None:
    """Configures the root logger once per process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact_pii) if json_lines else TextFormatter(redact_pii))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# ---- tracing ---------------------------------------------------------------------------------


def setup_tracing(service_name: str, otlp_endpoint: str = "") -> None:
    """Installs a tracer provider; spans are exported over OTLP/gRPC when an endpoint is given."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)


def extract_context(metadata: Any) -> Any:
    """Trace context from gRPC invocation metadata (W3C traceparent)."""
    carrier: dict[str, str] = {}
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if isinstance(value, str):
            carrier[key.lower()] = value
    return propagate.extract(carrier)


def inject_metadata(extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """gRPC metadata carrying the current trace context, for outgoing calls."""
    carrier: dict[str, str] = dict(extra or {})
    propagate.inject(carrier)
    return list(carrier.items())


@contextmanager
def timed(service: str, kind: str) -> Iterator[None]:
    """Observes one model call in ``voiceai_inference_seconds``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        INFERENCE_SECONDS.labels(service, kind).observe(time.perf_counter() - start)
