"""Fixtures shared by the errors part's unit and integration tests (their conftests import them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from otel_backpressure import BackpressureInstrumentor, Settings
from otel_backpressure._shared import type_name
from otel_backpressure.errors import ErrorOutcome
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


def assert_span_shows(
    span: ReadableSpan, exc: BaseException, outcome: ErrorOutcome, escaped: str = "False"
) -> None:
    """The span an exception escaped shows exactly ``outcome``, and no message."""
    assert span.status.status_code is outcome.status_code
    assert span.status.description == (outcome.description if outcome.is_error else None)
    assert dict(span.attributes or {}) == {"error.type": outcome.error_type}
    if not outcome.record_exception:
        assert span.events == ()
        return
    (event,) = span.events
    assert event.name == "exception"
    attributes = dict(event.attributes or {})
    assert set(attributes) == {
        "exception.type",
        "exception.message",
        "exception.stacktrace",
        "exception.escaped",
    }
    name = type_name(type(exc))
    assert attributes["exception.type"] == name
    assert attributes["exception.message"] == outcome.description
    assert attributes["exception.escaped"] == escaped
    stacktrace = str(attributes["exception.stacktrace"])
    assert "Traceback (most recent call last):\n" in stacktrace  # a chained cause may have none
    assert stacktrace.endswith(f"{name}\n")
    assert str(exc).splitlines()[0] not in stacktrace
