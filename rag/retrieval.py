"""Hybrid retrieval: dense + sparse candidates, reciprocal rank fusion, an optional reranker.

Fusion is done here rather than by Qdrant's ``FusionQuery`` so each stage is timed on its own and the
dense cosine of each candidate stays available: it is what decides whether a question is answerable
at all (RRF scores are ranks, not relevance). Both candidate lists come back in one round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from rag.config import KbConfig
from rag.embedding import Embedder
from rag.normalize import detect_language
from rag.rerank import Reranker
from rag.store import QdrantStore, StoredHit

STAGE_SECONDS = Histogram("voiceai_kb_retrieval_seconds", "Knowledge-base retrieval time, by stage.", ["stage"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


@dataclass(slots=True)
class Hit:
    """One retrieved chunk, as search results, prompts and citations show it."""

    chunk_id: str
    document_id: str
    document: str  # the source file name
    title: str
    section: str
    text: str
    language: str
    score: float  # the final ranking score: the reranker's if one ran, else the fused RRF score
    dense_score: float | None = None
    sparse_score: float | None = None
    rerank_score: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "document": self.document, "score": round(self.score, 6),
                "document_id": self.document_id, "title": self.title, "section": self.section,
                "language": self.language, "chunk_id": self.chunk_id,
                "dense_score": None if self.dense_score is None else round(self.dense_score, 6),
                "sparse_score": None if self.sparse_score is None else round(self.sparse_score, 6),
                "rerank_score": None if self.rerank_score is None else round(self.rerank_score, 6)}


@dataclass(slots=True)
class SearchResult:
    query: str
    hits: list[Hit]
    answerable: bool  # the best dense match clears kb.min_score
    best_dense: float  # the best plain cosine among the dense candidates
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"query": self.query, "answerable": self.answerable, "best_dense_score": round(self.best_dense, 6),
                "results": [h.as_json() for h in self.hits],
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}


def rrf(rankings: list[list[str]], k: int, weights: list[float] | None = None) -> dict[str, float]:
    """Reciprocal rank fusion: each list adds weight / (k + rank) to the items it holds."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    return scores


class Retriever:
    def __init__(self, embedder: Embedder, store: QdrantStore, cfg: KbConfig, reranker: Reranker | None) -> None:
        self.embedder = embedder
        self.store = store
        self.cfg = cfg
        self.reranker = reranker

    def search(self, tenant: str, query: str, top_k: int | None = None) -> SearchResult:
        top_k = top_k or self.cfg.top_k
        timings: dict[str, float] = {}

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = (now - since) * 1000
            STAGE_SECONDS.labels(stage).observe(now - since)
            return now

        t = time.perf_counter()
        encoded = self.embedder.encode_query(query)
        t = lap("embed", t)
        dense, sparse = self.store.search(tenant, encoded.dense[0], encoded.sparse[0], self.cfg.candidates,
                                          detect_language(query))
        t = lap("search", t)
        hits = self._fuse(dense, sparse)
        best_dense = max((h.cosine for h in dense if h.cosine is not None), default=0.0)
        t = lap("fuse", t)
        if self.reranker is not None and hits:
            hits = hits[: self.cfg.rerank.max_candidates]
            for hit, score in zip(hits, self.reranker.score(query, [h.text for h in hits]), strict=True):
                hit.rerank_score = score
                hit.score = score
            hits.sort(key=lambda h: h.score, reverse=True)
            lap("rerank", t)
        return SearchResult(query, hits[:top_k], best_dense >= self.cfg.min_score, best_dense, timings)

    def _fuse(self, dense: list[StoredHit], sparse: list[StoredHit]) -> list[Hit]:
        by_id = {h.id: h for h in (*sparse, *dense)}
        dense_scores = {h.id: h.score for h in dense}
        sparse_scores = {h.id: h.score for h in sparse}
        fused = rrf([[h.id for h in dense], [h.id for h in sparse]], self.cfg.rrf_k, [1.0, self.cfg.sparse_weight])
        order = sorted(fused, key=lambda key: (-fused[key], -dense_scores.get(key, 0.0)))
        out = []
        for key in order:
            p = by_id[key].payload
            out.append(Hit(chunk_id=key, document_id=p["document_id"], document=p["source"], title=p.get("title", ""),
                           section=p.get("section", ""), text=p["text"], language=p.get("language", ""),
                           score=fused[key], dense_score=dense_scores.get(key), sparse_score=sparse_scores.get(key)))
        return out
