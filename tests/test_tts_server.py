"""`voiceai serve tts` as a real subprocess: streams, errors, cancellation, health, reflection, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import ServerProcess, running_server
from tests.test_tts_engine import AR_TEXT, BAD_REQUESTS, EN_TEXT, LONG_EN, check_stream
from tts.api import AudioChunk, SynthesisRequest
from tts.chunker import split_phrases
from tts.client import GrpcTtsClient
from tts.service import request_to_proto
from voiceai.serving import ServiceError
from voiceai.tts.v1 import tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.integration

SYNTHESIZE = "/voiceai.tts.v1.Tts/Synthesize"
# SynthesizeRequest with text (field 1) = b"\xff\xfeok" and language (field 2) = "en", by hand.
INVALID_UTF8_REQUEST = b"\x0a\x04\xff\xfeok" + b"\x12\x02en"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server("tts", tmp_path_factory.mktemp("tts")) as proc:
        yield proc


async def collect(client: GrpcTtsClient, request: SynthesisRequest) -> list[AudioChunk]:
    return [chunk async for chunk in client.synthesize(request)]


async def test_streams_english_and_arabic(server: ServerProcess) -> None:
    client = GrpcTtsClient(server.address)
    try:
        check_stream(await collect(client, SynthesisRequest(text=EN_TEXT)), EN_TEXT,
                     "piper:en_US-joe-medium", 22050)
        check_stream(await collect(client, SynthesisRequest(text=AR_TEXT, language="ar", sample_rate_hz=16000)),
                     AR_TEXT, "espeak:ar", 16000)
    finally:
        await client.aclose()


async def test_four_concurrent_streams(server: ServerProcess) -> None:
    client = GrpcTtsClient(server.address)
    requests = [
        SynthesisRequest(text=LONG_EN, call_id="c1"),
        SynthesisRequest(text=EN_TEXT, sample_rate_hz=8000, call_id="c2"),
        SynthesisRequest(text=AR_TEXT, language="ar", call_id="c3"),
        SynthesisRequest(text="Goodbye, and thank you for calling.", speed=1.5, call_id="c4"),
    ]
    try:
        results = await asyncio.gather(*(collect(client, r) for r in requests))
    finally:
        await client.aclose()
    for request, chunks in zip(requests, results, strict=True):
        voice = "espeak:ar" if request.language == "ar" else "piper:en_US-joe-medium"
        check_stream(chunks, request.text, voice, request.sample_rate_hz or 22050)


async def piper_phrases_rendered(server: ServerProcess) -> float:
    """How many phrases the server's Piper voice has rendered, from its /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "voiceai_inference_seconds_count" and sample.labels.get("kind") == "piper":
                return sample.value
    return 0.0


async def test_client_cancel_mid_stream_leaves_the_server_serving(server: ServerProcess) -> None:
    client = GrpcTtsClient(server.address)
    long_text = LONG_EN * 3
    before = await piper_phrases_rendered(server)
    try:
        others = asyncio.gather(*(collect(client, SynthesisRequest(text=EN_TEXT)) for _ in range(2)))
        stream = client.synthesize(SynthesisRequest(text=long_text))
        first = await anext(stream)
        assert first.sequence == 0 and first.text
        await stream.aclose()  # cancels the call
        for chunks in await others:
            check_stream(chunks, EN_TEXT, "piper:en_US-joe-medium", 22050)
        check_stream(await collect(client, SynthesisRequest(text=AR_TEXT, language="ar")), AR_TEXT,
                     "espeak:ar", 22050)
    finally:
        await client.aclose()
    assert server.proc.poll() is None
    await asyncio.sleep(0.5)
    # The cancelled stream stopped after a phrase or two instead of rendering all of its phrases.
    rendered = await piper_phrases_rendered(server) - before
    others_rendered = 2 * len(split_phrases(EN_TEXT))
    assert rendered <= others_rendered + 3 < len(split_phrases(long_text)), rendered


@pytest.mark.parametrize(("request_", "error", "reason", "words"), BAD_REQUESTS)
async def test_bad_input_over_grpc(server: ServerProcess, request_: SynthesisRequest,
                                   error: type[ServiceError], reason: str, words: list[str]) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = tts_pb2_grpc.TtsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Synthesize(request_to_proto(request_)):
                pass
    assert caught.value.code() == error.code
    for word in words:
        assert word in (caught.value.details() or "")
    # The client maps the status back to the error an in-process engine raises.
    client = GrpcTtsClient(server.address)
    try:
        with pytest.raises(error):
            await anext(client.synthesize(request_))
    finally:
        await client.aclose()


async def test_invalid_utf8_text_is_invalid_argument(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_stream(SYNTHESIZE, request_serializer=lambda b: b,
                                    response_deserializer=tts_pb2.SynthesizeResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call(INVALID_UTF8_REQUEST):
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'text'" in (caught.value.details() or "") and "UTF-8" in (caught.value.details() or "")


async def test_list_voices(server: ServerProcess) -> None:
    client = GrpcTtsClient(server.address)
    try:
        voices = {v.id: v for v in await client.voices()}
    finally:
        await client.aclose()
    assert set(voices) == {"piper:en_US-joe-medium", "espeak:ar", "espeak:en"}
    assert voices["espeak:ar"].languages == ("ar",) and voices["espeak:ar"].is_default
    assert voices["piper:en_US-joe-medium"].sample_rate_hz == 22050


async def test_health_reflection_and_metrics(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="voiceai.tts.v1.Tts"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        services: list[str] = []
        async for answer in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            services += [s.name for s in answer.list_services_response.service]
        assert "voiceai.tts.v1.Tts" in services
    client = GrpcTtsClient(server.address)
    try:
        assert await collect(client, SynthesisRequest(text="Metrics, please."))
        with pytest.raises(ServiceError):
            await collect(client, SynthesisRequest(text=""))
    finally:
        await client.aclose()
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
    assert 'voiceai_inference_seconds_count{kind="piper",service="tts"}' in text
    assert 'voiceai_first_result_seconds_count{service="tts"}' in text
    assert 'voiceai_model_load_seconds{model="piper:en_US-joe-medium",service="tts"}' in text
    assert 'voiceai_bad_input_total{reason="empty_text",service="tts"}' in text


def test_serve_command_prints_its_port(tmp_path: Path) -> None:
    """`voiceai serve tts --port 0` binds a free port and says which."""
    import subprocess
    import sys

    from tests.servers import free_port

    repo_root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "voiceai", "serve", "tts", "--port", "0", "--metrics-port", str(free_port())]
    proc = subprocess.Popen(command, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("voiceai tts serving on 127.0.0.1:"), line
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
