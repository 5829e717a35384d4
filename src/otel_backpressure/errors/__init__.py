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

from typing import TYPE_CHECKING

from otel_backpressure._shared import lazy_exports

if TYPE_CHECKING:
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

# Imported when first used (PEP 562): the errors part of the instrumentor needs
# the registry and the span patches, not the middleware or ``record_error``;
# see otel_backpressure/__init__.py.
_LAZY: dict[str, str] = {
    "DEFAULT_MAPPINGS": "otel_backpressure.errors._defaults",
    "AuthenticationError": "otel_backpressure.errors._hierarchy",
    "BackpressureError": "otel_backpressure.errors._hierarchy",
    "ConfigurationError": "otel_backpressure.errors._hierarchy",
    "ConflictError": "otel_backpressure.errors._hierarchy",
    "DatabaseConnectionError": "otel_backpressure.errors._hierarchy",
    "DatabaseError": "otel_backpressure.errors._hierarchy",
    "ErrorMappingMiddleware": "otel_backpressure.errors.middleware",
    "ErrorOutcome": "otel_backpressure.errors._outcome",
    "ErrorRegistry": "otel_backpressure.errors._registry",
    "GameEngineError": "otel_backpressure.errors._hierarchy",
    "NotFoundError": "otel_backpressure.errors._hierarchy",
    "OperationTimeoutError": "otel_backpressure.errors._hierarchy",
    "PermissionDeniedError": "otel_backpressure.errors._hierarchy",
    "PoolExhaustedError": "otel_backpressure.errors._hierarchy",
    "RateLimitExceededError": "otel_backpressure.errors._hierarchy",
    "SessionExpiredError": "otel_backpressure.errors._hierarchy",
    "UpstreamError": "otel_backpressure.errors._hierarchy",
    "ValidationError": "otel_backpressure.errors._hierarchy",
    "mapped_errors": "otel_backpressure.errors._record",
    "parse_mappings": "otel_backpressure.errors._mappings",
    "problem_details": "otel_backpressure.errors.middleware",
    "problem_response": "otel_backpressure.errors.middleware",
    "record_error": "otel_backpressure.errors._record",
    "registry": "otel_backpressure.errors._defaults",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
