"""BackpressureInstrumentor meters the ``limits`` library on the real Redis (unique prefixes)."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from limits import RateLimitItemPerMinute, storage
from limits.aio import strategies as aio_strategies

from limits_fixtures import SYNC_STRATEGIES, count
from otel_backpressure.testing import MetricsCapture

pytestmark = pytest.mark.integration


def _has_redispy_async() -> bool:
    from limits.aio.storage import RedisStorage

    return "implementation" in inspect.signature(RedisStorage.__init__).parameters


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
    # the unique prefix is the identifier: limits before 5 has no key_prefix option
    store = storage.storage_from_string(redis_url)
    item = RateLimitItemPerMinute(2)
    try:
        assert [strategy(store).hit(item, prefix) for _ in range(3)] == [True, True, False]
    finally:
        strategy(store).clear(item, prefix)
    assert count(metrics, "2/1minute", "allowed") == 2
    assert count(metrics, "2/1minute", "rejected") == 1


async def test_async_strategy_on_redis_is_counted_exactly(
    instrument: Callable[[], None], metrics: MetricsCapture, redis_url: str, prefix: str
) -> None:
    url = redis_url.replace("redis://", "async+redis://", 1)
    # redis-py where limits can use it (5+), else its coredis client (limits 3 and 4)
    options = {"implementation": "redispy"} if _has_redispy_async() else {}
    store = storage.storage_from_string(url, **options)
    limiter = aio_strategies.MovingWindowRateLimiter(store)
    item = RateLimitItemPerMinute(1)
    try:
        assert [await limiter.hit(item, prefix) for _ in range(2)] == [True, False]
    finally:
        await limiter.clear(item, prefix)
    assert count(metrics, "1/1minute", "allowed") == 1
    assert count(metrics, "1/1minute", "rejected") == 1
