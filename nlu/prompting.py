"""Builds the chat messages sent to the engine: system prompt, context, conversation.

The engine (llama.cpp or vLLM) applies the model's own chat template, so this module only decides
what goes into which message. The order is chosen for llama.cpp's prompt reuse, which keeps the
longest unchanged token prefix of the previous prompt: the system message (prompt + language
instruction) stays identical across a call's turns and comes first; retrieved passages change
every turn, so they go late, just before the caller's last message, and the next turn re-reads
only from there (that message, the reply, the new passages). Putting them after the last message
saved ~20 tokens a turn but Qwen 0.5B answered the new question worse. Passages are numbered and
cut short: prompt reading runs at ~125 tokens/s on 2 cores (Qwen 0.5B Q4), about 0.8 s per 100
tokens of context before the first token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nlu.api import ChatMessage, GenerateParams, Passage, ToolSpec
from nlu.config import NluConfig

# Appended to a reply the caller talked over, so the model knows the rest was never heard.
INTERRUPTED_MARK = "… [interrupted by the caller]"

LANGUAGE_NAMES = {"ar": "Arabic", "en": "English"}

Message = dict[str, Any]


def language_instruction(language: str) -> str:
    """One sentence pinning the reply language; empty when the model may follow the caller."""
    if not language:
        return ""
    base = language.split("-")[0].lower()
    name = LANGUAGE_NAMES.get(base, language)
    return f"Always reply in {name}."


def system_text(params: GenerateParams, cfg: NluConfig) -> str:
    """The request's leading system message, else the configured prompt, plus the language rule."""
    first = params.messages[0] if params.messages else None
    prompt = first.content if first is not None and first.role == "system" else cfg.system_prompt
    rule = language_instruction(params.language)
    return f"{prompt.strip()}\n{rule}" if rule else prompt.strip()


def context_text(passages: Sequence[Passage], max_chars: int) -> str:
    """Numbered passages with their sources, compact: ``[1] (source: title) text``."""
    lines = ["Context from the knowledge base; cite it as [n] only if you use it:"]
    for n, p in enumerate(passages, start=1):
        text = " ".join(p.text.split())
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + "…"
        label = p.source or p.document_id or "unknown"
        if p.title:
            label = f"{label}: {p.title}"
        lines.append(f"[{n}] ({label}) {text}")
    return "\n".join(lines)


def tool_definitions(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tools in the OpenAI ``tools`` shape."""
    return [
        {"type": "function",
         "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]


def _hermes_call_text(name: str, arguments_json: str) -> str:
    """A past call written back the way Qwen's template writes it, so the model sees its own format."""
    try:
        arguments: Any = json.loads(arguments_json or "{}")
    except ValueError:
        arguments = arguments_json
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def to_engine_message(msg: ChatMessage, tool_call_format: str) -> Message:
    """One conversation message in the chat-completions shape."""
    content = msg.content
    if msg.role == "assistant" and msg.interrupted:
        content = content.rstrip() + INTERRUPTED_MARK
    if msg.role == "tool":
        return {"role": "tool", "tool_call_id": msg.tool_call_id, "content": content}
    if msg.role == "assistant" and msg.tool_calls:
        if tool_call_format == "hermes":
            # The engine does not parse calls, so it gets them back as the text the model wrote.
            parts = [content] if content else []
            parts += [_hermes_call_text(c.name, c.arguments_json) for c in msg.tool_calls]
            return {"role": "assistant", "content": "\n".join(parts)}
        return {
            "role": "assistant",
            "content": content or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for c in msg.tool_calls
            ],
        }
    return {"role": msg.role, "content": content}


def trim_history(messages: list[ChatMessage], max_chars: int) -> list[ChatMessage]:
    """Drops the oldest messages until the conversation fits ``max_chars``; keeps the last one.

    Tool results whose call was dropped go too: an answer without its question confuses the model
    and some templates reject it.
    """
    total = sum(len(m.content) for m in messages)
    start = 0
    while total > max_chars and start < len(messages) - 1:
        total -= len(messages[start].content)
        start += 1
    while start < len(messages) - 1 and messages[start].role == "tool":
        start += 1
    return messages[start:]


def build_messages(params: GenerateParams, cfg: NluConfig, tool_call_format: str) -> list[Message]:
    """The whole chat for the engine: system, conversation, and the context before the last user turn."""
    history = list(params.messages)
    if history and history[0].role == "system":
        history = history[1:]
    history = trim_history(history, cfg.max_prompt_chars)
    out: list[Message] = [{"role": "system", "content": system_text(params, cfg)}]
    out += [to_engine_message(m, tool_call_format) for m in history]
    passages = params.context[: cfg.max_context_passages]
    if passages:
        context = {"role": "system", "content": context_text(passages, cfg.max_passage_chars)}
        last_user = max((i for i, m in enumerate(out) if m["role"] == "user"), default=len(out))
        out.insert(max(last_user, 1), context)
    return out
