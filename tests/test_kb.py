"""The knowledge base on the real stack: retrieval quality, tenant isolation, ingestion semantics, bad
files, REST (/v1/kb through the gateway app) and the `voiceai kb` commands.

Real multilingual-e5-small, real qdrant-client local mode on disk, the registry in a real (SQLite) platform
database. One knowledge
base per module holds the bilingual corpus (benchmarks/kb/corpus, ~25 s to ingest on 2 cores); tests
that change things use tenants of their own so the corpus tenants stay as ingested. Celery is
covered in tests/test_kb_worker.py.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.auth.config import AuthConfig
from gateway.auth.keys import KeyRing
from gateway.auth.tokens import issue_access
from media_bridge.clients import BridgeClients
from rag.registry import DocumentRecord
from rag.service import KnowledgeBase, UploadRejected
from rag.sparse import bm25_query
from rag.store import ChunkPoint, check_tenant
from tests import kb_docs
from tests.fakes import FakeAsrClient, FakeLlmClient, FakeTtsClient, FakeVadClient
from tests.platform_helpers import isolate, kb_database
from tests.servers import wait_until
from voiceai import cli
from voiceai.config import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "benchmarks" / "kb" / "corpus"
QUESTIONS = {q["id"]: q for q in json.loads((REPO / "benchmarks" / "kb" / "questions.json").read_text())}
MAX_UPLOAD_BYTES = 256 * 1024  # the corpus documents are under 10 KB; keeps the over-size uploads small
class HeldQueue:
    """An `IngestQueue` that only records: the test decides when, and in what order, documents are processed."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, str]] = []

    def submit(self, tenant: str, document_id: str, priority: str) -> str:
        self.submitted.append((tenant, document_id, priority))
        return f"held-{document_id}"


KEYS: list[Path] = []  # the REST app's signing-key folder (set by kb_settings)
# Every tenant the module's knowledge base sees: the registry refuses tenants the platform database lacks.
TENANTS = ("gulfbank", "nilecom", "dup", "del", "versions", "overlap-in-upload-order", "overlap-newest-first", "crash",
           "bad-batch", "refused", "rest-ar", "rest-bad", "rest-refused")


@pytest.fixture(scope="module")
def kb_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose platform database (the one the REST app's `isolate` also opens) holds `TENANTS`."""
    platform = tmp_path_factory.mktemp("platform")
    KEYS[:] = [platform / "keys"]
    settings = load_settings(profile="cpu", env={})
    kb_cfg = settings.kb.model_copy(update={"data_dir": tmp_path_factory.mktemp("kb"),
                                            "max_upload_bytes": MAX_UPLOAD_BYTES})
    db = settings.db.model_copy(update={"url": kb_database(platform, *TENANTS), "admin_url": ""})
    return settings.model_copy(update={"kb": kb_cfg, "db": db})


@pytest.fixture(scope="module")
def kb(kb_settings: Settings) -> Iterator[KnowledgeBase]:
    """Both corpus tenants (gulfbank: 8 documents, nilecom: 4), indexed once for the module."""
    base = KnowledgeBase(kb_settings.kb, kb_settings.models_dir, db_url=kb_settings.db.url)
    try:
        for tenant_dir in sorted(CORPUS.iterdir()):
            for path in sorted(tenant_dir.iterdir()):
                base.submit(tenant_dir.name, path.name, path.read_bytes())
        base.queue.drain()  # type: ignore[attr-defined]
        states = {(d.tenant, d.filename): d.status for t in ("gulfbank", "nilecom") for d in base.list(t)}
        assert len(states) == 12 and set(states.values()) == {"indexed"}, states
        yield base
    finally:
        base.close()


def ingest(kb: KnowledgeBase, tenant: str, filename: str, data: bytes) -> DocumentRecord:
    """Submits through the knowledge base's own (in-process) queue and waits for the outcome."""
    submitted = kb.submit(tenant, filename, data)
    kb.queue.drain()  # type: ignore[attr-defined]
    record = kb.get(tenant, submitted.document.id)
    assert record is not None
    return record


def hit_documents(kb: KnowledgeBase, tenant: str, query: str, top_k: int = 10) -> list[str]:
    return [h.document_id for h in kb.search(tenant, query, top_k).hits]


# ---------------------------------------------------------------------------------------------------
# Retrieval on the real model


@pytest.mark.parametrize("qid", ["q01", "q04", "q07", "q09", "q10", "q12", "q14", "q17", "q19", "q41"])
def test_same_language_question_finds_its_document_in_the_top_3(kb: KnowledgeBase, qid: str) -> None:
    q = QUESTIONS[qid]
    assert q["kind"] == "same_language"
    result = kb.search(q.get("tenant", "gulfbank"), q["question"], top_k=3)
    top = [h.document for h in result.hits]
    assert q["answer_doc"] in top, f"{qid} ({q['lang']}): expected {q['answer_doc']} in the top 3, got {top}"


# English questions answered only by an Arabic document (q21-q25) and the reverse (q26-q30): the
# language-centred dense ranking is what finds them (plain e5 cosine ranked most of them below 3).
@pytest.mark.parametrize("qid", ["q21", "q22", "q24", "q25", "q26", "q27", "q29"])
def test_cross_language_question_finds_its_document_in_the_top_3(kb: KnowledgeBase, qid: str) -> None:
    q = QUESTIONS[qid]
    assert q["kind"] == "cross_language"
    top = [h.document for h in kb.search("gulfbank", q["question"], top_k=3).hits]
    assert q["answer_doc"] in top, f"{qid} ({q['lang']}): expected {q['answer_doc']} in the top 3, got {top}"


def test_arabic_indic_digits_are_the_same_bm25_terms_as_western_digits(kb: KnowledgeBase) -> None:
    assert bm25_query("بطاقة طوارئ ٣٧٥ درهم") == bm25_query("بطاقة طوارئ 375 درهم")
    assert bm25_query("١٥٠٬٠٠٠") == bm25_query("150,000") == bm25_query("150000")
    assert bm25_query("٣٧٥") != bm25_query("٣٧٦")  # digits are folded, not dropped

    # The amount 150,000 is printed "١٥٠٬٠٠٠" in account_opening.html and "150,000" in credit_card_fees.md:
    # a query in either script matches both on the sparse side, and nothing else. (top_k covers every
    # fused candidate, so the check does not depend on how fusion weighs the two lists.)
    for query in ("١٥٠٬٠٠٠", "150,000"):
        result = kb.search("gulfbank", query, top_k=2 * kb.cfg.candidates)
        lexical = {h.document for h in result.hits if h.sparse_score is not None}
        assert lexical == {"account_opening.html", "credit_card_fees.md"}, (query, lexical)

    # The emergency-card fee is printed ٣٧٥ (lost_stolen_card.txt): typed either way, the lexical side scores
    # the same chunks the same, led by that one. (The dense side sees the digits as typed, by design.)
    lexical_scores = []
    for digits in ("٣٧٥", "375"):
        hits = kb.search("gulfbank", f"كم رسوم بطاقة الطوارئ {digits} درهم", top_k=2 * kb.cfg.candidates).hits
        lexical = sorted((h for h in hits if h.sparse_score is not None), key=lambda h: -(h.sparse_score or 0))
        assert lexical[0].document == "lost_stolen_card.txt" and "٣٧٥" in lexical[0].text, digits
        lexical_scores.append({h.chunk_id: h.sparse_score for h in lexical})
    assert lexical_scores[0] == lexical_scores[1]


def test_cli_kb_ingest_search_list_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`voiceai kb ...` on a knowledge base of its own (the module's holds its store folder open)."""
    for var in ("VOICEAI_GATEWAY_URL", "VOICEAI_CONFIG", "VOICEAI_PROFILE", "VOICEAI_BROKER_URL",
                "VOICEAI_QDRANT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VOICEAI_KB_DIR", str(tmp_path / "kb"))
    # A platform database of its own, not yet created: `kb ingest` migrates it and, on this embedded
    # database, creates the missing tenant (on Postgres it would refuse).
    monkeypatch.setenv("VOICEAI_DATABASE_URL", f"sqlite:///{tmp_path / 'voiceai.sqlite3'}")
    monkeypatch.delenv("VOICEAI_DATABASE_ADMIN_URL", raising=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / "gulfbank" / "branch_and_call_centre_hours.txt", docs)
    shutil.copy(CORPUS / "gulfbank" / "mobile_app_otp.md", docs)
    (docs / "broken.pdf").write_bytes(kb_docs.truncated_pdf())

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main(list(argv))
        return code, capsys.readouterr().out

    assert cli.main(["kb", "list", "--tenant", "gulfbank"]) == 2  # no such tenant yet: refused, clearly
    assert "no tenant named 'gulfbank'" in capsys.readouterr().err
    code = cli.main(["kb", "ingest", str(docs), "--tenant", "gulfbank", "--json"])
    out, err = capsys.readouterr()
    assert "created tenant 'gulfbank' in the embedded database" in err
    rows = {Path(r["file"]).name: r for r in json.loads(out)["documents"]}
    assert code == 1  # one document failed
    assert rows["broken.pdf"]["status"] == "failed" and rows["broken.pdf"]["error"]["reason"] == "corrupt"
    assert rows["branch_and_call_centre_hours.txt"]["status"] == "indexed"
    assert rows["mobile_app_otp.md"]["status"] == "indexed" and rows["mobile_app_otp.md"]["chunks"] > 0

    code, out = run("kb", "search", QUESTIONS["q09"]["question"], "--tenant", "gulfbank", "--json")
    results = json.loads(out)["results"]
    assert code == 0 and 1 <= len(results) <= 3
    for r in results:
        assert isinstance(r["text"], str) and r["text"].strip()
        assert r["document"] in ("branch_and_call_centre_hours.txt", "mobile_app_otp.md")  # the source file name
        assert isinstance(r["score"], float) and r["score"] > 0
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert results[0]["document"] == "branch_and_call_centre_hours.txt"
    assert any("+971 4 555 2020" in r["text"] for r in results)  # the answer itself is in what comes back

    code, out = run("kb", "list", "--tenant", "gulfbank", "--json")
    listed = {d["filename"]: d for d in json.loads(out)["documents"]}
    assert set(listed) == {"branch_and_call_centre_hours.txt", "mobile_app_otp.md", "broken.pdf"}

    code, _ = run("kb", "delete", listed["branch_and_call_centre_hours.txt"]["id"], "--tenant", "gulfbank")
    assert code == 0
    code, out = run("kb", "search", QUESTIONS["q09"]["question"], "--tenant", "gulfbank", "--json")
    assert {r["document"] for r in json.loads(out)["results"]} == {"mobile_app_otp.md"}
    code, _ = run("kb", "delete", listed["branch_and_call_centre_hours.txt"]["id"], "--tenant", "gulfbank")
    assert code == 1  # already gone


# ---------------------------------------------------------------------------------------------------
# Tenant isolation


def test_another_tenants_facts_never_come_back(kb: KnowledgeBase) -> None:
    nilecom = {d.id: d for d in kb.list("nilecom")}
    assert len(nilecom) == 4
    # Control: nilecom itself answers its own question from its roaming document.
    own = kb.search("nilecom", QUESTIONS["q41"]["question"]).hits
    assert QUESTIONS["q41"]["answer_doc"] in [h.document for h in own]
    for qid in ("q38", "q39", "q41"):  # answers that exist only in nilecom's documents
        hits = kb.search("gulfbank", QUESTIONS[qid]["question"], top_k=20).hits
        assert hits, "gulfbank has documents: the search must return its own (irrelevant) chunks"
        leaked = [(h.document, h.text[:60]) for h in hits if h.document_id in nilecom]
        assert not leaked, f"{qid}: nilecom chunks returned to gulfbank: {leaked}"
        assert not {h.document for h in hits} & {d.filename for d in nilecom.values()}
    for doc_id in nilecom:
        assert kb.store.count("gulfbank", doc_id) == 0  # not even stored in gulfbank's collection


def test_a_document_id_is_invisible_to_other_tenants(kb: KnowledgeBase) -> None:
    doc = kb.list("nilecom")[0]
    assert kb.get("gulfbank", doc.id) is None
    assert kb.delete("gulfbank", doc.id) is False
    assert doc.id not in {d.id for d in kb.list("gulfbank")}
    still = kb.get("nilecom", doc.id)
    assert still is not None and still.status == "indexed"
    assert kb.store.count("nilecom", doc.id, state="indexed") == doc.chunks > 0


def test_tenant_names_are_checked_whole() -> None:
    for bad in ("gulfbank\n", "Gulfbank", "../gulfbank", "", "-x", "a" * 64):
        with pytest.raises(ValueError):
            check_tenant(bad)
    assert check_tenant("gulf_bank-2") == "gulf_bank-2"


# ---------------------------------------------------------------------------------------------------
# Ingestion semantics


def test_the_same_bytes_again_are_a_no_op(kb: KnowledgeBase) -> None:
    tenant = "dup"
    data = kb_docs.make_markdown("en")
    first = ingest(kb, tenant, "guide.md", data)
    assert first.status == "indexed"
    points = kb.store.count(tenant)
    assert points == first.chunks > 0

    for name in ("guide.md", "guide-copy.md"):  # same bytes, whatever they are called
        again = kb.submit(tenant, name, data)
        assert again.duplicate and again.document.id == first.id
    kb.queue.drain()  # type: ignore[attr-defined]
    record = kb.get(tenant, first.id)
    assert record is not None and record.status == "indexed" and record.attempts == 1  # not ingested again
    assert kb.store.count(tenant) == points
    assert [d.id for d in kb.list(tenant)] == [first.id]


def test_delete_removes_the_vectors_and_the_upload(kb: KnowledgeBase) -> None:
    tenant = "del"
    keep = ingest(kb, tenant, "hours.md", kb_docs.make_markdown("ar"))
    gone = ingest(kb, tenant, "guide.md", kb_docs.make_markdown("en"))
    query = "How much is the late payment fee?"
    assert gone.id in hit_documents(kb, tenant, query)  # control: it is found before
    blob = kb.cfg.data_dir / "uploads" / tenant / gone.id
    assert blob.is_file()

    assert kb.delete(tenant, gone.id) is True
    assert kb.store.count(tenant, gone.id) == 0
    assert kb.get(tenant, gone.id) is None
    assert not blob.exists()
    assert gone.id not in hit_documents(kb, tenant, query, top_k=20)
    assert kb.delete(tenant, gone.id) is False
    assert kb.store.count(tenant, keep.id) == keep.chunks > 0  # the other document is untouched


def _guide_with_late_fee(fee: str) -> bytes:
    content = [s if s.heading != "Late Payment" else kb_docs.DocSection(
        s.level, s.heading, (f"A late payment fee of {fee} applies when the minimum payment is not received "
                             "by the due date.",)) for s in kb_docs.sections("en")]
    return kb_docs.make_markdown("en", content)


def test_a_new_version_of_a_file_replaces_the_old_one(kb: KnowledgeBase) -> None:
    tenant = "versions"
    old = ingest(kb, tenant, "fees.md", _guide_with_late_fee("AED 25"))
    new = ingest(kb, tenant, "fees.md", _guide_with_late_fee("AED 40"))
    assert new.id != old.id and new.status == "indexed"
    assert kb.get(tenant, old.id) is None
    assert kb.store.count(tenant, old.id) == 0
    assert [d.id for d in kb.list(tenant)] == [new.id]
    texts = " ".join(h.text for h in kb.search(tenant, "late payment fee", top_k=10).hits)
    assert "AED 40" in texts and "AED 25" not in texts


@pytest.mark.parametrize("order", ["in_upload_order", "newest_first"])
def test_the_newest_upload_wins_when_versions_overlap(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch,
                                                      order: str) -> None:
    """v2 is uploaded while v1 is still queued (a busy worker); whichever is ingested first, v2 remains."""
    tenant = f"overlap-{order.replace('_', '-')}"
    held = HeldQueue()
    monkeypatch.setattr(kb, "queue", held)
    v1 = kb.submit(tenant, "fees.md", _guide_with_late_fee("AED 25")).document
    v2 = kb.submit(tenant, "fees.md", _guide_with_late_fee("AED 40")).document
    assert [d for _, d, _ in held.submitted] == [v1.id, v2.id]
    for doc_id in ([v1.id, v2.id] if order == "in_upload_order" else [v2.id, v1.id]):
        kb.process(tenant, doc_id)
    assert [(d.id, d.status) for d in kb.list(tenant)] == [(v2.id, "indexed")], \
        "the older upload must never replace a newer one"
    assert kb.store.count(tenant, v1.id) == 0
    assert kb.store.count(tenant) == kb.store.count(tenant, v2.id, state="indexed") > 0


def test_a_crash_between_write_and_commit_leaves_nothing_searchable(kb: KnowledgeBase,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = "crash"
    fake_id = uuid.uuid4().hex
    text = "Zebra crossing permits cost AED 4242 and are issued by the ostrich desk on Tuesdays."
    encoded = kb.embedder.encode_passages([text])
    point = ChunkPoint(document_id=fake_id, index=0, text=text, section="Permits", title="Zebra", source="zebra.md",
                       language="en", date="2026-01-01", content_hash="0" * 64)
    kb.store.write_pending(tenant, [point], encoded.dense, encoded.sparse)  # ... and the worker dies here
    assert kb.store.count(tenant, fake_id) == 1
    assert kb.store.count(tenant, state="indexed") == 0
    assert kb.search(tenant, "zebra crossing permit ostrich desk 4242").hits == []

    # A real document of the same tenant, and one whose own killed attempt left a stray pending point.
    held = HeldQueue()
    monkeypatch.setattr(kb, "queue", held)
    real = kb.submit(tenant, "guide.md", kb_docs.make_markdown("en")).document
    stray = ChunkPoint(document_id=real.id, index=99, text="half-written leftover", section="", title="",
                       source="guide.md", language="en", date="2026-01-01", content_hash=real.content_hash)
    kb.store.write_pending(tenant, [stray], encoded.dense, encoded.sparse)
    record = kb.process(tenant, real.id)
    assert record is not None and record.status == "indexed"
    assert kb.store.count(tenant, real.id) == kb.store.count(tenant, real.id, state="indexed") == record.chunks
    assert kb.store.count(tenant, state="indexed") == record.chunks  # the fake document stays invisible
    assert kb.store.count(tenant, fake_id, state="pending") == 1
    hits = kb.search(tenant, "zebra crossing permit ostrich desk 4242", top_k=10).hits
    assert hits and {h.document_id for h in hits} == {real.id}
    assert "half-written leftover" not in {h.text for h in hits}


# ---------------------------------------------------------------------------------------------------
# Bad files

BAD_FILES: list[tuple[str, Callable[[], bytes], str, str]] = [
    # (file name, bytes, reason code, part of the message)
    ("empty.txt", kb_docs.empty, "empty", "empty"),
    ("cut-off.pdf", kb_docs.truncated_pdf, "corrupt", "truncated"),
    ("locked.pdf", kb_docs.make_encrypted_pdf, "encrypted", "encrypted"),
    ("scan.pdf", kb_docs.make_scanned_pdf, "scanned_pdf", "no text layer"),
    ("repaired.docx", kb_docs.docx_not_zip, "corrupt", "not a valid zip"),
    ("junk.txt", kb_docs.random_binary, "corrupt", "binary"),
]


def test_bad_files_fail_with_their_reason_and_the_rest_of_the_batch_is_indexed(kb: KnowledgeBase) -> None:
    tenant = "bad-batch"
    good = [("guide-en.md", kb_docs.make_markdown("en")), ("guide-ar.html", kb_docs.make_html("ar"))]
    batch = [(name, make()) for name, make, _, _ in BAD_FILES[:3]] + good[:1] + \
            [(name, make()) for name, make, _, _ in BAD_FILES[3:]] + good[1:]
    ids = {name: kb.submit(tenant, name, data).document.id for name, data in batch}
    kb.queue.drain()  # type: ignore[attr-defined]
    for name, _, reason, message in BAD_FILES:
        record = kb.get(tenant, ids[name])
        assert record is not None and record.status == "failed", (name, record)
        assert record.error_reason == reason, (name, record.error_reason, record.error)
        assert message in record.error.lower(), (name, record.error)
        assert record.as_json()["error"] == {"reason": reason, "message": record.error}
        assert kb.store.count(tenant, ids[name]) == 0
    for name, _ in good:
        record = kb.get(tenant, ids[name])
        assert record is not None and record.status == "indexed" and record.chunks > 0, (name, record)
        assert record.as_json()["error"] is None
    assert kb.store.count(tenant, state="indexed") == sum(d.chunks for d in kb.list(tenant, "indexed"))

    # A failed upload sent again is tried again under the same id (and fails the same way).
    again = kb.submit(tenant, "cut-off.pdf", kb_docs.truncated_pdf())
    assert not again.duplicate and again.document.id == ids["cut-off.pdf"]
    kb.queue.drain()  # type: ignore[attr-defined]
    record = kb.get(tenant, ids["cut-off.pdf"])
    assert record is not None and record.status == "failed" and record.attempts == 2


def test_uploads_refused_at_the_door_register_nothing(kb: KnowledgeBase) -> None:
    tenant = "refused"
    cases = [
        (("photo.png", kb_docs.png_bytes()), 415, "unsupported_type"),
        (("notes", b"plain words"), 415, "unsupported_type"),
        (("big.txt", b"a" * (MAX_UPLOAD_BYTES + 1)), 413, "too_large"),
        (("   ", b"plain words"), 422, "invalid_filename"),
    ]
    for (name, data), status, reason in cases:
        with pytest.raises(UploadRejected) as caught:
            kb.submit(tenant, name, data)
        assert (caught.value.status, caught.value.reason) == (status, reason), name
    with pytest.raises(UploadRejected) as caught:
        kb.submit(tenant, "fine.txt", b"plain words", priority="urgent")
    assert caught.value.status == 422
    with pytest.raises(ValueError):
        kb.submit("Not A Tenant", "fine.txt", b"plain words")
    assert kb.list(tenant) == []
    assert not (kb.cfg.data_dir / "uploads" / tenant).exists()


# ---------------------------------------------------------------------------------------------------
# REST: /v1/kb through the gateway app


@pytest.fixture(scope="module")
def client(kb: KnowledgeBase, kb_settings: Settings) -> Iterator[TestClient]:
    """The real gateway app with the module's knowledge base; call clients are fakes (no calls here)."""

    async def clients_factory(_: Settings) -> BridgeClients:
        tts = FakeTtsClient()
        return BridgeClients(vad=FakeVadClient(), asr=FakeAsrClient(), llm=FakeLlmClient(), tts=tts, fallback_tts=tts)

    app = create_app(isolate(kb_settings, KEYS[0].parent), clients_factory=clients_factory, kb_factory=lambda _: kb)
    with TestClient(app) as http:
        yield http


def headers(tenant: str, role: str = "admin") -> dict[str, str]:
    """An access token for ``tenant`` signed by the gateway's key ring (the platform's auth is on)."""
    token = issue_access(KeyRing.load_or_create(KEYS[0]), AuthConfig(), subject=f"test-{role}", tenant_id=tenant,
                         tenant_name=tenant, role=role, principal_type="user")
    return {"Authorization": f"Bearer {token}"}


def upload(client: TestClient, tenant: str, filename: str, data: bytes, **form: str) -> Any:
    return client.post("/v1/kb/documents", headers=headers(tenant), files={"file": (filename, data)}, data=form)


def wait_until_done(client: TestClient, tenant: str, doc_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        resp = client.get(f"/v1/kb/documents/{doc_id}", headers=headers(tenant))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        return body if body["status"] in ("indexed", "failed") else None

    return wait_until(done, f"document {doc_id} to be indexed or failed")


def test_rest_arabic_document_upload_status_list_search_delete(client: TestClient) -> None:
    tenant = "rest-ar"
    name = "دليل_الرسوم.md"
    resp = upload(client, tenant, name, kb_docs.make_markdown("ar"), priority="high")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    doc_id = body["document_id"]
    assert body["filename"] == name and body["duplicate"] is False and body["task_id"]
    assert body["status"] in ("queued", "processing", "indexed")
    # An English document in the same tenant: the Arabic question must still pick the Arabic one.
    distractor = upload(client, tenant, "guide.md", kb_docs.make_markdown("en"))
    assert distractor.status_code == 202

    doc = wait_until_done(client, tenant, doc_id)
    assert doc["status"] == "indexed" and doc["language"] == "ar" and doc["chunks"] > 0 and doc["error"] is None
    assert doc["priority"] == "high" and doc["title"] == kb_docs.TITLES["ar"]
    assert wait_until_done(client, tenant, distractor.json()["document_id"])["status"] == "indexed"

    again = upload(client, tenant, name, kb_docs.make_markdown("ar"))
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["document_id"] == doc_id

    listed = client.get("/v1/kb/documents", headers=headers(tenant)).json()["documents"]
    assert {d["id"]: d["filename"] for d in listed}[doc_id] == name
    only_indexed = client.get("/v1/kb/documents", params={"status": "indexed"}, headers=headers(tenant))
    assert len(only_indexed.json()["documents"]) == 2

    found = client.post("/v1/kb/search", headers=headers(tenant),
                        json={"query": "كم رسوم التأخير إذا ما دفعت الحد الأدنى؟", "top_k": 3})
    assert found.status_code == 200, found.text
    results = found.json()["results"]
    assert results[0]["document"] == name and results[0]["document_id"] == doc_id
    assert "٢٥ درهم" in " ".join(r["text"] for r in results if r["document_id"] == doc_id)

    assert client.delete(f"/v1/kb/documents/{doc_id}", headers=headers(tenant)).status_code == 204
    assert client.get(f"/v1/kb/documents/{doc_id}", headers=headers(tenant)).status_code == 404
    assert client.delete(f"/v1/kb/documents/{doc_id}", headers=headers(tenant)).status_code == 404
    after = client.post("/v1/kb/search", headers=headers(tenant), json={"query": "رسوم التأخير"}).json()["results"]
    assert after and doc_id not in {r["document_id"] for r in after}


def test_rest_another_tenants_document_is_404_like_a_missing_one(client: TestClient, kb: KnowledgeBase) -> None:
    theirs = kb.list("nilecom")[0].id
    missing = uuid.uuid4().hex
    for method in ("GET", "DELETE"):
        absent = client.request(method, f"/v1/kb/documents/{missing}", headers=headers("gulfbank"))
        foreign = client.request(method, f"/v1/kb/documents/{theirs}", headers=headers("gulfbank"))
        assert absent.status_code == foreign.status_code == 404, method
        assert foreign.json() == absent.json(), method
    own = client.get(f"/v1/kb/documents/{theirs}", headers=headers("nilecom"))
    assert own.status_code == 200 and own.json()["status"] == "indexed"


def test_rest_bad_files_fail_with_reasons_and_good_ones_still_index(client: TestClient) -> None:
    tenant = "rest-bad"
    ids = {}
    for name, make, _, _ in BAD_FILES[:3]:
        ids[name] = upload(client, tenant, name, make()).json()["document_id"]
    ids["good.html"] = upload(client, tenant, "good.html", kb_docs.make_html("en")).json()["document_id"]
    for name, make, _, _ in BAD_FILES[3:]:
        ids[name] = upload(client, tenant, name, make()).json()["document_id"]
    for name, _, reason, message in BAD_FILES:
        doc = wait_until_done(client, tenant, ids[name])
        assert doc["status"] == "failed", (name, doc)
        assert doc["error"]["reason"] == reason and message in doc["error"]["message"].lower(), (name, doc["error"])
    assert wait_until_done(client, tenant, ids["good.html"])["status"] == "indexed"


def test_rest_refusals(client: TestClient, kb: KnowledgeBase) -> None:
    tenant = "rest-refused"
    unsupported = upload(client, tenant, "photo.png", kb_docs.png_bytes())
    assert unsupported.status_code == 415 and "png" in unsupported.json()["detail"]
    just_over = upload(client, tenant, "big.txt", b"a" * (MAX_UPLOAD_BYTES + 1))  # refused by the route
    assert just_over.status_code == 413
    far_over = upload(client, tenant, "huge.txt", b"a" * (MAX_UPLOAD_BYTES + 200 * 1024))  # by Content-Length
    assert far_over.status_code == 413
    no_file = client.post("/v1/kb/documents", headers=headers(tenant), data={"priority": "high"})
    assert no_file.status_code == 422
    bad_priority = upload(client, tenant, "fine.txt", b"plain words", priority="urgent")
    assert bad_priority.status_code == 422
    assert client.get("/v1/kb/documents", headers=headers(tenant)).json() == {"documents": []}

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/kb/documents", {"files": {"file": ("a.txt", b"plain words")}}),
        ("GET", "/v1/kb/documents", {}),
        ("GET", f"/v1/kb/documents/{uuid.uuid4().hex}", {}),
        ("DELETE", f"/v1/kb/documents/{uuid.uuid4().hex}", {}),
        ("POST", "/v1/kb/search", {"json": {"query": "late fee"}}),
    ]
    for method, path, kw in requests:
        assert client.request(method, path, **kw).status_code == 401, (method, path)
        # Naming another tenant next to a valid credential is an attempt to cross tenants: 403.
        for bad in ("Gulf Bank", "../gulfbank", "-x", "a" * 64, "nilecom"):
            refused = client.request(method, path, headers=headers("gulfbank") | {"X-Tenant": bad}, **kw)
            assert refused.status_code == 403, (method, path, bad)
        # A viewer reads the document list, but neither uploads, deletes nor searches (kb.write, kb.search).
        viewer = client.request(method, path, headers=headers("gulfbank", "viewer"), **kw)
        expected = {"/v1/kb/documents": 200} if method == "GET" else {}
        wanted = expected.get(path, 404 if method == "GET" else 403)
        assert viewer.status_code == wanted, (method, path, viewer.status_code)
    assert not (kb.cfg.data_dir / "uploads" / tenant).exists()

    for query in ("", "   ", "\n\t"):
        resp = client.post("/v1/kb/search", headers=headers("gulfbank"), json={"query": query})
        assert resp.status_code == 422, repr(query)
    zero = client.post("/v1/kb/search", headers=headers("gulfbank"), json={"query": "fee", "top_k": 0})
    assert zero.status_code == 422
