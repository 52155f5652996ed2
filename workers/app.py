"""The Celery application: ingestion tasks on a Redis broker.

Run a worker with ``celery -A workers.app worker -Q ingest.high,ingest.default,maintenance`` (or
``voiceai worker``) and one scheduler with ``celery -A workers.app beat`` (the daily retention
purge). The broker comes from ``kb.broker_url`` (env ``VOICEAI_BROKER_URL``).

Delivery is at-least-once: a task is acknowledged only after it finished (``acks_late``), so a
worker killed mid-document leaves the message unacknowledged and Redis hands it to another worker
after ``kb.visibility_timeout_s``. That is safe because ingestion is idempotent (see
`rag.service.KnowledgeBase.process`). One task at a time per worker process
(``worker_prefetch_multiplier=1``): documents are long tasks, and prefetching would park them
behind a busy worker. There is no result backend: a document's state lives in the registry.
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab
from kombu import Exchange, Queue

from voiceai.config import Settings, load_settings

QUEUES = ("ingest.high", "ingest.default", "maintenance")
INGEST_TASK = "voiceai.kb.ingest"
PURGE_TASK = "voiceai.retention.purge"


def make_celery(settings: Settings) -> Celery:
    broker = settings.kb.broker_url or "redis://127.0.0.1:6379/0"
    app = Celery("voiceai", broker=broker, set_as_current=False)
    app.conf.update(
        # Each queue bound by its own name: on RabbitMQ an unqualified Queue() would share one binding.
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue="ingest.default",
        task_default_exchange="ingest.default",
        task_default_routing_key="ingest.default",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.kb.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        imports=("workers.tasks",),
        # `celery -A workers.app beat` (one per deployment) schedules the retention purge daily.
        beat_schedule={"retention-purge": {"task": PURGE_TASK, "schedule": crontab(hour=2, minute=30),
                                           "options": {"queue": "maintenance"}}},
        timezone="Asia/Dubai",
    )
    return app


app = make_celery(load_settings())
