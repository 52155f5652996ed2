"""The production knowledge-base backends that cannot run here (bge-m3, bge-reranker on a GPU, a Qdrant
server): configuration, selection and their error paths. What runs here is tested in test_kb*.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.config import EmbeddingConfig, RerankConfig
from rag.embedding import E5Embedder, ModelMissing, make_embedder
from rag.rerank import LlmJudgeReranker, make_reranker
from voiceai.config import load_settings

pytestmark = pytest.mark.unit


def test_gpu_profile_selects_bge_m3_the_bge_reranker_and_a_qdrant_server() -> None:
    kb = load_settings(profile="gpu", env={}).kb
    assert (kb.embedding.backend, kb.embedding.model, kb.embedding.device) == ("bge-m3", "bge-m3", "cuda")
    assert (kb.rerank.backend, kb.rerank.model) == ("bge", "bge-reranker-v2-m3")
    assert kb.store.url.startswith("http://") and kb.broker_url.startswith("redis://")


def test_cpu_profile_runs_everything_in_process() -> None:
    kb = load_settings(profile="cpu", env={}).kb
    assert (kb.embedding.backend, kb.rerank.backend, kb.store.url, kb.broker_url) == ("e5", "none", "", "")


def test_deployment_facts_come_from_the_environment(tmp_path: Path) -> None:
    kb = load_settings(profile="cpu", env={"VOICEAI_QDRANT_URL": "http://qdrant.internal:6333",
                                           "VOICEAI_BROKER_URL": "redis://redis.internal:6379/2",
                                           "VOICEAI_KB_DIR": str(tmp_path)}).kb
    assert kb.store.url == "http://qdrant.internal:6333" and kb.broker_url.endswith("/2")
    assert kb.data_dir == tmp_path


def test_bge_m3_without_its_files_says_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="never downloaded"):
        make_embedder(EmbeddingConfig(backend="bge-m3", model="bge-m3"), tmp_path)


def test_e5_without_its_weights_points_at_models_install(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="voiceai models install"):
        E5Embedder(tmp_path / "multilingual-e5-small", EmbeddingConfig())


def test_reranker_selection(tmp_path: Path) -> None:
    assert make_reranker(RerankConfig(backend="none"), tmp_path) is None
    with pytest.raises(ModelMissing, match="bge-reranker-v2-m3"):
        make_reranker(RerankConfig(backend="bge"), tmp_path)
    with pytest.raises(ValueError, match="engine URL"):
        make_reranker(RerankConfig(backend="llm"), tmp_path)
    judge = make_reranker(RerankConfig(backend="llm"), tmp_path, "http://127.0.0.1:9/v1", "qwen")
    assert isinstance(judge, LlmJudgeReranker)
