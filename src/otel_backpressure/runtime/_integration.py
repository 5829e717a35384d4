"""The event-loop and thread-pool parts as ``BackpressureInstrumentor`` sees them.

Every loop is caught when it starts running, however it was started
(``asyncio.run``, ``loop.run_until_complete``, uvicorn, ``anyio.run``): they all
reach ``run_forever`` in the thread that runs the loop, which is where the
monitor starts and, when it returns, stops. A loop already running when the
part is enabled (``instrument()`` called from async code) is monitored from
then on and dropped once it is closed.

anyio's default thread limiter is caught when anyio stores it for its loop (a
``RunVar.set``, once per loop), an event loop's default executor when
``run_in_executor(None, ...)`` is about to use it. Every asyncio-backend
limiter made while the part is on gets wait-timing containers
(``_threads.time_waits``), so nothing wraps the per-call path of
``to_thread.run_sync``.

Example::

    BackpressureInstrumentor().instrument(meter_provider=provider)
    asyncio.run(main())     # monitored as backpressure.event_loop.name="MainThread"
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.metrics import MeterProvider

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure._shared import Wrapper
from otel_backpressure.runtime._loop import LoopMonitors

if TYPE_CHECKING:
    from otel_backpressure.runtime._metrics import LoopMetrics

__all__ = ["ANYIO", "DEFAULT_EXECUTOR", "MONITORS", "EventLoopIntegration", "ThreadPoolIntegration"]

_logger = logging.getLogger(__name__)

#: Every monitored loop of the process.
MONITORS = LoopMonitors()

#: The names the thread-pool part gives the default pools it finds.
ANYIO: Final = "anyio"
DEFAULT_EXECUTOR: Final = "asyncio.default_executor"

# The metrics modules (and the thread-pool registry) are imported when first
# needed, not when the instrumentor loads: the event-loop metrics when the
# first loop starts being monitored, the thread-pool ones when the first
# default pool is seen. Until then no instrument exists, which a reader cannot
# tell from instruments without a measurement.


def _loop_metrics(
    meter_provider: MeterProvider | None,
) -> tuple[Callable[[], LoopMetrics], Callable[[float, dict[str, str]], None]]:
    """``(ready, record)`` for ``meter_provider``: ``ready()`` makes its event-loop
    metrics, once; ``record`` hands them a loop's delay sample."""
    made: list[LoopMetrics] = []

    def ready() -> LoopMetrics:
        if not made:
            from otel_backpressure.runtime._metrics import LoopMetrics

            made.append(LoopMetrics.for_provider(meter_provider, MONITORS))
        return made[0]

    def record(delay: float, attributes: dict[str, str]) -> None:
        # every loop is ready()'d before its monitor starts: one sample per resolution
        made[0].record_delay(delay, attributes)

    return ready, record


# ready() of the event-loop part while it is on
_loop_ready: Callable[[], LoopMetrics] | None = None


class EventLoopIntegration:
    """Delay and utilization for every event loop that runs while enabled."""

    __slots__ = ()

    name = "event_loop"

    @property
    def patches(self) -> tuple[Patch, ...]:
        return (
            Patch("asyncio.base_events", "BaseEventLoop.run_forever", _run_forever),
            # uvloop.Loop is a Python subclass of the Cython loop: its attribute can be wrapped.
            Patch("uvloop", "Loop.run_forever", _run_forever),
        )

    def enable(self, context: InstrumentationContext) -> None:
        global _loop_ready
        ready, record = _loop_metrics(context.meter_provider)
        _loop_ready = ready  # first: a loop starting in between is monitored
        MONITORS.enable(record, context.settings.event_loop_resolution)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        ready()
        MONITORS.start(running)

    def disable(self) -> None:
        global _loop_ready
        _loop_ready = None
        MONITORS.disable()

    def __repr__(self) -> str:
        return f"EventLoopIntegration({MONITORS!r})"


def _run_forever(context: InstrumentationContext) -> Wrapper:
    monitors = MONITORS

    def run_forever(
        wrapped: Callable[..., Any], loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ready = _loop_ready
        if ready is None or not monitors.enabled or loop.is_running():
            return wrapped(*args, **kwargs)  # the loop raises "already running" itself
        try:
            ready()
        except Exception:  # telemetry never raises into the host call
            _logger.exception("Cannot make the event-loop metrics; the loop is not monitored")
            return wrapped(*args, **kwargs)
        monitor = monitors.start(loop)
        try:
            return wrapped(*args, **kwargs)
        finally:
            try:
                monitors.stop(monitor)
            except Exception:  # telemetry never raises into the host call
                _logger.debug("Stopping the event-loop monitor failed", exc_info=True)

    return run_forever


class ThreadPoolIntegration:
    """anyio's default thread limiter and every loop's default executor, while enabled."""

    __slots__ = ()

    name = "thread_pool"

    @property
    def patches(self) -> tuple[Patch, ...]:
        return (
            Patch("anyio._backends._asyncio", "CapacityLimiter.__init__", _limiter_init),
            # anyio stores its default limiter in a RunVar, once per event loop
            Patch("anyio.lowlevel", "RunVar.set", _run_var_set),
            Patch("asyncio.base_events", "BaseEventLoop.run_in_executor", _run_in_executor),
        )

    def enable(self, context: InstrumentationContext) -> None:
        global _default_pools
        _stop_default_pools()
        _default_pools = _DefaultPools(context.meter_provider)

    def disable(self) -> None:
        _stop_default_pools()

    def __repr__(self) -> str:
        return "ThreadPoolIntegration()"


class _DefaultPools:
    """Reports anyio's default limiter and the loops' default executors to one provider.

    Made when the thread-pool part is enabled; the thread-pool registry and
    metrics are imported, and the instruments made, when the first default
    pool is seen (``register``).
    """

    __slots__ = ("_lock", "_provider", "_register", "_stopped")

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        self._lock = threading.Lock()
        self._provider = meter_provider
        self._register: Callable[[Any, str, asyncio.AbstractEventLoop | None], None] | None = None
        self._stopped = False

    def register(self, target: Any, name: str, loop: asyncio.AbstractEventLoop | None) -> None:
        """``_api.register_default(target, name, loop)``; nothing once stopped."""
        register = self._register or self._start()
        if register is not None:
            register(target, name, loop)

    def _start(self) -> Callable[[Any, str, asyncio.AbstractEventLoop | None], None] | None:
        from otel_backpressure.runtime._api import register_default, set_default_metrics
        from otel_backpressure.runtime._metrics import ThreadPoolMetrics

        with self._lock:
            if self._register is None and not self._stopped:
                set_default_metrics(ThreadPoolMetrics.for_provider(self._provider))
                self._register = register_default
            return self._register

    def stop(self) -> None:
        """Stop reporting the default pools and forget them."""
        with self._lock:
            self._stopped = True
            started, self._register = self._register is not None, None
        if started:
            from otel_backpressure.runtime._api import set_default_metrics

            set_default_metrics(None)


# The thread-pool part's default pools while it is on.
_default_pools: _DefaultPools | None = None


def _stop_default_pools() -> None:
    global _default_pools
    pools, _default_pools = _default_pools, None
    if pools is not None:
        pools.stop()


def _limiter_init(context: InstrumentationContext) -> Wrapper:
    def __init__(
        wrapped: Callable[..., Any], limiter: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        wrapped(*args, **kwargs)
        try:
            from otel_backpressure.runtime._threads import time_waits

            time_waits(limiter)  # just made: no other task can hold it yet
        except Exception:
            _logger.debug("Cannot time the waits of %r", limiter, exc_info=True)

    return __init__


def _run_var_set(context: InstrumentationContext) -> Wrapper:
    def set_(
        wrapped: Callable[..., Any], run_var: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        pools = _default_pools
        if pools is not None and getattr(run_var, "_name", None) == "_default_thread_limiter":
            try:
                limiter = args[0] if args else kwargs["value"]
                pools.register(limiter, ANYIO, _running_loop())
            except Exception:
                _logger.debug("Cannot measure anyio's default thread limiter", exc_info=True)
        return result

    return set_


def _run_in_executor(context: InstrumentationContext) -> Wrapper:
    def run_in_executor(
        wrapped: Callable[..., Any], loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        executor = args[0] if args else kwargs.get("executor")
        if executor is None:
            try:
                _measure_default_executor(loop)
            except Exception:
                _logger.debug("Cannot measure the default executor", exc_info=True)
        return wrapped(*args, **kwargs)

    return run_in_executor


def _measure_default_executor(loop: Any) -> None:
    pools = _default_pools
    if pools is None:
        return
    if not isinstance(loop, asyncio.BaseEventLoop):
        return  # uvloop keeps its default executor where Python cannot read it
    default = getattr(loop, "_default_executor", None)
    if default is None:
        if loop.is_closed() or getattr(loop, "_executor_shutdown_called", False):
            return  # run_in_executor raises its own error
        # What run_in_executor would make, made a moment earlier through the
        # public setter, so that its first call is counted too.
        default = ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(default)
    if isinstance(default, ThreadPoolExecutor):
        pools.register(default, DEFAULT_EXECUTOR, loop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
