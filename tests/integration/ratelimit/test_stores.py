"""The stores' shared behaviour tests (``tests/store_behaviour.py``) on the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.testing import MetricsCapture
from store_behaviour import *  # noqa: F403  (every behaviour test, collected here)
from store_behaviour import MakeLimiter

pytestmark = pytest.mark.integration


@pytest.fixture
async def make_limiter(redis_url: str, metrics: MetricsCapture) -> AsyncIterator[MakeLimiter]:
    stores: list[RedisStore] = []
    prefix = f"test-ratelimit-core:{uuid.uuid4().hex}:"

    def make(policies: Sequence[Policy]) -> RateLimiter:
        stores.append(RedisStore(redis_url, prefix=prefix, timeout=2.0))
        return RateLimiter(policies, store=stores[-1], meter_provider=metrics.meter_provider)

    yield make
    for store in stores:
        keys = [key async for key in store.client.scan_iter(match=prefix + "*")]
        if keys:
            await store.client.delete(*keys)
        await store.aclose()
