"""Ingestion tasks. The knowledge base (embedding model, store) is built once per worker process."""

from __future__ import annotations

import logging
import threading

from rag.service import KnowledgeBase
from voiceai.config import load_settings
from voiceai.db.migrate import application_url
from workers.app import INGEST_TASK, PURGE_TASK, app

log = logging.getLogger(__name__)

_kb: KnowledgeBase | None = None
_kb_lock = threading.Lock()


def use_knowledge_base(kb: KnowledgeBase | None) -> None:
    """Sets the process's knowledge base (a worker inside `voiceai up` or a test shares its own)."""
    global _kb
    with _kb_lock:
        _kb = kb


def knowledge_base() -> KnowledgeBase:
    global _kb
    with _kb_lock:
        if _kb is None:
            settings = load_settings()
            _kb = KnowledgeBase(settings.kb, settings.models_dir, db_url=application_url(settings.db),
                                queue=CeleryQueue())
        return _kb


class CeleryQueue:
    """Hands documents to the Celery workers (the gateway's queue when a broker is configured)."""

    def submit(self, tenant: str, document_id: str, priority: str) -> str:
        queue = "ingest.high" if priority == "high" else "ingest.default"
        result = app.send_task(INGEST_TASK, args=(tenant, document_id), queue=queue)
        return str(result.id)


@app.task(name=INGEST_TASK, bind=True, max_retries=5, default_retry_delay=10)
def ingest_document(self, tenant: str, document_id: str) -> str:  # type: ignore[no-untyped-def]
    """Ingests one document; store or model errors retry with back-off, document errors do not."""
    try:
        record = knowledge_base().process(tenant, document_id)
    except Exception as err:
        log.warning("ingestion attempt failed; retrying", extra={"tenant": tenant, "document_id": document_id,
                                                                 "error": repr(err)})
        raise self.retry(exc=err, countdown=min(300, 10 * 2 ** self.request.retries)) from err
    return record.status if record is not None else "deleted"


@app.task(name=PURGE_TASK)
def purge_expired_task() -> dict[str, dict[str, int]]:
    """The daily retention purge over every tenant (scheduled by beat; also `voiceai admin retention run`)."""
    import asyncio

    from voiceai.db.engine import Database
    from workers.retention import purge_expired

    async def run() -> dict[str, dict[str, int]]:
        db = Database.from_settings(load_settings(), admin=True)
        try:
            return await purge_expired(db)
        finally:
            await db.close()

    return asyncio.run(run())
