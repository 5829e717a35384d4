"""The pool part as ``BackpressureInstrumentor`` sees it.

Every engine is caught once, however it was made: the patch point is
``Engine.__init__``, which ``create_engine`` (under any import spelling taken at
any time), ``create_async_engine`` (through its own ``create_engine``) and
``engine_from_config`` all reach exactly once, while ``Engine.execution_options()``
copies (which share the pool) do not. Every other pool kind is caught where
its pools are made, one ``__init__`` per kind as ``pool/_kinds.py`` lists them
(``SOURCES``): asyncpg's ``Pool`` (which ``asyncpg.create_pool`` makes),
psycopg_pool's sync and async pools, redis-py's sync and asyncio connection
pools, httpcore's connection pools (under httpx) and aiohttp's connectors
(``BaseConnector``, under ``TCPConnector``).

The ``engine`` option is one pool, ``engines`` a list of them (or one);
either may hold anything ``otel_backpressure.instrument()`` takes. A value
that is none of these is logged naming the option and left out, and the part
still starts: an application under ``opentelemetry-instrument`` cannot catch
an exception from here.

Example::

    BackpressureInstrumentor().instrument(meter_provider=provider, engines=[engine])
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import MeterProvider

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure._shared import Wrapper
from otel_backpressure.pool._kinds import SOURCES, targets

if TYPE_CHECKING:
    from otel_backpressure.pool._registry import PoolInstrumentation

__all__ = ["PoolIntegration"]

_logger = logging.getLogger(__name__)


def _takes(target: object) -> bool:
    """Whether ``instrument()`` takes ``target`` (a pool some source knows, or a thread pool)."""
    from otel_backpressure.pool._registry import REGISTRY
    from otel_backpressure.runtime import is_thread_pool

    return REGISTRY.accepts(target) or is_thread_pool(target)


def _pools(options: Mapping[str, Any]) -> list[Any]:
    """The pools of the ``engine`` and ``engines`` options, in order.

    ``engines`` is a list of pools, or one pool (as ``engine`` is). Anything
    else is logged, naming the option (``engines[2]`` for one item), and left
    out: the rest are instrumented, and so is every pool created later.
    """
    given: list[tuple[str, Any]] = []
    if options.get("engine") is not None:
        given.append(("engine", options["engine"]))
    engines = options.get("engines")
    if engines is not None:
        if _takes(engines):
            given.append(("engines", engines))
        elif isinstance(engines, Iterable) and not isinstance(engines, (str, bytes, Mapping)):
            given.extend((f"engines[{index}]", item) for index, item in enumerate(engines))
        else:
            _logger.error(
                "Backpressure pool telemetry: engines must be a list of pools, each %s; "
                "got %s, ignored",
                targets(),
                type(engines).__name__,
            )
    pools = []
    for option, target in given:
        if _takes(target):
            pools.append(target)
        else:
            _logger.error(
                "Backpressure pool telemetry: %s must be %s; got %s, ignored",
                option,
                targets(),
                type(target).__name__,
            )
    return pools


class PoolIntegration:
    """Instruments the ``engine``/``engines`` options, then every pool created."""

    __slots__ = ("_context", "_handles")

    name = "pool"

    def __init__(self) -> None:
        self._context: InstrumentationContext | None = None
        self._handles: weakref.WeakSet[PoolInstrumentation] = weakref.WeakSet()

    @property
    def patches(self) -> tuple[Patch, ...]:
        return tuple(Patch(*line.created_at, self._wrapper) for line in SOURCES)

    def enable(self, context: InstrumentationContext) -> None:
        self._context = context
        for target in _pools(context.options):
            self._instrument(target, context.meter_provider)

    def adopt(self, options: Mapping[str, Any], meter_provider: MeterProvider | None) -> None:
        """Instrument the ``engine``/``engines`` of a later ``instrument()`` call, while enabled.

        ``meter_provider`` None means the provider the part was enabled with.
        A bad option is logged naming it; the others are instrumented.
        """
        context = self._context
        if context is None:
            raise RuntimeError("the pool part is not enabled")
        for target in _pools(options):
            self._instrument(target, meter_provider)

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
