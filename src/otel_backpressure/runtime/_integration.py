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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure._shared import Wrapper
from otel_backpressure.runtime._api import register_default, set_default_metrics
from otel_backpressure.runtime._loop import LoopMonitors
from otel_backpressure.runtime._metrics import LoopMetrics, ThreadPoolMetrics
from otel_backpressure.runtime._threads import ANYIO, DEFAULT_EXECUTOR, time_waits

__all__ = ["MONITORS", "EventLoopIntegration", "ThreadPoolIntegration"]

_logger = logging.getLogger(__name__)

#: Every monitored loop of the process.
MONITORS = LoopMonitors()


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
        metrics = LoopMetrics.for_provider(context.meter_provider, MONITORS)
        MONITORS.enable(metrics.record_delay, context.settings.event_loop_resolution)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        MONITORS.start(running)

    def disable(self) -> None:
        MONITORS.disable()

    def __repr__(self) -> str:
        return f"EventLoopIntegration({MONITORS!r})"


def _run_forever(context: InstrumentationContext) -> Wrapper:
    monitors = MONITORS

    def run_forever(
        wrapped: Callable[..., Any], loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not monitors.enabled or loop.is_running():
            return wrapped(*args, **kwargs)  # the loop raises "already running" itself
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
        set_default_metrics(ThreadPoolMetrics.for_provider(context.meter_provider))

    def disable(self) -> None:
        set_default_metrics(None)

    def __repr__(self) -> str:
        return "ThreadPoolIntegration()"


def _limiter_init(context: InstrumentationContext) -> Wrapper:
    def __init__(
        wrapped: Callable[..., Any], limiter: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        wrapped(*args, **kwargs)
        try:
            time_waits(limiter)  # just made: no other task can hold it yet
        except Exception:
            _logger.debug("Cannot time the waits of %r", limiter, exc_info=True)

    return __init__


def _run_var_set(context: InstrumentationContext) -> Wrapper:
    def set_(
        wrapped: Callable[..., Any], run_var: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        if getattr(run_var, "_name", None) == "_default_thread_limiter":
            try:
                limiter = args[0] if args else kwargs["value"]
                register_default(limiter, ANYIO, _running_loop())
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
        register_default(default, DEFAULT_EXECUTOR, loop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
