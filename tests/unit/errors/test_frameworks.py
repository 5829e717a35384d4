"""Every span an exception escapes gets the mapped outcome, whoever created it.

Three real stacks: FastAPI's own telemetry (``fastapi.telemetry``, on because
a tracer provider is given), FastAPI under the contrib FastAPI
instrumentation, and Starlette under the contrib ASGI middleware; each with
and without ``ErrorMappingMiddleware``. The endpoint raises inside the app's
own span. The app's span, FastAPI's operation spans (``fastapi.endpoint``) and
the server span are checked, and ``backpressure.exceptions`` counts each
exception once: ``handled`` when the middleware answered it, ``unhandled``
when it escaped the server span (with or without the middleware).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.errors import (
    ErrorMappingMiddleware,
    ErrorOutcome,
    NotFoundError,
    PoolExhaustedError,
    registry,
)
from otel_backpressure.testing import MetricsCapture

SECRET = "hunter2-frameworks"
COUNTER = "backpressure.exceptions"
OUTCOME = "backpressure.exception.outcome"

# route kind -> the exception it raises
KINDS: dict[str, Callable[[], Exception]] = {
    "expected": lambda: NotFoundError(f"no player, password {SECRET}"),
    "failure": lambda: PoolExhaustedError(f"pool of postgresql://app:{SECRET}@db is dry"),
    "unmapped": lambda: LookupError("plain"),
}


def _raise(tracer_provider: TracerProvider, kind: str) -> None:
    with tracer_provider.get_tracer("app").start_as_current_span("app.work"):
        raise KINDS[kind]()


def _fastapi(tracer_provider: TracerProvider, *, mapping: bool, native: bool) -> FastAPI:
    app = FastAPI(telemetry={"tracer_provider": tracer_provider} if native else {"tracing": False})

    @app.get("/raise/{kind}")
    async def raise_kind(kind: str) -> None:
        _raise(tracer_provider, kind)

    if mapping:
        app.add_middleware(ErrorMappingMiddleware)
    if not native:
        FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    return app


def _starlette(tracer_provider: TracerProvider, *, mapping: bool) -> Any:
    async def raise_kind(request: Request) -> PlainTextResponse:
        _raise(tracer_provider, request.path_params["kind"])
        return PlainTextResponse("unreachable")

    middleware = [Middleware(ErrorMappingMiddleware)] if mapping else []
    app = Starlette(routes=[Route("/raise/{kind}", raise_kind)], middleware=middleware)
    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider)


STACKS: dict[str, Callable[..., Any]] = {
    "fastapi-contrib": lambda tp, mapping: _fastapi(tp, mapping=mapping, native=False),
    "starlette-asgi": lambda tp, mapping: _starlette(tp, mapping=mapping),
}
# FastAPI's own telemetry exists only in its newer releases (the compat
# sessions' lowest FastAPI has none): a stack that is not there is not a case.
if importlib.util.find_spec("fastapi.telemetry") is not None:
    STACKS = {
        "fastapi-telemetry": lambda tp, mapping: _fastapi(tp, mapping=mapping, native=True),
        **STACKS,
    }


@pytest.fixture
def stack_app(
    request: pytest.FixtureRequest,
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
) -> Iterator[Any]:
    stack, mapping = request.param
    app = STACKS[stack](tracer_provider, mapping)
    yield app
    if stack == "fastapi-contrib":
        FastAPIInstrumentor.uninstrument_app(app)


async def _get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path)


def _one(exporter: InMemorySpanExporter, predicate: Callable[[ReadableSpan], bool]) -> ReadableSpan:
    (span,) = [span for span in exporter.get_finished_spans() if predicate(span)]
    return span


def _assert_shows(span: ReadableSpan, outcome: ErrorOutcome) -> None:
    """A span the exception escaped, with no HTTP answer of its own: exactly the outcome."""
    assert span.status.status_code is outcome.status_code, span.name
    assert span.status.description == (outcome.description if outcome.is_error else None)
    assert (span.attributes or {})["error.type"] == outcome.error_type, span.name


CASES = [
    pytest.param((stack, mapping), kind, id=f"{stack}-{'mw' if mapping else 'bare'}-{kind}")
    for stack in STACKS
    for mapping in (True, False)
    for kind in ("expected", "failure")
]


@pytest.mark.parametrize(("stack_app", "kind"), CASES, indirect=["stack_app"])
async def test_every_span_the_exception_escapes_shows_the_outcome(
    stack_app: Any,
    request: pytest.FixtureRequest,
    span_exporter: InMemorySpanExporter,
    metrics: MetricsCapture,
    kind: str,
) -> None:
    stack, mapping = request.node.callspec.params["stack_app"]
    outcome = registry.lookup(KINDS[kind]())
    assert outcome is not None

    response = await _get(stack_app, f"/raise/{kind}")

    _assert_shows(_one(span_exporter, lambda span: span.name == "app.work"), outcome)
    if stack == "fastapi-telemetry":  # FastAPI's operation span set ERROR for any exception
        _assert_shows(_one(span_exporter, lambda span: span.name == "fastapi.endpoint"), outcome)
    server = _one(span_exporter, lambda span: span.kind is SpanKind.SERVER)
    assert (server.attributes or {})["error.type"] == outcome.error_type
    answered = outcome.http_status if mapping else 500
    assert response.status_code == answered
    expected_status = StatusCode.ERROR if answered >= 500 else StatusCode.UNSET
    assert server.status.status_code is expected_status  # the HTTP rule
    if outcome.is_error:
        assert server.status.description == outcome.description
    for span in span_exporter.get_finished_spans():
        assert SECRET not in span.to_json()
        error_type = (span.attributes or {}).get("error.type")
        assert error_type in (None, outcome.error_type), span.name  # no span disagrees

    counts = {
        handled: metrics.value(COUNTER, {"error.type": outcome.error_type, OUTCOME: handled})
        for handled in ("handled", "unhandled")
    }
    assert counts == (
        {"handled": 1, "unhandled": None} if mapping else {"handled": None, "unhandled": 1}
    )
    assert SECRET not in json.dumps([metric.to_json() for metric in metrics.collect().values()])


@pytest.mark.parametrize(
    "stack_app",
    [
        pytest.param((stack, mapping), id=f"{stack}-{mapping}")
        for stack in STACKS
        for mapping in (True, False)
    ],
    indirect=True,
)
async def test_an_unmapped_exception_escaping_the_server_span_is_counted_once(
    stack_app: Any, metrics: MetricsCapture
) -> None:
    response = await _get(stack_app, "/raise/unmapped")
    assert response.status_code == 500
    assert metrics.value(COUNTER, {"error.type": "LookupError", OUTCOME: "unhandled"}) == 1
    assert metrics.value(COUNTER, {"error.type": "LookupError", OUTCOME: "handled"}) is None


def _server_span_marked_error_while_handling(
    tracer_provider: TracerProvider, exc: BaseException
) -> None:
    """What FastAPI's telemetry does when an exception escapes: Error, no description."""
    span = tracer_provider.get_tracer("server").start_span("GET /x", kind=SpanKind.SERVER)
    try:
        raise exc
    except BaseException:
        span.set_status(StatusCode.ERROR)
    finally:
        span.end()


@pytest.mark.parametrize(
    ("exc", "counted"),
    [
        (LookupError("bug"), "LookupError"),
        (NotFoundError("gone"), "not_found"),
        (asyncio.CancelledError(), None),  # a client went away: not the application's failure
        (KeyboardInterrupt(), None),
    ],
    ids=["unmapped", "mapped", "cancelled", "interrupted"],
)
def test_what_escapes_a_server_span_is_counted_unless_it_is_cancellation_or_exit(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    metrics: MetricsCapture,
    exc: BaseException,
    counted: str | None,
) -> None:
    _server_span_marked_error_while_handling(tracer_provider, exc)
    _server_span_marked_error_while_handling(tracer_provider, exc)  # the same object: once
    collected = metrics.collect().get(COUNTER)
    if counted is None:
        assert collected is None
    else:
        assert metrics.value(COUNTER, {"error.type": counted, OUTCOME: "unhandled"}) == 1
