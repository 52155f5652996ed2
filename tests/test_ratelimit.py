"""Rate limits on the real Redis (database 14, flushed around each test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis

from gateway.auth.config import RateLimitConfig
from gateway.ratelimit import RateLimiter

pytestmark = pytest.mark.integration
REDIS = "redis://127.0.0.1:6379/14"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def limiter(redis: aioredis.Redis, clock: Clock, tenant: int = 100, principal: int = 3) -> RateLimiter:
    cfg = RateLimitConfig(redis_url=REDIS, tenant_per_minute=tenant, principal_per_minute=principal)
    return RateLimiter(cfg, redis, clock)


async def test_principal_limit_then_retry_after(redis: aioredis.Redis) -> None:
    clock = Clock(60_000 * 60 + 10)  # 10 s into a window
    rl = limiter(redis, clock)
    assert [(await rl.check("t1", "u1")).allowed for _ in range(3)] == [True] * 3
    refused = await rl.check("t1", "u1")
    assert not refused.allowed and refused.scope == "principal" and refused.retry_after_s == 50
    assert (await rl.check("t1", "u2")).allowed  # another user of the same tenant is not affected


async def test_sliding_window_counts_the_previous_minute(redis: aioredis.Redis) -> None:
    clock = Clock(60_000 * 60 + 50)
    rl = limiter(redis, clock, principal=4)
    for _ in range(4):
        assert (await rl.check("t1", "u1")).allowed
    clock.t += 15  # 5 s into the next window: 11/12 of the previous still counts (4 * 0.92 = 3.7)
    assert not (await rl.check("t1", "u1")).allowed
    clock.t += 45  # 50 s in: 1/6 counts (0.7): three more fit
    assert [(await rl.check("t1", "u1")).allowed for _ in range(4)] == [True, True, True, False]


async def test_tenant_limit_covers_all_its_principals(redis: aioredis.Redis) -> None:
    rl = limiter(redis, Clock(60_000 * 60 + 1), tenant=5, principal=100)
    results = [(await rl.check("bank", f"key{i}")).allowed for i in range(6)]
    assert results == [True] * 5 + [False]
    assert (await rl.check("telecom", "key0")).allowed  # other tenants have their own budget


async def test_redis_down_allows_and_counts() -> None:
    cfg = RateLimitConfig(redis_url="redis://127.0.0.1:1/0", principal_per_minute=1)
    rl = RateLimiter(cfg)
    try:
        assert (await rl.check("t", "u")).allowed and (await rl.check("t", "u")).allowed
    finally:
        await rl.close()
