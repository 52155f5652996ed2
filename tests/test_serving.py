"""The shared gRPC scaffold: lenient request decoding and the error mapping of every server."""

from __future__ import annotations

import grpc
import pytest

from voiceai.grpc_wire import invalid_utf8_field, lenient_deserializer
from voiceai.tts.v1 import tts_pb2

from .servers import running_server

# Field 1 (text), length 3, bytes that are not UTF-8.
INVALID_UTF8_REQUEST = b"\x0a\x04\xff\xfeok" + b"\x12\x02en"


@pytest.mark.unit
def test_lenient_deserializer() -> None:
    decode = lenient_deserializer(tts_pb2.SynthesizeRequest)
    undecodable = decode(INVALID_UTF8_REQUEST)
    assert undecodable.reason == "invalid_utf8" and "'text'" in undecodable.message
    bad_voice = tts_pb2.SynthesizeRequest(text="hi").SerializeToString() + b"\x1a\x01\xc3"
    assert invalid_utf8_field(bad_voice, tts_pb2.SynthesizeRequest.DESCRIPTOR) == "voice"
    assert decode(b"\x0a\x05\xff").reason == "undecodable_request"  # truncated, not a UTF-8 problem
    good = decode(tts_pb2.SynthesizeRequest(text="مرحبا", language="ar").SerializeToString())
    assert good.text == "مرحبا"



@pytest.mark.integration
def test_stream_message_with_invalid_utf8_gets_invalid_argument(tmp_path):
    """A streamed message protobuf cannot parse is refused as INVALID_ARGUMENT, and the server lives."""
    # DetectRequest.config (field 1) holding DetectConfig.stream_id (field 5) = b"\xff"
    bad_config = b"\x0a\x03" + b"\x2a\x01\xff"
    with running_server("vad", tmp_path) as vad, grpc.insecure_channel(vad.address) as channel:
        call = channel.stream_stream("/voiceai.vad.v1.Vad/StreamDetect",
                                     request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([bad_config]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "field 'config.stream_id' is not valid UTF-8" in info.value.details()
        # The next well-formed stream is served.
        ok = list(call(iter([vad_config()]), timeout=10))
        assert ok == []


def vad_config() -> bytes:
    from voiceai.common.v1 import audio_pb2
    from voiceai.vad.v1 import vad_pb2

    fmt = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16LE, sample_rate_hz=16000, channels=1)
    return vad_pb2.DetectRequest(config=vad_pb2.DetectConfig(format=fmt)).SerializeToString()


@pytest.mark.integration
async def test_each_rpc_is_a_span_parented_by_the_callers_trace(settings):
    """The span of an RPC continues the trace whose context came in the gRPC metadata."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from asr.vad_service import VadService
    from voiceai.config import ServerConfig
    from voiceai.serving import start_server
    from voiceai.vad.v1 import vad_pb2_grpc

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the first provider of this test process wins; it is ours
    running = await start_server(VadService(settings), ServerConfig(port=0, metrics_port=0))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = vad_pb2_grpc.VadStub(channel).StreamDetect(
                iter([vad_pb2_request()]), metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")])
            assert [r async for r in call] == []
    finally:
        await running.stop(0)
    spans = [s for s in exporter.get_finished_spans() if s.name == "vad.StreamDetect"]
    if not spans:
        pytest.skip("another tracer provider was installed earlier in this process; run this file alone")
    (span,) = spans
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id
    assert span.attributes["rpc.grpc.status_code"] == 0


def vad_pb2_request():
    from voiceai.vad.v1 import vad_pb2

    return vad_pb2.DetectRequest.FromString(vad_config())
