"""Exact search over one tenant's indexed chunks in numpy: the search side of local mode.

qdrant-client's local mode stores points well but scores sparse vectors in pure Python, point by
point (115 ms at 10,000 chunks on this machine, 180 ms with a payload filter), which alone would
break the call's latency budget. Local mode is single-process (its folder is locked), so every
write goes through this process's `QdrantStore`, which applies it here too: a committed document's
chunks are appended, a deleted one's rows are masked (and the index compacted once a fifth of it is
dead). Nothing is rebuilt on the search path after the first build, so ingesting while calls run
does not stall them. Scores match Qdrant's: cosine for dense, and for sparse the dot product with
the IDF that ``Modifier.IDF`` applies, ``ln((N - df + 0.5) / (df + 0.5) + 1)``, over live chunks.
A Qdrant server does both itself (HNSW, an inverted index); this class is never used with one.

Dense ranking uses *language-centred* cosines: each chunk's vector minus the mean vector of the
tenant's chunks in its language, and the query minus the mean of its language. multilingual-e5
puts every Arabic text nearer every other Arabic text than any English one (and vice versa), so an
English question ranked the Arabic document that answers it 10th or later; removing the
per-language mean takes that offset out (docs/BENCHMARKS.md). The means are the tenant's own corpus
statistics, like IDF. The plain cosine is returned too: answerability is judged on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

_SCROLL_PAGE = 1024
SHRINK = 10  # chunks: see _shrunk_mean
_COMPACT_FRACTION = 0.2

Sparse = tuple[Sequence[int], Sequence[float]]


class LocalIndex:
    def __init__(self, dim: int, idf: bool) -> None:
        self.dim = dim
        self.idf = idf
        self.ids: list[str] = []
        self.payloads: list[dict[str, Any]] = []
        self.languages: list[str] = []
        self.raw = np.zeros((0, dim), np.float32)  # rows L2-normalised
        self.dense = self.raw  # language-centred, L2-normalised
        self.alive = np.zeros(0, bool)
        self.postings: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # term -> (rows, weights)
        self.means: dict[str, np.ndarray] = {}

    @classmethod
    def build(cls, client: Any, collection: str, dense_name: str, sparse_name: str, idf: bool,
              dim: int) -> LocalIndex:
        index = cls(dim, idf)
        offset = None
        while True:
            records, offset = client.scroll(collection, limit=_SCROLL_PAGE, offset=offset, with_payload=True,
                                            with_vectors=True)
            live = [r for r in records if (r.payload or {}).get("state") == "indexed"]
            if live:
                sparse = [r.vector.get(sparse_name) for r in live]
                index.add([str(r.id) for r in live], [r.payload or {} for r in live],
                          np.asarray([r.vector[dense_name] for r in live], np.float32),
                          [(s.indices, s.values) if s else ((), ()) for s in sparse])
            if offset is None:
                return index

    def __len__(self) -> int:
        return int(self.alive.sum())

    # ---- writes --------------------------------------------------------------------------------

    def add(self, ids: list[str], payloads: list[dict[str, Any]], dense: np.ndarray, sparse: list[Sparse]) -> None:
        start = len(self.ids)
        rows = dense.reshape(len(ids), self.dim).astype(np.float32)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self.ids += ids
        self.payloads += payloads
        self.languages += [p.get("language", "") for p in payloads]
        self.raw = np.concatenate([self.raw, rows])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])
        grouped: dict[int, tuple[list[int], list[float]]] = {}
        for offset, (indices, values) in enumerate(sparse):
            for term, weight in zip(indices, values, strict=True):
                entry = grouped.setdefault(int(term), ([], []))
                entry[0].append(start + offset)
                entry[1].append(float(weight))
        for term, (r, w) in grouped.items():
            old = self.postings.get(term)
            new_rows, new_weights = np.asarray(r, np.int32), np.asarray(w, np.float32)
            self.postings[term] = (new_rows, new_weights) if old is None else (
                np.concatenate([old[0], new_rows]), np.concatenate([old[1], new_weights]))
        self._recentre()

    def remove_document(self, document_id: str) -> None:
        dead = [i for i, p in enumerate(self.payloads) if p.get("document_id") == document_id and self.alive[i]]
        if not dead:
            return
        self.alive[dead] = False
        if (~self.alive).sum() > _COMPACT_FRACTION * len(self.alive):
            self._compact()
        self._recentre()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.alive)
        remap = np.full(len(self.alive), -1, np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        self.ids = [self.ids[i] for i in keep]
        self.payloads = [self.payloads[i] for i in keep]
        self.languages = [self.languages[i] for i in keep]
        self.raw = self.raw[keep]
        self.alive = np.ones(len(keep), bool)
        postings = {}
        for term, (rows, weights) in self.postings.items():
            mask = remap[rows] >= 0
            if mask.any():
                postings[term] = (remap[rows[mask]], weights[mask])
        self.postings = postings

    def _recentre(self) -> None:
        langs = np.asarray(self.languages)
        self.means = {lang: _shrunk_mean(self.raw[(langs == lang) & self.alive])
                      for lang in set(langs[self.alive].tolist())}
        if not self.means:
            self.dense = self.raw
            return
        offsets = np.stack([self.means.get(lang, np.zeros(self.dim, np.float32)) for lang in self.languages])
        self.dense = self.raw - offsets
        self.dense /= np.maximum(np.linalg.norm(self.dense, axis=1, keepdims=True), 1e-12)

    # ---- search --------------------------------------------------------------------------------

    def center(self, query: np.ndarray, language: str) -> np.ndarray:
        """The query minus its language's mean (the mean of the others if the tenant has none in it)."""
        q = query.astype(np.float32).reshape(-1)
        mean = self.means.get(language)
        if mean is None and self.means:
            mean = np.mean(list(self.means.values()), axis=0)
        q = q - mean if mean is not None else q
        return q / max(float(np.linalg.norm(q)), 1e-12)

    def dense_search(self, query: np.ndarray, language: str, limit: int) -> list[tuple[int, float, float]]:
        """(row, centred score, plain cosine): ranked by the first; the second decides answerability,
        because a threshold on it does not move with how much of each language the tenant has."""
        if not len(self):
            return []
        q = query.astype(np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = self.dense @ self.center(query, language)
        scores[~self.alive] = -np.inf
        return [(i, s, float(self.raw[i] @ q)) for i, s in _top(scores, min(limit, len(self)))]

    def sparse_search(self, indices: Sequence[int], values: Sequence[float], limit: int) -> list[tuple[int, float]]:
        n = len(self)
        if not n:
            return []
        scores = np.zeros(len(self.ids), np.float32)
        touched = np.zeros(len(self.ids), bool)
        for term, qw in zip(indices, values, strict=True):
            posting = self.postings.get(int(term))
            if posting is None:
                continue
            rows, weights = posting
            live = self.alive[rows]
            rows, weights = rows[live], weights[live]
            if not len(rows):
                continue
            df = len(rows)
            idf = math.log((n - df + 0.5) / (df + 0.5) + 1) if self.idf else 1.0
            scores[rows] += qw * idf * weights
            touched[rows] = True
        candidates = np.flatnonzero(touched)  # Qdrant returns only points sharing a term with the query
        if not len(candidates):
            return []
        return [(int(candidates[i]), s) for i, s in _top(scores[candidates], limit)]


def _shrunk_mean(rows: np.ndarray) -> np.ndarray:
    """The language's mean vector, scaled by n / (n + SHRINK): with one chunk in a language its mean
    *is* that chunk, and subtracting it in full would leave nothing to match. From a few dozen
    chunks on, the mean is a stable estimate of the language offset and is removed almost fully."""
    return rows.mean(axis=0) * (len(rows) / (len(rows) + SHRINK))


def _top(scores: np.ndarray, limit: int) -> list[tuple[int, float]]:
    k = min(limit, len(scores))
    if k <= 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k]
    order = part[np.argsort(-scores[part], kind="stable")]
    return [(int(i), float(scores[i])) for i in order]
