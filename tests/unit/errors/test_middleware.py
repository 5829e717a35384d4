"""ErrorMappingMiddleware in real Starlette and FastAPI apps under the contrib instrumentations.

Routes raise each kind of exception; the response (status, problem-details
body), the server span (status per the HTTP rule, ``error.type``, events) and
``backpressure.exceptions`` are checked exactly. The span patches are active
too, as they are under ``opentelemetry-instrument``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from http import HTTPStatus
from typing import Any

import asyncpg.exceptions
import httpx
import pytest
import sqlalchemy.exc
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from packaging.version import Version
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import contract
from errors_fixtures import ERRORS_ONLY
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.errors import (
    AuthenticationError,
    BackpressureError,
    ConfigurationError,
    ConflictError,
    DatabaseConnectionError,
    DatabaseError,
    ErrorMappingMiddleware,
    ErrorOutcome,
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
from otel_backpressure.testing import MetricsCapture

SECRET = "hunter2"
COUNTER = "backpressure.exceptions"
OUTCOME = "backpressure.exception.outcome"

# route kind -> a factory of the exception it raises (fresh per request)
KINDS: dict[str, Callable[[], Exception]] = {
    cls.__name__: (lambda cls=cls: cls(f"failed with password {SECRET}"))
    for cls in (
        BackpressureError,
        DatabaseError,
        PoolExhaustedError,
        DatabaseConnectionError,
        ValidationError,
        NotFoundError,
        AuthenticationError,
        PermissionDeniedError,
        ConflictError,
        SessionExpiredError,
        ConfigurationError,
        UpstreamError,
        OperationTimeoutError,
    )
}
KINDS["RateLimitExceededError"] = lambda: RateLimitExceededError(policy="api", retry_after=2.5)
KINDS["UniqueViolationError"] = lambda: asyncpg.exceptions.UniqueViolationError(
    f"duplicate key value: (password)=({SECRET})"
)
KINDS["SQLAlchemyPoolTimeout"] = lambda: sqlalchemy.exc.TimeoutError(
    f"QueuePool limit reached for postgresql://app:{SECRET}@db/prod"
)
UNMAPPED = "unmapped"


async def raise_kind(request: Request) -> PlainTextResponse:
    kind = request.path_params["kind"]
    if kind == UNMAPPED:
        raise ValueError(f"unmapped with {SECRET}")
    raise KINDS[kind]()


async def stream_then_fail(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        raise NotFoundError("too late to answer")

    return StreamingResponse(body())


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("fine")


ROUTES = [
    Route("/ok", ok),
    Route("/stream", stream_then_fail),
    Route("/raise/{kind}", raise_kind),
]


def _starlette(tracer_provider: TracerProvider, *, mapping: bool) -> Any:
    middleware = [Middleware(ErrorMappingMiddleware)] if mapping else []
    return OpenTelemetryMiddleware(
        Starlette(routes=ROUTES, middleware=middleware), tracer_provider=tracer_provider
    )


def _fastapi(tracer_provider: TracerProvider, *, mapping: bool) -> FastAPI:
    app = FastAPI()
    for route in ROUTES:
        app.add_route(route.path, route.endpoint)
    if mapping:
        app.add_middleware(ErrorMappingMiddleware)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    return app


def _close(app: Any) -> None:
    if isinstance(app, FastAPI):
        FastAPIInstrumentor.uninstrument_app(app)


BUILDERS: dict[str, Callable[..., Any]] = {"starlette": _starlette, "fastapi": _fastapi}


@pytest.fixture(params=list(BUILDERS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(
    framework: str, instrumented: BackpressureInstrumentor, tracer_provider: TracerProvider
) -> Iterator[Any]:
    """The app with this package active: span patches and ErrorMappingMiddleware."""
    built = BUILDERS[framework](tracer_provider, mapping=True)
    yield built
    _close(built)


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path)


# httpx before 0.25 hands the client an exception the app raised after its
# response started, raise_app_exceptions=False or not
HTTPX_RERAISES_LATE = Version(httpx.__version__) < Version("0.25")


def _server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    return span


def _count(metrics: MetricsCapture, error_type: str, outcome: str) -> float | None:
    return metrics.value(COUNTER, {"error.type": error_type, OUTCOME: outcome})


@pytest.mark.parametrize("kind", list(KINDS))
async def test_mapped_exceptions_become_problem_details(
    app: Any,
    span_exporter: InMemorySpanExporter,
    metrics: MetricsCapture,
    kind: str,
) -> None:
    outcome = registry.lookup(KINDS[kind]())
    assert isinstance(outcome, ErrorOutcome)

    response = await _get(app, f"/raise/{kind}")

    assert response.status_code == outcome.http_status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": HTTPStatus(outcome.http_status).phrase,
        "status": outcome.http_status,
        "detail": outcome.description,
        "instance": f"/raise/{kind}",
    }
    if kind == "RateLimitExceededError":
        assert response.headers["retry-after"] == "3"
    else:
        assert "retry-after" not in response.headers

    span = _server_span(span_exporter)
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == outcome.error_type
    assert attributes["http.status_code"] == outcome.http_status
    if outcome.http_status >= 500:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == outcome.description
    else:
        assert span.status.status_code is StatusCode.UNSET
    events = [event for event in span.events if event.name == "exception"]
    assert len(events) == (1 if outcome.record_exception else 0)
    for event in events:
        assert (event.attributes or {})["exception.escaped"] == "False"
    assert _count(metrics, outcome.error_type, "handled") == 1
    assert _count(metrics, outcome.error_type, "unhandled") is None
    assert contract.violations(metrics.collect()[COUNTER]) == []
    _assert_secret_free(span_exporter, metrics)


def _assert_secret_free(exporter: InMemorySpanExporter, metrics: MetricsCapture) -> None:
    for span in exporter.get_finished_spans():
        assert SECRET not in span.to_json()
    assert SECRET not in json.dumps([metric.to_json() for metric in metrics.collect().values()])


def _observable(span: ReadableSpan) -> tuple[Any, ...]:
    """What a backend shows of a server span (stack traces differ by our frame)."""
    return (
        span.status.status_code,
        span.status.description,
        {key: value for key, value in (span.attributes or {}).items() if key != "net.peer.port"},
        [
            (event.name, {k: v for k, v in (event.attributes or {}).items() if "stack" not in k})
            for event in span.events
        ],
    )


async def test_unmapped_exceptions_propagate_unchanged_and_count_as_unhandled(
    framework: str,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metrics: MetricsCapture,
) -> None:
    plain_app = BUILDERS[framework](tracer_provider, mapping=False)
    try:
        plain = await _get(plain_app, f"/raise/{UNMAPPED}")
    finally:
        _close(plain_app)
    baseline = _observable(_server_span(span_exporter))
    span_exporter.clear()

    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, meter_provider=metrics.meter_provider, settings=ERRORS_ONLY
    )
    mapped_app = BUILDERS[framework](tracer_provider, mapping=True)
    try:
        response = await _get(mapped_app, f"/raise/{UNMAPPED}")
    finally:
        _close(mapped_app)
        instrumentor.uninstrument()

    assert (response.status_code, response.text) == (plain.status_code, plain.text)
    assert response.status_code == 500
    assert _observable(_server_span(span_exporter)) == baseline
    assert baseline[0] is StatusCode.ERROR
    assert _count(metrics, "ValueError", "unhandled") == 1
    assert _count(metrics, "ValueError", "handled") is None


async def test_a_mapped_exception_after_the_response_started_propagates(
    app: Any, span_exporter: InMemorySpanExporter, metrics: MetricsCapture
) -> None:
    if HTTPX_RERAISES_LATE:
        with pytest.raises(NotFoundError, match="too late to answer"):
            await _get(app, "/stream")
    else:
        response = await _get(app, "/stream")
        assert response.status_code == 200  # the status sent before it failed
    assert _count(metrics, "not_found", "unhandled") == 1
    assert _count(metrics, "not_found", "handled") is None


async def test_successful_requests_are_untouched(
    app: Any, span_exporter: InMemorySpanExporter, metrics: MetricsCapture
) -> None:
    response = await _get(app, "/ok")
    assert (response.status_code, response.text) == (200, "fine")
    span = _server_span(span_exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in (span.attributes or {})
    assert COUNTER not in metrics.collect()


async def test_counts_go_to_an_explicit_meter_provider(
    instrumented: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    own = MetricsCapture()
    try:
        app = Starlette(
            routes=ROUTES,
            middleware=[Middleware(ErrorMappingMiddleware, meter_provider=own.meter_provider)],
        )
        assert (await _get(app, "/raise/NotFoundError")).status_code == 404
        assert _count(own, "not_found", "handled") == 1
        assert COUNTER not in metrics.collect()
    finally:
        own.shutdown()


async def test_other_scopes_pass_straight_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def never() -> Any:
        raise AssertionError("not called")

    await ErrorMappingMiddleware(inner)({"type": "lifespan"}, never, never)
    assert seen == ["lifespan"]


def test_bad_arguments_are_rejected_naming_them() -> None:
    with pytest.raises(TypeError, match="app"):
        ErrorMappingMiddleware("not an app")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry"):
        ErrorMappingMiddleware(ok, registry={})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["DatabaseError", "NotFoundError", "UniqueViolationError"])
async def test_without_the_middleware_the_server_span_still_shows_the_mapping(
    framework: str,
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    kind: str,
) -> None:
    """The contrib instrumentations answer 500 and mark the span; the patches map that."""
    outcome = registry.lookup(KINDS[kind]())
    assert outcome is not None
    app = BUILDERS[framework](tracer_provider, mapping=False)
    try:
        response = await _get(app, f"/raise/{kind}")
    finally:
        _close(app)
    assert response.status_code == 500
    span = _server_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR  # HTTP rule: a 500 is an Error
    assert span.status.description == (outcome.description if outcome.is_error else None)
    assert dict(span.attributes or {})["error.type"] == outcome.error_type
    exception_events = [event for event in span.events if event.name == "exception"]
    # FastAPI's instrumentation records the exception before the span ends; plain ASGI cannot
    expected_events = int(outcome.record_exception and framework == "fastapi")
    assert len(exception_events) == expected_events
    for event in span_exporter.get_finished_spans():
        assert SECRET not in event.to_json()
