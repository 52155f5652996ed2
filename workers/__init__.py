"""Celery workers that ingest knowledge-base documents (queues ``ingest.high`` and ``ingest.default``)."""
