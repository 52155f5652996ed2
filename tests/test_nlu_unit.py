"""NLU pieces without a model: tools, prompting, validation, wire format, and the generator's
streaming, validation and error paths against a fake engine.

``FakeChatEngine`` serves real ``openai`` ChatCompletionChunk objects as server-sent events through
the real AsyncOpenAI client (an httpx2 MockTransport), so the generator's engine path is exercised
exactly as with llama.cpp or vLLM; only the model is scripted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx2
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import (
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.completion_usage import CompletionUsage

from nlu.api import (
    ChatMessage,
    GenerateParams,
    GenerationFinal,
    Passage,
    TextDelta,
    ToolCall,
    ToolCallResult,
    ToolSpec,
)
from nlu.generator import Generator
from nlu.prompting import INTERRUPTED_MARK, build_messages
from nlu.tools import HermesTextParser, ToolCallAccumulator, call_from_hermes_block, check_tools, validate_call
from nlu.validation import validate_params
from nlu.wire import (
    event_from_proto,
    event_to_proto,
    params_from_proto,
    params_to_proto,
)
from tests.servers import free_port
from voiceai.config import load_settings
from voiceai.grpc_wire import Undecodable, lenient_deserializer
from voiceai.nlu.v1 import nlu_pb2
from voiceai.serving import DeadlineExceeded, InvalidArgument, Unavailable

pytestmark = pytest.mark.unit

ORDER_TOOL = ToolSpec(
    "get_order_status", "Look up an order by its number.",
    {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^[0-9]+$"}},
     "required": ["order_id"], "additionalProperties": False},
)
USER = ChatMessage("user", "Where is my order 12345?")


# ---- fake engine -------------------------------------------------------------------------------


def chunk(content: str | None = None, *, finish: str | None = None, tool_calls: list | None = None,
          usage: tuple[int, int] | None = None) -> ChatCompletionChunk:
    choices = [] if usage and content is None and finish is None else [
        Choice(index=0, delta=ChoiceDelta(content=content, tool_calls=tool_calls), finish_reason=finish)
    ]
    return ChatCompletionChunk(
        id="chatcmpl-fake", object="chat.completion.chunk", created=0, model="fake", choices=choices,
        usage=CompletionUsage(prompt_tokens=usage[0], completion_tokens=usage[1],
                              total_tokens=sum(usage)) if usage else None,
    )


def tool_fragment(index: int, *, call_id: str | None = None, name: str | None = None,
                  arguments: str | None = None) -> ChoiceDeltaToolCall:
    return ChoiceDeltaToolCall(index=index, id=call_id, type="function" if call_id else None,
                               function=ChoiceDeltaToolCallFunction(name=name, arguments=arguments))


class _SseStream(httpx2.AsyncByteStream):
    """The response body; records a close before the last event, as a real engine sees a disconnect."""

    def __init__(self, engine: FakeChatEngine) -> None:
        self.engine = engine

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.engine._sse():
            yield piece

    async def aclose(self) -> None:
        if not self.engine.finished:
            self.engine.closed_early = True


class FakeChatEngine:
    """An OpenAI-compatible engine that streams scripted chunks; records requests and early closes."""

    def __init__(self, chunks: list[ChatCompletionChunk], delay_s: float = 0.0, status: int = 200,
                 error_body: dict | None = None) -> None:
        self.chunks = chunks
        self.delay_s = delay_s
        self.status = status
        self.error_body = error_body
        self.requests: list[dict] = []
        self.sent = 0
        self.finished = False
        self.closed_early = False

    async def _sse(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield f"data: {c.model_dump_json(exclude_none=True)}\n\n".encode()
            self.sent += 1
        yield b"data: [DONE]\n\n"
        self.finished = True

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        if self.status != 200:
            return httpx2.Response(self.status, json=self.error_body or {"error": {"message": "boom"}})
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=_SseStream(self))

    def client(self) -> AsyncOpenAI:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))
        return AsyncOpenAI(base_url="http://fake-engine/v1", api_key="x", http_client=http, max_retries=0)


def make_generator(engine: FakeChatEngine, **overrides: object) -> Generator:
    settings = load_settings(profile="cpu", env={}, overrides=dict(overrides))
    return Generator(settings, client=engine.client())


async def collect(gen: Generator, params: GenerateParams) -> list:
    return [e async for e in gen.generate(params)]


# ---- hermes parsing and tool validation ----------------------------------------------------------


def feed_all(parser: HermesTextParser, pieces: list[str]) -> tuple[str, list[str]]:
    text, blocks = "", []
    for p in pieces:
        t, b = parser.feed(p)
        text += t
        blocks += b
    t, b = parser.finish()
    return text + t, blocks + b


def test_hermes_parser_hides_tool_call_blocks_split_across_chunks() -> None:
    raw = 'Let me check. <tool_call>\n{"name": "get_order_status", "arguments": {"order_id": "12345"}}\n</tool_call>'
    pieces = [raw[i:i + 3] for i in range(0, len(raw), 3)]
    parser = HermesTextParser()
    spoken = ""
    for p in pieces:
        t, _ = parser.feed(p)
        spoken += t
        assert "<" not in spoken, "a partial tag leaked into the spoken text"
    text, blocks = feed_all(HermesTextParser(), pieces)
    assert text.strip() == "Let me check."
    call = call_from_hermes_block(blocks[0])
    assert call.name == "get_order_status" and json.loads(call.arguments_json) == {"order_id": "12345"}


def test_hermes_parser_keeps_plain_text_and_lone_angle_brackets() -> None:
    text, blocks = feed_all(HermesTextParser(), ["Price is <", "5 AED> today", "."])
    assert text == "Price is <5 AED> today." and blocks == []


def test_hermes_parser_bare_json_call_and_unclosed_block() -> None:
    text, blocks = feed_all(HermesTextParser(), ['{"name": "get_order_status", ', '"arguments": {"order_id": "7"}}'])
    assert text == "" and len(blocks) == 1
    text, blocks = feed_all(HermesTextParser(), ['<tool_call>{"name": "x", "arguments": {}}'])
    assert text == "" and call_from_hermes_block(blocks[0]).name == "x"
    text, blocks = feed_all(HermesTextParser(), ["{not a call} but text"])
    assert text == "{not a call} but text" and blocks == []


def test_validate_call_reports_each_problem() -> None:
    tools = {ORDER_TOOL.name: ORDER_TOOL}
    ok = validate_call(ToolCall("1", "get_order_status", '{"order_id": "12345"}'), tools)
    assert ok.valid and ok.validation_error == ""
    cases = {
        ToolCall("2", "cancel_order", "{}"): "unknown tool",
        ToolCall("3", "get_order_status", '{"order_id": '): "not valid JSON",
        ToolCall("4", "get_order_status", '["12345"]'): "must be a JSON object",
        ToolCall("5", "get_order_status", '{"order_id": 12345}'): "$.order_id",
        ToolCall("6", "get_order_status", '{"order_id": "12a"}'): "does not match",
        ToolCall("7", "get_order_status", "{}"): "'order_id' is a required property",
    }
    for call, expected in cases.items():
        result = validate_call(call, tools)
        assert not result.valid and expected in result.validation_error, (call, result.validation_error)
    assert "tool_choice is 'none'" in validate_call(ok.call, tools, allowed=False).validation_error


def test_check_tools_rejects_bad_names_and_schemas() -> None:
    check_tools([ORDER_TOOL], 4)
    bad = {
        "bad_tool_name": ToolSpec("get order", "", {"type": "object"}),
        "bad_tool_schema": ToolSpec("t", "", {"type": "object", "properties": {"a": {"type": "strnig"}}}),
    }
    for reason, tool in bad.items():
        with pytest.raises(InvalidArgument) as err:
            check_tools([tool], 4)
        assert err.value.reason == reason
    with pytest.raises(InvalidArgument, match="type 'object'"):
        check_tools([ToolSpec("t", "", {"type": "array"})], 4)
    with pytest.raises(InvalidArgument, match="given twice"):
        check_tools([ORDER_TOOL, ORDER_TOOL], 4)


def test_accumulator_joins_fragments_by_index() -> None:
    acc = ToolCallAccumulator()
    assert acc.add(0, "call_a", "get_order_status", '{"order') == []
    assert acc.add(0, None, None, '_id": "1"}') == []
    done = acc.add(1, "call_b", "other", "{}")
    assert done == [ToolCall("call_a", "get_order_status", '{"order_id": "1"}')]
    assert acc.finish() == [ToolCall("call_b", "other", "{}")]


# ---- prompting and validation --------------------------------------------------------------------


def test_prompt_layout_keeps_stable_prefix_and_puts_context_before_last_user_turn() -> None:
    cfg = load_settings(profile="cpu", env={}).nlu
    params = GenerateParams(
        messages=(ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello, how can", interrupted=True),
                  ChatMessage("user", "What is the fee?")),
        context=(Passage("The monthly fee is 10 AED.  ", "fees.pdf", "Fees"), Passage("x" * 5000, "long.txt")),
        language="ar",
    )
    msgs = build_messages(params, cfg, "hermes")
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith(cfg.system_prompt)
    assert msgs[0]["content"].endswith("Always reply in Arabic.")
    assert msgs[2]["content"] == "Hello, how can" + INTERRUPTED_MARK
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "system", "user"]
    assert "[1] (fees.pdf: Fees) The monthly fee is 10 AED." in msgs[3]["content"]
    assert len(msgs[3]["content"]) < cfg.max_passage_chars + 300
    # The request's own system message replaces the default.
    own = build_messages(GenerateParams(messages=(ChatMessage("system", "Be brief."), USER)), cfg, "openai")
    assert own[0] == {"role": "system", "content": "Be brief."} and len(own) == 2


def test_past_tool_calls_are_written_in_the_engines_format() -> None:
    cfg = load_settings(profile="cpu", env={}).nlu
    call = ToolCall("call_1", "get_order_status", '{"order_id": "1"}')
    params = GenerateParams(messages=(USER, ChatMessage("assistant", "", tool_calls=(call,)),
                                      ChatMessage("tool", '{"status": "shipped"}', tool_call_id="call_1")))
    hermes = build_messages(params, cfg, "hermes")
    assert hermes[2]["content"].startswith("<tool_call>\n{") and "tool_calls" not in hermes[2]
    assert hermes[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'}
    openai_style = build_messages(params, cfg, "openai")
    assert openai_style[2]["tool_calls"][0]["function"] == {"name": "get_order_status",
                                                             "arguments": '{"order_id": "1"}'}


@pytest.mark.parametrize(("params", "reason"), [
    (GenerateParams(messages=()), "no_messages"),
    (GenerateParams(messages=(ChatMessage("system", "x"),)), "no_messages"),
    (GenerateParams(messages=(ChatMessage("robot", "x"),)), "unknown_role"),  # type: ignore[arg-type]
    (GenerateParams(messages=(ChatMessage("user", "x" * 1_000_000),)), "message_too_long"),
    (GenerateParams(messages=(ChatMessage("tool", "x"),)), "missing_tool_call_id"),
    (GenerateParams(messages=(USER,), tool_choice="required"), "tool_choice_without_tools"),
    (GenerateParams(messages=(USER,), temperature=3.0), "bad_limits"),
    (GenerateParams(messages=(USER,), max_tokens=100_000), "bad_limits"),
    (GenerateParams(messages=(USER,), language="arabic please"), "bad_language"),
    (GenerateParams(messages=(USER,), tools=(ToolSpec("t", "", {"type": "object", "required": "x"}),)),
     "bad_tool_schema"),
])
def test_validation_reasons(params: GenerateParams, reason: str) -> None:
    cfg = load_settings(profile="cpu", env={}).nlu
    with pytest.raises(InvalidArgument) as err:
        validate_params(params, cfg)
    assert err.value.reason == reason


# ---- wire format ---------------------------------------------------------------------------------


def test_proto_round_trip() -> None:
    params = GenerateParams(
        messages=(ChatMessage("system", "s"), USER,
                  ChatMessage("assistant", "a", (ToolCall("c", "get_order_status", "{}"),), interrupted=True),
                  ChatMessage("tool", "r", tool_call_id="c")),
        tools=(ORDER_TOOL,), context=(Passage("t", "s.pdf", "T", 0.5, "d1"),), max_tokens=9, greedy=True,
        stop=("\n",), timeout_ms=500, call_id="call-1", language="en", tool_choice="required",
    )
    assert params_from_proto(params_to_proto(params)) == params
    final = GenerationFinal(ChatMessage("assistant", "hi", (ToolCall("c", "n", "{}"),)), "tool_calls",
                            sources=("s.pdf",))
    for event in (TextDelta("hi"), ToolCallResult(ToolCall("c", "n", "{}"), False, "why"), final):
        assert event_from_proto(event_to_proto(event)) == event


def test_decode_request_names_the_field_with_invalid_utf8() -> None:
    decode_request = lenient_deserializer(nlu_pb2.GenerateRequest)
    good = params_to_proto(GenerateParams(messages=(USER, ChatMessage("user", "hello")))).SerializeToString()
    assert isinstance(decode_request(good), nlu_pb2.GenerateRequest)
    bad = decode_request(good.replace(b"hello", b"h\xffllo"))
    assert isinstance(bad, Undecodable) and bad.reason == "invalid_utf8"
    assert "'messages[1].content'" in bad.message
    assert isinstance(decode_request(b"\x0a\xff\xff\xff"), Undecodable)


def test_unknown_proto_role_is_refused() -> None:
    req = nlu_pb2.GenerateRequest(messages=[nlu_pb2.Message(role=nlu_pb2.ROLE_UNSPECIFIED, content="x")])
    with pytest.raises(InvalidArgument, match="ROLE_UNSPECIFIED"):
        validate_params(params_from_proto(req), load_settings(profile="cpu", env={}).nlu)


# ---- the generator against the fake engine -------------------------------------------------------


async def test_stream_text_then_final_with_engine_usage_and_sources() -> None:
    engine = FakeChatEngine([chunk("Your fee "), chunk("is 10 AED [1]."), chunk(finish="stop"), chunk(usage=(42, 3))])
    gen = make_generator(engine)
    params = GenerateParams(messages=(USER,), context=(Passage("fee 10", "fees.pdf"),), greedy=True)
    events = await collect(gen, params)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Your fee ", "is 10 AED [1]."]
    final = events[-1]
    assert isinstance(final, GenerationFinal) and sum(isinstance(e, GenerationFinal) for e in events) == 1
    assert final.message.content == "Your fee is 10 AED [1]." and final.finish_reason == "stop"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (42, 3)
    assert final.sources == ("fees.pdf",)
    body = engine.requests[0]
    assert body["stream"] is True and body["temperature"] == 0.0 and "tools" not in body


async def test_hermes_tool_call_with_arguments_breaking_the_schema() -> None:
    text = '<tool_call>\n{"name": "get_order_status", "arguments": {"order_id": 12345}}\n</tool_call>'
    engine = FakeChatEngine([chunk(text[i:i + 7]) for i in range(0, len(text), 7)] + [chunk(finish="stop")])
    events = await collect(make_generator(engine), GenerateParams(messages=(USER,), tools=(ORDER_TOOL,)))
    assert not [e for e in events if isinstance(e, TextDelta)], "tool-call text must not be spoken"
    (result,) = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.call.name == "get_order_status" and not result.valid
    assert "$.order_id" in result.validation_error and "not of type 'string'" in result.validation_error
    final = events[-1]
    assert isinstance(final, GenerationFinal) and final.finish_reason == "tool_calls"
    assert final.message.tool_calls == (result.call,)
    assert engine.requests[0]["tools"][0]["function"]["name"] == "get_order_status"


async def test_openai_format_tool_calls_and_named_choice_with_guided_json() -> None:
    engine = FakeChatEngine([
        chunk(tool_calls=[tool_fragment(0, call_id="call_x", name="get_order_status", arguments='{"order_id"')]),
        chunk(tool_calls=[tool_fragment(0, arguments=': "12345"}')]),
        chunk(finish="tool_calls"),
    ])
    gen = make_generator(engine, **{"nlu.engine.tool_call_format": "openai", "nlu.engine.guided_json": True})
    events = await collect(gen, GenerateParams(messages=(USER,), tools=(ORDER_TOOL,), tool_choice="required"))
    (result,) = [e for e in events if isinstance(e, ToolCallResult)]
    assert result.valid and result.call == ToolCall("call_x", "get_order_status", '{"order_id": "12345"}')
    body = engine.requests[0]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_order_status"}}
    assert body["guided_json"] == ORDER_TOOL.parameters  # extra_body is merged into the JSON body


async def test_closing_the_iterator_closes_the_engine_stream() -> None:
    engine = FakeChatEngine([chunk(f"w{i} ") for i in range(200)], delay_s=0.01)
    events = make_generator(engine).generate(GenerateParams(messages=(USER,)))
    async for event in events:
        if isinstance(event, TextDelta) and event.text == "w2 ":
            break
    await events.aclose()
    await asyncio.sleep(0.05)
    assert engine.closed_early and engine.sent < 10


async def test_timeout_is_deadline_exceeded() -> None:
    engine = FakeChatEngine([chunk("slow ") for _ in range(50)], delay_s=0.05)
    with pytest.raises(DeadlineExceeded, match="timeout_ms=200"):
        await collect(make_generator(engine), GenerateParams(messages=(USER,), timeout_ms=200))


async def test_engine_errors_map_to_statuses() -> None:
    rejected = FakeChatEngine([], status=400, error_body={"error": {"message": "context window exceeded"}})
    with pytest.raises(InvalidArgument, match="context window exceeded"):
        await collect(make_generator(rejected), GenerateParams(messages=(USER,)))
    broken = FakeChatEngine([], status=500)
    with pytest.raises(Unavailable, match="HTTP 500"):
        await collect(make_generator(broken), GenerateParams(messages=(USER,)))


async def test_engine_down_is_unavailable() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = load_settings(profile="cpu", env={}, overrides={
        "nlu.engine.base_url": dead, "nlu.engine.max_retries": 0})
    gen = Generator(settings)
    with pytest.raises(Unavailable) as err:
        await collect(gen, GenerateParams(messages=(USER,)))
    assert err.value.reason == "engine_unreachable" and dead in err.value.message
    await gen.aclose()


async def test_bad_input_never_reaches_the_engine() -> None:
    engine = FakeChatEngine([chunk("x")])
    with pytest.raises(InvalidArgument):
        await collect(make_generator(engine), GenerateParams(messages=()))
    assert engine.requests == []
