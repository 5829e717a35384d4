"""Runtime backpressure: how late the event loop runs, how full the thread pools are.

Two parts, each switched by its own setting: the event loop
(``OTEL_PYTHON_BACKPRESSURE_EVENT_LOOP_ENABLED``, sampled every
``..._EVENT_LOOP_RESOLUTION`` seconds) and the thread pools
(``OTEL_PYTHON_BACKPRESSURE_THREAD_POOL_ENABLED``: anyio's default thread
limiter and every loop's default executor). Other limiters and executors are
measured when handed to ``otel_backpressure.instrument()``. See docs/runtime.md.

Example::

    import anyio, otel_backpressure

    otel_backpressure.BackpressureInstrumentor().instrument(meter_provider=provider)
    uploads = anyio.CapacityLimiter(10)
    otel_backpressure.instrument(uploads, pool_name="uploads")
    await anyio.to_thread.run_sync(work, limiter=uploads)
    # backpressure.thread_pool.used{backpressure.thread_pool.name="uploads"} ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otel_backpressure._shared import lazy_exports

if TYPE_CHECKING:
    from otel_backpressure.runtime._api import (
        ThreadPoolInstrumentation,
        instrument_thread_pool,
        is_thread_pool,
        thread_pool_reading,
    )
    from otel_backpressure.runtime._integration import (
        MONITORS,
        EventLoopIntegration,
        ThreadPoolIntegration,
    )
    from otel_backpressure.runtime._loop import (
        LOOP_NAME,
        MAX_LOOP_NAMES,
    )
    from otel_backpressure.runtime._metrics import (
        DELAY_BOUNDARIES,
        POOL_NAME,
        WAIT_BOUNDARIES,
    )

__all__ = [
    "DELAY_BOUNDARIES",
    "LOOP_NAME",
    "MAX_LOOP_NAMES",
    "MONITORS",
    "POOL_NAME",
    "WAIT_BOUNDARIES",
    "EventLoopIntegration",
    "ThreadPoolInstrumentation",
    "ThreadPoolIntegration",
    "instrument_thread_pool",
    "is_thread_pool",
    "thread_pool_reading",
]

# Imported when first used (PEP 562): loading the instrumentor must not import
# every module of every part; see otel_backpressure/__init__.py.
_LAZY: dict[str, str] = {
    "DELAY_BOUNDARIES": "otel_backpressure.runtime._metrics",
    "EventLoopIntegration": "otel_backpressure.runtime._integration",
    "LOOP_NAME": "otel_backpressure.runtime._loop",
    "MAX_LOOP_NAMES": "otel_backpressure.runtime._loop",
    "MONITORS": "otel_backpressure.runtime._integration",
    "POOL_NAME": "otel_backpressure.runtime._metrics",
    "ThreadPoolInstrumentation": "otel_backpressure.runtime._api",
    "ThreadPoolIntegration": "otel_backpressure.runtime._integration",
    "WAIT_BOUNDARIES": "otel_backpressure.runtime._metrics",
    "instrument_thread_pool": "otel_backpressure.runtime._api",
    "is_thread_pool": "otel_backpressure.runtime._api",
    "thread_pool_reading": "otel_backpressure.runtime._api",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
