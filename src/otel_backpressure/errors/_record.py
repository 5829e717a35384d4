"""``record_error`` and ``mapped_errors``: the mapping for code outside ASGI.

Example::

    from otel_backpressure.errors import mapped_errors, record_error

    try:
        await job.run()
    except LookupError as exc:
        record_error(exc)                 # current span, counted as handled

    @mapped_errors()                      # escaping exceptions: mapped, counted, re-raised
    async def run_job(job): ...

    with mapped_errors(suppress=True):    # mapped exceptions are swallowed (handled)
        process(message)
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, StatusCode

from otel_backpressure._shared import check_meter_provider, type_name
from otel_backpressure.errors._defaults import registry as default_registry
from otel_backpressure.errors._metrics import count_exception
from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._registry import ErrorRegistry
from otel_backpressure.errors._spans import apply_outcome

__all__ = ["fallback_outcome", "mapped_errors", "record_error"]

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_FALLBACK_DESCRIPTION: Final = "unhandled exception"


def fallback_outcome(exc: BaseException) -> ErrorOutcome:
    """The outcome of an unmapped exception when we record it ourselves: an Error, no message."""
    name = type_name(type(exc))[:255]  # error.type's bound
    return ErrorOutcome(name, StatusCode.ERROR, 500, True, _FALLBACK_DESCRIPTION)


def record_error(
    exc: BaseException,
    span: Span | None = None,
    *,
    handled: bool = True,
    registry: ErrorRegistry | None = None,
    meter_provider: MeterProvider | None = None,
) -> ErrorOutcome:
    """Put ``exc``'s mapped outcome on ``span`` (default: the current span) and count it.

    Counted once per exception object: recording it again, or its later escape
    from a server span, adds nothing to ``backpressure.exceptions``.

    An unmapped exception is recorded as an Error with its class as
    ``error.type`` and a fixed description (never its message). Returns the
    outcome it applied; raises only ``TypeError`` for an ``exc`` that is no
    exception or a ``meter_provider`` without ``get_meter`` (a mistake in the
    call, not in the telemetry).
    """
    if not isinstance(exc, BaseException):
        raise TypeError(f"exc must be an exception, got {type(exc).__name__}")
    check_meter_provider(meter_provider)
    outcome = fallback_outcome(exc)
    try:
        outcome = (registry or default_registry).lookup(exc) or outcome
        target = span if span is not None else trace.get_current_span()
        apply_outcome(target, exc, outcome, escaped=not handled)
    except Exception:
        _logger.warning("Could not record %s on a span", type(exc).__name__, exc_info=True)
    count_exception(exc, outcome.error_type, handled=handled, meter_provider=meter_provider)
    return outcome


class mapped_errors:  # lower case, like contextlib.suppress
    """Context manager and decorator (sync or async): map exceptions that leave the block.

    Every ``Exception`` leaving the block is recorded on the span (default: the
    one current at exit) and counted. They propagate (``unhandled``) unless
    ``suppress`` is true and the exception is mapped: then it is swallowed and
    counted as ``handled``. ``BaseException`` (cancellation, exit) passes untouched.
    """

    __slots__ = ("_meter_provider", "_registry", "_span", "_suppress")

    def __init__(
        self,
        span: Span | None = None,
        *,
        suppress: bool = False,
        registry: ErrorRegistry | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not isinstance(suppress, bool):
            raise TypeError(f"suppress must be a bool, got {suppress!r}")
        if registry is not None and not isinstance(registry, ErrorRegistry):
            raise TypeError(f"registry must be an ErrorRegistry, got {registry!r}")
        check_meter_provider(meter_provider)
        self._span = span
        self._suppress = suppress
        self._registry = registry or default_registry
        self._meter_provider = meter_provider

    def __enter__(self) -> mapped_errors:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if not isinstance(exc, Exception):
            return False
        handled = self._suppress and self._registry.lookup(exc) is not None
        record_error(
            exc,
            self._span,
            handled=handled,
            registry=self._registry,
            meter_provider=self._meter_provider,
        )
        return handled

    async def __aenter__(self) -> mapped_errors:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __call__(self, function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await function(*args, **kwargs)
                return None  # only reached when a mapped exception was suppressed

            return cast(F, async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return function(*args, **kwargs)
            return None

        return cast(F, wrapper)

    def __repr__(self) -> str:
        return f"mapped_errors(span={self._span!r}, suppress={self._suppress})"
