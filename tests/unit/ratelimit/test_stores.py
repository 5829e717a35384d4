"""The stores' shared behaviour tests (``tests/store_behaviour.py``) on the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter
from otel_backpressure.testing import FakeClock, MetricsCapture
from store_behaviour import *  # noqa: F403  (every behaviour test, collected here)
from store_behaviour import MakeLimiter


@pytest.fixture
async def make_limiter(metrics: MetricsCapture, clock: FakeClock) -> AsyncIterator[MakeLimiter]:
    stores: list[MemoryStore] = []

    def make(policies: Sequence[Policy]) -> RateLimiter:
        stores.append(MemoryStore(max_keys=1000, clock=clock))
        return RateLimiter(policies, store=stores[-1], meter_provider=metrics.meter_provider)

    yield make
    for store in stores:
        await store.aclose()
