"""The ``http`` family: outbound HTTP connection pools (httpx's httpcore pool, aiohttp's connector).

Every series carries ``server.address``, ``server.port`` and ``url.scheme``,
the attributes .NET 8's ``System.Net.Http`` meter and the semantic conventions
use; there is no pool attribute, so pools that talk to the same server add up
(their connections and their limits; one unbounded pool makes the server
unbounded). Each pool names at most ``max_servers``
distinct servers (the ``OTEL_PYTHON_BACKPRESSURE_HTTP_CLIENT_MAX_SERVERS``
setting); servers past that share ``server.address="_OTHER"`` and no port,
so a client that calls many hosts cannot grow the series without bound.

A source's ``read()`` returns an ``HttpReading``: one ``ServerLoad`` per server
key. Counts are read from the pool at collection time; the two histograms
(``http.client.request.time_in_queue``, ``http.client.connection.duration``)
are measured on the hot path into an ``HttpRecorder``'s deques and handed to
the SDK at collection, as for the database pools. Pool timeouts go to a
synchronous ``Counter``, as the contract's row says: a request that timed out
has already waited its whole pool timeout, so the SDK call costs nothing it
would feel; each server starts at 0 at the first collection that sees it,
so ``increase()`` counts its first timeout.

Example::

    servers = Servers(max_servers=20)
    key = servers.key("https", "api.example", 443)
    reading = HttpReading({key: ServerLoad(active=2, idle=1, max=10)})
    reading.servers[key].usage   # 0.3: open (active + idle) / max
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

from otel_backpressure._sdk import HistogramSink
from otel_backpressure._shared import get_meter
from otel_backpressure.pool._registrations import RegisteredSources
from otel_backpressure.pool._source import (
    PoolReading,
    PoolSource,
    TimingRecorder,
    shadowed,
    weak_pool,
)

__all__ = [
    "CONNECTION_DURATION_BOUNDARIES",
    "OTHER",
    "QUEUE_BOUNDARIES",
    "HttpClientMetrics",
    "HttpPoolSource",
    "HttpReading",
    "HttpRecorder",
    "ServerKey",
    "ServerLoad",
    "Servers",
    "load_of",
    "max_servers_setting",
]

_logger = logging.getLogger(__name__)

#: ``server.address`` of every server past a pool's ``max_servers``.
OTHER: Final = "_OTHER"
# The semantic conventions' advice for http.client.connection.duration and for
# HTTP request durations (which .NET uses for time_in_queue), in seconds.
CONNECTION_DURATION_BOUNDARIES: Final = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
QUEUE_BOUNDARIES: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# Hot-path deques longer than this are handed to the SDK at once (amortised).
_MAX_BUFFERED: Final = 4096

#: A server's attributes as a hashable tuple of pairs, in a fixed order.
ServerKey = tuple[tuple[str, Any], ...]


class Servers:
    """The bounded table of one pool's servers: the first ``max_servers`` seen (at a
    collection or a timed request) get their own key, for the pool's life."""

    __slots__ = ("_keys", "_lock", "max_servers")

    def __init__(self, max_servers: int) -> None:
        self.max_servers = max_servers
        self._keys: dict[tuple[str, str, int], ServerKey] = {}
        self._lock = threading.Lock()

    def key(self, scheme: str, host: str, port: int) -> ServerKey:
        """The attributes for ``scheme://host:port`` in this pool; lock-free once known."""
        found = self._keys.get((scheme, host, port))
        if found is not None:
            return found
        with self._lock:
            found = self._keys.get((scheme, host, port))
            if found is not None:
                return found
            if len(self._keys) < self.max_servers:
                found = (("server.address", host), ("server.port", port), ("url.scheme", scheme))
                self._keys[(scheme, host, port)] = found
                return found
        return (("server.address", OTHER), ("url.scheme", scheme))

    def keys(self) -> list[ServerKey]:
        """Every server given its own key so far."""
        return list(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Servers({len(self._keys)} of {self.max_servers})"


class ServerLoad:
    """One server's share of one pool (or of all pools) now; ``max`` None when unbounded."""

    __slots__ = ("active", "idle", "max", "pending", "timeouts")

    def __init__(
        self,
        *,
        active: int = 0,
        idle: int = 0,
        pending: int = 0,
        timeouts: int = 0,
        max: int | None = None,
    ) -> None:
        self.active = active
        self.idle = idle
        self.pending = pending
        self.timeouts = timeouts
        self.max = max

    @property
    def usage(self) -> float | None:
        """Open connections (active + idle) / ``max``, at most 1; None when unbounded.

        The contract's ``backpressure.http.client.connection.usage``. Idle
        connections count: httpx's limit counts them (it closes an idle one to
        make room for another server's), aiohttp's does not, so past its limit
        open / max can exceed 1 and is capped. How close the next request is to
        queueing is ``active / max`` and the pending requests, which dashboards
        and alerts compute from the other series.
        """
        if not self.max:
            return None
        return min(1.0, (self.active + self.idle) / self.max)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerLoad):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ServerLoad({fields})"


class HttpReading:
    """One HTTP pool's state now, by server key.

    - ``active``: open connections serving a request (``http.connection.state=active``).
    - ``idle``: open connections waiting for one.
    - ``pending``: requests waiting for a connection now.
    - ``timeouts``: requests that gave up waiting for a connection so far (monotonic).
    - ``max``: the most connections the pool lends for that server at once (the
      pool's limit, or the per-host one where the library has it and it is
      tighter); None when unbounded.
    """

    __slots__ = ("limit", "servers")

    def __init__(self, servers: dict[ServerKey, ServerLoad], limit: int | None = None) -> None:
        self.servers = servers
        self.limit = limit  # the pool's own limit on all its connections, if any

    def totals(self) -> PoolReading:
        """The whole pool as a ``PoolReading`` (what ``pool_health()`` reports)."""
        loads = self.servers.values()
        return PoolReading(
            used=sum(load.active for load in loads),
            idle=sum(load.idle for load in loads),
            pending=sum(load.pending for load in loads),
            timeouts=sum(load.timeouts for load in loads),
            max=self.limit,
        )

    def __repr__(self) -> str:
        return f"HttpReading({self.servers!r}, limit={self.limit!r})"


def load_of(loads: dict[ServerKey, ServerLoad], key: ServerKey) -> ServerLoad:
    """The ``ServerLoad`` for ``key`` in ``loads``, made on first use (for ``read()``)."""
    load = loads.get(key)
    if load is None:
        load = loads[key] = ServerLoad()
    return load


class HttpRecorder(TimingRecorder):
    """Durations waiting for one provider's HTTP histograms, each with its server key."""

    __slots__ = ("duration", "queue")

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque[tuple[ServerKey, float]] = deque()
        self.duration: deque[tuple[ServerKey, float]] = deque()

    def add(self, values: deque[tuple[ServerKey, float]], key: ServerKey, value: float) -> None:
        """Buffer one value; hand the buffers over at once when they grow too long."""
        values.append((key, value))
        if len(values) > _MAX_BUFFERED:
            self.flush()


def _drain(values: deque[tuple[ServerKey, float]]) -> dict[ServerKey, list[float]]:
    # only what is there now: a value appended meanwhile waits for the next drain
    grouped: dict[ServerKey, list[float]] = defaultdict(list)
    pop = values.popleft
    for _ in range(len(values)):
        key, value = pop()
        grouped[key].append(value)
    return grouped


class _Registration:
    __slots__ = ("flush_lock", "recorder", "source")

    def __init__(self, source: PoolSource, recorder: HttpRecorder | None) -> None:
        self.source = source
        self.recorder = recorder
        self.flush_lock = threading.Lock()


class HttpClientMetrics(RegisteredSources[_Registration]):
    """The seven HTTP client pool instruments of one ``MeterProvider`` and the pools they report.

    Read at collection: open connections, pending requests, max and usage;
    recorded as they happen: the two histograms (buffered) and the timeouts.
    """

    def __init__(self, meter_provider: MeterProvider) -> None:
        super().__init__()
        meter = get_meter(meter_provider)
        self._rows: dict[ServerKey, ServerLoad] = {}
        self._attributes: dict[ServerKey, dict[str, Any]] = {}
        self._counted: set[ServerKey] = set()  # servers whose timeouts series exists
        meter.create_observable_up_down_counter(
            "http.client.open_connections",
            callbacks=[self._open],
            unit="{connection}",
            description="Open connections by state (active serves a request, idle waits).",
        )
        observable: tuple[tuple[str, str, str, Callable[..., Iterable[Observation]]], ...] = (
            (
                "backpressure.http.client.pending_requests",
                "{request}",
                "Requests waiting for a connection from the pool.",
                self._pending,
            ),
            (
                "backpressure.http.client.connection.max",
                "{connection}",
                "Most connections the pool opens to the server.",
                self._max,
            ),
        )
        for name, unit, description, callback in observable:
            meter.create_observable_up_down_counter(
                name, callbacks=[callback], unit=unit, description=description
            )
        self._timeouts = meter.create_counter(
            "backpressure.http.client.pool.timeouts",
            unit="{timeout}",
            description="Requests that gave up waiting for a connection from the pool.",
        )
        meter.create_observable_gauge(
            "backpressure.http.client.connection.usage",
            callbacks=[self._usage],
            unit="1",
            description="Open connections / the pool's limit for the server (0..1).",
        )
        self._histograms: dict[str, Histogram] = {
            "queue": meter.create_histogram(
                "http.client.request.time_in_queue",
                unit="s",
                description="Time a request waited for a connection from the pool.",
                explicit_bucket_boundaries_advisory=list(QUEUE_BOUNDARIES),
            ),
            "duration": meter.create_histogram(
                "http.client.connection.duration",
                unit="s",
                description="How long a connection was open.",
                explicit_bucket_boundaries_advisory=list(CONNECTION_DURATION_BOUNDARIES),
            ),
        }
        self._sinks: dict[tuple[str, ServerKey], HistogramSink] = {}

    _what = "HTTP pool"

    def _new_registration(self, source: PoolSource, *, timings: bool) -> _Registration:
        return _Registration(source, HttpRecorder() if timings else None)

    def add(self, source: PoolSource, *, timings: bool) -> None:
        """Report ``source`` from the next collection on, and count its timeouts (idempotent)."""
        super().add(source, timings=timings)
        if isinstance(source, HttpPoolSource):
            source.add_timeout_counter(self._timed_out)

    def _removed(self, source: PoolSource, remaining: dict[int, _Registration]) -> None:
        if isinstance(source, HttpPoolSource):
            source.remove_timeout_counter(self._timed_out)

    def _timed_out(self, server: ServerKey) -> None:
        """One request to ``server`` gave up waiting for a connection (the pool's thread)."""
        self._timeouts.add(1, self._attributes_of(server))

    def __repr__(self) -> str:
        return f"HttpClientMetrics(pools={len(self._registrations)}, servers={len(self._rows)})"

    # -- collection -----------------------------------------------------------------------

    def _read_all(self) -> dict[ServerKey, ServerLoad]:
        rows: dict[ServerKey, ServerLoad] = {}

        def read(key: int, registration: _Registration) -> None:
            reading: object = registration.source.read()  # an HTTP source returns its own kind
            if not isinstance(reading, HttpReading):
                raise TypeError(f"expected an HttpReading, got {type(reading).__name__}")
            self._merge(rows, reading)

        self._read_each(read)
        return rows

    @staticmethod
    def _merge(rows: dict[ServerKey, ServerLoad], reading: HttpReading) -> None:
        """Add one pool's loads to ``rows``: limits add up, and one unbounded pool to a
        server makes the server unbounded (no max, no usage)."""
        for server, load in reading.servers.items():
            row = rows.get(server)
            if row is None:
                row = rows[server] = ServerLoad(max=load.max)
            elif row.max is not None:
                row.max = None if load.max is None else row.max + load.max
            row.active += load.active
            row.idle += load.idle
            row.pending += load.pending

    def _flush(self, registration: _Registration) -> None:
        recorder = registration.recorder
        if recorder is None:
            return
        with registration.flush_lock:
            for field in ("queue", "duration"):
                values: deque[tuple[ServerKey, float]] = getattr(recorder, field)
                if values:
                    for server, batch in _drain(values).items():
                        self._sink(field, server).record_many(batch)

    def _sink(self, field: str, server: ServerKey) -> HistogramSink:
        sink = self._sinks.get((field, server))
        if sink is None:
            sink = HistogramSink(self._histograms[field], self._attributes_of(server))
            self._sinks[(field, server)] = sink
        return sink

    def _attributes_of(self, server: ServerKey) -> dict[str, Any]:
        attributes = self._attributes.get(server)
        if attributes is None:
            attributes = self._attributes[server] = dict(server)
        return attributes

    def _open(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs first in each collection: reads every pool once for all callbacks.
        try:
            self._rows = self._read_all()
        except Exception:
            _logger.exception("HTTP pool collection failed")
            self._rows = {}
        observations = []
        for server, row in self._rows.items():
            attributes = self._attributes_of(server)
            if server not in self._counted:  # its timeouts series starts at 0
                self._counted.add(server)
                self._timeouts.add(0, attributes)
            observations.append(
                Observation(row.active, {**attributes, "http.connection.state": "active"})
            )
            observations.append(
                Observation(row.idle, {**attributes, "http.connection.state": "idle"})
            )
        return observations

    def _observe(self, field: str) -> list[Observation]:
        return [
            Observation(value, self._attributes_of(server))
            for server, row in self._rows.items()
            if (value := getattr(row, field)) is not None
        ]

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("pending")

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("max")

    def _usage(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe("usage")


def max_servers_setting() -> int:
    """The ``http_client_max_servers`` setting, read when a pool is instrumented."""
    from otel_backpressure.settings import Settings

    return Settings.from_env().http_client_max_servers


class HttpPoolSource:
    """What the httpx and aiohttp sources share: the pool held weakly, its servers, its timeouts.

    Subclasses set ``hooked`` (the instance attributes ``_hook`` shadows on the
    pool with ``setattr``, removed again by ``close()`` with ``delattr``: never
    through the pool's ``__dict__``, see ``shadowed``) and implement ``_hook``
    and ``read``.
    """

    family: ClassVar[str] = "http"
    hooked: ClassVar[tuple[str, ...]] = ()

    __slots__ = (
        "__weakref__",
        "_clock",
        "_pool",
        "_timeouts",
        "_timeouts_lock",
        "name",
        "recorders",
        "servers",
        "timeout_counters",
    )

    def __init__(
        self,
        pool: Any,
        *,
        name: str,
        clock: Callable[[], float] = time.perf_counter,
        on_gone: Callable[[PoolSource], None] | None = None,
        max_servers: int | None = None,
    ) -> None:
        if any(shadowed(pool, attribute) for attribute in self.hooked):
            raise ValueError(f"pool {name!r} is already instrumented")
        self.name = name
        self.recorders: tuple[HttpRecorder, ...] = ()
        # one per provider reporting this pool: called with the server key of each timeout
        self.timeout_counters: tuple[Callable[[ServerKey], None], ...] = ()
        self.servers = Servers(max_servers if max_servers is not None else max_servers_setting())
        self._clock = clock
        self._timeouts: dict[ServerKey, int] = {}
        self._timeouts_lock = threading.Lock()
        self._pool = weak_pool(pool, self, on_gone)
        self._hook(pool)

    def _hook(self, pool: Any) -> None:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        return self._pool() is not None

    def _live_pool(self) -> Any:
        pool = self._pool()
        if pool is None:
            raise RuntimeError("the pool was garbage collected")
        return pool

    def _new_reading(self) -> dict[ServerKey, ServerLoad]:
        """A load for every server this pool has named, with its timeouts: none drops out."""
        loads = {key: ServerLoad() for key in self.servers.keys()}  # noqa: SIM118 - a method, not a dict
        for key, count in list(self._timeouts.items()):
            load_of(loads, key).timeouts = count
        return loads

    def _timed_out(self, key: ServerKey) -> None:
        with self._timeouts_lock:  # a rare path: the lock costs nothing that matters
            self._timeouts[key] = self._timeouts.get(key, 0) + 1
        for count in self.timeout_counters:
            count(key)

    def add_timeout_counter(self, count: Callable[[ServerKey], None]) -> None:
        if count not in self.timeout_counters:
            self.timeout_counters = (*self.timeout_counters, count)

    def remove_timeout_counter(self, count: Callable[[ServerKey], None]) -> None:
        self.timeout_counters = tuple(c for c in self.timeout_counters if c != count)

    def add_recorder(self, recorder: TimingRecorder) -> None:
        if isinstance(recorder, HttpRecorder):
            self.recorders = (*self.recorders, recorder)

    def remove_recorder(self, recorder: TimingRecorder) -> None:
        self.recorders = tuple(r for r in self.recorders if r is not recorder)

    def close(self) -> None:
        """Remove the hooks; safe twice."""
        self.recorders = ()
        self.timeout_counters = ()
        pool = self._pool()
        if pool is not None:
            for attribute in self.hooked:
                if shadowed(pool, attribute):
                    with contextlib.suppress(AttributeError):  # set by someone else's class
                        delattr(pool, attribute)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, alive={self.alive}, "
            f"servers={self.servers!r}, recorders={len(self.recorders)})"
        )
