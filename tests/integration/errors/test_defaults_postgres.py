"""The default third-party mappings, on exceptions provoked against the real PostgreSQL.

Each exception is raised inside a span with the instrumentor active; the
exported span shows exactly the outcome the defaults declare. The classes that
need no server to raise, and the check that every default mapping decides
some class, are unit tests (tests/unit/errors/test_defaults.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import asyncpg.exceptions
import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import create_async_engine

from errors_fixtures import assert_span_shows
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.errors import registry

pytestmark = pytest.mark.integration

Provoke = Callable[[str], Awaitable[None]]


def _engine_url(dsn: str) -> str:
    url = sa.engine.make_url(dsn).set(drivername="postgresql+asyncpg")
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
    url = sa.engine.make_url(dsn).set(database=f"errors_missing_{uuid.uuid4().hex[:8]}")
    await asyncpg.connect(url.render_as_string(hide_password=False))


async def unknown_role(dsn: str) -> None:
    url = sa.engine.make_url(dsn).set(username=f"errors_nobody_{uuid.uuid4().hex[:8]}")
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
}


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
