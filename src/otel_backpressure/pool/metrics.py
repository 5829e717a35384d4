"""The pool instruments, and one collection callback per instrument over every live pool.

Counts are read from each pool when the SDK collects, never accumulated from
events, so they cannot drift. Timings are measured on the hot path into plain
deques (an ``append`` costs tens of nanoseconds, an SDK ``record()`` several
microseconds) and handed to the SDK's histograms when it collects; see
``HistogramSink``.

Example::

    from otel_backpressure.pool.metrics import PoolMetrics

    pool_metrics = PoolMetrics.for_provider(meter_provider)   # one per provider
    pool_metrics.add(source)      # anything implementing PoolSource
    pool_metrics.remove(source)   # its series stop at the next collection
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Final, Protocol

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    MeterProvider,
    Observation,
    get_meter_provider,
)

from otel_backpressure._shared import get_meter
from otel_backpressure.pool._sdk import HistogramSink

__all__ = [
    "BOUNDARIES",
    "POOL_NAME",
    "STATE",
    "PoolMetrics",
    "PoolReading",
    "PoolSource",
    "RecorderSlots",
    "TimingRecorder",
]

_logger = logging.getLogger(__name__)

POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
# The semantic conventions' advice for database client durations, in seconds.
BOUNDARIES: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# A deque longer than this is handed to the SDK on the hot path (amortised),
# so memory stays bounded however long the exporter waits between collections.
MAX_BUFFERED: Final = 4096


class PoolReading:
    """One pool's state at collection time; ``None`` fields are not known for its kind."""

    __slots__ = ("idle", "idle_max", "idle_min", "max", "overflow", "pending", "timeouts", "used")

    def __init__(
        self,
        *,
        used: int,
        pending: int,
        timeouts: int,
        idle: int | None = None,
        max: int | None = None,
        idle_max: int | None = None,
        idle_min: int | None = None,
        overflow: int | None = None,
    ) -> None:
        self.used = used
        self.pending = pending
        self.timeouts = timeouts
        self.idle = idle
        self.max = max
        self.idle_max = idle_max
        self.idle_min = idle_min
        self.overflow = overflow

    @property
    def usage(self) -> float | None:
        """Used / max, or None when the pool is unbounded (or has no max)."""
        if not self.max:
            return None
        return self.used / self.max

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"PoolReading({fields})"


class TimingRecorder:
    """Durations in seconds waiting for one provider's histograms (one per registration).

    The hot path appends to a deque and calls ``flush()`` only when one grows
    past ``MAX_BUFFERED``; the provider's collection drains them otherwise.
    """

    __slots__ = ("create", "flush", "use", "wait")

    def __init__(self) -> None:
        self.create: deque[float] = deque()
        self.wait: deque[float] = deque()
        self.use: deque[float] = deque()
        self.flush: Callable[[], None] = _nothing

    def __repr__(self) -> str:
        return (
            f"TimingRecorder(create={len(self.create)}, wait={len(self.wait)}, "
            f"use={len(self.use)} buffered)"
        )


def _nothing() -> None:
    return None


class RecorderSlots:
    """The timing recorders a pool source feeds, one per provider it reports to.

    Read on every checkout: a tuple swapped whole, so never seen half-built.
    """

    __slots__ = ("recorders",)

    def __init__(self) -> None:
        self.recorders: tuple[TimingRecorder, ...] = ()

    def add_recorder(self, recorder: TimingRecorder) -> None:
        self.recorders = (*self.recorders, recorder)

    def remove_recorder(self, recorder: TimingRecorder) -> None:
        self.recorders = tuple(r for r in self.recorders if r is not recorder)


class PoolSource(Protocol):
    """What ``PoolMetrics`` needs from a pool adapter (SQLAlchemy engine, asyncpg pool)."""

    @property
    def name(self) -> str: ...

    @property
    def alive(self) -> bool:
        """False once the pool is gone (collected or closed): its series stop."""

    def read(self) -> PoolReading:
        """Read the pool; called on the exporter's thread, must not block or await."""

    def add_recorder(self, recorder: TimingRecorder) -> None: ...

    def remove_recorder(self, recorder: TimingRecorder) -> None: ...


def _drain(values: deque[float]) -> list[float]:
    # Only the values present now are taken; each popleft is atomic, so a value
    # appended meanwhile (on another thread) stays for the next drain. Drains of
    # one registration never overlap (its flush lock), so the pops cannot fail.
    pop = values.popleft
    return [pop() for _ in range(len(values))]


class _Registration:
    __slots__ = ("attributes", "flush_lock", "idle_attrs", "recorder", "source", "used_attrs")

    def __init__(self, source: PoolSource, recorder: TimingRecorder | None) -> None:
        self.flush_lock = threading.Lock()
        self.source = source
        self.recorder = recorder
        self.attributes = {POOL_NAME: source.name}
        self.used_attrs = {POOL_NAME: source.name, STATE: "used"}
        self.idle_attrs = {POOL_NAME: source.name, STATE: "idle"}


class PoolMetrics:
    """The eleven pool instruments of one ``MeterProvider`` and the pools they report."""

    _by_provider: ClassVar[weakref.WeakKeyDictionary[Any, PoolMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _by_provider_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = get_meter(meter_provider)
        self._lock = threading.Lock()
        # id(source) -> registration; copied on write so callbacks iterate without a lock
        self._registrations: dict[int, _Registration] = {}
        self._failed: set[int] = set()
        self._readings: dict[int, PoolReading] = {}
        observable: Sequence[tuple[str, str, str, Any]] = (
            ("db.client.connection.count", "{connection}", "Connections by state.", self._count),
            ("db.client.connection.max", "{connection}", "Most connections allowed.", self._max),
            (
                "db.client.connection.idle.max",
                "{connection}",
                "Most idle connections allowed.",
                self._idle_max,
            ),
            (
                "db.client.connection.idle.min",
                "{connection}",
                "Fewest idle connections allowed.",
                self._idle_min,
            ),
            (
                "db.client.connection.pending_requests",
                "{request}",
                "Requests waiting for a connection.",
                self._pending,
            ),
            (
                "backpressure.pool.overflow",
                "{connection}",
                "Connections open beyond the pool size.",
                self._overflow,
            ),
        )
        # The count callback runs first in each collection: it reads every pool
        # once and drains the timings, so the other callbacks reuse its reading.
        for name, unit, description, callback in observable:
            meter.create_observable_up_down_counter(
                name, callbacks=[callback], unit=unit, description=description
            )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            callbacks=[self._timeouts],
            unit="{timeout}",
            description="Checkouts that timed out waiting for a connection.",
        )
        meter.create_observable_gauge(
            "backpressure.pool.usage",
            callbacks=[self._usage],
            unit="1",
            description="Used connections / most allowed (0..1).",
        )
        self._histograms: dict[str, Histogram] = {
            field: meter.create_histogram(
                f"db.client.connection.{field}_time",
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(BOUNDARIES),
            )
            for field, description in (
                ("create", "Time to open a new connection."),
                ("wait", "Time to obtain a connection from the pool."),
                ("use", "Time between checkout and checkin."),
            )
        }
        self._sinks: dict[tuple[str, str], HistogramSink] = {}

    @classmethod
    def for_provider(cls, meter_provider: MeterProvider | None = None) -> PoolMetrics:
        """The instance for ``meter_provider`` (None: the global one), created once."""
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        with cls._by_provider_lock:
            existing = cls._by_provider.get(provider)
            if existing is None:
                existing = cls(provider)
                cls._by_provider[provider] = existing
            return existing

    def add(self, source: PoolSource, *, timings: bool) -> None:
        """Report ``source`` from the next collection on (idempotent)."""
        with self._lock:
            if id(source) in self._registrations:
                return
            recorder = TimingRecorder() if timings else None
            registration = _Registration(source, recorder)
            registrations = dict(self._registrations)
            registrations[id(source)] = registration
            self._registrations = registrations
        if recorder is not None:
            recorder.flush = lambda: self._flush_safely(registration)
            source.add_recorder(recorder)

    def remove(self, source: PoolSource) -> None:
        """Stop reporting ``source``: its observable series disappear at once."""
        with self._lock:
            registrations = dict(self._registrations)
            registration = registrations.pop(id(source), None)
            self._registrations = registrations
        if registration is None:
            return
        self._failed.discard(id(source))
        if registration.recorder is not None:
            source.remove_recorder(registration.recorder)
            self._flush_safely(registration)  # what was measured before still counts
        if all(r.source.name != source.name for r in registrations.values()):
            for field in ("create", "wait", "use"):
                self._sinks.pop((field, source.name), None)

    def __contains__(self, source: object) -> bool:
        return id(source) in self._registrations

    def __len__(self) -> int:
        return len(self._registrations)

    def __repr__(self) -> str:
        names = [r.source.name for r in self._registrations.values()]
        return f"PoolMetrics(pools={names!r})"

    # -- collection ---------------------------------------------------------------------

    def _read_all(self) -> None:
        readings: dict[int, PoolReading] = {}
        gone: list[PoolSource] = []
        for key, registration in list(self._registrations.items()):
            source = registration.source
            try:
                if not source.alive:
                    gone.append(source)
                    continue
                readings[key] = source.read()
                self._failed.discard(key)
            except Exception:
                if key not in self._failed:  # log once per pool, not once per collection
                    self._failed.add(key)
                    _logger.exception("Cannot read pool %r; skipping it", source.name)
            self._flush_safely(registration)
        self._readings = readings
        for source in gone:
            self.remove(source)

    def _flush_safely(self, registration: _Registration) -> None:
        try:
            self._flush(registration)
        except Exception:
            _logger.exception("Cannot record timings of pool %r", registration.source.name)

    def _flush(self, registration: _Registration) -> None:
        recorder = registration.recorder
        if recorder is None:
            return
        with registration.flush_lock:
            for field in ("create", "wait", "use"):
                values: deque[float] = getattr(recorder, field)
                if values:
                    self._sink(field, registration).record_many(_drain(values))

    def _sink(self, field: str, registration: _Registration) -> HistogramSink:
        key = (field, registration.source.name)
        sink = self._sinks.get(key)
        if sink is None:
            sink = HistogramSink(self._histograms[field], registration.attributes)
            self._sinks[key] = sink
        return sink

    def _observe(self, field: str) -> Iterator[Observation]:
        registrations = self._registrations
        for key, reading in self._readings.items():
            value = getattr(reading, field)
            registration = registrations.get(key)
            if value is not None and registration is not None:
                yield Observation(value, registration.attributes)

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            self._read_all()
        except Exception:
            _logger.exception("Pool collection failed")
            self._readings = {}
        observations = []
        registrations = self._registrations
        for key, reading in self._readings.items():
            registration = registrations.get(key)
            if registration is None:
                continue
            observations.append(Observation(reading.used, registration.used_attrs))
            if reading.idle is not None:
                observations.append(Observation(reading.idle, registration.idle_attrs))
        return observations

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("max"))

    def _idle_max(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("idle_max"))

    def _idle_min(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("idle_min"))

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("pending"))

    def _overflow(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("overflow"))

    def _usage(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("usage"))

    def _timeouts(self, options: CallbackOptions) -> Iterable[Observation]:
        return list(self._observe("timeouts"))
