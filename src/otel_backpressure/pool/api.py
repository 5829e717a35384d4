"""``instrument()``: pool metrics for one SQLAlchemy engine or asyncpg pool.

Example::

    import otel_backpressure

    handle = otel_backpressure.instrument(engine, meter_provider=provider)
    handle.pool_name          # "db.example:5432/app"
    handle.uninstrument()     # the pool's series stop at the next collection

Instrumenting the same pool again (for the same provider) returns the same
handle; one pool is read once per collection whatever the number of calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Union

from opentelemetry.metrics import MeterProvider
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from otel_backpressure.pool.asyncpg import AsyncpgPool, is_asyncpg_pool
from otel_backpressure.pool.metrics import PoolMetrics
from otel_backpressure.pool.naming import NAMES, dsn_name, url_name
from otel_backpressure.pool.sqlalchemy import EnginePool
from otel_backpressure.settings import Settings

__all__ = ["PoolInstrumentation", "instrument", "resolve_engine"]

_logger = logging.getLogger(__name__)

Source = Union[EnginePool, AsyncpgPool]  # noqa: UP007 - a runtime alias on 3.10

_lock = threading.RLock()
# id(engine or asyncpg pool) -> its source, shared by every provider that reports it
_sources: dict[int, Source] = {}
# (id(source), id(PoolMetrics)) -> handle
_handles: dict[tuple[int, int], PoolInstrumentation] = {}
# sources whose engine was garbage collected; the weakref callback only appends
# here (it may run inside any allocation, even while _lock is held)
_collected: deque[EnginePool] = deque()
# id(source) of sources whose name came from NAMES (an explicit pool_name is not ours)
_generated_names: set[int] = set()


class PoolInstrumentation:
    """The handle ``instrument()`` returns: which pool, under which name, until when."""

    __slots__ = ("__weakref__", "_metrics", "_source", "pool_name")

    def __init__(self, source: Source, metrics: PoolMetrics) -> None:
        self._source = source
        self._metrics = metrics
        self.pool_name = source.name

    @property
    def active(self) -> bool:
        return (id(self._source), id(self._metrics)) in _handles

    def uninstrument(self) -> None:
        """Stop reporting this pool to this provider; safe to call twice."""
        with _lock:
            _release_collected()
            if _handles.get((id(self._source), id(self._metrics))) is not self:
                return
            del _handles[(id(self._source), id(self._metrics))]
            self._metrics.remove(self._source)
            if not any(key[0] == id(self._source) for key in _handles):
                _drop_source(self._source)

    def __repr__(self) -> str:
        return f"PoolInstrumentation(pool_name={self.pool_name!r}, active={self.active})"


def resolve_engine(target: object) -> Engine | None:
    """The sync ``Engine`` behind ``target``, or None if it is not an engine."""
    if isinstance(target, AsyncEngine):
        target = target.sync_engine
    if not isinstance(target, Engine):
        return None
    # Engine.execution_options() returns a copy sharing the pool: report the original
    proxied = getattr(target, "_proxied", None)
    return proxied if isinstance(proxied, Engine) else target


def instrument(
    target: Any,
    *,
    pool_name: str | None = None,
    meter_provider: MeterProvider | None = None,
    timings: bool | None = None,
    clock: Callable[[], float] | None = None,
) -> PoolInstrumentation:
    """Report the pool of ``target`` (``Engine``, ``AsyncEngine`` or ``asyncpg.Pool``).

    ``pool_name`` defaults to ``host:port/database`` (never credentials), made
    unique among live pools with a ``#n`` suffix. ``timings`` switches the three
    time histograms (default: the ``OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS``
    setting). ``clock`` is a monotonic clock in seconds, for tests.
    """
    if pool_name is not None and (not isinstance(pool_name, str) or not pool_name.strip()):
        raise ValueError(f"pool_name must be a non-empty string, got {pool_name!r}")
    if timings is not None and not isinstance(timings, bool):
        raise TypeError(f"timings must be a bool or None, got {type(timings).__name__}")
    engine = resolve_engine(target)
    if engine is None and not is_asyncpg_pool(target):
        raise TypeError(
            "target must be a SQLAlchemy Engine or AsyncEngine or an asyncpg.Pool, "
            f"got {type(target).__name__}"
        )
    if timings is None:
        timings = Settings.from_env().pool_timings
    metrics = PoolMetrics.for_provider(meter_provider)
    with _lock:
        _release_collected()
        key_target = engine if engine is not None else target
        source = _sources.get(id(key_target))
        if source is None:
            source = _new_source(key_target, engine is not None, pool_name, clock)
            _sources[id(key_target)] = source
        elif pool_name is not None and pool_name != source.name:
            _logger.warning(
                "Pool already instrumented as %r; ignoring pool_name=%r", source.name, pool_name
            )
        handle = _handles.get((id(source), id(metrics)))
        if handle is None:
            handle = PoolInstrumentation(source, metrics)
            _handles[(id(source), id(metrics))] = handle
            metrics.add(source, timings=timings)
        return handle


def _new_source(
    target: Any, is_engine: bool, pool_name: str | None, clock: Callable[[], float] | None
) -> Source:
    ticks = clock or time.perf_counter
    if pool_name is None:
        if is_engine:
            base = url_name(target.url)
        else:
            args = target._connect_args
            base = dsn_name(args[0] if args else None, target._connect_kwargs)
        name = NAMES.acquire(base)
    else:
        name = pool_name
    source: Source
    try:
        if is_engine:
            source = EnginePool(target, name=name, clock=ticks, on_collected=_collected.append)
        else:
            source = AsyncpgPool(target, name=name, clock=ticks)
    except BaseException:
        if pool_name is None:
            NAMES.release(name)
        raise
    if pool_name is None:
        _generated_names.add(id(source))
    return source


def _drop_source(source: Source) -> None:
    """Forget a source no provider reports any more. Call with ``_lock`` held."""
    for key, known in list(_sources.items()):
        if known is source:
            del _sources[key]
    source.close()
    if id(source) in _generated_names:
        _generated_names.discard(id(source))
        NAMES.release(source.name)


def _release_collected() -> None:
    """Drop sources of collected engines and closed asyncpg pools. Call with ``_lock`` held."""
    dead: list[Source] = []
    while _collected:
        dead.append(_collected.popleft())
    dead.extend(s for s in _sources.values() if isinstance(s, AsyncpgPool) and not s.alive)
    for source in dead:
        for key in [key for key in _handles if key[0] == id(source)]:
            handle = _handles.pop(key)
            handle._metrics.remove(source)
        if any(known is source for known in _sources.values()):
            _drop_source(source)


def instrumented_count() -> int:
    """How many pools are instrumented (for tests of leaks)."""
    with _lock:
        _release_collected()
        return len(_sources)


def source_of(target: object) -> Source | None:
    """The live source reporting ``target``'s pool, if it is instrumented."""
    key = resolve_engine(target) or target
    with _lock:
        return _sources.get(id(key))
