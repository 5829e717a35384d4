"""``PoolRegistry``: one place that owns a pool's life (added, named, read, dropped).

``instrument()`` asks the registry for the pool's source (one per pool,
whatever the number of calls or providers), and the registry registers it with
the metrics of each provider; ``pool_health()`` asks it for a reading;
``PoolInstrumentation.uninstrument()``, a collected engine or a closed pool
make it drop the source, free its name and give the pool back as it was.

Example::

    import otel_backpressure

    handle = otel_backpressure.instrument(engine, meter_provider=provider)
    handle.pool_name          # "db.example:5432/app"
    handle.uninstrument()     # the pool's series stop at the next collection

Adding a pool kind
------------------

One new source module and one line in ``_kinds.SOURCES``. The module defines a
class implementing ``_source.PoolSource`` (read its docstring), usually a
``RecorderSlots`` subclass:

- ``family = "db"`` for a database client pool (the ``db.client.connection.*``
  table); another table (outbound HTTP) is a new family: a metrics class with
  ``add(source, timings=)``, ``remove(source)`` and ``__len__`` (see
  ``_metrics.MetricFamily``), registered in ``_metrics.FAMILIES``; its sources
  may return their own reading type from ``read()``.
- ``resolve(target)``, ``server(key)``, ``peek(target)`` as static methods;
  ``server`` uses a resolver of ``_naming`` (``libpq_server()`` for anything
  speaking libpq's conninfo, such as psycopg) so the name says what the driver
  really connects to.
- ``__init__(key, *, name, clock, on_gone)``: hook the pool (time checkouts
  with ``clock``, a monotonic clock in seconds, appending to the ``wait``,
  ``use`` and ``create`` lists of every recorder in ``self.recorders`` and
  calling ``recorder.flush()`` past ``MAX_BUFFERED``), and call
  ``on_gone(self)`` when the pool goes away if that can be observed (a weakref
  callback); otherwise report ``alive`` False once it is closed.
- ``read()`` on the exporter's thread: read the pool's own counters, never
  count events; a slot whose connection is gone is not a connection.
- ``close()``: undo every hook; safe twice. Hooks must never raise into the
  host call (catch, log at debug, call through).

The ``SOURCES`` line names the library module whose presence in
``sys.modules`` makes the kind possible (nothing is imported to recognise a
pool), the source class as ``module:Class``, and the ``(module, attribute)``
that creates such pools, which ``BackpressureInstrumentor`` patches to catch
every new pool. Tests: drive the pool through known states against the real
service and compare every series (``tests/integration/pool/`` has examples).

Hooks on instances
------------------

The sources hook the instrumented pool *instance* (SQLAlchemy: instance
attributes shadowing four methods; psycopg_pool and redis-py: instance
attributes set with ``setattr``, see ``_checkout``; asyncpg, whose ``Pool``
has ``__slots__``: the instance's class swapped for a same-layout subclass
made for it), while
the rest of the package patches classes through ``_patching``'s table. In the
design's terms: the patch table patches code for the whole process, so every
pool would pay for the hooks, instrumented or not, and "the hot path stays
cheap" would hold only for a process that instruments every pool; a
per-instance hook costs nothing to the pools nobody asked for, is undone for
exactly the pool that ``uninstrument()`` names, and needs no lookup from pool
to source on the hot path (a closure holds it). The patch table is still the
only place that patches third-party *code*: the ``created_at`` row of each
source (``Engine.__init__``, ``Pool.__init__``), which is how the instrumentor
sees new pools. The cost this buys is measured in ``BENCHMARKS.md`` (pool):
checkout/checkin with every metric at 1.03-1.06x a bare engine (checkout +
``SELECT 1``: 1.00-1.03x), against 1.7-1.8x for contrib's SQLAlchemy
instrumentation, whose event listeners sit on every pool of the class.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, overload

from opentelemetry.metrics import MeterProvider, get_meter_provider

from otel_backpressure._shared import check_meter_provider
from otel_backpressure.pool._kinds import SOURCES, SourceKind, targets
from otel_backpressure.pool._metrics import FAMILIES, MetricFamily
from otel_backpressure.pool._source import PoolReading, PoolSource, PoolSourceClass
from otel_backpressure.settings import Settings

if TYPE_CHECKING:
    from otel_backpressure.runtime import ThreadPoolInstrumentation

__all__ = ["REGISTRY", "SOURCES", "PoolInstrumentation", "PoolRegistry", "SourceKind", "instrument"]

_logger = logging.getLogger(__name__)


class PoolInstrumentation:
    """The handle ``instrument()`` returns: which pool, under which name, until when."""

    __slots__ = ("__weakref__", "_metrics", "_registry", "_source", "pool_name", "timings")

    def __init__(
        self, registry: PoolRegistry, source: PoolSource, metrics: MetricFamily, timings: bool
    ) -> None:
        self._registry = registry
        self._source = source
        self._metrics = metrics
        self.pool_name = source.name
        self.timings = timings

    @property
    def active(self) -> bool:
        return self._registry.holds(self)

    def uninstrument(self) -> None:
        """Stop reporting this pool to this provider; safe to call twice."""
        self._registry.release(self)

    def __repr__(self) -> str:
        return f"PoolInstrumentation(pool_name={self.pool_name!r}, active={self.active})"


class _Names:
    """The lowest free ``#n`` suffix per base name, so churned pools reuse names.

    Every name ever reported stays in the SDK's cumulative state, so a process
    that creates and drops engines must not mint a new name for each one.
    """

    __slots__ = ("_given", "_taken")

    def __init__(self) -> None:
        self._taken: dict[str, set[int]] = {}  # base -> suffix numbers in use
        self._given: dict[str, tuple[str, int]] = {}  # name -> (base, number)

    def acquire(self, base: str) -> str:
        taken = self._taken.setdefault(base, set())
        number = 1
        while number in taken:
            number += 1
        taken.add(number)
        name = base if number == 1 else f"{base}#{number}"
        self._given[name] = (base, number)
        return name

    def release(self, name: str) -> None:
        given = self._given.pop(name, None)
        if given is None:
            return
        base, number = given
        taken = self._taken[base]
        taken.discard(number)
        if not taken:
            del self._taken[base]

    def __len__(self) -> int:
        return len(self._given)


class _Entry:
    """A live source, and whether the registry chose its name.

    The key object is not held here: the source decides how strongly it holds it.
    """

    __slots__ = ("generated", "source")

    def __init__(self, source: PoolSource, generated: bool) -> None:
        self.source = source
        self.generated = generated


class PoolRegistry:
    """Every instrumented pool of the process: one source each, its name, its handles.

    Thread-safe; every method may be called from any thread. Keyed by
    ``id()`` of the pool's key object, which the source keeps alive (strongly
    for asyncpg, whose pools cannot be referenced weakly; weakly for engines,
    whose collection drops the entry).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}  # id(key) -> entry
        self._handles: dict[tuple[int, int], PoolInstrumentation] = {}  # (id(src), id(metrics))
        self._names = _Names()
        # provider -> family -> its metrics
        self._metrics: weakref.WeakKeyDictionary[Any, dict[str, MetricFamily]] = (
            weakref.WeakKeyDictionary()
        )
        # sources whose pool went away; the weakref callback only appends here
        # (it may run inside any allocation, even while _lock is held)
        self._gone: deque[PoolSource] = deque()

    # -- add ------------------------------------------------------------------------------

    def add(
        self,
        target: object,
        *,
        pool_name: str | None,
        meter_provider: MeterProvider | None,
        timings: bool,
        clock: Callable[[], float] | None,
    ) -> PoolInstrumentation:
        """The handle reporting ``target``'s pool to ``meter_provider``, made once."""
        kind, key = self._kind_of(target)
        if kind is None:
            raise TypeError(f"target must be {targets()}, got {type(target).__name__}")
        with self._lock:
            self._sweep()
            entry = self._entries.get(id(key))
            if entry is None:
                entry = self._new_entry(kind, key, pool_name, clock or time.perf_counter)
            elif pool_name is not None and pool_name != entry.source.name:
                _logger.warning(
                    "Pool already instrumented as %r; ignoring pool_name=%r",
                    entry.source.name,
                    pool_name,
                )
            source = entry.source
            metrics = self._metrics_for(meter_provider, kind.family)
            handle = self._handles.get((id(source), id(metrics)))
            if handle is None:
                handle = PoolInstrumentation(self, source, metrics, timings)
                self._handles[(id(source), id(metrics))] = handle
                metrics.add(source, timings=timings)
            elif handle.timings != timings:
                _logger.warning(
                    "Pool %r already instrumented for this provider with timings=%s; "
                    "ignoring timings=%s (uninstrument it first to change)",
                    source.name,
                    handle.timings,
                    timings,
                )
            return handle

    def _new_entry(
        self,
        kind: PoolSourceClass,
        key: Any,
        pool_name: str | None,
        clock: Callable[[], float],
    ) -> _Entry:
        name = pool_name if pool_name is not None else self._names.acquire(kind.server(key))
        try:
            source = kind(key, name=name, clock=clock, on_gone=self._gone.append)
        except BaseException:
            if pool_name is None:
                self._names.release(name)
            raise
        entry = _Entry(source, generated=pool_name is None)
        self._entries[id(key)] = entry
        return entry

    def metrics_for(
        self, meter_provider: MeterProvider | None = None, family: str = "db"
    ) -> MetricFamily:
        """The metrics of ``family`` for ``meter_provider`` (None: the global one), made once."""
        with self._lock:
            return self._metrics_for(meter_provider, family)

    def _metrics_for(self, meter_provider: MeterProvider | None, family: str) -> MetricFamily:
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        families = self._metrics.setdefault(provider, {})
        metrics = families.get(family)
        if metrics is None:
            metrics = families[family] = FAMILIES[family](provider)
        return metrics

    # -- name and read --------------------------------------------------------------------

    @staticmethod
    def _kind_of(target: object) -> tuple[PoolSourceClass | None, Any]:
        for line in SOURCES:
            kind = line.load()
            key = kind.resolve(target) if kind is not None else None
            if key is not None:
                return kind, key
        return None, None

    def source_of(self, target: object) -> PoolSource | None:
        """The live source reporting ``target``'s pool, if it is instrumented."""
        _, key = self._kind_of(target)
        with self._lock:
            self._sweep()
            entry = self._entries.get(id(key)) if key is not None else None
            return entry.source if entry is not None else None

    def reading(self, target: object) -> tuple[str | None, PoolReading] | None:
        """``target``'s pool name (None if not instrumented) and state now.

        An instrumented pool is read through its source (pending, timeouts and
        counts the pool keeps no record of included); any other pool is peeked
        at. None when no source knows ``target``.
        """
        source = self.source_of(target)
        if source is not None:
            reading: Any = source.read()
            # an HTTP pool reads by server; its health is the pool's totals
            totals = getattr(reading, "totals", None)
            return source.name, totals() if totals is not None else reading
        for line in SOURCES:
            kind = line.load()
            reading = kind.peek(target) if kind is not None else None
            if reading is not None:
                return None, reading
        return None

    def accepts(self, target: object) -> bool:
        """Whether some source can instrument ``target``."""
        return self._kind_of(target)[0] is not None

    def knows(self, target: object) -> bool:
        """Whether some source can instrument or read ``target``."""
        return any(
            kind is not None and (kind.resolve(target) is not None or kind.peek(target))
            for kind in (line.load() for line in SOURCES)
        )

    def holds(self, handle: PoolInstrumentation) -> bool:
        with self._lock:
            key = (id(handle._source), id(handle._metrics))
            return self._handles.get(key) is handle

    def __len__(self) -> int:
        """How many pools are instrumented (for tests of leaks)."""
        with self._lock:
            self._sweep()
            return len(self._entries)

    @property
    def live_names(self) -> int:
        """How many generated names are in use (for tests of leaks)."""
        with self._lock:
            return len(self._names)

    # -- drop -----------------------------------------------------------------------------

    def release(self, handle: PoolInstrumentation) -> None:
        """Stop ``handle``'s provider reporting its pool; drop the pool when none does."""
        with self._lock:
            self._sweep()
            key = (id(handle._source), id(handle._metrics))
            if self._handles.get(key) is not handle:
                return
            del self._handles[key]
            handle._metrics.remove(handle._source)
            if not any(k[0] == key[0] for k in self._handles):
                self._drop(handle._source)

    def _drop(self, source: PoolSource) -> None:
        """Forget a source nobody reports any more. Call with ``_lock`` held."""
        for key, entry in list(self._entries.items()):
            if entry.source is source:
                del self._entries[key]
                if entry.generated:
                    self._names.release(source.name)
        source.close()

    def _sweep(self) -> None:
        """Drop sources of collected engines and closed pools. Call with ``_lock`` held."""
        dead: list[PoolSource] = []
        while self._gone:
            dead.append(self._gone.popleft())
        dead.extend(e.source for e in self._entries.values() if not e.source.alive)
        for source in dead:
            for key in [key for key in self._handles if key[0] == id(source)]:
                self._handles.pop(key)._metrics.remove(source)
            if any(e.source is source for e in self._entries.values()):
                self._drop(source)

    def __repr__(self) -> str:
        with self._lock:
            names = sorted(e.source.name for e in self._entries.values())
        return f"PoolRegistry(pools={names!r})"


#: The process's registry.
REGISTRY: Final = PoolRegistry()


@overload
def instrument(
    target: ThreadPoolExecutor,
    *,
    pool_name: str | None = None,
    meter_provider: MeterProvider | None = None,
    timings: bool | None = None,
    clock: Callable[[], float] | None = None,
) -> ThreadPoolInstrumentation: ...


@overload
def instrument(
    target: Any,
    *,
    pool_name: str | None = None,
    meter_provider: MeterProvider | None = None,
    timings: bool | None = None,
    clock: Callable[[], float] | None = None,
) -> PoolInstrumentation: ...


def instrument(
    target: Any,
    *,
    pool_name: str | None = None,
    meter_provider: MeterProvider | None = None,
    timings: bool | None = None,
    clock: Callable[[], float] | None = None,
) -> PoolInstrumentation | ThreadPoolInstrumentation:
    """Report the pool of ``target`` (``Engine``, ``AsyncEngine``, ``asyncpg.Pool``, a
    ``psycopg_pool`` pool, a redis-py client or pool, an httpx client, transport or
    httpcore pool, an ``aiohttp.ClientSession`` or connector).

    Database pools report the ``db.client.connection.*`` table under their pool
    name; HTTP pools report the ``http.client.*`` table by server (``pool_name``
    then only names the handle).

    An ``anyio.CapacityLimiter`` or ``ThreadPoolExecutor`` goes to the runtime
    part (``backpressure.thread_pool.*``, named ``pool_name``; docs/runtime.md).

    ``pool_name`` (a non-empty string) defaults to
    ``server.address[:server.port]/db.namespace`` as the driver resolves them
    (never credentials; *Names* in docs/pool.md), made unique among live
    pools with a ``#n`` suffix. ``meter_provider`` defaults to the global one.
    ``timings`` switches the three time histograms (default: the
    ``OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS`` setting). ``clock`` is a
    monotonic clock in seconds, for tests. Instrumenting the same pool again
    for the same provider returns the same handle.

    Raises ``TypeError`` for a ``target`` no source knows, a ``meter_provider``
    without ``get_meter`` or a non-bool ``timings``, ``ValueError`` for an
    empty ``pool_name``.
    """
    from otel_backpressure.runtime import instrument_thread_pool, is_thread_pool

    check_meter_provider(meter_provider)
    if is_thread_pool(target):  # the runtime part's seam
        return instrument_thread_pool(target, pool_name=pool_name, meter_provider=meter_provider)
    if pool_name is not None and (not isinstance(pool_name, str) or not pool_name.strip()):
        raise ValueError(f"pool_name must be a non-empty string, got {pool_name!r}")
    if timings is not None and not isinstance(timings, bool):
        raise TypeError(f"timings must be a bool or None, got {type(timings).__name__}")
    if timings is None:
        timings = Settings.from_env().pool_timings
    return REGISTRY.add(
        target, pool_name=pool_name, meter_provider=meter_provider, timings=timings, clock=clock
    )
