"""Decode scheduling shared by every stream of an ASR process.

One worker owns the model. Finals jump ahead of interims (a caller waiting for the bot matters
more than a live caption); an interim that is still queued when its stream asks for a newer one is
dropped, because only the newest caption is worth showing. Up to ``max_batch_size`` jobs are taken
at once, waiting up to ``max_wait_ms`` for partners, and decoded in one batched model call.
Blocking model calls run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from voiceai import telemetry

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")

PRIORITY_FINAL = 0
PRIORITY_INTERIM = 1


@dataclass(order=True)
class _Job(Generic[Req, Res]):
    priority: int
    seq: int
    request: Req = field(compare=False)
    future: asyncio.Future = field(compare=False)
    key: str = field(compare=False, default="")
    enqueued: float = field(compare=False, default=0.0)


class DecodeScheduler(Generic[Req, Res]):
    """Priority queue + batching in front of a blocking ``decode_batch(requests) -> results``."""

    def __init__(self, decode_batch: Callable[[Sequence[Req]], list[Res]], service: str = "asr",
                 max_batch_size: int = 1, max_wait_ms: int = 0) -> None:
        self._decode_batch = decode_batch
        self._service = service
        self._max_batch = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._heap: list[_Job] = []
        self._latest_interim: dict[str, _Job] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.batches_run = 0

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="asr-decode-worker")

    async def close(self) -> None:
        if self._worker:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for job in self._heap:
            job.future.cancel()
        self._heap.clear()

    async def submit(self, request: Req, priority: int, key: str = "") -> Res | None:
        """Queues a decode; returns its result, or None if a newer interim of ``key`` replaced it."""
        self.start()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        job: _Job = _Job(priority, next(self._seq), request, future, key, time.perf_counter())
        if priority == PRIORITY_INTERIM and key:
            stale = self._latest_interim.get(key)
            if stale is not None and not stale.future.done():
                stale.future.set_result(None)  # superseded; the worker skips it
            self._latest_interim[key] = job
        heapq.heappush(self._heap, job)
        telemetry.QUEUE_DEPTH.labels(self._service).set(len(self._heap))
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            raise

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        while self._heap and len(batch) < self._max_batch:
            job = heapq.heappop(self._heap)
            if job.future.done():  # superseded or its caller gave up
                continue
            batch.append(job)
        telemetry.QUEUE_DEPTH.labels(self._service).set(len(self._heap))
        return batch

    async def _run(self) -> None:
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._max_batch > 1 and self._max_wait_s and len(self._heap) < self._max_batch:
                await asyncio.sleep(self._max_wait_s)
            batch = self._take_batch()
            if not batch:
                continue
            kind = "final" if batch[0].priority == PRIORITY_FINAL else "interim"
            try:
                with telemetry.timed(self._service, f"decode_{kind}"):
                    results = await asyncio.to_thread(self._decode_batch, [j.request for j in batch])
            except Exception as err:  # the model failed: fail these jobs, keep serving
                log.exception("decode failed", extra={"batch": len(batch)})
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches_run += 1
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
