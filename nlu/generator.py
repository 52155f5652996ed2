"""The NLU core: one generation against an OpenAI-compatible chat-completions engine, streamed.

The same code path serves vLLM (production) and the llama.cpp server (CPU): the ``openai``
AsyncOpenAI client with ``stream=True``. What differs between engines is configuration, not code:
``tool_call_format`` says whether the engine parses tool calls (``openai``) or returns the model's
``<tool_call>`` text (``hermes``); ``guided_json`` (vLLM only) adds the tool's schema as guided
decoding when one tool is required.

Closing the event iterator closes the HTTP stream; both engines stop generating when the client
goes away (llama.cpp checks for a disconnect after every token, vLLM aborts the request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from prometheus_client import Counter, Gauge

from nlu.api import (
    ChatMessage,
    GenerateParams,
    GenerationFinal,
    GenerationTimings,
    LlmEvent,
    TextDelta,
    ToolCall,
    ToolCallResult,
    ToolSpec,
    Usage,
)
from nlu.config import NluConfig
from nlu.engine_launcher import EngineStartError, LlamaCppEngine
from nlu.prompting import build_messages, tool_definitions
from nlu.tools import HermesTextParser, ToolCallAccumulator, call_from_hermes_block, validate_call
from nlu.validation import validate_params
from voiceai import telemetry
from voiceai.config import Settings
from voiceai.serving import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

log = logging.getLogger(__name__)

SERVICE = "nlu"
ACTIVE_GENERATIONS = Gauge("voiceai_llm_active_generations", "LLM generations streaming now.")
LLM_TOKENS = Counter("voiceai_llm_tokens_total", "Tokens read and written by the LLM engine.", ["kind"])
TOOL_CALLS = Counter("voiceai_llm_tool_calls_total", "Tool calls the model made, by validity.", ["valid"])


def engine_error(err: openai.OpenAIError, base_url: str, timeout_s: float) -> ServiceError:
    """Maps an engine failure to the status a caller can act on."""
    if isinstance(err, openai.APITimeoutError):
        return Unavailable("engine_timeout", f"the LLM engine at {base_url} did not answer within {timeout_s:g} s")
    if isinstance(err, openai.APIConnectionError):
        return Unavailable("engine_unreachable", f"cannot reach the LLM engine at {base_url}")
    if isinstance(err, openai.APIStatusError):
        detail = _error_detail(err)
        if err.status_code in (400, 413, 422):
            return InvalidArgument("engine_rejected", f"the LLM engine refused the request: {detail}")
        if err.status_code == 429:
            return ResourceExhausted("engine_busy", f"the LLM engine is overloaded: {detail}")
        return Unavailable("engine_error", f"the LLM engine answered HTTP {err.status_code}: {detail}")
    return Unavailable("engine_error", f"the LLM engine failed: {str(err)[:300]}")


def _error_detail(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
    return str(err.message)[:300]


@dataclass
class _Turn:
    """What one streamed reply has produced so far; turns engine chunks into events."""

    tools: dict[str, ToolSpec]
    tools_allowed: bool
    hermes: bool
    started_s: float
    parser: HermesTextParser = field(default_factory=HermesTextParser)
    accumulator: ToolCallAccumulator = field(default_factory=ToolCallAccumulator)
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    first_token_s: float | None = None
    last_token_s: float = 0.0
    token_chunks: int = 0
    finish_reason: str = ""
    usage: Any = None

    def on_chunk(self, chunk: ChatCompletionChunk) -> list[LlmEvent]:
        if chunk.usage is not None:
            self.usage = chunk.usage
        events: list[LlmEvent] = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self._token()
                if self.hermes:
                    text, blocks = self.parser.feed(delta.content)
                    events += self._text(text)
                    events += [self._check(call_from_hermes_block(b)) for b in blocks]
                else:
                    events += self._text(delta.content)
            for tc in delta.tool_calls or ():
                self._token()
                fn = tc.function
                done = self.accumulator.add(tc.index, tc.id, fn.name if fn else None, fn.arguments if fn else None)
                events += [self._check(c) for c in done]
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return events

    def finish(self) -> list[LlmEvent]:
        events: list[LlmEvent] = []
        if self.hermes:
            text, blocks = self.parser.finish()
            events += self._text(text)
            events += [self._check(call_from_hermes_block(b)) for b in blocks]
        events += [self._check(c) for c in self.accumulator.finish()]
        return events

    def _token(self) -> None:
        self.token_chunks += 1
        self.last_token_s = time.perf_counter()
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter()
            telemetry.FIRST_RESULT_SECONDS.labels(SERVICE).observe(self.first_token_s - self.started_s)

    def _text(self, text: str) -> list[LlmEvent]:
        if not text:
            return []
        self.text.append(text)
        return [TextDelta(text)]

    def _check(self, call: ToolCall) -> ToolCallResult:
        self.calls.append(call)
        result = validate_call(call, self.tools, self.tools_allowed)
        TOOL_CALLS.labels(str(result.valid).lower()).inc()
        return result

    def final(self, sources: tuple[str, ...]) -> GenerationFinal:
        ended = time.perf_counter()
        first = self.first_token_s or ended
        prompt_tokens = int(getattr(self.usage, "prompt_tokens", 0) or 0)
        # llama.cpp sends no usage in streams; one chunk carries one token there.
        completion_tokens = int(getattr(self.usage, "completion_tokens", 0) or 0) or self.token_chunks
        # Decode speed between the first and the last token: the engine may still be busy after the
        # last one (llama.cpp saving its prompt cache), which is not generation speed.
        decode_s = self.last_token_s - first
        finish = self.finish_reason or "cancelled"  # the engine ended the stream without a reason
        if self.calls and finish == "stop":
            finish = "tool_calls"
        LLM_TOKENS.labels("prompt").inc(prompt_tokens)
        LLM_TOKENS.labels("completion").inc(completion_tokens)
        return GenerationFinal(
            message=ChatMessage("assistant", "".join(self.text), tool_calls=tuple(self.calls)),
            finish_reason=finish,
            usage=Usage(prompt_tokens, completion_tokens),
            timings=GenerationTimings(
                time_to_first_token_ms=round((first - self.started_s) * 1000),
                total_ms=round((ended - self.started_s) * 1000),
                tokens_per_s=round((completion_tokens - 1) / decode_s, 2)
                if completion_tokens > 1 and decode_s > 0 else 0.0,
            ),
            sources=sources,
        )


class Generator:
    """Streams replies from the configured engine; launches the local llama.cpp engine if asked to.

    ``client`` replaces the AsyncOpenAI client (tests pass one whose HTTP transport is a fake engine).
    """

    def __init__(self, settings: Settings, client: AsyncOpenAI | None = None) -> None:
        self.settings = settings
        self.cfg: NluConfig = settings.nlu
        self.engine: LlamaCppEngine | None = None
        self.base_url = self.cfg.engine.base_url
        self._client = client
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connects to the engine, launching it first when no ``base_url`` is configured."""
        if self._client is not None:
            return
        async with self._start_lock:
            if self._client is not None:
                return
            eng = self.cfg.engine
            if not self.base_url:
                if not eng.launch.enabled:
                    raise Unavailable("no_engine", "no LLM engine: set nlu.engine.base_url (VOICEAI_LLM_BASE_URL) "
                                                   "or enable nlu.engine.launch")
                self.engine = LlamaCppEngine(eng.launch, self.settings.models_dir, eng.model)
                try:
                    self.base_url = await self.engine.start()
                except EngineStartError as err:
                    self.engine = None
                    raise Unavailable("engine_start_failed", str(err)) from err
            self._client = AsyncOpenAI(base_url=self.base_url, api_key=eng.api_key,
                                       timeout=eng.request_timeout_s, max_retries=eng.max_retries)

    async def wait_ready(self) -> None:
        """Waits until the engine lists its models: vLLM may still be loading weights at our start."""
        await self.start()
        assert self._client is not None
        eng = self.cfg.engine
        deadline = time.monotonic() + eng.ready_timeout_s
        while True:
            try:
                await self._client.models.list()
                return
            except openai.OpenAIError as err:
                if time.monotonic() > deadline:
                    raise engine_error(err, self.base_url, eng.request_timeout_s) from err
                log.info("waiting for the engine", extra={"base_url": self.base_url, "error": type(err).__name__})
                await asyncio.sleep(2.0)

    async def warm_up(self) -> None:
        """One tiny generation: loads the weights into the page cache and caches the system prompt."""
        params = GenerateParams(messages=(ChatMessage("user", "Hi"),), max_tokens=1, greedy=True)
        async for _ in self.generate(params):
            pass

    async def aclose(self) -> None:
        """Closes the HTTP client and stops a launched engine."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None

    def request_body(self, params: GenerateParams) -> dict[str, Any]:
        """The chat-completions request for ``params`` (already validated)."""
        eng, cfg = self.cfg.engine, self.cfg
        body: dict[str, Any] = {
            "model": eng.model,
            "messages": build_messages(params, cfg, eng.tool_call_format),
            "stream": True,
            # vLLM adds a usage chunk; llama.cpp ignores the field and we count chunks instead.
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens or cfg.max_tokens,
            "temperature": 0.0 if params.greedy else (params.temperature or cfg.temperature),
        }
        if params.top_p:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.tools and params.tool_choice != "none":
            body["tools"] = tool_definitions(params.tools)
            if params.tool_choice == "required" and len(params.tools) == 1:
                # A named choice: both engines then constrain the arguments to the tool's schema
                # (llama.cpp with a grammar, vLLM with guided decoding) and return `tool_calls`.
                tool = params.tools[0]
                body["tool_choice"] = {"type": "function", "function": {"name": tool.name}}
                if eng.guided_json:
                    # vLLM's own extension; explicit guidance for vLLM versions that honour it.
                    body["extra_body"] = {"guided_json": tool.parameters}
            else:
                body["tool_choice"] = params.tool_choice
        return body

    async def generate(self, params: GenerateParams) -> AsyncGenerator[LlmEvent, None]:
        """Streams TextDelta and ToolCallResult events, then exactly one GenerationFinal.

        Raises ``InvalidArgument`` before contacting the engine, ``Unavailable`` when the engine
        cannot be reached and ``DeadlineExceeded`` past ``timeout_ms``.
        """
        validate_params(params, self.cfg)
        # Launching a local engine happens once per process and is not this request's time.
        await self.start()
        if self.engine is not None and not self.engine.running:
            raise Unavailable("engine_exited", f"the local llama.cpp engine has exited; see {self.engine.log_path}")
        started = time.perf_counter()
        timeout_ms = params.timeout_ms or self.cfg.timeout_ms
        deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
        body = self.request_body(params)
        passages = params.context[: self.cfg.max_context_passages]
        turn = _Turn(tools={t.name: t for t in params.tools}, tools_allowed=params.tool_choice != "none",
                     hermes=self.cfg.engine.tool_call_format == "hermes", started_s=started)
        log.debug("generation starting", extra={"call_id": params.call_id, "pii": {"messages": body["messages"]}})
        ACTIVE_GENERATIONS.inc()
        stream = None
        try:
            assert self._client is not None
            stream = await self._engine_call(self._client.chat.completions.create(**body), deadline, timeout_ms)
            chunks = stream.__aiter__()
            while True:
                try:
                    chunk = await self._engine_call(chunks.__anext__(), deadline, timeout_ms)
                except StopAsyncIteration:
                    break
                for event in turn.on_chunk(chunk):
                    yield event
            for event in turn.finish():
                yield event
            final = turn.final(tuple(p.source for p in passages))
            telemetry.INFERENCE_SECONDS.labels(SERVICE, "generate").observe(time.perf_counter() - started)
            log.info("generation finished", extra={
                "call_id": params.call_id, "finish_reason": final.finish_reason,
                "ttft_ms": final.timings.time_to_first_token_ms, "total_ms": final.timings.total_ms,
                "completion_tokens": final.usage.completion_tokens, "tool_calls": len(final.message.tool_calls),
                "pii": {"reply": final.message.content},
            })
            yield final
        finally:
            ACTIVE_GENERATIONS.dec()
            if stream is not None:
                # Closing the response drops the connection: the engine stops generating.
                await asyncio.shield(stream.close())

    async def _engine_call(self, awaitable: Any, deadline: float, timeout_ms: int) -> Any:
        """Awaits one engine step under the generation deadline, mapping engine errors.

        The deadline wraps each step, never a ``yield``: a timeout must not fire inside the consumer.
        """
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise DeadlineExceeded("generation_timeout",
                                   f"the generation did not finish within timeout_ms={timeout_ms}") from None
        except openai.OpenAIError as err:
            raise engine_error(err, self.base_url, self.cfg.engine.request_timeout_s) from err
