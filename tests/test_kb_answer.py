"""Grounded replies: passages reach the LLM with their sources, unanswerable questions are declined,
the search_kb tool is answered, and a tenant without documents is not grounded at all.

Real knowledge base (e5 model, qdrant-client in memory); the LLM is the scripted fake (tests/fakes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nlu.api import (
    ChatMessage,
    GenerateParams,
    GenerationFinal,
    LlmEvent,
    TextDelta,
    ToolCall,
    ToolCallResult,
)
from rag.answer import DECLINE, SEARCH_TOOL, GroundedLlm, looks_like_question
from rag.service import KnowledgeBase
from tests.fakes import FakeLlmClient
from tests.platform_helpers import kb_database
from voiceai.config import load_settings

pytestmark = pytest.mark.integration

EN_DOC = b"""# Card Services

## Lost cards
Call 600 54 7777 at any hour to block a lost or stolen card. A replacement card costs AED 50.

## Annual fees
The Platinum card has an annual fee of AED 700, waived in the first year.
"""
AR_DOC = """# ساعات العمل

## الفروع
تفتح الفروع من الأحد إلى الخميس من الساعة ٨ صباحا حتى ٣ مساء، وتغلق يومي الجمعة والسبت.
""".encode()


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    settings = load_settings(profile="cpu", env={})
    cfg = settings.kb.model_copy(update={"data_dir": tmp_path_factory.mktemp("kb")})
    cfg.store = cfg.store.model_copy(update={"path": ":memory:"})
    db_url = kb_database(tmp_path_factory.mktemp("platform"), "bank", "emptytenant")
    base = KnowledgeBase(cfg, settings.models_dir, db_url=db_url)
    for name, data in (("cards.md", EN_DOC), ("hours.md", AR_DOC)):
        base.submit("bank", name, data)
    base.queue.drain()  # type: ignore[attr-defined]
    assert [d.status for d in base.list("bank")] == ["indexed", "indexed"]
    yield base
    base.close()


async def collect(events: AsyncIterator[LlmEvent]) -> tuple[str, GenerationFinal]:
    text, final = "", None
    async for event in events:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, GenerationFinal):
            final = event
    assert final is not None
    return text, final


def ask(text: str, language: str = "en") -> GenerateParams:
    return GenerateParams(messages=(ChatMessage("user", text),), language=language)


async def test_passages_and_sources_reach_the_llm(kb: KnowledgeBase) -> None:
    llm = FakeLlmClient(default="A replacement card costs AED 50.")
    grounded = GroundedLlm(llm, kb, "bank")
    text, final = await collect(grounded.generate(ask("How much is a replacement card if I lose mine?")))
    assert text == "A replacement card costs AED 50."
    context = llm.calls[0].params.context
    assert context and context[0].source == "cards.md"
    assert "AED 50" in context[0].text
    assert final.sources[0] == "cards.md"
    assert SEARCH_TOOL in llm.calls[0].params.tools


async def test_arabic_question_grounded_in_arabic_document(kb: KnowledgeBase) -> None:
    llm = FakeLlmClient(default="تفتح الفروع من الأحد إلى الخميس.")
    grounded = GroundedLlm(llm, kb, "bank")
    _, final = await collect(grounded.generate(ask("متى تفتح الفروع؟", "ar")))
    assert final.sources[0] == "hours.md"
    assert not grounded.last.declined


async def test_unanswerable_question_is_declined_without_the_llm(kb: KnowledgeBase) -> None:
    llm = FakeLlmClient(default="Bitcoin trading costs 1%.")  # what a model might invent
    grounded = GroundedLlm(llm, kb, "bank")
    text, final = await collect(grounded.generate(ask("What is the commission for trading bitcoin futures?")))
    assert text == DECLINE["en"]
    assert final.finish_reason == "no_answer" and final.sources == ()
    assert grounded.last.declined and llm.calls == []


async def test_arabic_decline(kb: KnowledgeBase) -> None:
    grounded = GroundedLlm(FakeLlmClient(), kb, "bank")
    text, _ = await collect(grounded.generate(ask("كم سعر تذكرة الطيران إلى لندن؟", "ar")))
    assert text == DECLINE["ar"]


async def test_small_talk_is_not_declined(kb: KnowledgeBase) -> None:
    llm = FakeLlmClient(default="You're welcome!")
    grounded = GroundedLlm(llm, kb, "bank")
    text, _ = await collect(grounded.generate(ask("thanks a lot")))
    assert text == "You're welcome!" and not grounded.last.declined


async def test_tenant_without_documents_is_not_grounded(kb: KnowledgeBase) -> None:
    llm = FakeLlmClient(default="I can help with that.")
    grounded = GroundedLlm(llm, kb, "emptytenant")
    text, _ = await collect(grounded.generate(ask("What is the annual fee?")))
    assert text == "I can help with that."
    assert llm.calls[0].params.context == () and grounded.last.result is None


class ToolCallingLlm:
    """First round: calls search_kb; second round: answers from the tool result it was given."""

    def __init__(self, query: str) -> None:
        self.query = query
        self.rounds: list[GenerateParams] = []

    async def generate(self, params: GenerateParams) -> AsyncIterator[LlmEvent]:
        self.rounds.append(params)
        if len(self.rounds) == 1:
            call = ToolCall("call-1", "search_kb", f'{{"query": "{self.query}"}}')
            yield ToolCallResult(call, valid=True)
            yield GenerationFinal(ChatMessage("assistant", "", tool_calls=(call,)), "tool_calls")
            return
        tool_message = params.messages[-1]
        yield TextDelta("from tool: " + ("700" if "700" in tool_message.content else "nothing"))
        yield GenerationFinal(ChatMessage("assistant", "done"), "stop")

    async def aclose(self) -> None:
        return None


async def test_search_kb_tool_is_answered_in_a_second_round(kb: KnowledgeBase) -> None:
    llm = ToolCallingLlm("Platinum card annual fee")
    grounded = GroundedLlm(llm, kb, "bank")
    # Small talk: no automatic grounding, so the model looks it up itself.
    text, final = await collect(grounded.generate(ask("okay and the platinum one")))
    assert len(llm.rounds) == 2
    assert llm.rounds[1].messages[-1].role == "tool" and llm.rounds[1].tool_choice == "none"
    assert text == "from tool: 700"
    assert "cards.md" in final.sources
    assert [(a["name"], a["arguments"], a["status"]) for a in final.actions] == [
        ("search_kb", {"query": "Platinum card annual fee"}, "ok")]
    assert "cards.md" in final.actions[0]["result"]["documents"]


@pytest.mark.unit
@pytest.mark.parametrize(("text", "expected"), [
    ("what is the fee for a lost card", True), ("Can I open an account online", True), ("hello", False),
    ("thank you", False), ("كم رسوم البطاقة", True), ("ابي اعرف ساعات الدوام", True), ("شكرا", False),
    ("متى تفتح الفروع؟", True),
])
def test_looks_like_question(text: str, expected: bool) -> None:
    assert looks_like_question(text) is expected



def test_ask_endpoint_and_its_errors(kb: KnowledgeBase, tmp_path: Path) -> None:
    """POST /v1/kb/ask: the answer, its sources and passages; declines; credential, role and body checks."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from gateway.auth.config import AuthConfig
    from gateway.auth.deps import AuthContext
    from gateway.auth.keys import KeyRing
    from gateway.auth.tokens import issue_access
    from gateway.kb import router

    cfg, ring = AuthConfig(), KeyRing.load_or_create(tmp_path / "keys")

    def bearer(role: str) -> dict[str, str]:
        token = issue_access(ring, cfg, subject="u1", tenant_id="t-bank", tenant_name="bank", role=role,
                             principal_type="user")
        return {"Authorization": f"Bearer {token}"}

    app = FastAPI()
    app.include_router(router)
    app.state.kb = kb
    app.state.auth = AuthContext(cfg, ring, b"pepper")
    app.state.clients = SimpleNamespace(llm=FakeLlmClient(default="A replacement card costs AED 50."))
    with TestClient(app) as http:
        ok = http.post("/v1/kb/ask", json={"question": "How much does a replacement card cost?"},
                       headers=bearer("agent"))
        assert ok.status_code == 200
        body = ok.json()
        assert body["answer"] == "A replacement card costs AED 50." and body["sources"][0] == "cards.md"
        assert body["passages"][0]["document"] == "cards.md" and body["declined"] is False
        declined = http.post("/v1/kb/ask", json={"question": "ما هو سعر الذهب اليوم؟"}, headers=bearer("admin"))
        assert declined.json()["answer"] == DECLINE["ar"] and declined.json()["declined"] is True
        assert http.post("/v1/kb/ask", json={"question": "hi"}).status_code == 401
        assert http.post("/v1/kb/ask", json={"question": "hi"}, headers=bearer("viewer")).status_code == 403
        assert http.post("/v1/kb/ask", json={"question": "  "}, headers=bearer("agent")).status_code == 422
        assert http.post("/v1/kb/ask", json={"question": "x", "language": "fr"},
                         headers=bearer("agent")).status_code == 422
