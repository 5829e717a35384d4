"""The pool part as ``BackpressureInstrumentor`` sees it.

Every engine is caught once, however it was made: the patch point is
``Engine.__init__``, which ``create_engine`` (under any import spelling taken at
any time), ``create_async_engine`` (through its own ``create_engine``) and
``engine_from_config`` all reach exactly once, while ``Engine.execution_options()``
copies (which share the pool) do not. asyncpg pools are caught at
``asyncpg.pool.Pool.__init__``, which ``asyncpg.create_pool`` calls.

Example::

    BackpressureInstrumentor().instrument(meter_provider=provider, engines=[engine])
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import MeterProvider

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure._shared import Wrapper
from otel_backpressure.pool._kinds import SOURCES

if TYPE_CHECKING:
    from otel_backpressure.pool._registry import PoolInstrumentation

__all__ = ["PoolIntegration"]

_logger = logging.getLogger(__name__)


def _engines(engines: object) -> list[Any]:
    """The ``engines`` option as a list, every item checked to be a pool we can read."""
    if engines is None:
        return []
    if not isinstance(engines, Iterable) or isinstance(engines, (str, bytes)):
        raise TypeError(f"engines must be a list of engines, got {type(engines).__name__}")
    engines = list(engines)
    if not engines:
        return engines
    from otel_backpressure.pool._registry import REGISTRY

    for engine in engines:
        if not REGISTRY.accepts(engine):
            raise TypeError(
                "engines must hold SQLAlchemy Engines/AsyncEngines or asyncpg Pools, "
                f"got {type(engine).__name__}"
            )
    return engines


class PoolIntegration:
    """Instruments the ``engines`` option, then every engine and asyncpg pool created."""

    __slots__ = ("_context", "_handles")

    name = "pool"

    def __init__(self) -> None:
        self._context: InstrumentationContext | None = None
        self._handles: weakref.WeakSet[PoolInstrumentation] = weakref.WeakSet()

    @property
    def patches(self) -> tuple[Patch, ...]:
        return tuple(Patch(*line.created_at, self._wrapper) for line in SOURCES)

    def enable(self, context: InstrumentationContext) -> None:
        engines = _engines(context.options.get("engines"))
        self._context = context
        for engine in engines:
            self._instrument(engine, context.meter_provider)

    def adopt(self, engines: object, meter_provider: MeterProvider | None) -> None:
        """Instrument ``engines`` handed to a later ``instrument()`` call, while enabled.

        ``meter_provider`` None means the provider the part was enabled with.
        Raises ``TypeError`` for an ``engines`` that is not a list of pools.
        """
        context = self._context
        if context is None:
            raise RuntimeError("the pool part is not enabled")
        for engine in _engines(engines):
            self._instrument(engine, meter_provider)

    def disable(self) -> None:
        for handle in list(self._handles):
            handle.uninstrument()
        self._handles.clear()
        self._context = None

    def _instrument(self, target: Any, meter_provider: MeterProvider | None = None) -> None:
        context = self._context
        if context is None:
            return
        try:
            # imported with the first pool, not when the instrumentor loads
            from otel_backpressure.pool._registry import instrument

            handle = instrument(
                target,
                meter_provider=meter_provider or context.meter_provider,
                timings=context.settings.pool_timings,
            )
        except Exception:
            _logger.exception("Cannot instrument the pool of %s", type(target).__name__)
            return
        self._handles.add(handle)

    def _wrapper(self, context: InstrumentationContext) -> Wrapper:
        def after_init(
            wrapped: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            result = wrapped(*args, **kwargs)
            self._instrument(instance)
            return result

        return after_init

    def __repr__(self) -> str:
        return f"PoolIntegration(enabled={self._context is not None}, pools={len(self._handles)})"
