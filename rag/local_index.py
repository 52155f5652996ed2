"""Exact search over one tenant's indexed chunks in numpy: the search side of local mode.

qdrant-client's local mode stores points well but scores sparse vectors in pure Python, point by
point (115 ms at 10,000 chunks on this machine, 180 ms with a payload filter), which alone would
break the call's latency budget. Local mode is single-process (its folder is locked), so every
write goes through this process's `QdrantStore`, which marks the tenant's index stale; the next
search rebuilds it from the collection. Scores match Qdrant's: cosine for dense, and for sparse the
dot product with the IDF Qdrant's ``Modifier.IDF`` applies, ``ln((N - df + 0.5) / (df + 0.5) + 1)``.
A Qdrant server does both itself (HNSW, an inverted index); this class is never used with one.

Dense scores are *language-centred* cosines: each chunk's vector minus the mean vector of the
tenant's chunks in its language, and the query minus the mean of its language. multilingual-e5
puts every Arabic text nearer every other Arabic text than any English one (and vice versa), so an
English question ranked the Arabic document that answers it 10th or later; removing the
per-language mean takes that offset out (recall@3 on cross-language questions 0.2 -> 1.0, same-
language unchanged: docs/BENCHMARKS.md). The means are the tenant's own corpus statistics, like IDF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_SCROLL_PAGE = 1024


@dataclass(frozen=True, slots=True)
class Posting:
    rows: np.ndarray  # int32 row numbers of the chunks holding the term
    weights: np.ndarray  # float32 document-side weights
    idf: float


class LocalIndex:
    def __init__(self, ids: list[str], payloads: list[dict[str, Any]], dense: np.ndarray,
                 postings: dict[int, Posting]) -> None:
        self.ids = ids
        self.payloads = payloads
        self.raw = dense
        self.postings = postings
        languages = np.array([p.get("language", "") for p in payloads])
        self.means = {lang: dense[languages == lang].mean(axis=0) for lang in set(languages.tolist())}
        self.dense = dense - np.stack([self.means[lang] for lang in languages]) if len(ids) else dense
        self.dense /= np.maximum(np.linalg.norm(self.dense, axis=1, keepdims=True), 1e-12)

    @classmethod
    def build(cls, client: Any, collection: str, dense_name: str, sparse_name: str, idf: bool) -> LocalIndex:
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        rows: list[list[float]] = []
        terms: dict[int, tuple[list[int], list[float]]] = {}
        offset = None
        while True:
            records, offset = client.scroll(collection, limit=_SCROLL_PAGE, offset=offset, with_payload=True,
                                            with_vectors=True)
            for rec in records:
                payload = rec.payload or {}
                if payload.get("state") != "indexed":
                    continue
                row = len(ids)
                ids.append(str(rec.id))
                payloads.append(payload)
                rows.append(rec.vector[dense_name])
                sparse = rec.vector.get(sparse_name)
                for term, weight in zip(sparse.indices, sparse.values, strict=True) if sparse else ():
                    entry = terms.setdefault(term, ([], []))
                    entry[0].append(row)
                    entry[1].append(weight)
            if offset is None:
                break
        n = len(ids)
        dense = np.asarray(rows, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, 1), np.float32)
        if n:
            dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
        postings = {term: Posting(np.asarray(r, np.int32), np.asarray(w, np.float32),
                                  math.log((n - len(r) + 0.5) / (len(r) + 0.5) + 1) if idf else 1.0)
                    for term, (r, w) in terms.items()}
        return cls(ids, payloads, dense, postings)

    def __len__(self) -> int:
        return len(self.ids)

    def center(self, query: np.ndarray, language: str) -> np.ndarray:
        """The query minus its language's mean (the other language's if the tenant has none in it)."""
        q = query.astype(np.float32).reshape(-1)
        mean = self.means.get(language)
        if mean is None and self.means:
            mean = np.mean(list(self.means.values()), axis=0)
        q = q - mean if mean is not None else q
        return q / max(float(np.linalg.norm(q)), 1e-12)

    def dense_search(self, query: np.ndarray, language: str, limit: int) -> list[tuple[int, float]]:
        if not self.ids:
            return []
        return _top(self.dense @ self.center(query, language), limit)

    def sparse_search(self, indices: Sequence[int], values: Sequence[float], limit: int) -> list[tuple[int, float]]:
        if not self.ids:
            return []
        scores = np.zeros(len(self.ids), np.float32)
        touched = np.zeros(len(self.ids), bool)
        for term, qw in zip(indices, values, strict=True):
            posting = self.postings.get(term)
            if posting is not None:
                scores[posting.rows] += qw * posting.idf * posting.weights
                touched[posting.rows] = True
        candidates = np.flatnonzero(touched)  # Qdrant returns only points sharing a term with the query
        if not len(candidates):
            return []
        best = _top(scores[candidates], limit)
        return [(int(candidates[i]), s) for i, s in best]


def _top(scores: np.ndarray, limit: int) -> list[tuple[int, float]]:
    k = min(limit, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    order = part[np.argsort(-scores[part], kind="stable")]
    return [(int(i), float(scores[i])) for i in order]
