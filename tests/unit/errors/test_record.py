"""record_error and mapped_errors: the mapping for code outside ASGI."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otel_backpressure.errors import (
    DatabaseError,
    ErrorOutcome,
    ErrorRegistry,
    NotFoundError,
    mapped_errors,
    record_error,
)
from otel_backpressure.testing import MetricsCapture

SECRET = "s3cr3t-token"
COUNTER = "backpressure.exceptions"
OUTCOME = "backpressure.exception.outcome"


def _count(metrics: MetricsCapture, error_type: str, outcome: str) -> float | None:
    return metrics.value(COUNTER, {"error.type": error_type, OUTCOME: outcome})


def test_record_error_puts_the_outcome_on_the_current_span_and_counts_it(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, metrics: MetricsCapture
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("job"):
        try:
            raise DatabaseError(f"token {SECRET}")
        except DatabaseError as exc:
            outcome = record_error(exc, meter_provider=metrics.meter_provider)
    assert outcome is DatabaseError.outcome
    (span,) = span_exporter.get_finished_spans()
    assert (span.status.status_code, span.status.description) == (
        StatusCode.ERROR,
        "database error",
    )
    assert dict(span.attributes or {}) == {"error.type": "database_error"}
    (event,) = span.events
    assert (event.attributes or {})["exception.escaped"] == "False"
    assert SECRET not in span.to_json()
    assert _count(metrics, "database_error", "handled") == 1


def test_record_error_on_an_unmapped_exception_is_an_error_without_its_message(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, metrics: MetricsCapture
) -> None:
    span = tracer_provider.get_tracer("test").start_span("job")
    outcome = record_error(
        RuntimeError(SECRET), span, handled=False, meter_provider=metrics.meter_provider
    )
    span.end()
    assert outcome.error_type == "RuntimeError"
    (exported,) = span_exporter.get_finished_spans()
    assert exported.status.description == "unhandled exception"
    assert SECRET not in exported.to_json()
    assert _count(metrics, "RuntimeError", "unhandled") == 1


def test_record_error_rejects_what_is_not_an_exception() -> None:
    with pytest.raises(TypeError, match="exc must be an exception"):
        record_error("boom")  # type: ignore[arg-type]


def test_mapped_errors_records_counts_and_reraises(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, metrics: MetricsCapture
) -> None:
    # A span the exception does not escape (outside the instrumentor, a span it
    # escapes gets OpenTelemetry's default on top).
    job = tracer_provider.get_tracer("test").start_span("job")
    with (
        pytest.raises(NotFoundError),
        mapped_errors(job, meter_provider=metrics.meter_provider),
    ):
        raise NotFoundError(SECRET)
    job.end()
    (span,) = span_exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"error.type": "not_found"}
    assert span.status.status_code is StatusCode.UNSET
    assert _count(metrics, "not_found", "unhandled") == 1


def test_mapped_errors_can_suppress_mapped_exceptions_only(metrics: MetricsCapture) -> None:
    with mapped_errors(suppress=True, meter_provider=metrics.meter_provider):
        raise NotFoundError("gone")
    with (
        pytest.raises(ValueError, match="kept"),
        mapped_errors(suppress=True, meter_provider=metrics.meter_provider),
    ):
        raise ValueError("kept")
    assert _count(metrics, "not_found", "handled") == 1
    assert _count(metrics, "ValueError", "unhandled") == 1


def test_mapped_errors_lets_cancellation_pass_untouched(metrics: MetricsCapture) -> None:
    with (
        pytest.raises(asyncio.CancelledError),
        mapped_errors(suppress=True, meter_provider=metrics.meter_provider),
    ):
        raise asyncio.CancelledError
    assert COUNTER not in metrics.collect()


async def test_mapped_errors_decorates_sync_and_async_functions(metrics: MetricsCapture) -> None:
    registry = ErrorRegistry([(KeyError, ErrorOutcome("missing_key", StatusCode.UNSET, 404))])
    decorate = mapped_errors(
        suppress=True, registry=registry, meter_provider=metrics.meter_provider
    )

    @decorate
    def lookup(key: str) -> int:
        return {"a": 1}[key]

    @decorate
    async def lookup_later(key: str) -> int:
        await asyncio.sleep(0)
        return {"a": 1}[key]

    assert lookup("a") == 1
    assert await lookup_later("a") == 1
    assert lookup("b") is None
    assert await lookup_later("b") is None
    assert lookup.__name__ == "lookup"
    assert _count(metrics, "missing_key", "handled") == 2


def test_mapped_errors_validates_its_arguments() -> None:
    with pytest.raises(TypeError, match="suppress"):
        mapped_errors(suppress="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry"):
        mapped_errors(registry={})  # type: ignore[arg-type]
    assert repr(mapped_errors()) == "mapped_errors(span=None, suppress=False)"


def test_one_event_per_span_when_mapped_errors_sits_inside_an_instrumented_span(
    instrumented: object,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metrics: MetricsCapture,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with pytest.raises(DatabaseError), tracer.start_as_current_span("job"), mapped_errors():
        raise DatabaseError(SECRET)
    (span,) = span_exporter.get_finished_spans()
    assert len(span.events) == 1
    assert span.status.description == "database error"
    # the instrumentor's meter provider is the default while it is active
    assert _count(metrics, "database_error", "unhandled") == 1
