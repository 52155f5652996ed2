"""Typed configuration of the NLU service and its LLM engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LlamaCppLaunch(BaseModel):
    """How `voiceai serve nlu` starts a local llama.cpp server (CPU profile)."""

    enabled: bool = Field(True, description="Start llama_cpp.server as a child process.")
    model: str = Field("qwen2.5-0.5b-instruct-q4", description="GGUF model name in the registry.")
    port: int = Field(0, ge=0, description="Loopback port for the engine; 0 picks a free one.")
    n_ctx: int = Field(4096, ge=512, description="Context window in tokens.")
    n_threads: int = Field(2, ge=1, description="CPU threads for generation.")
    startup_timeout_s: float = Field(120.0, gt=0, description="Wait this long for the engine to answer.")
    chat_format: str = Field(
        "",
        description="llama.cpp chat format; empty uses the Jinja chat template inside the GGUF "
        "(Qwen2.5's renders `tools` and the <tool_call> instructions).",
    )
    prompt_cache: bool = Field(
        False,
        description="Also keep the KV state of recent prompts in RAM (llama.cpp --cache), for calls taking "
        "turns on one engine. Off: llama-cpp-python 0.3.36 copies n_tokens x vocabulary logits into "
        "every saved state without counting them against prompt_cache_bytes (~64 MB per 100-token "
        "prompt with Qwen's 152k vocabulary; measured RSS +63 MB per request), and saving adds "
        "~150 ms per request. The previous prompt's prefix is reused either way.",
    )
    prompt_cache_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="KV budget of that cache, in bytes (logit copies not counted)."
    )
    log_dir: str = Field("", description="Folder for the engine's log file; empty: the system temp folder.")
    logits_all: bool = Field(False, description="Keep every position's logits (llama-cpp-python needs it to "
                                                "return log-probs, which the LLM-judge reranker reads); costs "
                                                "n_ctx x vocabulary floats of RAM.")


class EngineConfig(BaseModel):
    """The OpenAI-compatible chat-completions engine: vLLM in production, llama.cpp here."""

    kind: Literal["llama_cpp", "vllm"] = Field("llama_cpp", description="Which engine serves the model.")
    base_url: str = Field("", description="Engine URL ending in /v1; empty uses the launched llama.cpp.")
    model: str = Field("local", description="Model name sent in requests (vLLM: the served model name).")
    api_key: str = Field("not-needed", description="Bearer token for the engine (a secret: set by env).")
    tool_call_format: Literal["openai", "hermes"] = Field(
        "hermes",
        description="'openai': the engine parses tool calls (vLLM --tool-call-parser). "
        "'hermes': the engine returns <tool_call> text (Qwen's template) that we parse.",
    )
    guided_json: bool = Field(
        False, description="Send JSON-schema guidance for tool arguments (vLLM guided decoding)."
    )
    request_timeout_s: float = Field(60.0, gt=0, description="HTTP timeout towards the engine.")
    ready_timeout_s: float = Field(
        600.0, gt=0, description="At load, wait this long for an external engine (vLLM loading weights) "
        "to answer /v1/models; health stays NOT_SERVING meanwhile."
    )
    max_retries: int = Field(
        1, ge=0, le=5, description="Retries of a request the engine refused before its first token."
    )
    launch: LlamaCppLaunch = LlamaCppLaunch()


class NluConfig(BaseModel):
    """Prompting and limits of the NLU service."""

    engine: EngineConfig = EngineConfig()
    system_prompt: str = Field(
        "You are the voice assistant of a bank and telecom in the UAE, speaking with a caller on the phone. "
        "Reply in the caller's language (Arabic or English) with one or two short sentences of plain speech: "
        "no lists, no markdown. Use the context passages when relevant. If you do not know, say so and offer "
        "to transfer the caller to a human agent.",
        description="Default system prompt when the request carries none.",
    )
    max_tokens: int = Field(160, ge=1, le=4096, description="Default generation cap.")
    temperature: float = Field(0.3, ge=0, le=2, description="Default sampling temperature.")
    timeout_ms: int = Field(30000, ge=100, description="Default wall-clock limit of a generation.")
    max_messages: int = Field(200, ge=1, description="Most messages in one request.")
    max_message_chars: int = Field(16000, ge=1, description="Longest single message.")
    max_context_passages: int = Field(8, ge=0, description="Most retrieved passages put in the prompt.")
    max_tools: int = Field(32, ge=0, description="Most tools in one request.")
    max_passage_chars: int = Field(
        700, ge=50, description="Longer passages are cut to this many characters (each ~100 tokens "
        "of context costs ~2 s of prompt processing on a 2-core CPU)."
    )
    max_prompt_chars: int = Field(
        8000, ge=500, description="Conversation characters kept in the prompt; the oldest turns "
        "are dropped first so the prompt fits the engine's context window."
    )
    warmup: bool = Field(True, description="Send one tiny request at load, caching the system prompt.")
