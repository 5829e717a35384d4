"""Which thread pools are measured, for which providers, and the handles ``instrument()`` returns.

Pools come from two places: the application hands a limiter or executor to
``instrument()``, or the thread-pool part finds anyio's default limiter and an
event loop's default executor the first time they are used. Both end here, in
one registry that the patched hot paths look up by identity.

Example::

    import anyio, otel_backpressure

    uploads = anyio.CapacityLimiter(10)
    handle = otel_backpressure.instrument(uploads, pool_name="uploads")
    otel_backpressure.pool_health(uploads)   # {"status": "healthy", "in_use": 0, ...}
    handle.uninstrument()
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opentelemetry.metrics import MeterProvider

from otel_backpressure._shared import check_meter_provider
from otel_backpressure.runtime._integration import ANYIO, DEFAULT_EXECUTOR
from otel_backpressure.runtime._metrics import ThreadPoolMetrics
from otel_backpressure.runtime._threads import (
    ExecutorSource,
    LimiterSource,
    Source,
    is_capacity_limiter,
    time_waits,
    waits_of,
)

__all__ = [
    "ThreadPoolInstrumentation",
    "executor_source",
    "instrument_thread_pool",
    "is_thread_pool",
    "register_default",
    "set_default_metrics",
    "thread_pool_reading",
]

_lock = threading.RLock()
# id(limiter or executor as handed over) -> its source
_sources: dict[int, Source] = {}
# (id(source), id(metrics)) -> handle
_handles: dict[tuple[int, int], ThreadPoolInstrumentation] = {}
# the instrumentor's metrics, which anyio's default limiter and default executors report to
_default_metrics: ThreadPoolMetrics | None = None


def is_thread_pool(target: object) -> bool:
    """Whether ``target`` is an ``anyio.CapacityLimiter`` or a ``ThreadPoolExecutor``."""
    return isinstance(target, ThreadPoolExecutor) or is_capacity_limiter(target)


class ThreadPoolInstrumentation:
    """What ``instrument(limiter_or_executor)`` returns: which pool, under which name."""

    __slots__ = ("_metrics", "_source", "pool_name")

    def __init__(self, source: Source, metrics: ThreadPoolMetrics) -> None:
        self._source = source
        self._metrics = metrics
        self.pool_name = source.name

    @property
    def active(self) -> bool:
        return _handles.get((id(self._source), id(self._metrics))) is self

    def uninstrument(self) -> None:
        """Stop reporting this pool to this provider; safe to call twice."""
        with _lock:
            if not self.active:
                return
            del _handles[(id(self._source), id(self._metrics))]
            self._metrics.remove(self._source)
            if not any(key[0] == id(self._source) for key in _handles):
                _forget(self._source)

    def __repr__(self) -> str:
        return f"ThreadPoolInstrumentation(pool_name={self.pool_name!r}, active={self.active})"


def instrument_thread_pool(
    target: Any,
    *,
    pool_name: str | None = None,
    meter_provider: MeterProvider | None = None,
) -> ThreadPoolInstrumentation:
    """Report ``target`` (an ``anyio.CapacityLimiter`` or ``ThreadPoolExecutor``).

    ``pool_name`` becomes ``backpressure.thread_pool.name``; it defaults to the
    executor's thread name prefix (``ThreadPoolExecutor-0``) or
    ``anyio.CapacityLimiter``. Pools sharing a name are reported summed.
    Raises ``TypeError`` for anything else or a ``meter_provider`` without
    ``get_meter``, and ``ValueError`` for an empty name.
    """
    if pool_name is not None and (not isinstance(pool_name, str) or not pool_name.strip()):
        raise ValueError(f"pool_name must be a non-empty string, got {pool_name!r}")
    check_meter_provider(meter_provider)
    if not is_thread_pool(target):
        raise TypeError(
            "target must be an anyio.CapacityLimiter or a concurrent.futures.ThreadPoolExecutor, "
            f"got {type(target).__name__}"
        )
    metrics = ThreadPoolMetrics.for_provider(meter_provider)
    with _lock:
        source = _source_for(target, pool_name or _default_name(target), None)
        return _handle(source, metrics)


def set_default_metrics(metrics: ThreadPoolMetrics | None) -> None:
    """Where the default pools report (None: stop reporting them, forget them)."""
    global _default_metrics
    with _lock:
        previous, _default_metrics = _default_metrics, metrics
        if previous is None:
            return
        for key, handle in list(_handles.items()):
            if key[1] == id(previous) and handle._source.name in _DEFAULT_NAMES:
                handle.uninstrument()


def register_default(target: Any, name: str, loop: asyncio.AbstractEventLoop | None) -> None:
    """Report a default pool (``anyio``, ``asyncio.default_executor``) to the instrumentor's
    provider, once; a no-op while the thread-pool part is off."""
    metrics = _default_metrics
    if metrics is None:
        return
    source = _sources.get(id(target))
    if source is not None and source.target is target and source in metrics:
        return
    with _lock:
        _release_dead()
        if _default_metrics is not metrics:
            return
        _handle(_source_for(target, name, loop), metrics)


def executor_source(executor: object) -> ExecutorSource | None:
    """The measured source of ``executor``, if it is measured."""
    source = _sources.get(id(executor))
    if isinstance(source, ExecutorSource) and source.target is executor:
        return source
    return None


def thread_pool_reading(target: Any) -> tuple[str | None, int | None, int | None, int]:
    """``(name, used, max, queue)`` of a thread pool now, for ``pool_health()``.

    ``name`` is None when the pool is not measured; ``used`` is None for an
    executor that is not measured (only a measured one counts its busy threads);
    ``max`` is None for a limiter with ``math.inf`` tokens.
    """
    source = _sources.get(id(target))
    measured = source is not None and source.target is target
    if source is None or not measured:
        source = _new_source(target, _default_name(target), None)
    reading = source.read()
    used = reading.used if measured or isinstance(source, LimiterSource) else None
    return (source.name if measured else None), used, reading.max, reading.queue


_DEFAULT_NAMES = frozenset({ANYIO, DEFAULT_EXECUTOR})


def _default_name(target: Any) -> str:
    if isinstance(target, ThreadPoolExecutor):
        prefix = getattr(target, "_thread_name_prefix", "")
        return prefix if isinstance(prefix, str) and prefix else "ThreadPoolExecutor"
    return "anyio.CapacityLimiter"


def _new_source(target: Any, name: str, loop: asyncio.AbstractEventLoop | None) -> Source:
    if isinstance(target, ThreadPoolExecutor):
        return ExecutorSource(target, name=name, loop=loop)
    return LimiterSource(target, name=name, loop=loop)


def _source_for(target: Any, name: str, loop: asyncio.AbstractEventLoop | None) -> Source:
    """The registered source of ``target``, made on first use. Hold ``_lock``."""
    source = _sources.get(id(target))
    if source is not None and source.target is target:
        return source
    source = _new_source(target, name, loop)
    _sources[id(target)] = source
    if isinstance(source, ExecutorSource):
        source.attach()
    else:
        backend = source.backend_limiter
        if backend is not None and waits_of(backend) is None and _on_a_loop_thread():
            # made before the part was on; on its loop's thread nothing else touches it
            time_waits(backend)
    return source


def _on_a_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _handle(source: Source, metrics: ThreadPoolMetrics) -> ThreadPoolInstrumentation:
    """The handle for ``source`` in ``metrics``, made on first use. Hold ``_lock``."""
    handle = _handles.get((id(source), id(metrics)))
    if handle is None:
        handle = ThreadPoolInstrumentation(source, metrics)
        _handles[(id(source), id(metrics))] = handle
        metrics.add(source)
    return handle


def _forget(source: Source) -> None:
    """Drop a source no provider reports. Hold ``_lock``."""
    for key, known in list(_sources.items()):
        if known is source:
            del _sources[key]
    if isinstance(source, ExecutorSource):
        source.detach()


def _release_dead() -> None:
    """Forget sources whose pool is gone (closed loop, shut-down executor). Hold ``_lock``."""
    for source in [s for s in _sources.values() if not s.alive]:
        for key in [key for key in _handles if key[0] == id(source)]:
            _handles.pop(key)._metrics.remove(source)
        _forget(source)
