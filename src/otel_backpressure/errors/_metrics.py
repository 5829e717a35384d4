"""``backpressure.exceptions``: exceptions by ``error.type`` and whether they were handled.

A synchronous Counter, added to only on the exception path: exceptions are not
the hot path, an add costs a few microseconds against the tens a problem
response costs to build, and the count is exact at every collection without
keeping local state. ``handled`` = mapped and turned into a response (or
suppressed by ``mapped_errors``); ``unhandled`` = it propagated (out of
``ErrorMappingMiddleware``, ``mapped_errors``, or a server span: the span
patches count what escapes a server span even without the middleware).

Each exception object is counted once, by the first place that sees it: one
that escapes ``mapped_errors``, then the middleware, then the server span is
one exception, not three. The mark lives on the exception, so it dies with it.

Example::

    from otel_backpressure.errors._metrics import count_exception

    count_exception(exc, "not_found", handled=True)
"""

from __future__ import annotations

import logging
import weakref
from typing import Final

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import Counter, MeterProvider
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

from otel_backpressure._shared import get_meter

__all__ = ["METRIC", "OUTCOME", "count_exception", "set_default_meter_provider"]

_logger = logging.getLogger(__name__)

METRIC: Final = "backpressure.exceptions"
OUTCOME: Final = "backpressure.exception.outcome"

# Set on an exception once it is counted.
_COUNTED: Final = "_otel_backpressure_counted"

_counters: weakref.WeakKeyDictionary[MeterProvider, Counter] = weakref.WeakKeyDictionary()
# The instrumentor's meter provider while the errors part is enabled.
_default_provider: MeterProvider | None = None


def set_default_meter_provider(meter_provider: MeterProvider | None) -> None:
    """Count into ``meter_provider`` when a caller names none (None: the global one)."""
    global _default_provider
    _default_provider = meter_provider


def _counter(meter_provider: MeterProvider | None) -> Counter:
    provider = meter_provider or _default_provider or otel_metrics.get_meter_provider()
    counter = _counters.get(provider)
    if counter is None:
        counter = get_meter(provider).create_counter(
            METRIC,
            unit="{exception}",
            description="Exceptions by error.type and whether they were handled.",
        )
        _counters[provider] = counter
    return counter


def count_exception(
    exc: BaseException,
    error_type: str,
    *,
    handled: bool,
    meter_provider: MeterProvider | None = None,
) -> None:
    """Add one exception, unless ``exc`` was counted already; never raises."""
    if getattr(exc, _COUNTED, False):
        return
    try:
        setattr(exc, _COUNTED, True)
    except Exception:  # a class that refuses attributes: it may be counted twice
        _logger.debug("Cannot mark %s as counted", type(exc).__name__)
    try:
        _counter(meter_provider).add(
            1, {ERROR_TYPE: error_type, OUTCOME: "handled" if handled else "unhandled"}
        )
    except Exception:
        _logger.warning("Could not count an exception of type %s", error_type, exc_info=True)
