"""No password, DSN, SQL or parameter reaches an exported span or metric.

Real failures against PostgreSQL whose messages carry secrets: a failing
query with a secret parameter (asyncpg and SQLAlchemy, whose message repeats
the SQL and the parameters), and connection attempts with a password-bearing
DSN that the application wraps into its own error, through spans and through
a real ASGI app.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.errors import DatabaseConnectionError, ErrorMappingMiddleware
from otel_backpressure.testing import MetricsCapture

pytestmark = pytest.mark.integration

PASSWORD = f"pw-{uuid.uuid4().hex}"
PARAMETER = f"param-{uuid.uuid4().hex}"
SQL_MARKER = "leak_probe_column"
SECRETS = (PASSWORD, PARAMETER, SQL_MARKER)


def _with_password(dsn: str, *, port: int | None = None, database: str | None = None) -> str:
    url = sa.engine.make_url(dsn).set(password=PASSWORD)
    if port is not None:
        url = url.set(port=port)
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def asyncpg_failing_query(dsn: str) -> None:
    # trust authentication accepts the password and ignores it
    connection = await asyncpg.connect(_with_password(dsn))
    try:
        await connection.fetch(f"SELECT CAST($1::text AS integer) AS {SQL_MARKER}", PARAMETER)
    finally:
        await connection.close()


async def sqlalchemy_failing_query(dsn: str) -> None:
    url = sa.engine.make_url(_with_password(dsn)).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                sa.text(f"SELECT CAST(CAST(:value AS text) AS integer) AS {SQL_MARKER}"),
                {"value": PARAMETER},
            )
    finally:
        await engine.dispose()


async def connect_wrapped(dsn: str) -> None:
    """The common application pattern: wrap the driver error, naming the DSN."""
    try:
        await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseConnectionError(f"cannot connect to {dsn}: {exc}") from exc


async def wrong_port(dsn: str) -> None:
    await connect_wrapped(_with_password(dsn, port=1))


async def wrong_database(dsn: str) -> None:
    await connect_wrapped(_with_password(dsn, database=f"{SQL_MARKER}_{PARAMETER}"))


FAILURES = {
    "asyncpg query": asyncpg_failing_query,
    "sqlalchemy query": sqlalchemy_failing_query,
    "wrong port": wrong_port,
    "wrong database": wrong_database,
}


def _assert_nothing_leaked(exporter: InMemorySpanExporter, metrics: MetricsCapture) -> None:
    spans = exporter.get_finished_spans()
    assert spans, "the failures must have produced spans"
    for span in spans:
        exported = span.to_json()  # attributes, status, events: everything an exporter sends
        for secret in SECRETS:
            assert secret not in exported, (secret, span.name)
    dumped = json.dumps([metric.to_json() for metric in metrics.collect().values()])
    for secret in SECRETS:
        assert secret not in dumped


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_failures_inside_spans_leak_nothing(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metrics: MetricsCapture,
    postgres_dsn: str,
    failure: str,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    with (
        pytest.raises(Exception) as caught,  # each failure raises its own kind
        tracer.start_as_current_span("outer"),
        tracer.start_as_current_span("inner"),
    ):
        await FAILURES[failure](postgres_dsn)
    # the secret really was in what OpenTelemetry would have exported by default
    message = str(caught.value)
    assert PARAMETER in message or PASSWORD in message
    _assert_nothing_leaked(span_exporter, metrics)


async def test_failures_in_an_asgi_app_leak_nothing(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metrics: MetricsCapture,
    postgres_dsn: str,
) -> None:
    async def fail(request: Request) -> PlainTextResponse:
        with tracer_provider.get_tracer("test").start_as_current_span("query"):
            await FAILURES[request.path_params["failure"]](postgres_dsn)
        return PlainTextResponse("unreachable")

    app = OpenTelemetryMiddleware(
        Starlette(
            routes=[Route("/fail/{failure}", fail)],
            middleware=[Middleware(ErrorMappingMiddleware)],
        ),
        tracer_provider=tracer_provider,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for failure in FAILURES:
            response = await client.get(f"/fail/{failure}")
            assert response.status_code in (500, 503)
            assert response.headers["content-type"] == "application/problem+json"
            for secret in SECRETS:
                assert secret not in response.text
    _assert_nothing_leaked(span_exporter, metrics)
