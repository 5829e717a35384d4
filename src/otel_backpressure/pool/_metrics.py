"""The ``db`` family: the pool instruments of one provider, and one collection
callback per instrument over every live pool.

Counts are read from each pool when the SDK collects, never accumulated from
events, so they cannot drift. Timings are measured on the hot path into plain
lists (an ``append`` costs tens of nanoseconds, an SDK ``record()`` several
microseconds) and handed to the SDK's histograms when it collects; see
``HistogramSink``.

``FAMILIES`` maps a source's ``family`` to the class that meters it; the
registry keeps one instance per (provider, family).

Example::

    pool_metrics = PoolMetrics(meter_provider)   # the registry makes one per provider
    pool_metrics.add(source, timings=True)       # anything implementing PoolSource
    pool_metrics.remove(source)                  # its series stop at the next collection
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol

from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

from otel_backpressure._sdk import HistogramSink
from otel_backpressure._shared import get_meter
from otel_backpressure.pool._http import HttpClientMetrics
from otel_backpressure.pool._registrations import RegisteredSources
from otel_backpressure.pool._source import PoolReading, PoolSource, TimingRecorder

__all__ = ["BOUNDARIES", "FAMILIES", "POOL_NAME", "STATE", "MetricFamily", "PoolMetrics"]

_logger = logging.getLogger(__name__)

POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
# The semantic conventions' advice for database client durations, in seconds.
BOUNDARIES: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class MetricFamily(Protocol):
    """The instruments of one family for one provider, and the sources they report."""

    def add(self, source: PoolSource, *, timings: bool) -> None:
        """Report ``source`` from the next collection on (idempotent)."""

    def remove(self, source: PoolSource) -> None:
        """Stop reporting ``source``; its observable series stop at once. Safe twice."""

    def __len__(self) -> int: ...


def _drain(values: list[float]) -> list[float]:
    # Only the values present now are taken: the copy and the delete are each one
    # C-level operation, and a value appended in between (on another thread) goes
    # to the end, past what is deleted, so it stays for the next drain. Drains of
    # one registration never overlap (its flush lock).
    taken = values[:]
    del values[: len(taken)]
    return taken


class _Registration:
    __slots__ = ("attributes", "flush_lock", "idle_attrs", "recorder", "source", "used_attrs")

    def __init__(self, source: PoolSource, recorder: TimingRecorder | None) -> None:
        self.flush_lock = threading.Lock()
        self.source = source
        self.recorder = recorder
        self.attributes = {POOL_NAME: source.name}
        self.used_attrs = {POOL_NAME: source.name, STATE: "used"}
        self.idle_attrs = {POOL_NAME: source.name, STATE: "idle"}


class PoolMetrics(RegisteredSources[_Registration]):
    """The eleven pool instruments of one ``MeterProvider`` and the pools they report."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        super().__init__()
        meter = get_meter(meter_provider)
        self._readings: dict[int, PoolReading] = {}
        # (reading field, instrument kind, name, unit, description); the count
        # callback is created first and runs first in each collection: it reads
        # every pool once and drains the timings, the others reuse its reading.
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description="Connections by state.",
        )
        observable: Sequence[tuple[str, Callable[..., Any], str, str, str]] = (
            (
                "max",
                meter.create_observable_up_down_counter,
                "db.client.connection.max",
                "{connection}",
                "Most connections allowed.",
            ),
            (
                "idle_max",
                meter.create_observable_up_down_counter,
                "db.client.connection.idle.max",
                "{connection}",
                "Most idle connections allowed.",
            ),
            (
                "idle_min",
                meter.create_observable_up_down_counter,
                "db.client.connection.idle.min",
                "{connection}",
                "Fewest idle connections allowed.",
            ),
            (
                "pending",
                meter.create_observable_up_down_counter,
                "db.client.connection.pending_requests",
                "{request}",
                "Requests waiting for a connection.",
            ),
            (
                "overflow",
                meter.create_observable_up_down_counter,
                "backpressure.pool.overflow",
                "{connection}",
                "Connections open beyond the pool size.",
            ),
            (
                "timeouts",
                meter.create_observable_counter,
                "db.client.connection.timeouts",
                "{timeout}",
                "Checkouts that timed out waiting for a connection.",
            ),
            (
                "usage",
                meter.create_observable_gauge,
                "backpressure.pool.usage",
                "1",
                "Used connections / most allowed (0..1).",
            ),
        )
        for field, create, name, unit, description in observable:
            create(name, callbacks=[self._observer(field)], unit=unit, description=description)
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

    def _new_registration(self, source: PoolSource, *, timings: bool) -> _Registration:
        return _Registration(source, TimingRecorder() if timings else None)

    def _removed(self, source: PoolSource, remaining: dict[int, _Registration]) -> None:
        # its observable series disappear at once; the histograms' go with the last of its name
        if all(r.source.name != source.name for r in remaining.values()):
            for field in ("create", "wait", "use"):
                self._sinks.pop((field, source.name), None)

    def __repr__(self) -> str:
        names = [r.source.name for r in self._registrations.values()]
        return f"PoolMetrics(pools={names!r})"

    # -- collection ---------------------------------------------------------------------

    def _read_all(self) -> None:
        readings: dict[int, PoolReading] = {}

        def read(key: int, registration: _Registration) -> None:
            readings[key] = registration.source.read()

        self._read_each(read)
        self._readings = readings

    def _flush(self, registration: _Registration) -> None:
        recorder = registration.recorder
        if recorder is None:
            return
        with registration.flush_lock:
            for field in ("create", "wait", "use"):
                values: list[float] = getattr(recorder, field)
                if values:
                    self._sink(field, registration).record_many(_drain(values))

    def _sink(self, field: str, registration: _Registration) -> HistogramSink:
        key = (field, registration.source.name)
        sink = self._sinks.get(key)
        if sink is None:
            sink = HistogramSink(self._histograms[field], registration.attributes)
            self._sinks[key] = sink
        return sink

    def _observer(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """The callback exporting one field of this collection's readings."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            registrations = self._registrations
            observations = []
            for key, reading in self._readings.items():
                value = getattr(reading, field)
                registration = registrations.get(key)
                if value is not None and registration is not None:
                    observations.append(Observation(value, registration.attributes))
            return observations

        return observe

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
            if reading.used is not None:
                observations.append(Observation(reading.used, registration.used_attrs))
            if reading.idle is not None:
                observations.append(Observation(reading.idle, registration.idle_attrs))
        return observations


#: A source's ``family`` -> the class that meters it (one instance per provider).
FAMILIES: Final[dict[str, Callable[[MeterProvider], MetricFamily]]] = {
    "db": PoolMetrics,
    "http": HttpClientMetrics,
}
