"""Celery ingestion on a real Redis broker (DB 15 of the local Redis, flushed before and after).

* An in-thread worker (celery.contrib.testing) shares this process's knowledge base: documents sent
  to both queues are ingested, and a bad document does not hold up a good one behind it.
* A worker process killed in the middle of a document: the message stays unacknowledged (acks_late),
  Redis hands it to the next worker after ``kb.visibility_timeout_s``, and the document ends up
  indexed exactly once, with no pending leftovers. Local-mode Qdrant is single-process, so the store
  is inspected only while no worker holds its folder.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_prerun

from rag.service import KnowledgeBase
from rag.store import QdrantStore
from tests import kb_docs
from tests.platform_helpers import kb_database
from tests.servers import wait_until
from voiceai.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BROKER_URL = "redis://127.0.0.1:6379/15"
VISIBILITY_TIMEOUT_S = 5
@pytest.fixture(scope="module")
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(BROKER_URL)
    client.ping()
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def celery_app(broker: redis.Redis) -> Celery:
    """The project's Celery app (the one the task is registered on and `CeleryQueue` sends through),
    pointed at the test DB. Its broker URL came from this process's settings at import; nothing here
    has connected through it yet, so the new URL is the one every connection uses."""
    import workers.tasks  # noqa: F401  (registers voiceai.kb.ingest on the app)
    from workers.app import app

    app.conf.broker_url = BROKER_URL
    with app.connection_for_write() as conn:
        assert conn.as_uri().endswith("/15")
    return app


def queued_messages(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """A queue's messages as kombu's Redis transport stores them, oldest last (LPUSH, BRPOP)."""
    return [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]


def task_args(message: dict[str, Any]) -> Any:
    """The positional arguments of a Celery (protocol 2) message: body = [args, kwargs, embed]."""
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)[0]


# ---------------------------------------------------------------------------------------------------
# In-thread worker sharing this process's knowledge base


@pytest.fixture
def shared_kb(tmp_path: Path, celery_app: Celery) -> Iterator[KnowledgeBase]:
    from workers.tasks import CeleryQueue, use_knowledge_base

    settings = load_settings(profile="cpu", env={})
    base = KnowledgeBase(settings.kb.model_copy(update={"data_dir": tmp_path / "kb"}), settings.models_dir,
                         db_url=kb_database(tmp_path / "platform", "bank"), queue=CeleryQueue())
    use_knowledge_base(base)
    try:
        yield base
    finally:
        use_knowledge_base(None)
        base.close()


def test_worker_ingests_from_both_queues_and_a_bad_document_does_not_block(
        shared_kb: KnowledgeBase, broker: redis.Redis, celery_app: Celery) -> None:
    kb, tenant = shared_kb, "bank"
    urgent = kb.submit(tenant, "urgent.md", kb_docs.make_markdown("en"), priority="high").document
    broken = kb.submit(tenant, "broken.pdf", kb_docs.truncated_pdf()).document
    good = kb.submit(tenant, "guide.html", kb_docs.make_html("ar")).document  # queued behind the broken one
    ids = [urgent.id, broken.id, good.id]

    # No worker yet: each document waits in its queue, as JSON (nothing executable crosses the broker).
    assert [kb.get(tenant, i).status for i in ids] == ["queued"] * 3  # type: ignore[union-attr]
    high, default = queued_messages(broker, "ingest.high"), queued_messages(broker, "ingest.default")
    assert len(high) == 1 and len(default) == 2
    for message, doc in zip([*high, *reversed(default)], (urgent, broken, good), strict=True):
        assert message["content-type"] == "application/json"
        assert message["headers"]["task"] == "voiceai.kb.ingest"
        assert message["headers"]["id"] == doc.task_id  # the registry's task id is the Celery task id
        assert task_args(message) == [tenant, doc.id]

    delivered: dict[str, str] = {}

    def on_prerun(task: Any = None, args: Any = None, **_: Any) -> None:
        delivered[args[1]] = task.request.delivery_info["routing_key"]

    task_prerun.connect(on_prerun, weak=False)
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
            wait_until(lambda: all(kb.get(tenant, i).status in ("indexed", "failed") for i in ids),  # type: ignore[union-attr]
                     "the worker to finish all three documents", timeout_s=120)
    finally:
        task_prerun.disconnect(on_prerun)

    states = {i: kb.get(tenant, i) for i in ids}
    assert states[urgent.id].status == "indexed" and states[urgent.id].chunks > 0  # type: ignore[union-attr]
    assert states[good.id].status == "indexed" and states[good.id].language == "ar"  # type: ignore[union-attr]
    assert states[broken.id].status == "failed" and states[broken.id].error_reason == "corrupt"  # type: ignore[union-attr]
    assert delivered == {urgent.id: "ingest.high", broken.id: "ingest.default", good.id: "ingest.default"}
    assert kb.store.count(tenant, state="indexed") == states[urgent.id].chunks + states[good.id].chunks  # type: ignore[union-attr]
    assert [h.document for h in kb.search(tenant, "رسوم التأخير", top_k=1).hits] == ["guide.html"]
    # Every message was acknowledged: nothing left queued or held.
    assert broker.llen("ingest.high") == broker.llen("ingest.default") == broker.hlen("unacked") == 0


# ---------------------------------------------------------------------------------------------------
# A worker process killed mid-document


def handbook(sections: int) -> bytes:
    """A Markdown handbook of `sections` sections of ~350 words (two chunks each): 6 sections take ~5 s to
    embed on 2 cores, long enough to kill a worker in the middle."""
    body = []
    for n in range(1, sections + 1):
        sentences = " ".join(f"Clause {n}.{i}: a customer who asks for service {n}-{i} pays AED {n * 10 + i} per "
                             f"request, charged to the account on the next statement date." for i in range(18))
        body.append(f"## Service {n}\n\nService {n} covers requests of type {n}. {sentences}\n")
    return ("# Service charges handbook\n\n" + "\n".join(body)).encode()


class WorkerProcess:
    """`celery -A workers.app worker` as a subprocess, its output kept in a log file for failures."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "ingest.high,ingest.default",
             "--pool", "solo", "--loglevel", "INFO", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
             "--without-heartbeat"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.log_tail()}")
        return True

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._log.close()


def test_a_worker_killed_mid_document_is_redelivered_and_indexes_it_once(
        tmp_path: Path, broker: redis.Redis, celery_app: Celery) -> None:
    data_dir = tmp_path / "kb"
    config = tmp_path / "voiceai.toml"
    config.write_text(f"[kb]\nvisibility_timeout_s = {VISIBILITY_TIMEOUT_S}\n")
    # The registry is in the platform database: the workers reach the test's through the environment.
    db_url = kb_database(tmp_path / "platform", "bank")
    env = {**os.environ, "VOICEAI_KB_DIR": str(data_dir), "VOICEAI_BROKER_URL": BROKER_URL,
           "VOICEAI_CONFIG": str(config), "VOICEAI_PROFILE": "cpu", "VOICEAI_DATABASE_URL": db_url}
    env.pop("VOICEAI_QDRANT_URL", None)
    env.pop("VOICEAI_DATABASE_ADMIN_URL", None)
    settings = load_settings(env=env)  # what the worker processes load
    assert settings.kb.visibility_timeout_s == VISIBILITY_TIMEOUT_S and settings.kb.data_dir == data_dir
    assert settings.db.url == db_url

    # The uploads side (registry, upload blobs, CeleryQueue) is the real KnowledgeBase.submit on the
    # workers' data dir and database. Its own vector store is in memory: submit never touches the store, and the
    # local-mode folder (data_dir/qdrant) is locked by whichever worker is running.
    from workers.tasks import CeleryQueue

    uploads_cfg = settings.kb.model_copy(update={"store": settings.kb.store.model_copy(update={"path": ":memory:"})})
    uploads = KnowledgeBase(uploads_cfg, settings.models_dir, db_url=db_url, queue=CeleryQueue())
    tenant = "bank"

    def status() -> str:
        record = uploads.get(tenant, doc_id)
        assert record is not None
        return record.status

    def open_store() -> QdrantStore:
        return QdrantStore(settings.kb.store, data_dir, uploads.embedder.dim, uploads.embedder.sparse_kind)

    try:
        doc_id = uploads.submit(tenant, "handbook.md", handbook(sections=6)).document.id
        assert status() == "queued"

        first = WorkerProcess(env, tmp_path / "worker1.log", "kb-first")
        try:
            wait_until(lambda: first.alive() and status() == "processing", "the first worker to start the document",
                     timeout_s=120)
            time.sleep(1.0)  # into the embedding; a kill anywhere before the commit must leave nothing indexed
        finally:
            first.stop(signal.SIGKILL)
        killed_at = time.monotonic()

        record = uploads.get(tenant, doc_id)
        assert record is not None and record.status == "processing" and record.attempts == 1, \
            f"the document finished before the kill ({record}); make the handbook bigger"
        assert broker.hlen("unacked") == 1, "the killed worker's message must still be held unacknowledged"
        store = open_store()
        try:
            assert store.count(tenant, doc_id, state="indexed") == 0
        finally:
            store.close()

        # kombu's Redis transport returns unacknowledged messages older than the visibility timeout to
        # their queue when a worker starts (and after that only every ~100 s: unacked_restore_interval
        # 10 s x unacked_restore_throttle 10), so the next worker starts once the timeout has passed.
        time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_S + 1 - time.monotonic()))
        second = WorkerProcess(env, tmp_path / "worker2.log", "kb-second")
        try:
            wait_until(lambda: second.alive() and status() in ("indexed", "failed"),
                     "the redelivered document to be indexed by the second worker", timeout_s=180)
        finally:
            exit_code = second.stop(signal.SIGTERM)  # warm shutdown; killed if it does not stop in time
        assert exit_code == 0, second.log_tail()

        record = uploads.get(tenant, doc_id)
        assert record is not None and record.status == "indexed", (record, second.log_tail())
        assert record.attempts == 2 and record.chunks >= 6
        assert broker.hlen("unacked") == 0 and broker.llen("ingest.default") == 0
        store = open_store()
        try:
            assert store.count(tenant, doc_id, state="indexed") == record.chunks
            assert store.count(tenant, doc_id, state="pending") == 0
            assert store.count(tenant) == record.chunks
        finally:
            store.close()
    finally:
        uploads.close()
