"""Exceptions and what they mean to traces: Error, or an expected outcome.

Every class of the hierarchy declares an ``ErrorOutcome`` (span status,
``error.type``, HTTP status, whether to record the exception event, a safe
status description). Nothing here imports the other parts of the package, so
they can raise these errors freely.

Example::

    from otel_backpressure.errors import NotFoundError, RateLimitExceededError

    raise RateLimitExceededError(policy="api", retry_after=2.5)
"""

from __future__ import annotations

from otel_backpressure.errors._hierarchy import (
    AuthenticationError,
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
from otel_backpressure.errors._outcome import ErrorOutcome

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseConnectionError",
    "DatabaseError",
    "ErrorOutcome",
    "GameEngineError",
    "NotFoundError",
    "OperationTimeoutError",
    "PermissionDeniedError",
    "PoolExhaustedError",
    "RateLimitExceededError",
    "SessionExpiredError",
    "UpstreamError",
    "ValidationError",
]
