"""The default third-party mappings: what each decides, on exceptions that need no server.

The exceptions a real PostgreSQL must provoke are in
tests/integration/errors/test_defaults_postgres.py; these are built in process
(asyncpg's "too many clients" would starve the shared server, the asyncpg
dialect raises no OperationalError of its own, slowapi rejects without any
service) and raised inside a span with the instrumentor active.
"""

from __future__ import annotations

import asyncpg.exceptions
import httpx
import limits
import psycopg_pool
import pytest
import sqlalchemy.exc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from slowapi.errors import RateLimitExceeded
from slowapi.wrappers import Limit

from errors_fixtures import assert_span_shows
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.errors import DEFAULT_MAPPINGS, registry
from otel_backpressure.errors._registry import _resolve_loaded

# every class the defaults are meant for -> the error.type they give it
DECIDED: dict[type[BaseException], str] = {
    asyncpg.exceptions.PostgresSyntaxError: "database_error",
    asyncpg.exceptions.UniqueViolationError: "conflict",
    asyncpg.exceptions.QueryCanceledError: "database_timeout",
    asyncpg.exceptions.InvalidCatalogNameError: "database_connection_error",
    asyncpg.exceptions.InvalidAuthorizationSpecificationError: "database_connection_error",
    asyncpg.exceptions.InterfaceError: "database_error",
    asyncpg.exceptions.ConnectionDoesNotExistError: "database_connection_error",
    asyncpg.exceptions.TooManyConnectionsError: "database_too_many_connections",
    sqlalchemy.exc.TimeoutError: "pool_exhausted",
    sqlalchemy.exc.DBAPIError: "database_error",
    sqlalchemy.exc.IntegrityError: "integrity_error",
    sqlalchemy.exc.OperationalError: "database_unavailable",
    RateLimitExceeded: "rate_limit_exceeded",
    psycopg_pool.PoolTimeout: "pool_exhausted",
    httpx.PoolTimeout: "pool_exhausted",
}


def _slowapi_rejection() -> RateLimitExceeded:
    limit = Limit(limits.parse("1/minute"), lambda: "k", None, False, None, None, None, 1, False)
    return RateLimitExceeded(limit)


# raised in process: the exception, as the library itself builds it
IN_PROCESS = {
    "asyncpg too many connections": lambda: asyncpg.exceptions.TooManyConnectionsError(
        "sorry, too many clients already"
    ),
    "sqlalchemy operational error": lambda: sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception("server closed the connection unexpectedly")
    ),
    "slowapi rejection": _slowapi_rejection,
}


@pytest.mark.parametrize("cls", list(DECIDED), ids=lambda cls: cls.__qualname__)
def test_each_class_gets_its_documented_error_type(cls: type[BaseException]) -> None:
    outcome = registry.lookup(cls)
    assert outcome is not None
    assert outcome.error_type == DECIDED[cls]


def test_every_default_mapping_decides_at_least_one_class() -> None:
    undecided = [
        path
        for path, outcome in DEFAULT_MAPPINGS
        if not any(
            _resolve_loaded(str(path)) in cls.__mro__ and registry.lookup(cls) is outcome
            for cls in DECIDED
        )
    ]
    assert undecided == []


def test_a_refused_connection_is_left_unmapped() -> None:
    # An OSError is not necessarily the database's: mapping it is the application's call.
    assert registry.lookup(ConnectionRefusedError()) is None


@pytest.mark.parametrize("case", list(IN_PROCESS))
def test_default_mappings_on_exceptions_built_in_process(
    instrumented: BackpressureInstrumentor,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    case: str,
) -> None:
    exc = IN_PROCESS[case]()

    def fail() -> None:
        with tracer_provider.get_tracer("test").start_as_current_span("db"):
            raise exc

    with pytest.raises(type(exc)):
        fail()
    outcome = registry.lookup(exc)
    assert outcome is not None
    assert outcome.error_type == DECIDED[type(exc)]
    (span,) = span_exporter.get_finished_spans()
    assert_span_shows(span, exc, outcome)
