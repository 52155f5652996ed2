"""`voiceai demo`: the whole stack on this machine, and simulated calls through it.

Starts what `voiceai up` starts (ASR, NLU and TTS servers on loopback, the gateway), then runs a
two-turn English call and an Arabic call with `voiceai call`'s simulated caller, prints each turn
and saves the bot's audio, uploads the sample bank's documents (benchmarks/kb/corpus/gulfbank,
Arabic and English) to the knowledge base through the gateway's REST API and searches them across
languages, and stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from voiceai.config import Settings
from voiceai.supervisor import free_port

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
KB_TENANT = "gulfbank"
KB_DOCS = ROOT / "benchmarks" / "kb" / "corpus" / KB_TENANT
KB_QUESTIONS = ["How do I block my card if it is stolen?", "كم رسوم الحوالة الدولية إذا سويتها من التطبيق؟"]
CALLS = {
    "en": ["en_balance.wav", "en_order.wav"],
    "ar": ["ar_agent.wav"],
}


def _print_call(language: str, result: dict) -> None:
    print(f"\n--- {'English' if language == 'en' else 'Arabic'} call {result['call_id']}", flush=True)
    for i, t in enumerate(result["turns"], 1):
        stages = t["stages"] or {}
        print(f"turn {i}  caller: {t['user_text']}")
        print(f"        bot:    {t['bot_text']}{'  [interrupted]' if t['interrupted'] else ''}")
        print(f"        e2e {t['e2e_ms']} ms (speech end -> first bot audio at the caller); server stages: "
              f"final transcript +{_after(stages, 'final_transcript_ms')} ms, endpoint "
              f"+{_after(stages, 'endpoint_ms')} ms, first LLM token +{_after(stages, 'llm_first_token_ms')} ms, "
              f"first audio sent +{_after(stages, 'first_audio_sent_ms')} ms", flush=True)


def _after(stages: dict, key: str) -> str:
    if stages.get(key) is None or stages.get("speech_end_ms") is None:
        return "?"
    return f"{stages[key] - stages['speech_end_ms']:.0f}"


async def run_demo(settings: Settings, out_dir: Path) -> None:
    from gateway.caller import load_turns, simulate_call
    from voiceai.stack import run_stack

    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    stack = asyncio.create_task(run_stack(settings, "127.0.0.1", port, ready=ready, stop=stop))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({stack, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if stack.done():
        waiter.cancel()
        raise RuntimeError("the stack did not start; see the messages above")
    url = f"http://127.0.0.1:{port}"
    try:
        for language, wavs in CALLS.items():
            turns = load_turns([FIXTURES / w for w in wavs], settings.models_dir, 16000)
            result = await simulate_call(url, turns, language, out_dir=out_dir / language)
            _print_call(language, result)
            print(f"        bot audio saved to {out_dir / language / 'bot.wav'}", flush=True)
        await _knowledge_base(url, settings)
        print(f"\nThe web page is at {url}/ while the stack runs: `voiceai up` keeps it running.", flush=True)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await stack


async def _admin_token(settings: Settings, tenant: str) -> str:
    """What an operator does with `voiceai admin tenant create` + `admin token`: the tenant, if new, and an
    admin access token for it, signed with this machine's keys."""
    from gateway.auth.keys import KeyRing, keys_dir_for
    from gateway.auth.tokens import issue_access
    from gateway.platform import ensure_tenant
    from voiceai.db.engine import Database

    db = Database.from_settings(settings, admin=True)
    try:
        tenant_id = await ensure_tenant(db, tenant)
    finally:
        await db.close()
    ring = await asyncio.to_thread(KeyRing.load_or_create, keys_dir_for(settings.auth))
    return issue_access(ring, settings.auth, subject="demo-admin", tenant_id=tenant_id, tenant_name=tenant,
                        role="admin", principal_type="user")


async def _knowledge_base(url: str, settings: Settings) -> None:
    """Uploads the sample documents (a no-op when already there) and asks across languages."""
    import httpx

    print(f"\n--- Knowledge base: tenant {KB_TENANT}, documents from {KB_DOCS}", flush=True)
    token = await _admin_token(settings, KB_TENANT)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        ids = []
        for path in sorted(KB_DOCS.iterdir()):
            resp = await http.post("/v1/kb/documents", files={"file": (path.name, path.read_bytes())})
            resp.raise_for_status()
            ids.append(resp.json()["document_id"])
        for doc_id in ids:
            for _ in range(1200):  # ten minutes at most
                doc = (await http.get(f"/v1/kb/documents/{doc_id}")).json()
                if doc["status"] not in ("queued", "processing"):
                    break
                await asyncio.sleep(0.5)
            print(f"{doc['status']:<8} {doc['filename']:<36} {doc['language']}  {doc['chunks']} chunks", flush=True)
        for question in KB_QUESTIONS:
            found = (await http.post("/v1/kb/search", json={"query": question, "top_k": 3})).json()
            print(f"\nsearch: {question}", flush=True)
            for hit in found["results"]:
                print(f"  [{hit['score']:.3f}] {hit['document']} > {hit['section']}: {hit['text'][:90]}...", flush=True)
        answer = (await http.post("/v1/kb/ask", json={"question": KB_QUESTIONS[0]}, timeout=120)).json()
        print(f"\nask: {KB_QUESTIONS[0]}\n  {answer['answer']}\n  sources: {', '.join(answer['sources'])}", flush=True)
