"""Rerankers: the second stage over fused candidates, chosen by ``kb.rerank.backend``.

* ``bge``: bge-reranker-v2-m3, a multilingual cross-encoder, through FlagEmbedding (production,
  GPU). Loaded from the models directory.
* ``llm``: the LLM engine as a pointwise yes/no judge, P("yes") from the completion's log-probs.
  The only reranker that runs here (no cross-encoder ships in a registry package); it costs one
  prompt per candidate, so it is measured (benchmarks/bench_kb.py) rather than assumed useful.
* ``none``: fused order as it is (the default on CPU: see docs/BENCHMARKS.md for why).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from rag.config import RerankConfig
from rag.embedding import ModelMissing


class Reranker(Protocol):
    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """A relevance score per passage (higher is better), in the order given."""


class BgeReranker:
    def __init__(self, model_dir: Path, cfg: RerankConfig) -> None:
        if not (model_dir / "config.json").is_file():
            raise ModelMissing(f"{model_dir} holds no reranker model (config.json missing); copy "
                               "bge-reranker-v2-m3 into the models directory")
        from FlagEmbedding import FlagReranker  # optional dependency: the gpu extra

        self._model: Any = FlagReranker(str(model_dir), use_fp16=cfg.use_fp16, devices=[cfg.device])
        self._lock = threading.Lock()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        with self._lock:
            scores = self._model.compute_score([[query, p] for p in passages], normalize=True)
        return [float(s) for s in (scores if isinstance(scores, list) else [scores])]


JUDGE_PROMPT = ("<|im_start|>system\nYou judge search results for a bank's customer-care assistant.<|im_end|>\n"
                "<|im_start|>user\nPassage:\n{passage}\n\nQuestion: {query}\n\nDoes the passage contain the answer "
                "to the question? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n")


class LlmJudgeReranker:
    """P(yes) from an OpenAI-compatible completions endpoint (llama.cpp server or vLLM)."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 30.0,
                 max_passage_chars: int = 1200) -> None:
        import httpx

        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._model = model
        self._max_chars = max_passage_chars

    def _p_yes(self, query: str, passage: str) -> float:
        body = {"model": self._model, "prompt": JUDGE_PROMPT.format(passage=passage[: self._max_chars], query=query),
                "max_tokens": 1, "temperature": 0, "logprobs": 10}
        resp = self._http.post("/completions", json=body)
        resp.raise_for_status()
        top = resp.json()["choices"][0].get("logprobs", {}).get("top_logprobs") or [{}]
        probs = {tok.strip().lower(): math.exp(lp) for tok, lp in top[0].items()}
        yes, no = probs.get("yes", 0.0), probs.get("no", 0.0)
        return yes / (yes + no) if yes + no > 0 else 0.0

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return [self._p_yes(query, p) for p in passages]


def make_reranker(cfg: RerankConfig, models_dir: Path, llm_base_url: str = "", llm_model: str = "",
                  llm_api_key: str = "") -> Reranker | None:
    if cfg.backend == "bge":
        return BgeReranker(models_dir / cfg.model, cfg)
    if cfg.backend == "llm":
        if not llm_base_url:
            raise ValueError("kb.rerank.backend = 'llm' needs an LLM engine URL (nlu.engine.base_url)")
        return LlmJudgeReranker(llm_base_url, llm_model, llm_api_key)
    return None
