"""The CPU profile's real model, Qwen2.5-Coder-0.5B-Instruct Q4, on llama.cpp: Arabic, tools, context.

Greedy decoding keeps the answers reproducible; one engine serves the module.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from nlu.api import ChatMessage, GenerateParams, GenerationFinal, LlmEvent, Passage, TextDelta, ToolCallResult, ToolSpec
from nlu.generator import Generator
from voiceai.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ARABIC_LETTER = re.compile(r"[\u0621-\u064A]")
ORDER_TOOL = ToolSpec(
    "get_order_status", "Look up the delivery status of a customer's order by its order number.",
    {"type": "object", "properties": {"order_id": {"type": "string", "description": "The order number"}},
     "required": ["order_id"]},
)
ORDER_QUESTION = ChatMessage("user", "Check the status of order 12345")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qwen(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Generator]:
    log_dir = str(tmp_path_factory.mktemp("engine"))
    gen = Generator(load_settings(profile="cpu", env={}, overrides={"nlu.engine.launch.log_dir": log_dir}))
    assert gen.cfg.engine.launch.model == "qwen2.5-0.5b-instruct-q4"
    await gen.start()
    yield gen
    await gen.aclose()


async def run(gen: Generator, params: GenerateParams) -> list[LlmEvent]:
    return [e async for e in gen.generate(params)]


async def test_arabic_question_gets_an_arabic_reply(qwen: Generator) -> None:
    params = GenerateParams(messages=(ChatMessage("user", "مرحبا، كيف يمكنني معرفة رصيد حسابي؟"),),
                            language="ar", max_tokens=40, greedy=True)
    final = (await run(qwen, params))[-1]
    assert isinstance(final, GenerationFinal)
    letters = [c for c in final.message.content if c.isalpha()]
    arabic = [c for c in letters if ARABIC_LETTER.match(c)]
    assert letters and len(arabic) / len(letters) > 0.8, final.message.content


async def test_model_calls_the_order_tool_with_valid_arguments(qwen: Generator) -> None:
    events = await run(qwen, GenerateParams(messages=(ORDER_QUESTION,), tools=(ORDER_TOOL,),
                                            max_tokens=60, greedy=True))
    calls = [e for e in events if isinstance(e, ToolCallResult)]
    spoken = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert len(calls) == 1, events
    assert calls[0].valid, calls[0].validation_error
    assert calls[0].call.name == "get_order_status"
    assert json.loads(calls[0].call.arguments_json) == {"order_id": "12345"}
    assert "get_order_status" not in spoken and "<tool_call>" not in spoken
    final = events[-1]
    assert isinstance(final, GenerationFinal) and final.finish_reason == "tool_calls"


async def test_required_tool_is_constrained_by_its_schema(qwen: Generator) -> None:
    # One required tool becomes a named tool_choice: llama.cpp then samples under a JSON-schema grammar.
    events = await run(qwen, GenerateParams(messages=(ORDER_QUESTION,), tools=(ORDER_TOOL,),
                                            tool_choice="required", max_tokens=40, greedy=True))
    calls = [e for e in events if isinstance(e, ToolCallResult)]
    assert len(calls) == 1 and calls[0].valid, calls
    assert json.loads(calls[0].call.arguments_json)["order_id"] == "12345"


async def test_reply_uses_the_context_passage(qwen: Generator) -> None:
    params = GenerateParams(
        messages=(ChatMessage("user", "How much is the monthly fee of the Gold account?"),),
        context=(Passage("The Gold account has a monthly fee of 37 AED and free transfers.", "fees.pdf",
                         "Account fees"),),
        language="en", max_tokens=40, greedy=True,
    )
    final = (await run(qwen, params))[-1]
    assert isinstance(final, GenerationFinal)
    assert "37" in final.message.content, final.message.content
    assert final.sources == ("fees.pdf",)
