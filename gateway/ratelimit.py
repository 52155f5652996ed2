"""Rate limits per tenant and per principal (user or API key), counted in Redis.

A sliding-window counter: the count of the current minute plus the previous minute's count weighted
by how much of it still falls inside the last 60 s. That smooths the burst a fixed window allows at a
boundary (2x the limit in two seconds) at the cost of two counters per key. One Lua script checks
and counts atomically, so every gateway replica shares the same budget.

If Redis cannot be reached the request is allowed (and counted in ``voiceai_rate_limit_errors_total``):
a rate limiter must not take the platform down with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from gateway.auth.config import RateLimitConfig

log = logging.getLogger(__name__)

LIMITED = Counter("voiceai_rate_limited_total", "Requests refused with 429, by scope.", ["scope"])
ERRORS = Counter("voiceai_rate_limit_errors_total", "Rate-limit checks that could not reach Redis (allowed).")

WINDOW_S = 60

# KEYS[1] current window, KEYS[2] previous window; ARGV: limit, weight of the previous window (0..1).
# Returns {allowed (0/1), estimated count}. Counts only allowed requests, so a client hammering past
# its limit does not push its own reset further away.
_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local estimate = current + previous * tonumber(ARGV[2])
if estimate + 1 > tonumber(ARGV[1]) then
  return {0, math.floor(estimate)}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return {1, math.floor(estimate + 1)}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    scope: str = ""  # which limit refused: "tenant" or "principal"
    retry_after_s: int = 0


class RateLimiter:
    def __init__(self, cfg: RateLimitConfig, client: aioredis.Redis | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.redis = client or aioredis.from_url(cfg.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self.redis.register_script(_SCRIPT)
        self._now = clock

    async def _check(self, key: str, limit: int, now: float) -> tuple[bool, int]:
        window = int(now // WINDOW_S)
        elapsed = now - window * WINDOW_S
        weight = (WINDOW_S - elapsed) / WINDOW_S
        allowed, _ = await self._script(keys=[f"rl:{key}:{window}", f"rl:{key}:{window - 1}"],
                                        args=[limit, weight, WINDOW_S])
        # Retry when enough of the previous window has slid out; at worst at the next window.
        return bool(allowed), max(1, math.ceil(WINDOW_S - elapsed))

    async def check(self, tenant_id: str, principal_id: str) -> Decision:
        if not self.cfg.enabled:
            return Decision(True)
        now = self._now()
        try:
            for scope, key, limit in (("principal", f"p:{principal_id}", self.cfg.principal_per_minute),
                                      ("tenant", f"t:{tenant_id}", self.cfg.tenant_per_minute)):
                allowed, retry = await self._check(key, limit, now)
                if not allowed:
                    LIMITED.labels(scope).inc()
                    return Decision(False, scope, retry)
        except (RedisError, OSError) as err:
            ERRORS.inc()
            log.warning("rate limit check failed; allowing", extra={"error": repr(err)})
        return Decision(True)

    async def close(self) -> None:
        await self.redis.aclose()
