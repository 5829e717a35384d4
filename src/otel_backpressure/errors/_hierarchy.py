"""The exception hierarchy; each class declares its ``ErrorOutcome`` as class data.

This module imports nothing from the rest of the package, so any part can
raise these errors without an import loop.

Example::

    from otel_backpressure.errors import NotFoundError, ErrorOutcome

    class GameNotFound(NotFoundError):
        outcome = ErrorOutcome("game_not_found", StatusCode.UNSET, 404,
                               record_exception=False, description="game not found")

    raise GameNotFound(f"no game {game_id}")   # message stays out of the span
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

from opentelemetry.trace import StatusCode

from otel_backpressure.errors._outcome import ErrorOutcome

__all__ = [
    "AuthenticationError",
    "BackpressureError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseConnectionError",
    "DatabaseError",
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

_ERROR = StatusCode.ERROR
_UNSET = StatusCode.UNSET


def _expected(error_type: str, http_status: int, description: str) -> ErrorOutcome:
    """An outcome the service meant to produce: no Error status, no exception event."""
    return ErrorOutcome(error_type, _UNSET, http_status, False, description)


def _failure(error_type: str, http_status: int, description: str) -> ErrorOutcome:
    return ErrorOutcome(error_type, _ERROR, http_status, True, description)


class BackpressureError(Exception):
    """Root of the hierarchy: an unexpected internal failure unless a subclass says otherwise."""

    outcome: ClassVar[ErrorOutcome] = _failure("internal_error", 500, "internal error")

    def __init__(self, message: str | None = None) -> None:
        super().__init__(type(self).outcome.description if message is None else message)


#: The root's name in the application this package grew from, kept importable.
#: An alias, not a subclass: the package's own classes derive from the root, so
#: only the same class lets ``except GameEngineError`` keep catching all of them
#: and existing subclasses of ``GameEngineError`` keep every mapping; a subclass
#: would catch nothing the package raises.
GameEngineError = BackpressureError


class DatabaseError(BackpressureError):
    """The database failed a request."""

    outcome = _failure("database_error", 500, "database error")


class PoolExhaustedError(DatabaseError):
    """No connection became free in time; the service is overloaded, not broken."""

    outcome = _failure("pool_exhausted", 503, "connection pool exhausted")


class DatabaseConnectionError(DatabaseError):
    """The database could not be reached or refused the connection."""

    outcome = _failure("database_connection_error", 503, "database connection failed")


class RateLimitExceededError(BackpressureError):
    """A request was rejected by a rate limit: expected, answered with 429.

    ``retry_after`` (seconds) becomes the ``Retry-After`` header of the
    problem-details response; ``policy`` names the limit that rejected;
    ``headers`` (name, value pairs of printable ASCII, e.g. the IETF
    ``RateLimit`` fields ``RateLimiter.check`` puts here) go into that
    response as well.
    """

    outcome = _expected("rate_limit_exceeded", 429, "rate limit exceeded")

    def __init__(
        self,
        message: str = "rate limit exceeded",
        *,
        policy: str | None = None,
        retry_after: float | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if policy is not None and not isinstance(policy, str):
            raise TypeError(f"policy must be a str or None, got {type(policy).__name__}")
        self.headers = _checked_headers(headers)
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, (int, float))
            or not math.isfinite(retry_after)
            or retry_after < 0
        ):
            raise ValueError(f"retry_after must be None or seconds >= 0, got {retry_after!r}")
        super().__init__(message)
        self.policy = policy
        self.retry_after = None if retry_after is None else float(retry_after)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state survives pickling (multiprocessing, task queues).
        return (
            _rebuild_rate_limit_error,
            (type(self), str(self), self.policy, self.retry_after, self.headers),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self)!r}, policy={self.policy!r}, "
            f"retry_after={self.retry_after!r})"
        )


def _checked_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Response header fields as (name, value) pairs of printable ASCII (no CR or LF)."""
    checked = tuple(headers)
    for pair in checked:
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(
                isinstance(part, str) and part.isascii() and part.isprintable() for part in pair
            )
        ):
            raise ValueError(
                f"headers must be (name, value) pairs of printable ASCII, got {pair!r}"
            )
    return checked


def _rebuild_rate_limit_error(
    cls: type[RateLimitExceededError],
    message: str,
    policy: str | None,
    retry_after: float | None,
    headers: tuple[tuple[str, str], ...] = (),
) -> RateLimitExceededError:
    return cls(message, policy=policy, retry_after=retry_after, headers=headers)


class ValidationError(BackpressureError):
    """The request was malformed or failed validation."""

    outcome = _expected("validation_error", 422, "invalid request")


class NotFoundError(BackpressureError):
    """The requested thing does not exist."""

    outcome = _expected("not_found", 404, "not found")


class AuthenticationError(BackpressureError):
    """The caller could not be authenticated."""

    outcome = _expected("authentication_failed", 401, "authentication failed")


class PermissionDeniedError(BackpressureError):
    """The caller is authenticated but not allowed to do this."""

    outcome = _expected("permission_denied", 403, "permission denied")


class ConflictError(BackpressureError):
    """The request conflicts with the current state (a duplicate, a stale version)."""

    outcome = _expected("conflict", 409, "conflict")


class SessionExpiredError(BackpressureError):
    """The caller's session ended; they must sign in again."""

    outcome = _expected("session_expired", 401, "session expired")


class ConfigurationError(BackpressureError):
    """The service is misconfigured: a failure, and not the caller's."""

    outcome = _failure("configuration_error", 500, "configuration error")


class UpstreamError(BackpressureError):
    """A service this one depends on failed."""

    outcome = _failure("upstream_error", 502, "upstream dependency failed")


class OperationTimeoutError(BackpressureError):
    """An operation ran out of time (named so it does not shadow the builtin ``TimeoutError``)."""

    outcome = _failure("timeout", 504, "operation timed out")


# Public path in tracebacks, exception.type and pickles, not the private module.
for _cls in (
    BackpressureError,
    DatabaseError,
    PoolExhaustedError,
    DatabaseConnectionError,
    RateLimitExceededError,
    ValidationError,
    NotFoundError,
    AuthenticationError,
    PermissionDeniedError,
    ConflictError,
    SessionExpiredError,
    ConfigurationError,
    UpstreamError,
    OperationTimeoutError,
):
    _cls.__module__ = "otel_backpressure.errors"
del _cls
