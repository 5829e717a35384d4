"""The stores' shared behaviour tests (``tests/store_behaviour.py``) on the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter
from otel_backpressure.testing import FakeClock, MetricsCapture
from store_behaviour import (  # noqa: F401  (collected here)
    MakeLimiter,
    test_a_rejection_consumes_nothing_under_any_policy,
    test_allowed_decision_names_the_policy_with_fewest_remaining,
    test_burst_then_reject_with_retry_after,
    test_cost_and_dry_run,
    test_every_decision_is_metered_without_client_identity,
    test_keys_do_not_share_state,
    test_per_route_policies_keep_separate_state,
)


@pytest.fixture
async def make_limiter(metrics: MetricsCapture, clock: FakeClock) -> AsyncIterator[MakeLimiter]:
    stores: list[MemoryStore] = []

    def make(policies: Sequence[Policy]) -> RateLimiter:
        stores.append(MemoryStore(max_keys=1000, clock=clock))
        return RateLimiter(policies, store=stores[-1], meter_provider=metrics.meter_provider)

    yield make
    for store in stores:
        await store.aclose()
