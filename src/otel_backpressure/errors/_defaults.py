"""Outcomes for third-party exceptions, by dotted path (nothing here imports the libraries).

The choices, and why:

- SQLAlchemy's pool timeout is pool exhaustion: overload, ``503``, Error.
- A DBAPI error is a database failure (``500``, Error); an ``OperationalError``
  is the database being unavailable or broken (``503``); an ``IntegrityError``
  is a rejected write (``409``, still Error on internal spans, because a
  foreign-key or not-null violation is usually a bug).
- asyncpg: any server error is a database failure; connection-class errors
  (SQLSTATE 08, 28 and an unknown database) are connection failures; running
  out of server connections is its own ``error.type``; a unique violation is a
  plain conflict (``409``, Unset: a duplicate sign-up is not an incident); a
  cancelled statement (``statement_timeout``) is a timeout.
- slowapi's rejection is a rate-limit rejection, like ``RateLimitExceededError``.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.trace import StatusCode

from otel_backpressure.errors._hierarchy import (
    DatabaseConnectionError,
    DatabaseError,
    PoolExhaustedError,
    RateLimitExceededError,
)
from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._registry import ErrorRegistry, Target

__all__ = ["DEFAULT_MAPPINGS", "registry"]

_ERROR = StatusCode.ERROR
_UNSET = StatusCode.UNSET

_database = DatabaseError.outcome
_connection = DatabaseConnectionError.outcome

DEFAULT_MAPPINGS: Final[tuple[tuple[Target, ErrorOutcome], ...]] = (
    # SQLAlchemy
    ("sqlalchemy.exc.TimeoutError", PoolExhaustedError.outcome),
    ("sqlalchemy.exc.DBAPIError", _database),
    (
        "sqlalchemy.exc.OperationalError",
        ErrorOutcome("database_unavailable", _ERROR, 503, True, "database unavailable"),
    ),
    (
        "sqlalchemy.exc.IntegrityError",
        ErrorOutcome("integrity_error", _ERROR, 409, True, "integrity constraint violated"),
    ),
    # asyncpg
    ("asyncpg.exceptions.PostgresError", _database),
    ("asyncpg.exceptions.InterfaceError", _database),
    ("asyncpg.exceptions.PostgresConnectionError", _connection),
    ("asyncpg.exceptions.InvalidAuthorizationSpecificationError", _connection),
    ("asyncpg.exceptions.InvalidCatalogNameError", _connection),
    (
        "asyncpg.exceptions.TooManyConnectionsError",
        ErrorOutcome("database_too_many_connections", _ERROR, 503, True, "too many connections"),
    ),
    (
        "asyncpg.exceptions.UniqueViolationError",
        ErrorOutcome("conflict", _UNSET, 409, False, "conflict"),
    ),
    (
        "asyncpg.exceptions.QueryCanceledError",
        ErrorOutcome("database_timeout", _ERROR, 504, True, "database statement timed out"),
    ),
    # the other pools' own "no connection came free in time"
    ("psycopg_pool.PoolTimeout", PoolExhaustedError.outcome),
    ("httpx.PoolTimeout", PoolExhaustedError.outcome),
    # the rate limiters' rejections
    ("slowapi.errors.RateLimitExceeded", RateLimitExceededError.outcome),
)


registry: Final = ErrorRegistry(DEFAULT_MAPPINGS)
"""The registry every integration consults unless given another."""
