"""The runtime parts switched on alone, reporting to a fresh capture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.testing import MetricsCapture
from runtime_settings import RUNTIME_ONLY


@pytest.fixture
def runtime(metrics: MetricsCapture) -> Iterator[BackpressureInstrumentor]:
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(meter_provider=metrics.meter_provider, settings=RUNTIME_ONLY)
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
