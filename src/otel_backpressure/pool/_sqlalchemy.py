"""Read a SQLAlchemy engine's pool, and time its checkouts; sync and async engines alike.

SQLAlchemy has no "before checkout" pool event, and its events cost a dispatch
per listener, so the instrumented pool (only that one, no class is patched)
gets instance attributes shadowing four of its methods: ``connect`` (pending
requests, wait time, timeouts), ``_return_conn`` (use time), ``_invoke_creator``
(create time) and ``recreate`` (so the pool that ``Engine.dispose()`` puts in
place is hooked too). Counts are read from ``engine.pool`` at collection time,
so series continue across ``dispose()``.

Why instance attributes and not a patch-table row: see "Hooks on instances"
in ``_registry``. They are set with ``setattr``, removed with ``delattr``, and
told from the class's methods by ``getattr`` (``_own``), never through
``pool.__dict__``, as in ``_checkout``. Unlike psycopg_pool's and redis-py's,
a SQLAlchemy pool gains nothing by it today: SQLAlchemy itself turns every
pool's attribute storage into a dictionary on CPython 3.11 and 3.12 before
this module sees it (its event dispatcher stores ``obj.__dict__["dispatch"]``
on first use, which ``create_engine()``, ``recreate()`` and every checkout
make; 1.4 also writes ``self.__dict__["_creator"]`` in ``__init__``; checked
with 1.4.41, 2.0.36 and 2.1.9). It is done anyway so that the day SQLAlchemy
stops, this module costs nothing; a ``StaticPool``'s record aside (``read_pool``).

Example::

    from otel_backpressure.pool import SQLAlchemyPoolSource

    source = SQLAlchemyPoolSource(engine, name="orders-db", clock=time.perf_counter,
                                  on_gone=print)
    source.read()        # PoolReading(used=0, idle=1, max=15, ...)
    source.close()       # unhooks every pool it hooked
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final

from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import (
    AssertionPool,
    NullPool,
    Pool,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

from otel_backpressure.pool._naming import url_name
from otel_backpressure.pool._source import (
    MAX_BUFFERED,
    PoolReading,
    PoolSource,
    RecorderSlots,
    server_ended,
    weak_pool,
)

__all__ = ["SQLAlchemyPoolSource", "ended_by_server", "is_open", "read_pool", "resolve_engine"]

_logger = logging.getLogger(__name__)

_HOOKED = ("connect", "_return_conn", "_invoke_creator", "recreate")
_ABSENT: Final = object()
# checkouts in progress kept per connection record; a detached connection never
# comes back, so the table is cleared past this size rather than grow forever
_MAX_OPEN_CHECKOUTS = 65_536


def resolve_engine(target: object) -> Engine | None:
    """The sync ``Engine`` behind ``target``, or None if it is not an engine."""
    # Not imported here: with SQLAlchemy 2.1 and no greenlet, importing
    # sqlalchemy.ext.asyncio raises, and a sync-only app never needs it. An
    # AsyncEngine cannot exist unless its module was imported.
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None and isinstance(target, asyncio_ext.AsyncEngine):
        target = target.sync_engine
    if not isinstance(target, Engine):
        return None
    # Engine.execution_options() returns a copy sharing the pool: report the original
    proxied = getattr(target, "_proxied", None)
    return proxied if isinstance(proxied, Engine) else target


def is_open(record: Any) -> bool:
    """Whether a connection record holds a connection its driver has not seen closed.

    A record invalidated (hard) has none; a driver that learns of a lost
    connection without being used (asyncpg, on its event loop) says so through
    ``is_closed()``; psycopg and psycopg2 say so through ``closed`` once a use
    failed. A sync driver cannot know of a server-side close before its next
    use, so neither can a reading.
    """
    connection = record.dbapi_connection
    if connection is None:
        return False
    driver = getattr(connection, "driver_connection", connection)  # SQLAlchemy's async adapters
    is_closed = getattr(driver, "is_closed", None)
    if callable(is_closed):
        return not is_closed()
    closed = getattr(driver, "closed", False)
    return not (closed is True or (type(closed) is int and closed != 0))


def ended_by_server(record: Any) -> bool:
    """Whether the server has ended an idle record's psycopg/psycopg2 connection
    (``server_ended()``); only for records nobody has checked out."""
    return server_ended(record.dbapi_connection)


def _queued(pool: QueuePool) -> list[Any] | None:
    """The records waiting in a ``QueuePool``'s queue, or None if its layout is unknown.

    Only after ``pool.checkedout()``: an ``AsyncAdaptedQueue`` makes its
    ``asyncio.Queue`` on first use (a memoized ``_queue``), which that call's
    ``qsize()`` has made, so reading it here creates nothing.
    """
    queue: Any = pool._pool
    items = getattr(queue, "queue", None)  # util.queue.Queue: a deque
    if items is None:  # AsyncAdaptedQueue: the asyncio.Queue's deque
        items = getattr(getattr(queue, "_queue", None), "_queue", None)
    if items is None:
        return None
    for _ in range(3):  # another thread may change the deque while it is copied
        try:
            return list(items)
        except RuntimeError:
            continue
    return None


def _split(records: Any) -> tuple[int, int]:
    """(used, idle) among ``records``: open ones, checked out while a fairy holds them."""
    used = idle = 0
    for record in list(records):
        if record is not None and is_open(record):
            if record.fairy_ref is not None:
                used += 1
            elif not ended_by_server(record):
                idle += 1
    return used, idle


def read_pool(
    pool: Pool, *, used: int | None, pending: int, timeouts: int, lost: int = 0
) -> PoolReading:
    """What the pool itself can tell, counting open connections only.

    ``used`` is the fallback for pools that keep no record of their checkouts
    (NullPool); ``lost`` is how many checked-out slots are known to have lost
    their connection (invalidated while held), subtracted from the used count.
    """
    if isinstance(pool, QueuePool):
        return _read_queue_pool(pool, pending=pending, timeouts=timeouts, lost=lost)
    if isinstance(pool, NullPool):  # connections close on checkin: never idle
        return PoolReading(
            used=None if used is None else max(0, used - lost),
            idle=0,
            pending=pending,
            timeouts=timeouts,
            idle_max=0,
        )
    if isinstance(pool, StaticPool):
        # One connection shared by every checkout: it is used while any fairy holds it.
        # Its record is a memoized property made by the first checkout (which
        # connects): only the instance dict tells whether it exists without
        # making it. No cost: an engine's pool has that dict already, any pool
        # has it from its first checkout (module docstring), and SQLAlchemy
        # reads it itself in StaticPool.dispose() and _do_get().
        in_use, idle = _split([pool.__dict__.get("connection")])
        return PoolReading(used=in_use, idle=idle, pending=pending, timeouts=timeouts, idle_max=1)
    if isinstance(pool, SingletonThreadPool):  # one connection per thread, kept open
        in_use, idle = _split(pool._all_conns)
        return PoolReading(
            used=in_use, idle=idle, pending=pending, timeouts=timeouts, idle_max=pool.size
        )
    if isinstance(pool, AssertionPool):  # one connection, kept open between checkouts
        in_use, idle = _split([pool._conn])
        return PoolReading(used=in_use, idle=idle, pending=pending, timeouts=timeouts, idle_max=1)
    return PoolReading(used=used, pending=pending, timeouts=timeouts)


def _read_queue_pool(pool: QueuePool, *, pending: int, timeouts: int, lost: int) -> PoolReading:
    size = pool.size()
    max_overflow = pool._max_overflow
    bounded = max_overflow > -1 and size > 0
    used = max(0, pool.checkedout() - lost)
    queued = _queued(pool)
    # a queued slot whose connection was invalidated reconnects on its next checkout
    idle = (
        pool.checkedin()
        if queued is None
        else sum(1 for r in queued if is_open(r) and not ended_by_server(r))
    )
    return PoolReading(
        used=used,
        idle=idle,
        pending=pending,
        timeouts=timeouts,
        max=size + max_overflow if bounded else None,
        idle_max=size if size > 0 else None,
        idle_min=0,
        overflow=max(0, used + idle - size) if size > 0 else 0,
    )


def _own(pool: Pool, name: str) -> Any:
    """``pool``'s instance attribute ``name``, or ``_ABSENT`` if the class answers.

    Told without ``pool.__dict__`` (module docstring): for the hooked names the
    class answers with its own function bound to ``pool``, or not at all
    (``_invoke_creator``, which ``Pool.__init__`` sets on the instance), in
    SQLAlchemy 1.4.41 to 2.1.9; anything else ``getattr`` finds was set on the
    instance. One set to that very bound method is taken for the class's:
    deleting it changes nothing.
    """
    found = getattr(pool, name, _ABSENT)
    function = getattr(type(pool), name, _ABSENT)
    if found is _ABSENT or function is _ABSENT:
        return found
    if getattr(found, "__self__", None) is pool and getattr(found, "__func__", None) is function:
        return _ABSENT
    return found


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
        return url_name(key.url, key.dialect)

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
        # id(connection record) -> (the record, checked out at or None): every
        # checkout in progress, so a reading can tell which lost their connection
        self._starts: dict[int, tuple[Any, float | None]] = {}
        # pool -> the instance attributes the hooks shadowed (restored by close())
        self._hooked: weakref.WeakKeyDictionary[Pool, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._engine = weak_pool(engine, self, on_gone)
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

    @property
    def lost(self) -> int:
        """Checked-out slots whose connection is gone (invalidated while held)."""
        for _ in range(3):  # checkouts on other threads may change the table meanwhile
            try:
                held = list(self._starts.values())
            except RuntimeError:
                continue
            return sum(
                1 for record, _ in held if record.fairy_ref is not None and not is_open(record)
            )
        return 0

    def read(self) -> PoolReading:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the engine was garbage collected")
        return read_pool(
            engine.pool,
            used=self.used,
            pending=self.pending,
            timeouts=self.timeouts,
            lost=self.lost,
        )

    def close(self) -> None:
        """Unhook every pool this source hooked (the current one and disposed ones)."""
        self.recorders = ()
        for pool, shadowed in list(self._hooked.items()):
            for attribute in _HOOKED:
                if attribute in shadowed:  # the pool's own, set before the hook
                    setattr(pool, attribute, shadowed[attribute])
                else:
                    with contextlib.suppress(AttributeError):  # removed by someone else
                        delattr(pool, attribute)
        self._hooked.clear()

    def __repr__(self) -> str:
        return (
            f"SQLAlchemyPoolSource(name={self.name!r}, alive={self.alive}, pending={self.pending}, "
            f"timeouts={self.timeouts}, recorders={len(self.recorders)})"
        )

    # -- hot path -------------------------------------------------------------------------

    def _hook(self, pool: Pool) -> None:
        if _own(pool, "connect") is not _ABSENT:
            return  # hooked already (a pool is hooked by one source only)
        shadowed = {name: own for name in _HOOKED if (own := _own(pool, name)) is not _ABSENT}
        counts_used = isinstance(pool, NullPool) or not isinstance(
            pool, (QueuePool, StaticPool, SingletonThreadPool, AssertionPool)
        )
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
                if fairy._counter == 1:  # not a nested re-checkout of the same fairy
                    if counts_used:
                        checked_out()
                    recorders = source.recorders
                    now = clock() if recorders else None
                    if len(starts) >= _MAX_OPEN_CHECKOUTS:
                        starts.clear()
                    record = fairy._connection_record
                    starts[id(record)] = (record, now)
                    if now is not None:
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
                held = starts.pop(id(record), None)
                if held is not None:
                    if counts_used:
                        checked_in()
                    start = held[1]
                    recorders = source.recorders
                    if recorders and start is not None:
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
