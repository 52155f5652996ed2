"""Sparse lexical vectors: BM25 term weights over Arabic-aware tokens, for Qdrant's sparse index.

Documents carry the BM25 term-frequency part, ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg))``;
Qdrant multiplies in the IDF itself (``Modifier.IDF``), computed over the tenant's own collection,
so one tenant's vocabulary never shifts another's scores. Queries carry 1.0 per distinct term.
Terms are hashed to 31-bit ids: no vocabulary to keep in step between workers and searchers.
A fixed average length is used because chunks are cut to a fixed size anyway.

Exact matches matter on the phone: card types, fee names, short codes, amounts ("600 54 2020").
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from rag.normalize import tokenize

K1 = 1.2
B = 0.75
AVG_TERMS = 256.0


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def from_mapping(cls, weights: Mapping[int, float]) -> SparseVector:
        items = sorted((i, w) for i, w in weights.items() if w > 0)
        return cls(tuple(i for i, _ in items), tuple(w for _, w in items))

    def __len__(self) -> int:
        return len(self.indices)


def term_id(token: str) -> int:
    return zlib.crc32(token.encode("utf-8")) & 0x7FFFFFFF


def bm25_document(text: str) -> SparseVector:
    tokens = tokenize(text)
    norm = K1 * (1 - B + B * len(tokens) / AVG_TERMS)
    weights: dict[int, float] = {}
    for token, tf in Counter(tokens).items():
        tid = term_id(token)
        weights[tid] = weights.get(tid, 0.0) + tf * (K1 + 1) / (tf + norm)
    return SparseVector.from_mapping(weights)


def bm25_query(text: str) -> SparseVector:
    return SparseVector.from_mapping({term_id(t): 1.0 for t in set(tokenize(text))})
