"""Knowledge-base configuration: embeddings, vector store, retrieval, ingestion."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

REPO_ROOT = Path(__file__).resolve().parent.parent


class EmbeddingConfig(BaseModel):
    """The embedding model behind `rag.embedding.Embedder`."""

    backend: Literal["e5", "bge-m3"] = Field("e5", description="e5: multilingual-e5-small 4-bit (CPU); "
                                                               "bge-m3: FlagEmbedding BGEM3 (GPU, dense + sparse).")
    model: str = Field("multilingual-e5-small", description="Folder under the models directory.")
    device: str = Field("cpu", description="bge-m3 only: cuda, cuda:0, cpu.")
    use_fp16: bool = Field(True, description="bge-m3 only.")
    batch_size: int = Field(16, ge=1, le=512, description="Passages embedded per call when ingesting.")
    threads: int = Field(0, ge=0, description="e5 only: CPU threads (0: the engine's default).")


class StoreConfig(BaseModel):
    """Qdrant: a server (production) or qdrant-client's embedded local mode (`voiceai up`, tests)."""

    url: str = Field("", description="Qdrant server URL (http://qdrant:6333); empty uses local mode.")
    api_key: str = Field("", description="Qdrant API key (server only).")
    prefer_grpc: bool = Field(True, description="Talk to the server over gRPC (port 6334).")
    path: str = Field("", description="Local mode folder; empty: <kb.data_dir>/qdrant; ':memory:' keeps nothing.")
    collection_prefix: str = Field("kb_", description="One collection per tenant: <prefix><tenant>.")
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW graph degree (server only; local mode is exact).")
    hnsw_ef_construct: int = Field(128, ge=8, le=1024)
    search_ef: int = Field(128, ge=8, le=1024, description="HNSW ef at query time.")
    on_disk: bool = Field(False, description="Keep vectors on disk (memory-mapped) on the server.")
    timeout_s: float = Field(5.0, gt=0, description="Server request timeout.")


class RerankConfig(BaseModel):
    """The second stage after fusion. No cross-encoder ships for this machine, so ``none`` by default."""

    backend: Literal["none", "bge", "llm"] = Field(
        "none", description="bge: FlagEmbedding bge-reranker-v2-m3; llm: the NLU model as a yes/no judge.")
    model: str = Field("bge-reranker-v2-m3", description="bge only: folder under the models directory.")
    device: str = Field("cpu")
    use_fp16: bool = Field(True)
    max_candidates: int = Field(20, ge=1, le=100, description="Fused candidates the reranker scores.")


class KbConfig(BaseModel):
    """Ingestion, retrieval and grounding of replies in a tenant's documents."""

    enabled: bool = Field(True, description="Serve a knowledge base (REST, grounding); off: plain LLM replies.")
    data_dir: Path = Field(REPO_ROOT / "data" / "kb", description="Uploads and local vectors (the document registry "
                                                                  "is in the platform database).")
    embedding: EmbeddingConfig = EmbeddingConfig()
    store: StoreConfig = StoreConfig()
    rerank: RerankConfig = RerankConfig()
    broker_url: str = Field("", description="Celery broker (redis://...); empty ingests in-process.")
    visibility_timeout_s: int = Field(3600, ge=5, description="Redis broker: an unacknowledged task (its "
                                                              "worker died) is delivered again after this.")
    max_upload_bytes: int = Field(20 * 2**20, ge=1024, description="Largest accepted document.")
    chunk_tokens: int = Field(512, ge=64, le=8192, description="Chunk size in embedding-model tokens.")
    chunk_overlap: int = Field(128, ge=0, le=4096, description="Tokens shared by neighbouring chunks.")
    candidates: int = Field(20, ge=1, le=200, description="Dense and sparse candidates before fusion.")
    top_k: int = Field(3, ge=1, le=20, description="Passages given to the LLM.")
    rrf_k: int = Field(10, ge=1, description="Reciprocal rank fusion constant (60 is usual; 10 measured better "
                                             "on benchmarks/kb, where one list is cross-lingual).")
    sparse_weight: float = Field(0.3, ge=0, le=4, description="Weight of the BM25 list in the fusion (dense: 1).")
    min_score: float = Field(0.84, ge=-1, le=1, description="Best dense cosine a query needs to count as "
                                                           "answerable (multilingual-e5 scale; the sweep in "
                                                           "docs/BENCHMARKS.md shows the trade-off).")
    auto_retrieve: bool = Field(True, description="Retrieve on every caller turn (else only via the tool).")
    tool: bool = Field(True, description="Offer the LLM a search_kb tool.")
    default_tenant: str = Field("demo", description="Tenant of calls that name none.")
