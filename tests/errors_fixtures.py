"""Fixtures shared by the errors part's unit and integration tests (their conftests import them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from otel_backpressure import BackpressureInstrumentor, Settings
from otel_backpressure.testing import MetricsCapture

ERRORS_ONLY = Settings(pool_enabled=False, rate_limit_enabled=False)


@pytest.fixture
def instrumented(
    tracer_provider: TracerProvider, metrics: MetricsCapture
) -> Iterator[BackpressureInstrumentor]:
    """The errors part active (span patches on), undone afterwards."""
    instrumentor = BackpressureInstrumentor()
    assert not instrumentor.is_instrumented_by_opentelemetry, "a previous test leaked"
    instrumentor.instrument(
        tracer_provider=tracer_provider,
        meter_provider=metrics.meter_provider,
        settings=ERRORS_ONLY,
    )
    yield instrumentor
    instrumentor.uninstrument()
