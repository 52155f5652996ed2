"""Conversion between the ``voiceai.nlu.v1`` messages and the ``nlu.api`` dataclasses, both ways.

The server and the gRPC client share it, so a field added to the contract is mapped in one place.
It also decodes requests itself: protobuf refuses a string field with invalid UTF-8, and grpc-python
would answer that with INTERNAL "Exception deserializing request"; ``decode_request`` returns an
``UndecodableRequest`` that names the field instead, and the servicer turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
from typing import Any, cast

from nlu.api import (
    ChatMessage,
    GenerateParams,
    GenerationFinal,
    GenerationTimings,
    LlmEvent,
    Passage,
    Role,
    TextDelta,
    ToolCall,
    ToolCallResult,
    ToolSpec,
    Usage,
)
from nlu.tools import parse_schema_text
from voiceai.nlu.v1 import nlu_pb2

ROLE_FROM_PROTO: dict[int, str] = {
    nlu_pb2.ROLE_SYSTEM: "system", nlu_pb2.ROLE_USER: "user",
    nlu_pb2.ROLE_ASSISTANT: "assistant", nlu_pb2.ROLE_TOOL: "tool",
}
ROLE_TO_PROTO = {name: number for number, name in ROLE_FROM_PROTO.items()}
CHOICE_FROM_PROTO = {
    nlu_pb2.TOOL_CHOICE_UNSPECIFIED: "auto", nlu_pb2.TOOL_CHOICE_AUTO: "auto",
    nlu_pb2.TOOL_CHOICE_NONE: "none", nlu_pb2.TOOL_CHOICE_REQUIRED: "required",
}
CHOICE_TO_PROTO = {"auto": nlu_pb2.TOOL_CHOICE_AUTO, "none": nlu_pb2.TOOL_CHOICE_NONE,
                   "required": nlu_pb2.TOOL_CHOICE_REQUIRED}


# ---- server side: request -> params, events -> responses ----------------------------------------


def params_from_proto(req: nlu_pb2.GenerateRequest) -> GenerateParams:
    """A GenerateRequest as GenerateParams; a tool schema that is not JSON raises InvalidArgument."""
    messages = tuple(
        ChatMessage(
            role=cast(Role, ROLE_FROM_PROTO.get(m.role, f"ROLE_{m.role}" if m.role else "ROLE_UNSPECIFIED")),
            content=m.content,
            tool_calls=tuple(ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls),
            tool_call_id=m.tool_call_id,
            interrupted=m.interrupted,
        )
        for m in req.messages
    )
    tools = tuple(
        ToolSpec(t.name, t.description, parse_schema_text(t.parameters_json_schema, f"tools[{i}] ({t.name})"))
        for i, t in enumerate(req.tools)
    )
    limits = req.limits
    return GenerateParams(
        messages=messages,
        tools=tools,
        context=tuple(Passage(p.text, p.source, p.title, p.score, p.document_id) for p in req.context),
        max_tokens=limits.max_tokens,
        temperature=limits.temperature,
        greedy=limits.greedy,
        top_p=limits.top_p,
        stop=tuple(limits.stop),
        timeout_ms=limits.timeout_ms,
        call_id=req.call_id,
        language=req.language,
        tool_choice=cast(Any, CHOICE_FROM_PROTO.get(req.tool_choice, f"TOOL_CHOICE_{req.tool_choice}")),
    )


def _call_to_proto(call: ToolCall) -> nlu_pb2.ToolCall:
    return nlu_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json)


def message_to_proto(m: ChatMessage) -> nlu_pb2.Message:
    return nlu_pb2.Message(
        role=cast(nlu_pb2.Role, ROLE_TO_PROTO.get(m.role, nlu_pb2.ROLE_UNSPECIFIED)), content=m.content,
        tool_calls=[_call_to_proto(c) for c in m.tool_calls], tool_call_id=m.tool_call_id,
        interrupted=m.interrupted,
    )


def event_to_proto(event: LlmEvent) -> nlu_pb2.GenerateResponse:
    """One event as the stream message that carries it."""
    if isinstance(event, TextDelta):
        return nlu_pb2.GenerateResponse(delta=nlu_pb2.TokenDelta(text=event.text))
    if isinstance(event, ToolCallResult):
        return nlu_pb2.GenerateResponse(tool_call=nlu_pb2.ToolCallEvent(
            call=_call_to_proto(event.call), valid=event.valid, validation_error=event.validation_error))
    return nlu_pb2.GenerateResponse(final=nlu_pb2.Final(
        message=message_to_proto(event.message),
        finish_reason=event.finish_reason,
        usage=nlu_pb2.Usage(prompt_tokens=event.usage.prompt_tokens,
                            completion_tokens=event.usage.completion_tokens),
        timings=nlu_pb2.Timings(time_to_first_token_ms=event.timings.time_to_first_token_ms,
                                total_ms=event.timings.total_ms, tokens_per_s=event.timings.tokens_per_s),
        sources=list(event.sources),
    ))


# ---- client side: params -> request, responses -> events ----------------------------------------


def params_to_proto(params: GenerateParams) -> nlu_pb2.GenerateRequest:
    """GenerateParams as a GenerateRequest; unknown roles go out as ROLE_UNSPECIFIED (the server refuses)."""
    return nlu_pb2.GenerateRequest(
        messages=[message_to_proto(m) for m in params.messages],
        tools=[nlu_pb2.Tool(name=t.name, description=t.description,
                            parameters_json_schema=json.dumps(t.parameters, ensure_ascii=False))
               for t in params.tools],
        context=[nlu_pb2.ContextPassage(text=p.text, source=p.source, title=p.title, score=p.score,
                                        document_id=p.document_id) for p in params.context],
        limits=nlu_pb2.GenerationLimits(max_tokens=params.max_tokens, temperature=params.temperature,
                                        top_p=params.top_p, stop=list(params.stop),
                                        timeout_ms=params.timeout_ms, greedy=params.greedy),
        call_id=params.call_id,
        language=params.language,
        tool_choice=CHOICE_TO_PROTO.get(params.tool_choice, nlu_pb2.TOOL_CHOICE_UNSPECIFIED),
    )


def _call_from_proto(c: nlu_pb2.ToolCall) -> ToolCall:
    return ToolCall(c.id, c.name, c.arguments_json)


def event_from_proto(resp: nlu_pb2.GenerateResponse) -> LlmEvent | None:
    """The event a stream message carries; None for an empty message (a newer server's event kind)."""
    kind = resp.WhichOneof("event")
    if kind == "delta":
        return TextDelta(resp.delta.text)
    if kind == "tool_call":
        ev = resp.tool_call
        return ToolCallResult(_call_from_proto(ev.call), ev.valid, ev.validation_error)
    if kind == "final":
        f = resp.final
        m = f.message
        return GenerationFinal(
            message=ChatMessage(cast(Role, ROLE_FROM_PROTO.get(m.role, "assistant")), m.content,
                                tuple(_call_from_proto(c) for c in m.tool_calls), m.tool_call_id, m.interrupted),
            finish_reason=f.finish_reason,
            usage=Usage(f.usage.prompt_tokens, f.usage.completion_tokens),
            timings=GenerationTimings(f.timings.time_to_first_token_ms, f.timings.total_ms,
                                      round(f.timings.tokens_per_s, 2)),
            sources=tuple(f.sources),
        )
    return None
