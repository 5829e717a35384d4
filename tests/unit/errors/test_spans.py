"""Spans that an exception escapes get the mapped outcome; unmapped ones keep the default.

Table-driven over every class of the hierarchy, through every way a span meets
an escaping exception: ``start_as_current_span``, ``use_span`` and
``start_span`` used as a context manager.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from errors_fixtures import assert_span_shows
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure._shared import python_name
from otel_backpressure.errors import (
    AuthenticationError,
    BackpressureError,
    ConfigurationError,
    ConflictError,
    DatabaseConnectionError,
    DatabaseError,
    ErrorOutcome,
    ErrorRegistry,
    NotFoundError,
    OperationTimeoutError,
    PermissionDeniedError,
    PoolExhaustedError,
    RateLimitExceededError,
    SessionExpiredError,
    UpstreamError,
    ValidationError,
    registry,
)
from otel_backpressure.errors._spans import safe_stacktrace

ERROR, UNSET = StatusCode.ERROR, StatusCode.UNSET

# class -> (status, error.type, http status, exception event, description): the documented table
HIERARCHY: dict[type[BackpressureError], tuple[StatusCode, str, int, bool, str]] = {
    BackpressureError: (ERROR, "internal_error", 500, True, "internal error"),
    DatabaseError: (ERROR, "database_error", 500, True, "database error"),
    PoolExhaustedError: (ERROR, "pool_exhausted", 503, True, "connection pool exhausted"),
    DatabaseConnectionError: (
        ERROR,
        "database_connection_error",
        503,
        True,
        "database connection failed",
    ),
    RateLimitExceededError: (UNSET, "rate_limit_exceeded", 429, False, "rate limit exceeded"),
    ValidationError: (UNSET, "validation_error", 422, False, "invalid request"),
    NotFoundError: (UNSET, "not_found", 404, False, "not found"),
    AuthenticationError: (UNSET, "authentication_failed", 401, False, "authentication failed"),
    PermissionDeniedError: (UNSET, "permission_denied", 403, False, "permission denied"),
    ConflictError: (UNSET, "conflict", 409, False, "conflict"),
    SessionExpiredError: (UNSET, "session_expired", 401, False, "session expired"),
    ConfigurationError: (ERROR, "configuration_error", 500, True, "configuration error"),
    UpstreamError: (ERROR, "upstream_error", 502, True, "upstream dependency failed"),
    OperationTimeoutError: (ERROR, "timeout", 504, True, "operation timed out"),
}

SECRET = "postgresql://app:hunter2@db/prod"


def test_the_table_covers_the_whole_hierarchy() -> None:
    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    public = {
        cls
        for cls in subclasses(BackpressureError)
        if cls.__module__ == BackpressureError.__module__
    }
    assert public | {BackpressureError} == set(HIERARCHY)


@pytest.mark.parametrize("cls", list(HIERARCHY), ids=lambda cls: cls.__name__)
def test_each_class_declares_its_documented_outcome(cls: type[BackpressureError]) -> None:
    status, error_type, http_status, record, description = HIERARCHY[cls]
    assert cls.outcome == ErrorOutcome(error_type, status, http_status, record, description)
    assert registry.lookup(cls) is cls.outcome


def _raise_in_start_as_current_span(tracer: trace.Tracer, exc: BaseException) -> None:
    with tracer.start_as_current_span("operation"):
        raise exc


def _raise_in_use_span(tracer: trace.Tracer, exc: BaseException) -> None:
    span = tracer.start_span("operation")
    with trace.use_span(span, end_on_exit=True):
        raise exc


def _raise_in_span_context_manager(tracer: trace.Tracer, exc: BaseException) -> None:
    with tracer.start_span("operation"):
        raise exc


# entry point -> the exception.escaped value OpenTelemetry records through it
ENTRY_POINTS: dict[str, tuple[Callable[[trace.Tracer, BaseException], None], str]] = {
    "start_as_current_span": (_raise_in_start_as_current_span, "False"),
    "use_span": (_raise_in_use_span, "False"),
    "start_span": (_raise_in_span_context_manager, "True"),
}


def _run(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    entry: str,
    exc: BaseException,
) -> ReadableSpan:
    exporter.clear()
    raise_in, _ = ENTRY_POINTS[entry]
    with pytest.raises(type(exc)) as caught:
        raise_in(provider.get_tracer("test"), exc)
    assert caught.value is exc, "the exception must propagate unchanged"
    (span,) = exporter.get_finished_spans()
    return span


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("cls", list(HIERARCHY), ids=lambda cls: cls.__name__)
def test_every_hierarchy_class_sets_its_outcome(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    cls: type[BackpressureError],
    entry: str,
) -> None:
    exc = cls(f"failed for {SECRET}")
    span = _run(tracer_provider, span_exporter, entry, exc)
    assert_span_shows(span, exc, cls.outcome, ENTRY_POINTS[entry][1])


def _comparable(span: ReadableSpan) -> tuple[Any, ...]:
    return (
        span.name,
        span.status.status_code,
        span.status.description,
        dict(span.attributes or {}),
        [(event.name, dict(event.attributes or {})) for event in span.events],
    )


class UnmappedError(Exception):
    pass


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    "make",
    [lambda: ValueError("plain 1"), lambda: UnmappedError("plain 2"), lambda: KeyError("k")],
    ids=["ValueError", "UnmappedError", "KeyError"],
)
def test_unmapped_exceptions_keep_opentelemetrys_default_exactly(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metrics: Any,
    entry: str,
    make: Callable[[], Exception],
) -> None:
    exc = make()
    plain = _comparable(_run(tracer_provider, span_exporter, entry, exc))
    exc.__traceback__ = None  # the same traceback for the second run
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, settings=_errors_only())
    try:
        mapped = _comparable(_run(tracer_provider, span_exporter, entry, exc))
    finally:
        instrumentor.uninstrument()
    assert mapped == plain
    assert plain[1] is StatusCode.ERROR  # the default really is Error with the message
    assert plain[2] == f"{type(exc).__name__}: {exc}"


def _errors_only() -> Any:
    from otel_backpressure import Settings

    return Settings(pool_enabled=False, rate_limit_enabled=False)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_uninstrument_restores_the_default(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, entry: str
) -> None:
    originals = (Span.set_status, Span.record_exception)
    exc = NotFoundError(f"no row for {SECRET}")
    never = _comparable(_run(tracer_provider, span_exporter, entry, exc))
    instrumentor = BackpressureInstrumentor()
    for _ in range(2):  # round trips
        exc.__traceback__ = None
        instrumentor.instrument(tracer_provider=tracer_provider, settings=_errors_only())
        mapped = _run(tracer_provider, span_exporter, entry, exc)
        assert mapped.status.status_code is StatusCode.UNSET
        instrumentor.uninstrument()
        instrumentor.uninstrument()  # twice is harmless
        exc.__traceback__ = None
        assert _comparable(_run(tracer_provider, span_exporter, entry, exc)) == never
    assert (Span.set_status, Span.record_exception) == originals
    assert never[2] == f"NotFoundError: no row for {SECRET}"  # what the default leaks


def test_settings_mappings_apply_while_instrumented_and_go_with_uninstrument(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    from otel_backpressure import Settings

    settings = Settings(
        pool_enabled=False,
        rate_limit_enabled=False,
        error_mappings=f"{__name__}.UnmappedError=unset:404:gone,builtins.LookupError=error:503",
    )
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, settings=settings)
    try:
        gone = _run(tracer_provider, span_exporter, "start_as_current_span", UnmappedError("x"))
        lookup = _run(tracer_provider, span_exporter, "start_span", KeyError("k"))
    finally:
        instrumentor.uninstrument()
    assert (gone.status.status_code, dict(gone.attributes or {})) == (
        StatusCode.UNSET,
        {"error.type": "gone"},
    )
    assert gone.events == ()
    assert (lookup.status.status_code, lookup.status.description) == (
        StatusCode.ERROR,
        "builtins.LookupError",
    )
    assert dict(lookup.attributes or {}) == {"error.type": "builtins.LookupError"}
    assert registry.lookup(UnmappedError) is None
    assert registry.lookup(KeyError) is None


def test_a_class_can_opt_in_to_exposing_its_message(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    class PublicError(BackpressureError):
        outcome = ErrorOutcome("public", ERROR, 500, True, "public", expose_message=True)

    exc = PublicError("safe to show")
    span = _run(tracer_provider, span_exporter, "start_as_current_span", exc)
    assert span.status.description == "PublicError: safe to show"
    (event,) = span.events
    assert (event.attributes or {})["exception.message"] == "safe to show"


def test_explicit_statuses_set_by_the_application_are_kept(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("handled") as span:
        try:
            raise NotFoundError("no such game")
        except NotFoundError:
            span.set_status(Status(StatusCode.ERROR, "lookup failed"))
    (exported,) = span_exporter.get_finished_spans()
    assert (exported.status.status_code, exported.status.description) == (
        StatusCode.ERROR,
        "lookup failed",
    )
    assert "error.type" not in (exported.attributes or {})


def test_a_manual_record_exception_follows_the_outcome(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("handled") as span:
        span.record_exception(NotFoundError(SECRET))  # expected: no event
        span.record_exception(DatabaseError(SECRET), attributes={"retry": 2})
    (exported,) = span_exporter.get_finished_spans()
    (event,) = exported.events
    attributes = dict(event.attributes or {})
    assert attributes["exception.message"] == "database error"
    assert attributes["retry"] == 2
    assert SECRET not in repr(attributes)
    assert exported.status.status_code is StatusCode.UNSET  # a record is not a failure


def test_nested_spans_each_get_the_outcome(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with (
        pytest.raises(PoolExhaustedError),
        tracer.start_as_current_span("outer"),
        tracer.start_as_current_span("inner"),
    ):
        raise PoolExhaustedError("no connection in 30 s")
    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    for span in spans.values():
        assert span.status.description == "connection pool exhausted"
        assert dict(span.attributes or {}) == {"error.type": "pool_exhausted"}
        assert len(span.events) == 1


def test_record_exception_false_and_no_status_are_honoured(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with (
        pytest.raises(DatabaseError),
        tracer.start_as_current_span(
            "quiet", record_exception=False, set_status_on_exception=False
        ),
    ):
        raise DatabaseError("x")
    (span,) = span_exporter.get_finished_spans()
    assert (span.status.status_code, span.events, dict(span.attributes or {})) == (
        StatusCode.UNSET,
        (),
        {},
    )


def test_safe_stacktrace_keeps_frames_and_the_chain_but_no_messages() -> None:
    def query() -> None:
        raise ValueError(f"SELECT '{SECRET}'")

    try:
        try:
            query()
        except ValueError as cause:
            raise DatabaseError(f"query failed: {cause}") from cause
    except DatabaseError as exc:
        text = safe_stacktrace(exc)
    assert SECRET not in text
    assert "query failed" not in text
    assert ", in query\n" in text
    assert "The above exception was the direct cause of the following exception" in text
    assert text.index("ValueError\n") < text.index("otel_backpressure.errors.DatabaseError\n")
    assert "raise" not in text  # no source lines


def test_the_errors_switch_leaves_spans_alone(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    from otel_backpressure import Settings

    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider,
        settings=Settings(pool_enabled=False, rate_limit_enabled=False, errors_enabled=False),
    )
    try:
        span = _run(tracer_provider, span_exporter, "start_as_current_span", NotFoundError("x"))
    finally:
        instrumentor.uninstrument()
    assert (span.status.status_code, span.status.description) == (
        StatusCode.ERROR,
        "NotFoundError: x",
    )


class BrokenRegistry(ErrorRegistry):
    def lookup(self, exc: BaseException | type[BaseException]) -> ErrorOutcome | None:
        raise RuntimeError("registry bug")


def test_a_failing_mapping_falls_back_to_the_default_and_never_reaches_the_app(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, settings=_errors_only(), error_registry=BrokenRegistry()
    )
    try:
        span = _run(tracer_provider, span_exporter, "start_span", DatabaseError("x"))
    finally:
        instrumentor.uninstrument()
    assert (span.status.status_code, span.status.description) == (
        StatusCode.ERROR,
        "DatabaseError: x",
    )
    assert len(span.events) == 1
    assert "Error mapping failed" in caplog.text


def test_an_exception_whose_str_fails_is_still_mapped(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    class Unprintable(DatabaseError):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    span = tracer_provider.get_tracer("test").start_span("manual")
    try:
        raise Unprintable()
    except Unprintable as exc:
        span.record_exception(exc)
    span.end()
    (exported,) = span_exporter.get_finished_spans()
    assert (exported.events[0].attributes or {})["exception.message"] == "database error"


def test_an_unmapped_class_is_spelled_alike_on_every_python(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    """``re.error`` is ``re.PatternError`` from 3.13; another instrumentation writes this
    Python's spelling into error.type (as FastAPI's telemetry does), the SDK into its event."""

    def fail_in_span() -> None:
        with tracer_provider.get_tracer("test").start_as_current_span("s") as span:
            try:
                raise re.error("bad pattern")
            except re.error as exc:
                span.set_attribute("error.type", python_name(type(exc)))
                span.set_status(StatusCode.ERROR)
                span.record_exception(exc)
                raise

    with pytest.raises(re.error):
        fail_in_span()
    (finished,) = span_exporter.get_finished_spans()
    assert (finished.attributes or {})["error.type"] == "re.PatternError"
    types = [(event.attributes or {})["exception.type"] for event in finished.events]
    assert types == ["re.PatternError"] * len(types)
    assert len(types) == 2  # ours, then the one start_as_current_span records


def _status_in(provider: TracerProvider, exporter: InMemorySpanExporter) -> StatusCode:
    def fail() -> None:
        with provider.get_tracer("test").start_as_current_span("s"):
            raise NotFoundError("gone")

    with pytest.raises(NotFoundError):
        fail()
    (span,) = exporter.get_finished_spans()
    exporter.clear()
    return span.status.status_code


@pytest.mark.parametrize("scoped", [True, False])
def test_a_tracer_provider_scopes_the_mapping_to_its_spans(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, scoped: bool
) -> None:
    other_exporter = InMemorySpanExporter()
    other = TracerProvider()
    other.add_span_processor(SimpleSpanProcessor(other_exporter))
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider if scoped else None, settings=_errors_only()
    )
    try:
        mine = _status_in(tracer_provider, span_exporter)
        theirs = _status_in(other, other_exporter)
    finally:
        instrumentor.uninstrument()
        other.shutdown()
    assert mine is StatusCode.UNSET  # mapped: an expected outcome
    assert theirs is (StatusCode.ERROR if scoped else StatusCode.UNSET)


def test_a_tracer_provider_that_is_not_the_sdks_is_refused_by_name(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrumentor = BackpressureInstrumentor()
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(tracer_provider=trace.NoOpTracerProvider(), settings=_errors_only())
    try:
        assert "tracer_provider must be an OpenTelemetry SDK TracerProvider" in caplog.text
        assert _status_in(tracer_provider, span_exporter) is StatusCode.ERROR  # part is off
    finally:
        instrumentor.uninstrument()
