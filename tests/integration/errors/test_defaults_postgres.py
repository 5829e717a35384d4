"""The default third-party mappings, on exceptions provoked against the real PostgreSQL.

Each exception is raised inside a span with the instrumentor active; the
exported span shows exactly the outcome the defaults declare.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import asyncpg.exceptions
import limits
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from slowapi.errors import RateLimitExceeded
from slowapi.wrappers import Limit
from sqlalchemy.ext.asyncio import create_async_engine

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.errors import DEFAULT_MAPPINGS, ErrorOutcome, registry
from otel_backpressure.errors._registry import _resolve_loaded

pytestmark = pytest.mark.integration

Provoke = Callable[[str], Awaitable[None]]


def _engine_url(dsn: str) -> str:
    url = sa.make_url(dsn).set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


async def syntax_error(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.fetch("SELEC 1")
    finally:
        await connection.close()


async def unique_violation(dsn: str) -> None:
    table = f"errors_unique_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"CREATE TEMP TABLE {table} (id int UNIQUE)")
        await connection.execute(f"INSERT INTO {table} VALUES (1)")
        await connection.execute(f"INSERT INTO {table} VALUES (1)")
    finally:
        await connection.close()


async def statement_timeout(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET statement_timeout = 1")
        await connection.fetch("SELECT pg_sleep(0.5)")
    finally:
        await connection.close()


async def unknown_database(dsn: str) -> None:
    url = sa.make_url(dsn).set(database=f"errors_missing_{uuid.uuid4().hex[:8]}")
    await asyncpg.connect(url.render_as_string(hide_password=False))


async def unknown_role(dsn: str) -> None:
    url = sa.make_url(dsn).set(username=f"errors_nobody_{uuid.uuid4().hex[:8]}")
    await asyncpg.connect(url.render_as_string(hide_password=False))


async def closed_connection(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    await connection.close()
    await connection.fetch("SELECT 1")


async def terminated_backend(dsn: str) -> None:
    victim = await asyncpg.connect(dsn)
    try:
        # terminating itself: the server drops it in the middle of this very query
        await victim.fetch("SELECT pg_terminate_backend(pg_backend_pid())")
    finally:
        victim.terminate()


async def too_many_connections(dsn: str) -> None:
    # Provoking it for real would starve the shared server; the class is asyncpg's own.
    raise asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")


async def sqlalchemy_pool_timeout(dsn: str) -> None:
    engine = create_async_engine(_engine_url(dsn), pool_size=1, max_overflow=0, pool_timeout=0.01)
    try:
        async with engine.connect(), engine.connect():
            pass
    finally:
        await engine.dispose()


async def sqlalchemy_dbapi_error(dsn: str) -> None:
    engine = create_async_engine(_engine_url(dsn))
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text("SELEC 1"))
    finally:
        await engine.dispose()


async def sqlalchemy_integrity_error(dsn: str) -> None:
    table = f"errors_integrity_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(_engine_url(dsn))
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(f"CREATE TEMP TABLE {table} (id int UNIQUE)"))
            await connection.execute(sa.text(f"INSERT INTO {table} VALUES (1)"))
            await connection.execute(sa.text(f"INSERT INTO {table} VALUES (1)"))
    finally:
        await engine.dispose()


async def sqlalchemy_operational_error(dsn: str) -> None:
    # The asyncpg dialect raises no OperationalError of its own; the class is SQLAlchemy's.
    raise sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection unexpectedly")
    )


async def slowapi_rejection(dsn: str) -> None:
    limit = Limit(limits.parse("1/minute"), lambda: "k", None, False, None, None, None, 1, False)
    raise RateLimitExceeded(limit)


# provoker -> (the class it raises, the error.type the defaults give it)
CASES: dict[str, tuple[Provoke, type[BaseException], str]] = {
    "asyncpg syntax error": (
        syntax_error,
        asyncpg.exceptions.PostgresSyntaxError,
        "database_error",
    ),
    "asyncpg unique violation": (
        unique_violation,
        asyncpg.exceptions.UniqueViolationError,
        "conflict",
    ),
    "asyncpg statement timeout": (
        statement_timeout,
        asyncpg.exceptions.QueryCanceledError,
        "database_timeout",
    ),
    "asyncpg unknown database": (
        unknown_database,
        asyncpg.exceptions.InvalidCatalogNameError,
        "database_connection_error",
    ),
    "asyncpg unknown role": (
        unknown_role,
        asyncpg.exceptions.InvalidAuthorizationSpecificationError,
        "database_connection_error",
    ),
    "asyncpg closed connection": (
        closed_connection,
        asyncpg.exceptions.InterfaceError,
        "database_error",
    ),
    "asyncpg terminated backend": (
        terminated_backend,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        "database_connection_error",
    ),
    "asyncpg too many connections": (
        too_many_connections,
        asyncpg.exceptions.TooManyConnectionsError,
        "database_too_many_connections",
    ),
    "sqlalchemy pool timeout": (
        sqlalchemy_pool_timeout,
        sqlalchemy.exc.TimeoutError,
        "pool_exhausted",
    ),
    "sqlalchemy dbapi error": (sqlalchemy_dbapi_error, sqlalchemy.exc.DBAPIError, "database_error"),
    "sqlalchemy integrity error": (
        sqlalchemy_integrity_error,
        sqlalchemy.exc.IntegrityError,
        "integrity_error",
    ),
    "sqlalchemy operational error": (
        sqlalchemy_operational_error,
        sqlalchemy.exc.OperationalError,
        "database_unavailable",
    ),
    "slowapi rejection": (slowapi_rejection, RateLimitExceeded, "rate_limit_exceeded"),
}


def assert_span_shows(span: ReadableSpan, exc: BaseException, outcome: ErrorOutcome) -> None:
    assert span.status.status_code is outcome.status_code
    assert span.status.description == (outcome.description if outcome.is_error else None)
    assert dict(span.attributes or {}) == {"error.type": outcome.error_type}
    if not outcome.record_exception:
        assert span.events == ()
        return
    (event,) = span.events
    cls = type(exc)
    attributes = dict(event.attributes or {})
    assert attributes["exception.type"] == f"{cls.__module__}.{cls.__qualname__}"
    assert attributes["exception.message"] == outcome.description
    assert attributes["exception.escaped"] == "False"
    stacktrace = str(attributes["exception.stacktrace"])
    assert stacktrace.endswith(f"{cls.__module__}.{cls.__qualname__}\n")
    assert str(exc).splitlines()[0] not in stacktrace


@pytest.mark.parametrize("case", list(CASES))
async def test_default_mappings_on_real_exceptions(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    postgres_dsn: str,
    case: str,
) -> None:
    provoke, expected_class, error_type = CASES[case]
    tracer = tracer_provider.get_tracer("test")
    with pytest.raises(expected_class) as caught, tracer.start_as_current_span("db"):
        await provoke(postgres_dsn)
    outcome = registry.lookup(caught.value)
    assert outcome is not None
    assert outcome.error_type == error_type
    (span,) = span_exporter.get_finished_spans()
    assert_span_shows(span, caught.value, outcome)


def test_every_default_mapping_decides_at_least_one_case() -> None:
    raised = [cls for _, cls, _ in CASES.values()]
    undecided = [
        path
        for path, outcome in DEFAULT_MAPPINGS
        if not any(
            _resolve_loaded(path) in cls.__mro__ and registry.lookup(cls) is outcome
            for cls in raised
        )
    ]
    assert undecided == []


def test_a_refused_connection_is_left_unmapped() -> None:
    # An OSError is not necessarily the database's: mapping it is the application's call.
    assert registry.lookup(ConnectionRefusedError()) is None
