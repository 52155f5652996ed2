"""`voiceai serve nlu` as a real subprocess (SmolLM2-135M on llama.cpp), reached over gRPC.

One server serves most of the module; the engine-failure tests start their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nlu.api import ChatMessage, GenerateParams, GenerationFinal, LlmEvent, TextDelta, ToolSpec
from nlu.client import GrpcLlmClient
from nlu.wire import params_to_proto
from tests.servers import ServerProcess, free_port, running_server, start_server, wait_for
from voiceai.nlu.v1 import nlu_pb2
from voiceai.serving import DeadlineExceeded, InvalidArgument, Unavailable

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent

SMOL_CONFIG = """
[nlu]
system_prompt = "You are a helpful assistant. Answer in English, briefly."
warmup = {warmup}

[nlu.engine.launch]
model = "smollm2-135m-instruct"
log_dir = "{log_dir}"
"""
QUESTION = GenerateParams(messages=(ChatMessage("user", "What is the capital of France?"),),
                          max_tokens=24, greedy=True)
STORY = GenerateParams(messages=(ChatMessage("user", "Write a very long story about a dragon, "
                                                     "at least 1000 words."),), max_tokens=800, greedy=True)


def smol_env(folder: Path, warmup: bool = True, **extra: str) -> dict[str, str]:
    path = folder / f"nlu-{'warm' if warmup else 'cold'}.toml"
    path.write_text(SMOL_CONFIG.format(warmup=str(warmup).lower(), log_dir=folder))
    return {"VOICEAI_CONFIG": str(path), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("nlu-server")
    with running_server("nlu", folder, env=smol_env(folder)) as srv:
        yield srv


async def generate(address: str, params: GenerateParams) -> list[LlmEvent]:
    client = GrpcLlmClient(address)
    try:
        return [e async for e in client.generate(params)]
    finally:
        await client.aclose()


def metrics(srv: ServerProcess) -> str:
    return httpx.get(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).text


def metric_value(text: str, name_and_labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_generate_over_grpc(server: ServerProcess) -> None:
    events = await generate(server.address, QUESTION)
    final = events[-1]
    assert isinstance(final, GenerationFinal)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas and "".join(deltas) == final.message.content
    assert final.timings.time_to_first_token_ms > 0 and final.usage.completion_tokens > 0


async def test_three_concurrent_streams(server: ServerProcess) -> None:
    results = await asyncio.gather(*(generate(server.address, QUESTION) for _ in range(3)))
    assert all(isinstance(r[-1], GenerationFinal) and r[-1].message.content for r in results)


async def test_client_cancel_stops_generation_and_server_keeps_serving(server: ServerProcess) -> None:
    client = GrpcLlmClient(server.address)
    events = client.generate(STORY)
    seen = 0
    async for event in events:
        seen += isinstance(event, TextDelta)
        if seen == 3:
            break
    await events.aclose()
    await client.aclose()
    # An engine still writing the 800-token story would hold this request back for ~10 s.
    started = time.perf_counter()
    assert isinstance((await generate(server.address, QUESTION))[-1], GenerationFinal)
    assert time.perf_counter() - started < 4.0
    text = metrics(server)
    assert metric_value(text, "voiceai_llm_active_generations") == 0
    assert metric_value(text, 'voiceai_grpc_requests_total{code="CANCELLED",method="Generate",service="nlu"}') >= 1


@pytest.mark.parametrize(("params", "reason_text"), [
    (GenerateParams(messages=()), "conversation is empty"),
    (GenerateParams(messages=(ChatMessage("robot", "hi"),)), "role 'ROLE_UNSPECIFIED'"),  # type: ignore[arg-type]
    (GenerateParams(messages=(ChatMessage("user", "x" * 1_000_000),)), "messages[0].content has 1000000"),
    (GenerateParams(messages=QUESTION.messages, tools=(ToolSpec("lookup", "", {
        "type": "object", "properties": {"id": {"type": "strnig"}}}),)), "not valid JSON Schema"),
    (GenerateParams(messages=QUESTION.messages, tools=(ToolSpec("bad name!", "", {"type": "object"}),)),
     "must match"),
])
async def test_bad_input_is_invalid_argument(server: ServerProcess, params: GenerateParams,
                                             reason_text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await generate(server.address, params)
    assert reason_text in err.value.message


async def test_tool_schema_that_is_not_json(server: ServerProcess) -> None:
    request = params_to_proto(QUESTION)
    request.tools.append(nlu_pb2.Tool(name="lookup", parameters_json_schema="{not json"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_stream("/voiceai.nlu.v1.Nlu/Generate",
                                    request_serializer=nlu_pb2.GenerateRequest.SerializeToString,
                                    response_deserializer=nlu_pb2.GenerateResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call(request):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters_json_schema is not JSON" in (err.value.details() or "")


async def test_invalid_utf8_is_invalid_argument(server: ServerProcess) -> None:
    good = params_to_proto(GenerateParams(messages=(ChatMessage("user", "hello"),))).SerializeToString()
    raw = good.replace(b"hello", b"h\xffllo")
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_stream("/voiceai.nlu.v1.Nlu/Generate", request_serializer=lambda b: b,
                                    response_deserializer=nlu_pb2.GenerateResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call(raw):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'messages[0].content' is not valid UTF-8" in (err.value.details() or "")
    assert dict(err.value.trailing_metadata() or ())["voiceai-reason"] == "invalid_utf8"


async def test_timeout_is_deadline_exceeded(server: ServerProcess) -> None:
    params = GenerateParams(messages=STORY.messages, max_tokens=800, greedy=True, timeout_ms=300)
    with pytest.raises(DeadlineExceeded):
        await generate(server.address, params)
    assert isinstance((await generate(server.address, QUESTION))[-1], GenerationFinal)


def test_metrics_are_exported(server: ServerProcess) -> None:
    asyncio.run(generate(server.address, QUESTION))
    text = metrics(server)
    assert metric_value(text, 'voiceai_first_result_seconds_count{service="nlu"}') >= 1
    assert metric_value(text, 'voiceai_inference_seconds_count{kind="generate",service="nlu"}') >= 1
    assert "voiceai_llm_active_generations" in text
    assert metric_value(text, 'voiceai_model_load_seconds{model="smollm2-135m-instruct",service="nlu"}') > 0


def _gone(pid: int) -> bool:
    """Exited: no process, or a zombie its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def test_engine_crash_is_unavailable(tmp_path: Path) -> None:
    with running_server("nlu", tmp_path, env=smol_env(tmp_path, warmup=False)) as srv:
        (engine_pid,) = _children(srv.proc.pid)
        os.kill(engine_pid, signal.SIGKILL)
        assert wait_for(lambda: _gone(engine_pid), 5)
        # "exited" once the server has reaped the engine; "cannot reach" while its threads still exit.
        with pytest.raises(Unavailable, match=r"engine has exited|cannot reach the LLM engine"):
            asyncio.run(generate(srv.address, QUESTION))
        # Health follows the engine: a load balancer stops sending calls here.
        assert wait_for(lambda: _health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 5)


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status


def test_killed_server_takes_its_engine_along(tmp_path: Path) -> None:
    srv = start_server("nlu", tmp_path, env=smol_env(tmp_path, warmup=False))
    try:
        (engine_pid,) = _children(srv.proc.pid)
    finally:
        srv.kill()  # SIGKILL: no shutdown code runs; the engine's parent-death signal must stop it
    assert wait_for(lambda: _gone(engine_pid), 10)


def test_health_is_not_serving_until_the_engine_answers(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "VOICEAI_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    log = (tmp_path / "nlu.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "voiceai", "serve", "nlu", "--port", str(port),
                             "--metrics-port", "0"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    statuses: list[int] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def answered() -> bool:
                try:
                    statuses.append(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
                    return True
                except grpc.RpcError:
                    return False

            assert wait_for(answered, 30, 0.2), (tmp_path / "nlu.log").read_text()[-2000:]
            time.sleep(1.0)
            answered()
        assert statuses and all(s == health_pb2.HealthCheckResponse.NOT_SERVING for s in statuses)
    finally:
        # SIGKILL: voiceai.serving only looks at SIGTERM once load() has returned, and load() is still
        # waiting for the engine here. Nothing was launched, so nothing is left behind.
        proc.kill()
        proc.wait(15)
        log.close()
