"""The runtime instruments: loop delay and utilization, thread-pool state and waits.

Thread-pool counts are read from each pool at collection time; waits are
appended to a deque on the hot path (tens of nanoseconds, where an SDK
``record()`` costs several microseconds against a ~50-150 µs thread hand-off)
and handed to the histogram when the SDK collects. Pools with the same name
(anyio's default limiter of two loops) are reported as one, summed.

Example::

    thread_pools = ThreadPoolMetrics.for_provider(meter_provider)
    thread_pools.add(source)
    loops = LoopMetrics(meter_provider)
    loops.record_delay(0.2, {"backpressure.event_loop.name": "MainThread"})
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    MeterProvider,
    Observation,
    get_meter_provider,
)

from otel_backpressure._sdk import HistogramSink
from otel_backpressure._shared import get_meter
from otel_backpressure.runtime._loop import LOOP_NAME, LoopMonitors
from otel_backpressure.runtime._threads import MAX_BUFFERED, Source, ThreadPoolReading, WaitBuffer

__all__ = ["DELAY_BOUNDARIES", "POOL_NAME", "WAIT_BOUNDARIES", "LoopMetrics", "ThreadPoolMetrics"]

_logger = logging.getLogger(__name__)

POOL_NAME: Final = "backpressure.thread_pool.name"
# 1 ms to 10 s in 1-2.5-5 steps: a loop stall worth seeing starts near 1 ms
# (the selector's timeout granularity), and beyond 10 s the service is down.
DELAY_BOUNDARIES: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# The semantic conventions' advice for client durations, as the pool waits use.
WAIT_BOUNDARIES: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class LoopMetrics:
    """``backpressure.event_loop.delay`` and ``.utilization`` over ``monitors``.

    Samples are buffered per loop name and handed to the histogram at
    collection: an SDK ``record()`` right after the loop wakes from a 10 ms
    sleep measured 40-50 µs (cold caches), a third of the sampler's whole cost.
    """

    __slots__ = ("__weakref__", "_buffers", "_last", "_sinks", "monitors")

    _by_provider: ClassVar[weakref.WeakKeyDictionary[Any, LoopMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _by_provider_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def for_provider(
        cls, meter_provider: MeterProvider | None, monitors: LoopMonitors
    ) -> LoopMetrics:
        """The one instance for ``meter_provider`` (None: the global provider), so that
        instrumenting again does not register a second set of instruments."""
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        with cls._by_provider_lock:
            existing = cls._by_provider.get(provider)
            if existing is None or existing.monitors is not monitors:
                existing = cls(provider, monitors)
                cls._by_provider[provider] = existing
            return existing

    def __init__(self, meter_provider: MeterProvider | None, monitors: LoopMonitors) -> None:
        meter = get_meter(meter_provider)
        self.monitors = monitors
        self._buffers: dict[str, WaitBuffer] = {}
        # monitor -> (time, idle seconds) at the previous collection
        self._last: weakref.WeakKeyDictionary[Any, tuple[float, float]] = (
            weakref.WeakKeyDictionary()
        )
        delay = meter.create_histogram(
            "backpressure.event_loop.delay",
            unit="s",
            description="How late the event loop ran a sampling callback that was due.",
            explicit_bucket_boundaries_advisory=DELAY_BOUNDARIES,
        )
        self._sinks = _Sinks(delay, LOOP_NAME, "event-loop delay")
        meter.create_observable_gauge(
            "backpressure.event_loop.utilization",
            callbacks=[self._utilization],
            unit="1",
            description="Share of wall time the event loop was busy since the previous collection.",
        )

    def record_delay(self, delay: float, attributes: dict[str, str]) -> None:
        """Keep one sample for the next collection (called by the loop's sampler)."""
        name = attributes[LOOP_NAME]
        buffer = self._buffers.get(name)
        if buffer is None:
            fresh = WaitBuffer()
            fresh.flush = lambda: self._sinks.flush(name, fresh)
            buffer = self._buffers.setdefault(name, fresh)  # atomic: one buffer per name
        buffer.append(delay)
        if len(buffer) > MAX_BUFFERED:
            buffer.flush()

    def _utilization(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, buffer in list(self._buffers.items()):  # the histogram is fed at collection
            self._sinks.flush(name, buffer)
        now = time.monotonic()
        observations = []
        for monitor in self.monitors.active():
            if not monitor.measures_utilization:
                continue
            idle = monitor.idle_seconds(now)
            since, idle_before = self._last.get(monitor, (monitor.started_at, 0.0))
            self._last[monitor] = (now, idle)
            wall = now - since
            if wall <= 0:
                continue
            busy = 1.0 - (idle - idle_before) / wall
            observations.append(Observation(min(1.0, max(0.0, busy)), monitor.attributes))
        return observations


class _Sinks:
    """One ``HistogramSink`` per name of a histogram, fed from wait buffers."""

    __slots__ = ("_attribute", "_histogram", "_sinks", "_what")

    def __init__(self, histogram: Histogram, attribute: str, what: str) -> None:
        self._histogram = histogram
        self._attribute = attribute
        self._what = what
        self._sinks: dict[str, HistogramSink] = {}

    def flush(self, name: str, buffer: deque[float]) -> None:
        values = _drain(buffer)
        if not values:
            return
        sink = self._sinks.get(name)
        if sink is None:
            attributes = {self._attribute: name}
            sink = self._sinks.setdefault(name, HistogramSink(self._histogram, attributes))
        try:
            sink.record_many(values)
        except Exception:  # telemetry never raises into the host
            _logger.debug("Recording %s failed", self._what, exc_info=True)


def _drain(values: deque[float]) -> list[float]:
    drained: list[float] = []
    try:
        while True:
            drained.append(values.popleft())
    except IndexError:
        return drained


class ThreadPoolMetrics:
    """The five ``backpressure.thread_pool.*`` instruments of one provider, over its sources."""

    _by_provider: ClassVar[weakref.WeakKeyDictionary[Any, ThreadPoolMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _by_provider_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = get_meter(meter_provider)
        self._lock = threading.Lock()
        self._sources: dict[Source, WaitBuffer] = {}
        wait = meter.create_histogram(
            "backpressure.thread_pool.wait_time",
            unit="s",
            description="How long one call waited for a thread or token.",
            explicit_bucket_boundaries_advisory=WAIT_BOUNDARIES,
        )
        self._sinks = _Sinks(wait, POOL_NAME, "thread-pool waits")
        meter.create_observable_up_down_counter(
            "backpressure.thread_pool.used",
            callbacks=[self._used],
            unit="{thread}",
            description="Threads (or tokens) in use.",
        )
        meter.create_observable_up_down_counter(
            "backpressure.thread_pool.max",
            callbacks=[self._max],
            unit="{thread}",
            description="Most threads (or tokens) the pool allows; absent when unbounded.",
        )
        meter.create_observable_up_down_counter(
            "backpressure.thread_pool.queue.length",
            callbacks=[self._queue],
            unit="{work_item}",
            description="Calls waiting for a thread or token.",
        )
        meter.create_observable_gauge(
            "backpressure.thread_pool.usage",
            callbacks=[self._usage],
            unit="1",
            description="Used / max, 0..1; absent when unbounded.",
        )

    @classmethod
    def for_provider(cls, meter_provider: MeterProvider | None = None) -> ThreadPoolMetrics:
        """The one instance for ``meter_provider`` (None: the global provider)."""
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        with cls._by_provider_lock:
            existing = cls._by_provider.get(provider)
            if existing is None:
                existing = cls(provider)
                cls._by_provider[provider] = existing
            return existing

    def add(self, source: Source) -> None:
        with self._lock:
            if source in self._sources:
                return
            buffer = WaitBuffer()
            buffer.flush = lambda: self._sinks.flush(source.name, buffer)
            self._sources[source] = buffer
        source.add(buffer)

    def remove(self, source: Source) -> None:
        with self._lock:
            buffer = self._sources.pop(source, None)
        if buffer is not None:
            source.remove(buffer)
            self._sinks.flush(source.name, buffer)

    def __contains__(self, source: object) -> bool:
        return source in self._sources

    def _readings(self) -> dict[str, ThreadPoolReading]:
        with self._lock:
            sources = list(self._sources)
        readings: dict[str, ThreadPoolReading] = {}
        for source in sources:
            try:
                if not source.alive:
                    self.remove(source)
                    continue
                reading = source.read()
            except Exception:
                _logger.debug("Reading thread pool %s failed", source.name, exc_info=True)
                continue
            known = readings.get(source.name)
            readings[source.name] = reading if known is None else known + reading
        return readings

    def _used(self, options: CallbackOptions) -> Iterable[Observation]:
        readings = self._readings()  # first: reading a limiter may claim its early waits
        with self._lock:
            buffers = list(self._sources.items())
        for source, buffer in buffers:  # the histogram is fed at each collection
            self._sinks.flush(source.name, buffer)
        return [Observation(r.used, {POOL_NAME: n}) for n, r in readings.items()]

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(r.max, {POOL_NAME: n})
            for n, r in self._readings().items()
            if r.max is not None
        ]

    def _queue(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.queue, {POOL_NAME: n}) for n, r in self._readings().items()]

    def _usage(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for name, reading in self._readings().items():
            usage = reading.usage
            if usage is not None:
                observations.append(Observation(min(1.0, usage), {POOL_NAME: name}))
        return observations

    def __repr__(self) -> str:
        return f"ThreadPoolMetrics(pools={len(self._sources)})"
