"""The vector store: Qdrant through qdrant-client, one collection per tenant.

Why a collection per tenant rather than one shared collection with a tenant payload filter:
isolation does not depend on every query remembering a filter; BM25's IDF (computed by Qdrant
over a collection) stays per tenant, so one tenant's documents never shift another's scores;
a tenant's data is dropped (offboarding, retention) by dropping its collection; and HNSW settings
can differ per tenant. Qdrant suggests payload partitioning past thousands of tenants; a bank or a
telecom runs tens. Every point still carries its tenant, and search checks it (a second lock).

A document is written in two phases so a worker killed half way leaves nothing visible: its points
go in with ``state=pending`` under deterministic ids (a retry overwrites them), and only when all
are in does one ``set_payload`` flip them to ``indexed``. Searches see only indexed points: on a
server through a payload-indexed filter, in local mode because its index holds only those.

In local mode searches run on `rag.local_index.LocalIndex` (numpy, exact, same scores), kept in step
with this process's writes: qdrant-client's local search scores sparse vectors in pure Python.

Local mode (``QdrantClient(path=...)``) is single-process: the folder is locked by the process that
opens it. `voiceai up` therefore ingests in-process; separate Celery workers need the server.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from rag.config import StoreConfig
from rag.local_index import LocalIndex
from rag.sparse import SparseVector

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "sparse"
_POINT_NS = uuid.UUID("6f1c1a52-33c9-4f0e-9d55-6a0e0d7c2b11")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")  # \Z: "$" would let "tenant\n" through
_UPSERT_BATCH = 256


class StoreBusy(RuntimeError):
    """The local-mode folder is open in another process."""


@dataclass(frozen=True, slots=True)
class ChunkPoint:
    """One chunk as stored: its payload is what a search hit shows."""

    document_id: str
    index: int
    text: str
    section: str
    title: str
    source: str
    language: str
    date: str
    content_hash: str

    def payload(self, tenant: str) -> dict[str, Any]:
        return {"tenant": tenant, "document_id": self.document_id, "chunk": self.index, "text": self.text,
                "section": self.section, "title": self.title, "source": self.source, "language": self.language,
                "date": self.date, "content_hash": self.content_hash, "state": "pending"}


@dataclass(frozen=True, slots=True)
class StoredHit:
    id: str
    score: float  # what the list is ranked by
    payload: dict[str, Any]
    cosine: float | None = None  # dense hits: the plain cosine similarity (the answerability signal)


def point_id(tenant: str, document_id: str, index: int) -> str:
    return str(uuid.uuid5(_POINT_NS, f"{tenant}/{document_id}/{index}"))


def check_tenant(tenant: str) -> str:
    if not TENANT_RE.match(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-63 characters of a-z, 0-9, '-' or '_', starting with a "
                         "letter or digit")
    return tenant


def _doc_filter(document_id: str) -> qm.Filter:
    return qm.Filter(must=[qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id))])


def _qdrant_sparse(vec: SparseVector) -> qm.SparseVector:
    return qm.SparseVector(indices=list(vec.indices), values=list(vec.values))


class QdrantStore:
    def __init__(self, cfg: StoreConfig, data_dir: Path, dim: int, sparse_kind: str) -> None:
        self.cfg = cfg
        self.dim = dim
        self.sparse_kind = sparse_kind
        self.local = not cfg.url
        self._lock = threading.Lock()  # local mode is not thread-safe; a server client is, cheaply
        self._known: set[str] = set()
        # Local mode: the search index per collection, kept in step with every write, and the
        # vectors of documents written but not yet committed (added to the index at commit).
        self._indexes: dict[str, LocalIndex] = {}
        self._pending: dict[tuple[str, str], tuple[list[str], list[dict[str, Any]], np.ndarray, list[Any]]] = {}
        if cfg.url:
            self.client = QdrantClient(url=cfg.url, api_key=cfg.api_key or None, prefer_grpc=cfg.prefer_grpc,
                                       timeout=int(cfg.timeout_s))
            self.where = cfg.url
        elif cfg.path == ":memory:":
            self.client = QdrantClient(location=":memory:")
            self.where = ":memory:"
        else:
            path = Path(cfg.path) if cfg.path else data_dir / "qdrant"
            path.mkdir(parents=True, exist_ok=True)
            try:
                self.client = QdrantClient(path=str(path))
            except RuntimeError as err:
                if "already accessed" in str(err):
                    raise StoreBusy(f"the knowledge base at {path} is open in another process (a running "
                                    "`voiceai up` or worker); go through it (VOICEAI_GATEWAY_URL) or use a "
                                    "Qdrant server (kb.store.url)") from err
                raise
            self.where = str(path)

    def collection(self, tenant: str) -> str:
        return f"{self.cfg.collection_prefix}{check_tenant(tenant)}"

    def _ensure(self, tenant: str) -> str:
        name = self.collection(tenant)
        if name in self._known:
            return name
        if not self.client.collection_exists(name):
            modifier = qm.Modifier.IDF if self.sparse_kind == "bm25" else None
            self.client.create_collection(
                name,
                vectors_config={DENSE: qm.VectorParams(
                    size=self.dim, distance=qm.Distance.COSINE, on_disk=self.cfg.on_disk,
                    hnsw_config=qm.HnswConfigDiff(m=self.cfg.hnsw_m, ef_construct=self.cfg.hnsw_ef_construct))},
                sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=modifier)},
            )
            if not self.local:  # local mode ignores payload indexes (and warns)
                for key in ("tenant", "document_id", "state"):
                    self.client.create_payload_index(name, key, qm.PayloadSchemaType.KEYWORD)
        self._known.add(name)
        return name

    def write_pending(self, tenant: str, chunks: Sequence[ChunkPoint], dense: np.ndarray,
                      sparse: Sequence[SparseVector]) -> None:
        """Phase one: every chunk of a document, invisible to search until `commit`."""
        with self._lock:
            name = self._ensure(tenant)
            points = [qm.PointStruct(id=point_id(tenant, c.document_id, c.index),
                                     vector={DENSE: dense[i].tolist(), SPARSE: _qdrant_sparse(sparse[i])},
                                     payload=c.payload(tenant))
                      for i, c in enumerate(chunks)]
            for start in range(0, len(points), _UPSERT_BATCH):
                self.client.upsert(name, points[start:start + _UPSERT_BATCH], wait=True)
            if self.local:
                ids = [str(p.id) for p in points]
                payloads = [{**(p.payload or {}), "state": "indexed"} for p in points]
                for doc in {c.document_id for c in chunks}:
                    rows = [i for i, c in enumerate(chunks) if c.document_id == doc]
                    self._pending[(name, doc)] = ([ids[i] for i in rows], [payloads[i] for i in rows], dense[rows],
                                                  [(sparse[i].indices, sparse[i].values) for i in rows])

    def commit(self, tenant: str, document_id: str) -> None:
        """Phase two: the document's chunks become searchable, all at once."""
        with self._lock:
            name = self._ensure(tenant)
            self.client.set_payload(name, {"state": "indexed"}, points=_doc_filter(document_id), wait=True)
            pending = self._pending.pop((name, document_id), None)
            index = self._indexes.get(name)
            if index is not None:
                index.remove_document(document_id)  # a re-run of the same document replaces its rows
                if pending is None:
                    self._indexes.pop(name)  # written by an earlier process: read it all back next time
                else:
                    index.add(*pending)

    def delete_document(self, tenant: str, document_id: str) -> None:
        with self._lock:
            name = self.collection(tenant)
            if self.client.collection_exists(name):
                self.client.delete(name, points_selector=qm.FilterSelector(filter=_doc_filter(document_id)),
                                   wait=True)
            self._pending.pop((name, document_id), None)
            if name in self._indexes:
                self._indexes[name].remove_document(document_id)

    def count(self, tenant: str, document_id: str | None = None, state: str | None = None) -> int:
        must = []
        if document_id:
            must.append(qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id)))
        if state:
            must.append(qm.FieldCondition(key="state", match=qm.MatchValue(value=state)))
        with self._lock:
            name = self.collection(tenant)
            if not self.client.collection_exists(name):
                return 0
            return self.client.count(name, count_filter=qm.Filter(must=must) if must else None, exact=True).count

    def drop_tenant(self, tenant: str) -> None:
        with self._lock:
            name = self.collection(tenant)
            self._known.discard(name)
            self._indexes.pop(name, None)
            if self.client.collection_exists(name):
                self.client.delete_collection(name)

    def search(self, tenant: str, dense: np.ndarray, sparse: SparseVector, limit: int, language: str = "en") -> tuple[
            list[StoredHit], list[StoredHit]]:
        """Dense and sparse candidates (indexed chunks of this tenant only), in one round trip."""
        name = self.collection(tenant)
        if self.local:
            return self._search_local(name, tenant, dense, sparse, limit, language)
        flt = qm.Filter(must=[qm.FieldCondition(key="state", match=qm.MatchValue(value="indexed")),
                              qm.FieldCondition(key="tenant", match=qm.MatchValue(value=tenant))])
        params = qm.SearchParams(hnsw_ef=self.cfg.search_ef)
        requests = [qm.QueryRequest(query=dense.reshape(-1).tolist(), using=DENSE, limit=limit, filter=flt,
                                    params=params, with_payload=True)]
        if len(sparse):
            requests.append(qm.QueryRequest(query=_qdrant_sparse(sparse), using=SPARSE, limit=limit, filter=flt,
                                            with_payload=True))
        if name not in self._known and not self.client.collection_exists(name):
            return [], []
        self._known.add(name)
        responses = self.client.query_batch_points(name, requests)
        lists = [self._visible(tenant, [StoredHit(str(p.id), float(p.score), p.payload or {},
                                                  float(p.score) if n == 0 else None) for p in r.points], limit)
                 for n, r in enumerate(responses)]
        return lists[0], (lists[1] if len(lists) > 1 else [])

    def _search_local(self, name: str, tenant: str, dense: np.ndarray, sparse: SparseVector,
                      limit: int, language: str) -> tuple[list[StoredHit], list[StoredHit]]:
        with self._lock:
            index = self._indexes.get(name)
            if index is None:
                if not self.client.collection_exists(name):
                    return [], []
                index = LocalIndex.build(self.client, name, DENSE, SPARSE, idf=self.sparse_kind == "bm25",
                                         dim=self.dim)
                self._indexes[name] = index
            # Under the lock: a commit appends to the same arrays (a search takes a millisecond or two).
            dense_hits = [StoredHit(index.ids[i], s, index.payloads[i], cosine) for i, s, cosine
                          in index.dense_search(dense, language, limit)]
            sparse_hits = [StoredHit(index.ids[i], s, index.payloads[i]) for i, s
                           in index.sparse_search(sparse.indices, sparse.values, limit)] if len(sparse) else []
        return self._visible(tenant, dense_hits, limit), self._visible(tenant, sparse_hits, limit)

    @staticmethod
    def _visible(tenant: str, hits: Sequence[StoredHit], limit: int) -> list[StoredHit]:
        out = []
        for hit in hits:
            if hit.payload.get("state") != "indexed":
                continue
            if hit.payload.get("tenant") != tenant:  # cannot happen with a collection per tenant: say so loudly
                log.error("cross-tenant point in collection", extra={"tenant": tenant, "point": hit.id})
                continue
            out.append(hit)
            if len(out) == limit:
                break
        return out

    def close(self) -> None:
        self.client.close()
