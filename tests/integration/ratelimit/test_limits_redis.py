"""BackpressureInstrumentor meters the ``limits`` library on the real Redis (unique prefixes)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from limits import RateLimitItemPerMinute, storage
from limits.aio import strategies as aio_strategies

from limits_fixtures import SYNC_STRATEGIES, count
from otel_backpressure.testing import MetricsCapture

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"bp-test-limits-{uuid.uuid4().hex}"


@pytest.mark.parametrize("strategy", SYNC_STRATEGIES)
def test_sync_strategies_on_redis_are_counted_exactly(
    instrument: Callable[[], None],
    metrics: MetricsCapture,
    redis_url: str,
    prefix: str,
    strategy: type[Any],
) -> None:
    store = storage.storage_from_string(redis_url, key_prefix=prefix)
    item = RateLimitItemPerMinute(2)
    try:
        assert [strategy(store).hit(item, "client") for _ in range(3)] == [True, True, False]
    finally:
        strategy(store).clear(item, "client")
    assert count(metrics, "2/1minute", "allowed") == 2
    assert count(metrics, "2/1minute", "rejected") == 1


async def test_async_strategy_on_redis_is_counted_exactly(
    instrument: Callable[[], None], metrics: MetricsCapture, redis_url: str, prefix: str
) -> None:
    url = redis_url.replace("redis://", "async+redis://", 1)
    store = storage.storage_from_string(url, key_prefix=prefix, implementation="redispy")
    limiter = aio_strategies.MovingWindowRateLimiter(store)
    item = RateLimitItemPerMinute(1)
    try:
        assert [await limiter.hit(item, "client") for _ in range(2)] == [True, False]
    finally:
        await limiter.clear(item, "client")
    assert count(metrics, "1/1minute", "allowed") == 1
    assert count(metrics, "1/1minute", "rejected") == 1
