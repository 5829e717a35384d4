"""What the ``limits`` metering tests share: strategies, a count lookup, the instrumentor."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from limits import strategies
from limits.aio import strategies as aio_strategies

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.settings import Settings
from otel_backpressure.testing import MetricsCapture

REQUESTS = "backpressure.rate_limit.requests"
# Every strategy the installed limits has (the sliding window counter exists from 4.1).
_NAMES = ("FixedWindowRateLimiter", "MovingWindowRateLimiter", "SlidingWindowCounterRateLimiter")
SYNC_STRATEGIES = [getattr(strategies, name) for name in _NAMES if hasattr(strategies, name)]
ASYNC_STRATEGIES = [
    getattr(aio_strategies, name) for name in _NAMES if hasattr(aio_strategies, name)
]


def count(metrics: MetricsCapture, policy: str, result: str) -> float | None:
    return metrics.value(
        REQUESTS,
        {"backpressure.rate_limit.policy": policy, "backpressure.rate_limit.result": result},
    )


@pytest.fixture
def instrument(metrics: MetricsCapture) -> Iterator[Callable[[], None]]:
    """Instrument only the rate-limit part, into the test's meter provider."""
    instrumentor = BackpressureInstrumentor()
    settings = Settings(pool_enabled=False, errors_enabled=False)

    def start() -> None:
        instrumentor.instrument(meter_provider=metrics.meter_provider, settings=settings)

    start()
    yield start
    instrumentor.uninstrument()
