"""Read a SQLAlchemy engine's pool, and time its checkouts; sync and async engines alike.

SQLAlchemy has no "before checkout" pool event, and its events cost a dispatch
per listener, so the instrumented pool (only that one, no class is patched)
gets instance attributes shadowing four of its methods: ``connect`` (pending
requests, wait time, timeouts), ``_return_conn`` (use time), ``_invoke_creator``
(create time) and ``recreate`` (so the pool that ``Engine.dispose()`` puts in
place is hooked too). Counts are read from ``engine.pool`` at collection time,
so series continue across ``dispose()``.

Why instance attributes and not a patch-table row: see "Hooks on instances"
in ``_registry``.

Example::

    from otel_backpressure.pool import SQLAlchemyPoolSource

    source = SQLAlchemyPoolSource(engine, name="orders-db", clock=time.perf_counter,
                                  on_gone=print)
    source.read()        # PoolReading(used=0, idle=1, max=15, ...)
    source.close()       # unhooks every pool it hooked
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool, Pool, QueuePool, StaticPool

from otel_backpressure.pool._naming import url_name
from otel_backpressure.pool._source import MAX_BUFFERED, PoolReading, PoolSource, RecorderSlots

__all__ = ["SQLAlchemyPoolSource", "read_pool", "resolve_engine"]

_logger = logging.getLogger(__name__)

_HOOKED = ("connect", "_return_conn", "_invoke_creator", "recreate")
# checkout start times kept per connection record; a detached connection never
# comes back, so the table is cleared past this size rather than grow forever
_MAX_OPEN_CHECKOUTS = 65_536


def resolve_engine(target: object) -> Engine | None:
    """The sync ``Engine`` behind ``target``, or None if it is not an engine."""
    if isinstance(target, AsyncEngine):
        target = target.sync_engine
    if not isinstance(target, Engine):
        return None
    # Engine.execution_options() returns a copy sharing the pool: report the original
    proxied = getattr(target, "_proxied", None)
    return proxied if isinstance(proxied, Engine) else target


def read_pool(pool: Pool, *, used: int | None, pending: int, timeouts: int) -> PoolReading:
    """What the pool itself can tell; ``used`` is the fallback for pools without counters."""
    if isinstance(pool, QueuePool):
        size = pool.size()
        max_overflow = pool._max_overflow
        bounded = max_overflow > -1 and size > 0
        return PoolReading(
            used=pool.checkedout(),
            idle=pool.checkedin(),
            pending=pending,
            timeouts=timeouts,
            max=size + max_overflow if bounded else None,
            idle_max=size if size > 0 else None,
            idle_min=0,
            overflow=max(0, pool.overflow()),
        )
    if isinstance(pool, NullPool):  # connections close on checkin: never idle
        return PoolReading(used=used, idle=0, pending=pending, timeouts=timeouts, idle_max=0)
    if isinstance(pool, StaticPool):
        # One connection shared by every checkout: it is used while any fairy holds it.
        record = pool.__dict__.get("connection")  # memoized on first use
        if record is None or record.dbapi_connection is None:
            in_use = idle = 0
        else:
            in_use = int(record.fairy_ref is not None)
            idle = 1 - in_use
        return PoolReading(used=in_use, idle=idle, pending=pending, timeouts=timeouts, idle_max=1)
    return PoolReading(used=used, pending=pending, timeouts=timeouts)


def _peek(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` without taking it."""
    return int(repr(counter)[6:-1])  # "count(5)"


class Tally:
    """A count that goes up and down from any thread without a lock.

    ``next()`` on an ``itertools.count`` is atomic, and far cheaper than taking
    a ``threading.Lock`` twice per checkout; the value is the difference of two
    of them, read (at collection) down first so it is never below the truth.
    """

    __slots__ = ("down", "up")

    def __init__(self) -> None:
        self.up = itertools.count()
        self.down = itertools.count()

    @property
    def value(self) -> int:
        down = _peek(self.down)
        return _peek(self.up) - down

    def __repr__(self) -> str:
        return f"Tally({self.value})"


class SQLAlchemyPoolSource(RecorderSlots):
    """A ``PoolSource`` over one SQLAlchemy ``Engine`` (an ``AsyncEngine``'s ``sync_engine``)."""

    family: ClassVar[str] = "db"

    __slots__ = (
        "__weakref__",
        "_clock",
        "_engine",
        "_hooked",
        "_pending",
        "_starts",
        "_timeouts",
        "_used",
        "name",
    )

    @staticmethod
    def resolve(target: object) -> Engine | None:
        return resolve_engine(target)

    @staticmethod
    def server(key: Engine) -> str:
        return url_name(key.url)

    @staticmethod
    def peek(target: object) -> PoolReading | None:
        """Read an engine's (or a bare ``Pool``'s) pool without hooks: ``used`` of
        pools that cannot count their own checkouts is not known."""
        engine = resolve_engine(target)
        pool = engine.pool if engine is not None else target
        if not isinstance(pool, Pool):
            return None
        return read_pool(pool, used=None, pending=0, timeouts=0)

    def __init__(
        self,
        engine: Engine,
        *,
        name: str,
        clock: Callable[[], float] = time.perf_counter,
        on_gone: Callable[[PoolSource], None] | None = None,
    ) -> None:
        self.name = name
        self._pending = Tally()
        self._timeouts = itertools.count()
        self._used = Tally()  # only for pools that cannot count their own
        super().__init__()
        self._clock = clock
        self._starts: dict[int, float] = {}  # id(connection record) -> checked out at
        # pool -> the instance attributes the hooks shadowed (restored by close())
        self._hooked: weakref.WeakKeyDictionary[Pool, dict[str, Any]] = weakref.WeakKeyDictionary()
        callback = None
        if on_gone is not None:
            source_ref = weakref.ref(self)

            def callback(_: object) -> None:
                source = source_ref()
                if source is not None:
                    on_gone(source)

        self._engine = weakref.ref(engine, callback)
        self._hook(engine.pool)

    @property
    def alive(self) -> bool:
        return self._engine() is not None

    @property
    def pending(self) -> int:
        return self._pending.value

    @property
    def timeouts(self) -> int:
        return _peek(self._timeouts)

    @property
    def used(self) -> int:
        return self._used.value

    def read(self) -> PoolReading:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the engine was garbage collected")
        return read_pool(engine.pool, used=self.used, pending=self.pending, timeouts=self.timeouts)

    def close(self) -> None:
        """Unhook every pool this source hooked (the current one and disposed ones)."""
        self.recorders = ()
        for pool, shadowed in list(self._hooked.items()):
            for attribute in _HOOKED:
                pool.__dict__.pop(attribute, None)
            pool.__dict__.update(shadowed)
        self._hooked.clear()

    def __repr__(self) -> str:
        return (
            f"SQLAlchemyPoolSource(name={self.name!r}, alive={self.alive}, pending={self.pending}, "
            f"timeouts={self.timeouts}, recorders={len(self.recorders)})"
        )

    # -- hot path -------------------------------------------------------------------------

    def _hook(self, pool: Pool) -> None:
        if "connect" in pool.__dict__:
            return  # hooked already (a pool is hooked by one source only)
        shadowed = {name: pool.__dict__[name] for name in _HOOKED if name in pool.__dict__}
        counts_used = not isinstance(pool, (QueuePool, StaticPool))
        connect = pool.connect
        return_conn = pool._return_conn
        invoke_creator = pool._invoke_creator
        recreate = pool.recreate
        clock = self._clock
        starts = self._starts
        source = self
        enter, leave = self._pending.up.__next__, self._pending.down.__next__
        timed_out = self._timeouts.__next__
        checked_out, checked_in = self._used.up.__next__, self._used.down.__next__

        def hooked_connect() -> Any:
            enter()
            start = clock()
            try:
                fairy = connect()
            except PoolTimeoutError:
                leave()
                timed_out()
                raise
            except BaseException:
                leave()
                raise
            leave()
            try:
                fresh = fairy._counter == 1  # not a nested re-checkout of the same fairy
                if counts_used and fresh:
                    checked_out()
                recorders = source.recorders
                if fresh and (recorders or counts_used):
                    now = clock()
                    if len(starts) >= _MAX_OPEN_CHECKOUTS:
                        starts.clear()
                    starts[id(fairy._connection_record)] = now
                    for recorder in recorders:
                        waits = recorder.wait
                        waits.append(now - start)
                        if len(waits) > MAX_BUFFERED:
                            recorder.flush()
            except Exception:
                _logger.debug("Pool checkout telemetry failed", exc_info=True)
            return fairy

        def hooked_return_conn(record: Any) -> None:
            try:
                start = starts.pop(id(record), None)
                if start is not None:
                    if counts_used:
                        checked_in()
                    recorders = source.recorders
                    if recorders:
                        used_for = clock() - start
                        for recorder in recorders:
                            uses = recorder.use
                            uses.append(used_for)
                            if len(uses) > MAX_BUFFERED:
                                recorder.flush()
            except Exception:
                _logger.debug("Pool checkin telemetry failed", exc_info=True)
            return_conn(record)

        def hooked_invoke_creator(record: Any) -> Any:
            start = clock()
            connection = invoke_creator(record)
            try:
                recorders = source.recorders
                if recorders:
                    took = clock() - start
                    for recorder in recorders:
                        recorder.create.append(took)
            except Exception:
                _logger.debug("Pool connect telemetry failed", exc_info=True)
            return connection

        def hooked_recreate() -> Pool:
            new_pool = recreate()
            try:
                source._hook(new_pool)
            except Exception:
                _logger.exception("Cannot follow the pool of %r across dispose()", source.name)
            return new_pool

        pool.connect = hooked_connect  # type: ignore[method-assign]
        pool._return_conn = hooked_return_conn  # type: ignore[method-assign]
        pool._invoke_creator = hooked_invoke_creator  # type: ignore[assignment]
        pool.recreate = hooked_recreate  # type: ignore[method-assign]
        self._hooked[pool] = shadowed
