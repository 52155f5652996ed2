"""Silero VAD: the segmenter on real audio, and the gRPC server with its bad-input handling."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import numpy as np
import pytest

from asr.api import VadOptions
from asr.client import GrpcVadClient, InProcessVadClient
from asr.vad_service import VadEngine
from voiceai.common.v1 import audio_pb2
from voiceai.vad.v1 import vad_pb2, vad_pb2_grpc

from .asr_helpers import fixture_pcm, silence_pcm
from .servers import running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vad_engine(settings):
    engine = VadEngine(settings)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def vad_server(tmp_path_factory):
    config = tmp_path_factory.mktemp("vad") / "voiceai.toml"
    config.write_text("[vad]\nmax_stream_s = 3\n")
    with running_server("vad", tmp_path_factory.mktemp("vadlog"), env={"VOICEAI_CONFIG": str(config)}) as s:
        yield s


async def detect(client, pcm: bytes, options: VadOptions, chunk_bytes: int = 640):
    session = client.open(options)

    async def feed():
        for i in range(0, len(pcm), chunk_bytes):
            await session.send(pcm[i:i + chunk_bytes])
        await session.close()

    task = asyncio.create_task(feed())
    events = [e async for e in session.events()]
    await task
    return events


@pytest.mark.parametrize("name", ["en_order.wav", "ar_agent.wav", "en_yes.wav"])
async def test_one_speech_segment_per_clip(vad_engine, audio_texts, name):
    pcm = fixture_pcm(name)
    duration_ms = len(pcm) // 32
    events = await detect(InProcessVadClient(vad_engine), pcm, VadOptions())
    kinds = [e.kind for e in events]
    assert kinds == ["speech_start", "speech_end"], kinds
    start, end = events
    # The fixtures carry 600 ms of leading and 1000 ms of trailing silence.
    assert 450 <= start.timestamp_ms <= 900
    assert start.timestamp_ms < end.timestamp_ms <= duration_ms - 700
    assert end.speech_duration_ms == end.timestamp_ms - start.timestamp_ms


async def test_silence_and_quiet_noise_give_no_events(vad_engine):
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000 * 2) * 0.003).astype(np.float32)
    from voiceai.audio import float_to_pcm16

    for pcm in (silence_pcm(2.0), float_to_pcm16(noise)):
        assert await detect(InProcessVadClient(vad_engine), pcm, VadOptions()) == []


async def test_8khz_telephony_audio(vad_engine):
    events = await detect(InProcessVadClient(vad_engine), fixture_pcm("en_balance.wav", 8000),
                          VadOptions(sample_rate_hz=8000), chunk_bytes=320)
    assert [e.kind for e in events] == ["speech_start", "speech_end"]


async def test_probabilities_on_request(vad_engine):
    events = await detect(InProcessVadClient(vad_engine), fixture_pcm("en_yes.wav"),
                          VadOptions(emit_probabilities=True))
    probs = [e for e in events if e.kind == "probability"]
    assert len(probs) == len(fixture_pcm("en_yes.wav")) // 2 // 512
    assert max(p.probability for p in probs) > 0.9 and min(p.probability for p in probs) < 0.1


async def test_grpc_server_matches_in_process(vad_engine, vad_server):
    pcm = fixture_pcm("en_yes.wav")
    local = await detect(InProcessVadClient(vad_engine), pcm, VadOptions())
    client = GrpcVadClient(vad_server.address)
    try:
        remote = await detect(client, pcm, VadOptions(), chunk_bytes=999)  # odd sizes split samples
    finally:
        await client.aclose()
    assert [(e.kind, e.timestamp_ms) for e in remote] == [(e.kind, e.timestamp_ms) for e in local]


def _raw_call(address: str, messages: list[vad_pb2.DetectRequest]) -> grpc.RpcError | list:
    with grpc.insecure_channel(address) as channel:
        stub = vad_pb2_grpc.VadStub(channel)
        try:
            return list(stub.StreamDetect(iter(messages), timeout=10))
        except grpc.RpcError as err:
            return err


def _config(**kw) -> vad_pb2.DetectRequest:
    fmt = audio_pb2.AudioFormat(encoding=kw.pop("encoding", audio_pb2.AUDIO_ENCODING_PCM16LE),
                                sample_rate_hz=kw.pop("rate", 16000), channels=kw.pop("channels", 1))
    return vad_pb2.DetectRequest(config=vad_pb2.DetectConfig(format=fmt, **kw))


@pytest.mark.parametrize(("messages", "code", "needle"), [
    ([vad_pb2.DetectRequest(audio=b"\0" * 640)], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    ([_config(rate=44100)], grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz=44100"),
    ([_config(encoding=audio_pb2.AUDIO_ENCODING_UNSPECIFIED)], grpc.StatusCode.INVALID_ARGUMENT, "encoding"),
    ([_config(channels=2)], grpc.StatusCode.INVALID_ARGUMENT, "mono"),
    ([_config(threshold=1.5)], grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
    ([_config(), _config()], grpc.StatusCode.INVALID_ARGUMENT, "only be the first"),
    ([_config()] + [vad_pb2.DetectRequest(audio=b"\0" * 32000)] * 4, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "maximum of 3 s"),
])
def test_bad_input_gets_precise_status(vad_server, messages, code, needle):
    err = _raw_call(vad_server.address, messages)
    assert isinstance(err, grpc.RpcError), err
    assert err.code() == code
    assert needle in err.details()
    # The server keeps serving well-formed streams.
    ok = _raw_call(vad_server.address, [_config(), vad_pb2.DetectRequest(audio=fixture_pcm("en_yes.wav"))])
    assert [r.type for r in ok] == [vad_pb2.EVENT_TYPE_SPEECH_START, vad_pb2.EVENT_TYPE_SPEECH_END]


def test_empty_stream_is_fine(vad_server):
    assert _raw_call(vad_server.address, [_config()]) == []


def test_bad_input_is_counted_in_metrics(vad_server):
    _raw_call(vad_server.address, [_config(rate=12345)])
    text = httpx.get(f"http://127.0.0.1:{vad_server.metrics_port}/metrics").text
    assert 'voiceai_bad_input_total{reason="bad_sample_rate",service="vad"}' in text
    assert "voiceai_model_load_seconds" in text
    assert 'voiceai_grpc_requests_total{code="OK",method="StreamDetect",service="vad"}' in text
    log_lines = [json.loads(line) for line in vad_server.log().splitlines() if line.startswith("{")]
    assert any(r["msg"] == "request refused" and r["reason"] == "bad_sample_rate" for r in log_lines)
