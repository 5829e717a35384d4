"""Read an ``asyncpg.Pool``, and time its acquires and releases.

``asyncpg.Pool`` has ``__slots__`` (no instance attributes to shadow, no weak
references), so an instrumented pool's class is swapped for a subclass of its
own, made for that pool, that only adds timing around ``_acquire`` and
``release`` and holds its source in a closure; the pool's behaviour and
``isinstance`` checks are unchanged, other pools are untouched, and closing the
source swaps the class back (why not a patch-table row: "Hooks on instances" in
``_registry``). Connection creation is timed by wrapping the pool's own
``connect`` callable (asyncpg 0.30+); before 0.30 the pool has none, and the
subclass times ``_get_new_connection`` up to the pool's ``init`` callback, so
the figure is the connect alone on every version. Counts come from
``get_size()``, ``get_idle_size()``, ``get_min_size()`` and ``get_max_size()``
at collection time; asyncpg counts a connection only while it is open
(``is_closed()`` false), so a backend the server terminated stops counting as
soon as the event loop sees the socket close.

Because the pool cannot be referenced weakly, a pool drops out of the metrics
when it is closed (``Pool.close()``/``terminate()``), not when it is dropped.

Example::

    from otel_backpressure.pool import AsyncpgPoolSource

    source = AsyncpgPoolSource(pool, name="127.0.0.1:5432/app", clock=time.perf_counter,
                               on_gone=print)
    source.read()     # PoolReading(used=0, idle=2, max=10, ...)
    source.close()
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from otel_backpressure.pool._naming import asyncpg_server, server_name
from otel_backpressure.pool._source import MAX_BUFFERED, PoolReading, PoolSource, RecorderSlots

__all__ = ["AsyncpgPoolSource", "is_asyncpg_pool", "read_asyncpg"]

_logger = logging.getLogger(__name__)

# asyncpg < 0.30: when the connection being made by this task's
# _get_new_connection was connected (the pool's init callback stamps it)
_connected_at: contextvars.ContextVar[list[float | None]] = contextvars.ContextVar(
    "otel_backpressure_asyncpg_connected_at"
)


def is_closing(pool: Any) -> bool:
    """Whether ``pool`` is closed or closing (``Pool.is_closing()`` is asyncpg 0.28+)."""
    method = getattr(pool, "is_closing", None)
    if method is not None:
        return bool(method())
    return bool(pool._closed or pool._closing)  # what is_closing() reads


def is_asyncpg_pool(target: object) -> bool:
    """Whether ``target`` is an ``asyncpg.Pool`` (without importing asyncpg)."""
    module = sys.modules.get("asyncpg.pool")
    return module is not None and isinstance(target, module.Pool)


def read_asyncpg(pool: Any, *, pending: int, timeouts: int) -> PoolReading:
    """What an ``asyncpg.Pool`` tells through its public getters."""
    size = pool.get_size()
    idle = pool.get_idle_size()
    minimum = pool.get_min_size()
    maximum = pool.get_max_size()
    return PoolReading(
        used=max(0, size - idle),  # two reads, not one snapshot: never below 0
        idle=idle,
        pending=pending,
        timeouts=timeouts,
        max=maximum,
        idle_max=maximum,
        idle_min=minimum,
        overflow=max(0, size - minimum),
    )


class AsyncpgPoolSource(RecorderSlots):
    """A ``PoolSource`` over one ``asyncpg.Pool``; the pool lives on one event loop."""

    family: ClassVar[str] = "db"

    __slots__ = (
        "_clock",
        "_original_class",
        "_original_connect",
        "_original_init",
        "_pool",
        "_starts",
        "name",
        "pending",
        "timeouts",
    )

    @staticmethod
    def resolve(target: object) -> Any | None:
        return target if is_asyncpg_pool(target) else None

    @staticmethod
    def server(key: Any) -> str:
        args = key._connect_args
        return server_name(asyncpg_server, *args[:1], **key._connect_kwargs)

    @staticmethod
    def peek(target: object) -> PoolReading | None:
        if not is_asyncpg_pool(target):
            return None
        return read_asyncpg(target, pending=0, timeouts=0)

    def __init__(
        self,
        pool: Any,
        *,
        name: str,
        clock: Callable[[], float] = time.perf_counter,
        on_gone: Callable[[PoolSource], None] | None = None,
    ) -> None:
        if type(pool).__dict__.get("_backpressure_source") is not None:
            raise ValueError(f"pool {name!r} is already instrumented")
        self.name = name
        self.pending = 0
        self.timeouts = 0
        super().__init__()
        self._clock = clock
        self._pool = pool
        self._starts: dict[int, float] = {}  # id(connection holder) -> acquired at
        self._original_class = type(pool)
        # asyncpg < 0.30 has no _connect: the subclass times _get_new_connection,
        # and the init callback says where the connect ended
        self._original_connect = getattr(pool, "_connect", None)
        self._original_init = pool._init
        if self._original_connect is not None:
            pool._connect = self._timed_connect(self._original_connect)
        elif self._original_init is not None:
            pool._init = _stamped_init(self._original_init, clock)
        pool.__class__ = _instrumented(type(pool), self)

    @property
    def alive(self) -> bool:
        return not is_closing(self._pool)

    def read(self) -> PoolReading:
        return read_asyncpg(self._pool, pending=self.pending, timeouts=self.timeouts)

    def close(self) -> None:
        """Give the pool back its own class and connect callable."""
        self.recorders = ()
        pool = self._pool
        if type(pool).__dict__.get("_backpressure_source") is self:
            pool.__class__ = self._original_class
            if self._original_connect is not None:
                pool._connect = self._original_connect
            else:
                pool._init = self._original_init

    def __repr__(self) -> str:
        return (
            f"AsyncpgPoolSource(name={self.name!r}, alive={self.alive}, pending={self.pending}, "
            f"timeouts={self.timeouts}, recorders={len(self.recorders)})"
        )

    # -- hot path -------------------------------------------------------------------------

    def _timed_connect(self, connect: Callable[..., Any]) -> Callable[..., Any]:
        source = self

        async def timed_connect(*args: Any, **kwargs: Any) -> Any:
            start = source._clock()
            connection = await connect(*args, **kwargs)
            try:
                if source.recorders:
                    source.created(source._clock() - start)
            except Exception:
                _logger.debug("asyncpg connect telemetry failed", exc_info=True)
            return connection

        return timed_connect

    def created(self, took: float) -> None:
        for recorder in self.recorders:
            recorder.create.append(took)

    def acquired(self, proxy: Any, start: float) -> None:
        now = self._clock()
        self._starts[id(proxy._holder)] = now
        for recorder in self.recorders:
            waits = recorder.wait
            waits.append(now - start)
            if len(waits) > MAX_BUFFERED:
                recorder.flush()

    def releasing(self, connection: Any) -> None:
        start = self._starts.pop(id(connection._holder), None)
        if start is None or connection._con is None:
            return
        used_for = self._clock() - start
        for recorder in self.recorders:
            uses = recorder.use
            uses.append(used_for)
            if len(uses) > MAX_BUFFERED:
                recorder.flush()


def _stamped_init(
    init: Callable[[Any], Awaitable[Any]], clock: Callable[[], float]
) -> Callable[[Any], Awaitable[Any]]:
    """asyncpg < 0.30: the pool's ``init`` callback, noting first when the connect ended."""

    async def stamped_init(connection: Any) -> Any:
        box = _connected_at.get(None)
        if box is not None:
            box[0] = clock()
        return await init(connection)

    return stamped_init


def _instrumented(base: type, source: AsyncpgPoolSource) -> type:
    """A same-layout subclass of ``base``, for one pool, that times acquire and release.

    One class per pool keeps the source in a closure: no table of pools to
    look up on every acquire, and nothing left behind once the pool is given
    its own class back.
    """
    base_acquire = base._acquire  # type: ignore[attr-defined]
    base_release = base.release  # type: ignore[attr-defined]
    base_new_connection = base._get_new_connection  # type: ignore[attr-defined]
    clock = source._clock

    async def _acquire(self: Any, timeout: float | None) -> Any:
        source.pending += 1  # the pool's loop is the only writer: no lock needed
        start = clock()
        try:
            proxy = await base_acquire(self, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            # one class on 3.11+; on 3.10 asyncpg (0.30+) raises the builtin,
            # which is not asyncio's
            source.timeouts += 1
            raise
        finally:
            source.pending -= 1
        try:
            source.acquired(proxy, start)
        except Exception:
            _logger.debug("asyncpg acquire telemetry failed", exc_info=True)
        return proxy

    async def release(self: Any, connection: Any, *, timeout: float | None = None) -> Any:
        try:
            source.releasing(connection)
        except Exception:
            _logger.debug("asyncpg release telemetry failed", exc_info=True)
        return await base_release(self, connection, timeout=timeout)

    async def _get_new_connection(self: Any) -> Any:
        # asyncpg < 0.30 only (0.30+ times the pool's connect callable): the
        # connect ends where the init callback, if any, begins
        box: list[float | None] = [None]
        token = _connected_at.set(box)
        start = clock()
        try:
            connection = await base_new_connection(self)
        finally:
            _connected_at.reset(token)
        try:
            if source.recorders:
                end = box[0]
                source.created((clock() if end is None else end) - start)
        except Exception:
            _logger.debug("asyncpg connect telemetry failed", exc_info=True)
        return connection

    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "_acquire": _acquire,
        "release": release,
        "_backpressure_source": source,
    }
    if source._original_connect is None:
        namespace["_get_new_connection"] = _get_new_connection
    return type(base.__name__, (base,), namespace)
