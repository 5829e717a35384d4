"""``ErrorMappingMiddleware``: mapped exceptions become RFC 9457 problem details.

Pure ASGI. A mapped exception that leaves the app before a response started
becomes an ``application/problem+json`` response with the mapped HTTP status;
the current span (the server span, when the OpenTelemetry ASGI or FastAPI
instrumentation wraps this middleware) gets ``error.type`` and the HTTP rule's
status (4xx Unset, 5xx Error). Everything is counted in
``backpressure.exceptions``. Unmapped exceptions propagate unchanged.

Example::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from otel_backpressure.errors import ErrorMappingMiddleware

    app = Starlette(routes=routes, middleware=[Middleware(ErrorMappingMiddleware)])
"""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider

from otel_backpressure._shared import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    check_meter_provider,
    type_name,
)
from otel_backpressure.errors._defaults import registry as default_registry
from otel_backpressure.errors._hierarchy import RateLimitExceededError
from otel_backpressure.errors._metrics import count_exception
from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._registry import ErrorRegistry
from otel_backpressure.errors._spans import apply_outcome

__all__ = ["ErrorMappingMiddleware", "problem_details", "problem_response"]

_logger = logging.getLogger(__name__)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a valid but unregistered code, e.g. 499
        return "Client Error" if status < 500 else "Server Error"


def problem_details(exc: BaseException, outcome: ErrorOutcome, instance: str) -> dict[str, Any]:
    """The RFC 9457 body for ``exc``: the detail is the outcome's safe text."""
    return {
        "type": outcome.problem_type or "about:blank",
        "title": _phrase(outcome.http_status),
        "status": outcome.http_status,
        "detail": str(exc) if outcome.expose_message else outcome.description,
        "instance": instance,
    }


def _retry_after(exc: BaseException) -> bytes | None:
    seconds = getattr(exc, "retry_after", None)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    if not (math.isfinite(seconds) and seconds >= 0):
        return None
    return str(math.ceil(seconds)).encode("ascii")


def problem_response(
    exc: BaseException, outcome: ErrorOutcome, instance: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The whole RFC 9457 response for ``exc``: ``(status, headers, body)``.

    ``instance`` is the request path. The headers are the content type and
    length, ``Retry-After`` when the exception has a ``retry_after`` (seconds,
    rounded up) and a ``RateLimitExceededError``'s own ``headers``. Both
    ``ErrorMappingMiddleware`` and the rate limiter's ``RateLimitMiddleware``
    answer with it, so a 429 reads the same whichever sent it.
    """
    try:
        body = json.dumps(problem_details(exc, outcome, instance)).encode("utf-8")
    except Exception:
        _logger.warning("Could not build problem details", exc_info=True)
        body = b"{}"
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    retry_after = _retry_after(exc)
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    if isinstance(exc, RateLimitExceededError):
        headers.extend((name.encode("ascii"), value.encode("ascii")) for name, value in exc.headers)
    return outcome.http_status, headers, body


class ErrorMappingMiddleware:
    """Turns mapped exceptions into problem-details responses; see the module docstring."""

    __slots__ = ("_app", "_meter_provider", "_registry")

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: ErrorRegistry | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, got {app!r}")
        if registry is not None and not isinstance(registry, ErrorRegistry):
            raise TypeError(f"registry must be an ErrorRegistry, got {registry!r}")
        check_meter_provider(meter_provider)
        self._app = app
        self._registry = registry or default_registry
        self._meter_provider = meter_provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, receive, send_tracking_start)
        except Exception as exc:
            outcome = self._lookup(exc)
            if outcome is None or started:
                error_type = type_name(type(exc)) if outcome is None else outcome.error_type
                count_exception(exc, error_type, handled=False, meter_provider=self._meter_provider)
                raise
            failure: Exception = exc
        else:
            return
        # Answer outside the except block: the response is ours, not the exception's.
        await self._respond(scope, send, failure, outcome)

    def _lookup(self, exc: Exception) -> ErrorOutcome | None:
        try:
            return self._registry.lookup(exc)
        except Exception:
            _logger.warning("Error lookup failed; letting the exception propagate", exc_info=True)
            return None

    async def _respond(
        self, scope: Scope, send: Send, exc: Exception, outcome: ErrorOutcome
    ) -> None:
        span = trace.get_current_span()
        instance = str(scope.get("path", ""))  # includes root_path (ASGI spec)
        status, headers, body = problem_response(exc, outcome, instance)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        # Between start and body: the ASGI instrumentation sets the status from
        # the status code as the response starts, and ends the server span
        # with the last body message; this refines the span in between.
        try:
            apply_outcome(span, exc, outcome, escaped=False, http_status=outcome.http_status)
        except Exception:
            _logger.warning("Could not put the error outcome on the span", exc_info=True)
        count_exception(exc, outcome.error_type, handled=True, meter_provider=self._meter_provider)
        await send({"type": "http.response.body", "body": body})

    def __repr__(self) -> str:
        return f"ErrorMappingMiddleware(app={self._app!r}, registry={self._registry!r})"
