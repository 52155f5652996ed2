"""The knowledge base of every tenant: upload, ingest, delete, search. One object per process.

Uploads are registered (the platform database's ``kb_documents``: `rag.registry`) and their bytes kept
under ``kb.data_dir/uploads`` (production: a volume the gateway and the workers share), then handed to an
ingest queue: Celery when ``kb.broker_url`` is set, else a thread in this process. Ingestion
(`KnowledgeBase.process`) is idempotent: a retry after a crash overwrites the same point ids and commits once.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter, Histogram

from rag.chunking import chunk_document
from rag.config import KbConfig
from rag.embedding import Embedder, make_embedder
from rag.loaders import SUPPORTED_EXTENSIONS, DocumentError, load_document
from rag.registry import DocumentRecord, SqlDocumentRegistry
from rag.rerank import Reranker
from rag.retrieval import Retriever, SearchResult
from rag.store import ChunkPoint, QdrantStore, check_tenant

log = logging.getLogger(__name__)

DOCUMENTS = Counter("voiceai_kb_documents_total", "Documents ingested, by outcome.", ["status"])
BAD_DOCUMENTS = Counter("voiceai_kb_bad_documents_total", "Documents refused or failed, by reason.", ["reason"])
INGEST_SECONDS = Histogram("voiceai_kb_ingest_seconds", "Time to ingest one document.",
                           buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))

# Tokens kept free in each chunk for the "title > section" line the embedder sees with it.
_HEADER_TOKENS = 32


class UploadRejected(ValueError):
    """Refused at the door: nothing registered. ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Submitted:
    document: DocumentRecord
    duplicate: bool


class IngestQueue(Protocol):
    def submit(self, tenant: str, document_id: str, priority: str) -> str:
        """Queues one document; returns the task id."""


class InProcessQueue:
    """One background thread ingesting in submission order: `voiceai up`, the CLI, tests."""

    def __init__(self, process: Callable[[str, str], object]) -> None:
        self._process = process
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-ingest")

    def submit(self, tenant: str, document_id: str, priority: str) -> str:
        self._pool.submit(self._run, tenant, document_id)
        return f"local-{document_id}"

    def _run(self, tenant: str, document_id: str) -> None:
        try:
            self._process(tenant, document_id)
        except Exception:
            log.exception("ingestion failed", extra={"tenant": tenant, "document_id": document_id})

    def drain(self, timeout_s: float = 600) -> None:
        """Waits for every queued document (the CLI waits before it prints the results)."""
        self._pool.submit(lambda: None).result(timeout=timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KnowledgeBase:
    """Every tenant's documents: the registry in the platform database at ``db_url`` (the application's URL,
    ``resolve_url(settings.db)``; tenants must exist there), uploads and local vectors under ``cfg.data_dir``.
    ``registry`` replaces the one built from ``db_url``."""

    def __init__(self, cfg: KbConfig, models_dir: Path, *, db_url: str | None = None,
                 registry: SqlDocumentRegistry | None = None, embedder: Embedder | None = None,
                 reranker: Reranker | None = None, queue: IngestQueue | None = None) -> None:
        if registry is None and not db_url:
            raise ValueError("the knowledge base needs the platform database: pass db_url (resolve_url(settings.db))")
        self.cfg = cfg
        self.models_dir = models_dir
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry or SqlDocumentRegistry(str(db_url))
        self.embedder = embedder or make_embedder(cfg.embedding, models_dir)
        self.store = QdrantStore(cfg.store, cfg.data_dir, self.embedder.dim, self.embedder.sparse_kind)
        self.retriever = Retriever(self.embedder, self.store, cfg, reranker)
        self.queue: IngestQueue = queue or InProcessQueue(self.process)
        self._doc_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ---- uploads ---------------------------------------------------------------------------------

    def _blob(self, tenant: str, doc_id: str) -> Path:
        return self.cfg.data_dir / "uploads" / check_tenant(tenant) / doc_id

    def submit(self, tenant: str, filename: str, data: bytes, priority: str = "default") -> Submitted:
        """Registers one upload and queues it; the same bytes again are a no-op."""
        check_tenant(tenant)
        name = Path(filename).name.strip()
        if not name:
            raise UploadRejected(422, "invalid_filename", "the upload has no file name")
        if len(data) > self.cfg.max_upload_bytes:
            BAD_DOCUMENTS.labels("too_large").inc()
            raise UploadRejected(413, "too_large", f"{name} is {len(data)} bytes; the limit is "
                                                   f"{self.cfg.max_upload_bytes} bytes")
        ext = Path(name).suffix.lower()
        if ext not in SUPPORTED_EXTENSIONS:
            BAD_DOCUMENTS.labels("unsupported_type").inc()
            kinds = ", ".join(sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS))
            raise UploadRejected(415, "unsupported_type", f"{ext or 'a file without an extension'!r} is not a "
                                                          f"supported type ({kinds})")
        if priority not in ("high", "default"):
            raise UploadRejected(422, "invalid_priority", "priority must be 'high' or 'default'")
        record, duplicate = self.registry.register(tenant, name, content_hash(data), len(data), priority)
        if duplicate:
            return Submitted(record, True)
        blob = self._blob(tenant, record.id)
        blob.parent.mkdir(parents=True, exist_ok=True)
        tmp = blob.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(blob)  # a reader never sees half a file
        task_id = self.queue.submit(tenant, record.id, priority)
        self.registry.update(tenant, record.id, task_id=task_id)
        refreshed = self.registry.get(tenant, record.id)
        return Submitted(refreshed or record, False)

    # ---- ingestion -------------------------------------------------------------------------------

    def _lock_for(self, doc_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._doc_locks.setdefault(doc_id, threading.Lock())

    def process(self, tenant: str, doc_id: str) -> DocumentRecord | None:
        """Ingests one registered document: load, chunk, embed, write pending, commit.

        A document error (corrupt, empty, encrypted, scanned...) fails that document with its
        reason and returns; anything else (store down) raises so the queue retries.
        """
        with self._lock_for(doc_id):
            record = self.registry.get(tenant, doc_id)
            if record is None or record.status == "indexed":
                return record  # deleted meanwhile, or a redelivered task for finished work
            started = time.perf_counter()
            self.registry.start_attempt(tenant, doc_id)
            try:
                data = self._blob(tenant, doc_id).read_bytes()
                parsed = load_document(data, record.filename, max_bytes=self.cfg.max_upload_bytes)
                chunks = chunk_document(parsed, max_tokens=self.cfg.chunk_tokens - _HEADER_TOKENS,
                                        overlap=self.cfg.chunk_overlap, count_tokens=self.embedder.count_tokens)
                if not chunks:
                    raise DocumentError("empty", f"{record.filename} has no text to index")
            except DocumentError as err:
                self._fail(tenant, doc_id, err.reason, str(err))
                return self.registry.get(tenant, doc_id)
            except FileNotFoundError:
                self._fail(tenant, doc_id, "missing_upload", "the uploaded file is no longer stored; upload it again")
                return self.registry.get(tenant, doc_id)
            except Exception as err:  # a parser choking on a malformed file must not wedge the document
                log.exception("document could not be parsed", extra={"tenant": tenant, "document_id": doc_id})
                self._fail(tenant, doc_id, "corrupt", f"{record.filename} could not be read "
                                                      f"({type(err).__name__}: {err})")
                return self.registry.get(tenant, doc_id)
            date = time.strftime("%Y-%m-%d", time.gmtime(record.created_at))
            points = [ChunkPoint(document_id=doc_id, index=c.index, text=c.text, section=c.section,
                                 title=parsed.title, source=record.filename, language=parsed.language, date=date,
                                 content_hash=record.content_hash) for c in chunks]
            encoded = self.embedder.encode_passages(
                [f"{parsed.title} > {c.section}\n{c.text}" if c.section else f"{parsed.title}\n{c.text}"
                 for c in chunks])
            self.store.delete_document(tenant, doc_id)  # leftovers of an attempt killed half way
            self.store.write_pending(tenant, points, encoded.dense, encoded.sparse)
            self.store.commit(tenant, doc_id)
            if self.registry.get(tenant, doc_id) is None:  # deleted while it was being indexed
                self.store.delete_document(tenant, doc_id)
                return None
            for old in self.registry.older_versions(tenant, record.filename, doc_id):
                self.delete(tenant, old.id)  # a new version of the same file replaces the old one
            self.registry.update(tenant, doc_id, status="indexed", chunks=len(chunks), pages=parsed.pages,
                                 title=parsed.title, format=parsed.format, language=parsed.language,
                                 indexed_at=time.time(), error="", error_reason="")
            DOCUMENTS.labels("indexed").inc()
            INGEST_SECONDS.observe(time.perf_counter() - started)
            log.info("document indexed", extra={"tenant": tenant, "document_id": doc_id, "chunks": len(chunks),
                                                "format": parsed.format, "language": parsed.language})
            return self.registry.get(tenant, doc_id)

    def _fail(self, tenant: str, doc_id: str, reason: str, message: str) -> None:
        self.registry.update(tenant, doc_id, status="failed", error_reason=reason, error=message)
        DOCUMENTS.labels("failed").inc()
        BAD_DOCUMENTS.labels(reason).inc()
        log.warning("document failed", extra={"tenant": tenant, "document_id": doc_id, "reason": reason,
                                              "error": message})

    # ---- reads and deletes -----------------------------------------------------------------------

    def get(self, tenant: str, doc_id: str) -> DocumentRecord | None:
        return self.registry.get(check_tenant(tenant), doc_id)

    def list(self, tenant: str, status: str | None = None) -> builtins.list[DocumentRecord]:
        return self.registry.list(check_tenant(tenant), status)

    def delete(self, tenant: str, doc_id: str) -> bool:
        """Removes a document, its vectors and its stored upload. False if the tenant has no such id."""
        if self.registry.get(check_tenant(tenant), doc_id) is None:
            return False
        self.store.delete_document(tenant, doc_id)
        self._blob(tenant, doc_id).unlink(missing_ok=True)
        return self.registry.delete(tenant, doc_id)

    def has_documents(self, tenant: str) -> bool:
        """Whether the tenant has anything indexed (with nothing, replies are not grounded at all)."""
        try:
            return self.registry.has_status(check_tenant(tenant), "indexed")
        except ValueError:  # not a tenant of this platform: nothing to ground in
            return False

    def search(self, tenant: str, query: str, top_k: int | None = None) -> SearchResult:
        return self.retriever.search(check_tenant(tenant), query, top_k)

    def close(self) -> None:
        closer = getattr(self.queue, "close", None)
        if closer is not None:
            closer()
        self.store.close()
        self.registry.close()
