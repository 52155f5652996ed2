"""The background tasks one owner (a call, a server) starts, and must not lose or leave running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any


class TaskSet:
    """Tasks started with ``spawn``: kept referenced while they run (asyncio holds only weak references),
    forgotten when done, and a failure logged with the owner's context instead of vanishing."""

    def __init__(self, log: logging.Logger, failure: str, **context: Any) -> None:
        self._log = log
        self._failure = failure
        self._context = context
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(self._failure, exc_info=task.exception(), extra={"task": task.get_name(),
                                                                             **self._context})

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        """Cancels every task but the one calling, and waits for them to finish."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
