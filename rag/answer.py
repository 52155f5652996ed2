"""Grounded replies: the LLM answers from the tenant's documents, or the bot says it does not know.

`GroundedLlm` wraps any `LlmClient` for one tenant, so the call loop and `voiceai ask` share one
path. On each turn it retrieves for the caller's words (``kb.auto_retrieve``); passages that clear
the relevance bar go into the prompt with their sources. When nothing does and the caller asked
something (a question, a request for information), the bot declines and offers a human instead of
letting the model invent an answer; small talk ("hello", "thanks") still goes to the model. The
model may also call ``search_kb`` itself (``kb.tool``), e.g. to look up something the caller said
two turns ago; one tool round per reply keeps latency bounded.

The reply cites the documents it was given (``GenerationFinal.sources``: in the turn event and the
call record, never spoken).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import Counter

from nlu.api import (
    ChatMessage,
    GenerateParams,
    GenerationFinal,
    LlmClient,
    LlmEvent,
    Passage,
    TextDelta,
    ToolCallResult,
    ToolSpec,
)
from rag.retrieval import Hit, SearchResult
from rag.service import KnowledgeBase

log = logging.getLogger(__name__)

DECLINES = Counter("voiceai_kb_declined_total", "Questions the knowledge base could not answer, by language.",
                   ["language"])

DECLINE = {
    "en": "I'm sorry, I don't have that information. Would you like me to connect you to a colleague who can help?",
    "ar": "عذرا، لا تتوفر لدي هذه المعلومة. هل تريد أن أحولك إلى أحد زملائي ليساعدك؟",
}

SEARCH_TOOL = ToolSpec(
    name="search_kb",
    description="Search the company's documents (policies, fees, hours, procedures) for facts to answer the caller.",
    parameters={"type": "object", "properties": {"query": {"type": "string", "description": "What to look up."}},
                "required": ["query"], "additionalProperties": False},
)

# Words that make an utterance a request for information, in English and Arabic (MSA and Gulf).
_QUESTION_RE = re.compile(
    r"[?؟]"
    r"|\b(what|what's|how|when|where|which|who|whose|why|tell me|i want to know|i need to know|explain|"
    r"fees?|costs?|price|charges?|limits?|rates?|hours|open)\b"
    r"|^\s*(can|could|do|does|is|are|will|should|may)\b"
    r"|(^|\s)(ما|ماذا|متى|كيف|كم|أين|اين|وين|هل|لماذا|ليش|ليه|وش|ايش|شو|شلون|ابي|أبي|ابغى|أبغى|أريد|اريد|ممكن|"
    r"رسوم|سعر|حد|أوقات|اوقات|دوام)(\s|$)",
    re.IGNORECASE)


def looks_like_question(text: str) -> bool:
    return bool(_QUESTION_RE.search(text))


def passages(hits: list[Hit]) -> tuple[Passage, ...]:
    return tuple(Passage(text=h.text, source=h.document, title=f"{h.title} > {h.section}" if h.section else h.title,
                         score=h.score, document_id=h.document_id) for h in hits)


def _sources(hits: list[Hit]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.document, None)
    return tuple(seen)


@dataclass(slots=True)
class Grounding:
    """What the last reply was grounded in (for the turn event and `voiceai ask --json`)."""

    result: SearchResult | None = None
    declined: bool = False
    actions: list[dict[str, Any]] = field(default_factory=list)


class GroundedLlm:
    """An `LlmClient` for one tenant: retrieval first, then generation with the passages."""

    def __init__(self, llm: LlmClient, kb: KnowledgeBase, tenant: str, *, always_question: bool = False) -> None:
        self.llm = llm
        self.kb = kb
        self.tenant = tenant
        self.cfg = kb.cfg
        self.always_question = always_question  # `voiceai ask`: the input is a question by definition
        self.last = Grounding()

    async def _search(self, query: str) -> SearchResult:
        return await asyncio.to_thread(self.kb.search, self.tenant, query)

    async def generate(self, params: GenerateParams) -> AsyncIterator[LlmEvent]:
        question = next((m.content for m in reversed(params.messages) if m.role == "user"), "")
        grounding = Grounding()
        self.last = grounding
        hits: list[Hit] = []
        if not await asyncio.to_thread(self.kb.has_documents, self.tenant):
            async for event in self.llm.generate(params):  # a tenant without a knowledge base
                yield event
            return
        if self.cfg.auto_retrieve and question.strip():
            grounding.result = await self._search(question)
            if grounding.result.answerable:
                hits = grounding.result.hits
            elif self.always_question or looks_like_question(question):
                grounding.declined = True
                async for event in self._decline(params.language or "en"):
                    yield event
                return
        tools = (*params.tools, SEARCH_TOOL) if self.cfg.tool else params.tools
        request = replace(params, context=passages(hits) + params.context, tools=tools)
        async for event in self._generate(request, hits, allow_tool=self.cfg.tool):
            yield event

    async def _generate(self, request: GenerateParams, hits: list[Hit], allow_tool: bool) -> AsyncIterator[LlmEvent]:
        lookup: ToolCallResult | None = None
        async for event in self.llm.generate(request):
            if isinstance(event, ToolCallResult) and event.call.name == SEARCH_TOOL.name:
                lookup = event
                continue  # answered below; the caller never sees our own tool
            if isinstance(event, GenerationFinal):
                if lookup is not None and allow_tool:
                    break
                event = replace(event, sources=_sources(hits), actions=tuple(self.last.actions))
            yield event
        if lookup is None or not allow_tool:
            return
        query = _tool_query(lookup)
        started = time.perf_counter()
        result = await self._search(query) if query else None
        found = result.hits if result is not None and result.answerable else []
        self.last.actions.append({
            "name": SEARCH_TOOL.name, "arguments": {"query": query},
            "result": {"documents": [h.document for h in found]},
            "status": "ok" if query else "invalid", "latency_ms": round((time.perf_counter() - started) * 1000)})
        self.last.result = result or self.last.result
        content = json.dumps({"results": [{"document": h.document, "text": h.text} for h in found]}
                             if found else {"results": [], "note": "nothing relevant found"}, ensure_ascii=False)
        follow_up = replace(request, messages=(
            *request.messages, ChatMessage("assistant", "", tool_calls=(lookup.call,)),
            ChatMessage("tool", content, tool_call_id=lookup.call.id)), context=passages(found) + request.context,
            tool_choice="none")
        async for event in self._generate(follow_up, hits + found, allow_tool=False):
            yield event

    async def _decline(self, language: str) -> AsyncIterator[LlmEvent]:
        text = DECLINE.get(language, DECLINE["en"])
        DECLINES.labels(language).inc()
        yield TextDelta(text)
        yield GenerationFinal(message=ChatMessage("assistant", text), finish_reason="no_answer")

    async def aclose(self) -> None:
        return None  # the wrapped client belongs to whoever made it


def _tool_query(result: ToolCallResult) -> str:
    if not result.valid:
        return ""
    try:
        args = json.loads(result.call.arguments_json or "{}")
    except json.JSONDecodeError:
        return ""
    query = args.get("query") if isinstance(args, dict) else None
    return query.strip() if isinstance(query, str) else ""


async def answer_question(llm: LlmClient, kb: KnowledgeBase, tenant: str, question: str, *,
                          language: str | None = None, max_tokens: int = 160) -> dict[str, Any]:
    """One grounded answer as `voiceai ask` and ``POST /v1/kb/ask`` return it."""
    from rag.normalize import detect_language

    language = language or detect_language(question)
    grounded = GroundedLlm(llm, kb, tenant, always_question=True)
    started = time.perf_counter()
    answer, sources = "", []
    params = GenerateParams(messages=(ChatMessage("user", question),), language=language, max_tokens=max_tokens)
    async for event in grounded.generate(params):
        if isinstance(event, TextDelta):
            answer += event.text
        elif isinstance(event, GenerationFinal):
            answer = event.message.content or answer
            sources = list(event.sources)
    result = grounded.last.result
    return {"question": question, "tenant": tenant, "language": language, "answer": answer.strip(),
            "sources": sources, "declined": grounded.last.declined,
            "passages": [h.as_json() for h in result.hits] if result and not grounded.last.declined else [],
            "retrieval_ms": result.timings_ms if result else {},
            "total_ms": round((time.perf_counter() - started) * 1000, 1)}
