"""Circuit breakers per model dependency, so a dead server costs one timeout, not one per turn."""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from prometheus_client import Counter, Gauge

from media_bridge.config import BreakerConfig

log = logging.getLogger(__name__)

BREAKER_STATE = Gauge("voiceai_breaker_open", "1 while a dependency's circuit breaker is open.", ["dependency"])
DEPENDENCY_FAILURES = Counter("voiceai_dependency_failures_total", "Failed or timed-out model calls.",
                              ["dependency", "kind"])


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after a pause (one probe) -> closed."""

    def __init__(self, name: str, cfg: BreakerConfig, clock=time.monotonic) -> None:
        self.name = name
        self.cfg = cfg
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.cfg.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go to the dependency now (one probe at a time when half-open)."""
        state = self.state
        if state == BreakerState.CLOSED:
            return True
        if state == BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def release(self) -> None:
        """A call that ``allow`` let through ended with no verdict (cancelled: barge-in, a dropped
        speculation, hang-up). Frees the half-open probe slot; without this a cancelled probe would
        leave the breaker refusing every call for the rest of the process."""
        self._probing = False

    def success(self) -> None:
        if self._opened_at is not None:
            log.info("dependency recovered", extra={"dependency": self.name})
        self._failures = 0
        self._opened_at = None
        self._probing = False
        BREAKER_STATE.labels(self.name).set(0)

    def failure(self, kind: str = "error") -> None:
        DEPENDENCY_FAILURES.labels(self.name, kind).inc()
        self._failures += 1
        self._probing = False
        if self._failures >= self.cfg.failure_threshold or self._opened_at is not None:
            if self._opened_at is None:
                log.warning("dependency breaker opened", extra={"dependency": self.name})
            self._opened_at = self._clock()
            BREAKER_STATE.labels(self.name).set(1)
