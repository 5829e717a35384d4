"""Metering for the ``limits`` library, so slowapi and other ``limits`` users get metrics.

``BackpressureInstrumentor`` wraps ``hit`` of every ``limits`` strategy, sync
(``limits.strategies``) and async (``limits.aio.strategies``), and counts each
decision into ``backpressure.rate_limit.requests`` - the same series the
package's own ``RateLimiter`` feeds - with no change to the application::

    from otel_backpressure import BackpressureInstrumentor
    from limits import parse, storage, strategies

    BackpressureInstrumentor().instrument(meter_provider=provider)
    limiter = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
    limiter.hit(parse("10/second"), "client-1")
    # -> backpressure.rate_limit.requests{policy="10/1second", result="allowed"} 1

The policy attribute is built from the limit alone (``"10/1second"``); the
identifiers passed to ``hit`` are client keys and never reach telemetry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.context import get_value
from opentelemetry.instrumentation import utils as otel_utils

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure._shared import Wrapper

__all__ = ["LimitsIntegration", "policy_name"]

_logger = logging.getLogger(__name__)

# Strategy classes across limits 3.x-5.x; a class missing from the installed
# version (elastic expiry exists only in older releases, the sliding window
# counter only from 4.1) is skipped by the patch table.
_STRATEGIES: Final = (
    "FixedWindowRateLimiter",
    "FixedWindowElasticExpiryRateLimiter",
    "MovingWindowRateLimiter",
    "SlidingWindowCounterRateLimiter",
)


def _suppression_key_unset() -> bool:
    # opentelemetry-instrumentation before is_instrumentation_enabled() existed
    return not get_value(getattr(otel_utils, "_SUPPRESS_INSTRUMENTATION_KEY", ""))


is_instrumentation_enabled: Callable[[], bool] = getattr(
    otel_utils, "is_instrumentation_enabled", _suppression_key_unset
)


def policy_name(item: Any) -> str:
    """``RateLimitItem`` -> ``"10/1second"``: amount, multiples and granularity only."""
    return f"{item.amount}/{item.multiples}{item.GRANULARITY.name}"


Record = Callable[[str, str], None]


def _recorder(context: InstrumentationContext) -> Record:
    from otel_backpressure.ratelimit.metrics import RateLimitMetrics

    return RateLimitMetrics.for_provider(context.meter_provider).record


def _item(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs["item"]


def _meter(record: Record, args: tuple[Any, ...], kwargs: dict[str, Any], allowed: Any) -> None:
    try:
        record(policy_name(_item(args, kwargs)), "allowed" if allowed else "rejected")
    except Exception:
        _logger.warning("Could not meter a limits decision", exc_info=True)


def _sync_wrapper(context: InstrumentationContext) -> Wrapper:
    record = _recorder(context)

    def hit(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        allowed = wrapped(*args, **kwargs)
        _meter(record, args, kwargs, allowed)
        return allowed

    return hit


def _async_wrapper(context: InstrumentationContext) -> Wrapper:
    record = _recorder(context)

    async def hit(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        allowed = await wrapped(*args, **kwargs)
        _meter(record, args, kwargs, allowed)
        return allowed

    return hit


class LimitsIntegration:
    """The ``rate_limit`` part as the instrumentor sees it: patches of the ``limits`` strategies."""

    __slots__ = ()

    name: Final = "rate_limit"
    patches: Final = tuple(
        Patch(module, f"{strategy}.hit", build)
        for module, build in (
            ("limits.strategies", _sync_wrapper),
            ("limits.aio.strategies", _async_wrapper),
        )
        for strategy in _STRATEGIES
    )

    def enable(self, context: InstrumentationContext) -> None:
        """Nothing beyond the patches: the metrics object is per meter provider."""

    def disable(self) -> None:
        """Nothing beyond the patches, which the instrumentor removes."""

    def __repr__(self) -> str:
        return f"LimitsIntegration(patches={len(self.patches)})"
