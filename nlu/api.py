"""The LLM seam the media bridge talks to: plain dataclasses and the client interface.

Two implementations share it: in-process (the generator runs inside the caller's process and talks
to the engine over HTTP) and gRPC (the NLU server). Both raise ``voiceai.serving.ServiceError``
subclasses for bad input and engine failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict  # JSON Schema of the arguments (an object schema)


@dataclass(frozen=True, slots=True)
class Passage:
    text: str
    source: str
    title: str = ""
    score: float = 0.0
    document_id: str = ""


@dataclass(frozen=True, slots=True)
class GenerateParams:
    """One generation request; zero values take the server's configuration."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    context: tuple[Passage, ...] = ()
    max_tokens: int = 0
    temperature: float = 0.0
    greedy: bool = False
    top_p: float = 0.0
    stop: tuple[str, ...] = ()
    timeout_ms: int = 0
    call_id: str = ""
    language: str = ""
    tool_choice: Literal["auto", "none", "required"] = "auto"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallResult:
    """A tool call the model made, checked against the tool's schema."""

    call: ToolCall
    valid: bool
    validation_error: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class GenerationTimings:
    time_to_first_token_ms: int = 0
    total_ms: int = 0
    tokens_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class GenerationFinal:
    message: ChatMessage
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    timings: GenerationTimings = field(default_factory=GenerationTimings)
    sources: tuple[str, ...] = ()
    # Tools run on the model's behalf during this reply (name, arguments, result, status, latency_ms),
    # for the call record; filled by the layer that ran them (rag.answer.GroundedLlm), not by the engine.
    actions: tuple[dict[str, Any], ...] = ()


LlmEvent = TextDelta | ToolCallResult | GenerationFinal


class LlmClient(Protocol):
    def generate(self, params: GenerateParams) -> AsyncIterator[LlmEvent]:
        """Streams deltas, then validated tool calls, then exactly one GenerationFinal.

        Closing the iterator early (``aclose``) cancels generation on the engine.
        """

    async def aclose(self) -> None: ...
