"""Exceptions and what they mean to traces: a failure, or an expected outcome.

Every class of the hierarchy declares an ``ErrorOutcome`` (span status,
``error.type``, HTTP status, whether to record the exception event, a safe
status description); the ``registry`` maps any other exception class too, by
class or dotted path. With ``BackpressureInstrumentor`` active, every span an
exception escapes gets the mapped outcome; ``ErrorMappingMiddleware`` turns
mapped exceptions into problem-details responses; ``record_error`` and
``mapped_errors`` serve code outside ASGI. Nothing here imports the other parts
of the package, so they can raise these errors freely.

Example::

    from opentelemetry.trace import StatusCode
    from otel_backpressure.errors import ErrorOutcome, NotFoundError, registry

    registry.register("myapp.errors.Gone", ErrorOutcome("gone", StatusCode.UNSET, 410))
    raise NotFoundError(f"no game {game_id}")   # span: Unset, error.type=not_found
"""

from __future__ import annotations

from otel_backpressure.errors._defaults import DEFAULT_MAPPINGS, registry
from otel_backpressure.errors._hierarchy import (
    AuthenticationError,
    BackpressureError,
    ConfigurationError,
    ConflictError,
    DatabaseConnectionError,
    DatabaseError,
    GameEngineError,
    NotFoundError,
    OperationTimeoutError,
    PermissionDeniedError,
    PoolExhaustedError,
    RateLimitExceededError,
    SessionExpiredError,
    UpstreamError,
    ValidationError,
)
from otel_backpressure.errors._mappings import parse_mappings
from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._record import mapped_errors, record_error
from otel_backpressure.errors._registry import ErrorRegistry
from otel_backpressure.errors.middleware import (
    ErrorMappingMiddleware,
    problem_details,
    problem_response,
)

__all__ = [
    "DEFAULT_MAPPINGS",
    "AuthenticationError",
    "BackpressureError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseConnectionError",
    "DatabaseError",
    "ErrorMappingMiddleware",
    "ErrorOutcome",
    "ErrorRegistry",
    "GameEngineError",
    "NotFoundError",
    "OperationTimeoutError",
    "PermissionDeniedError",
    "PoolExhaustedError",
    "RateLimitExceededError",
    "SessionExpiredError",
    "UpstreamError",
    "ValidationError",
    "mapped_errors",
    "parse_mappings",
    "problem_details",
    "problem_response",
    "record_error",
    "registry",
]
