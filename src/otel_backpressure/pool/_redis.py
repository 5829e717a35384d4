"""Read a redis-py connection pool (sync or ``redis.asyncio``), and time its checkouts.

redis-py has two pool shapes, each in a sync and an asyncio flavour:

- ``ConnectionPool`` keeps ``_available_connections`` (idle) and
  ``_in_use_connections`` (used); it never waits: past ``max_connections`` it
  raises ``ConnectionError("Too many connections")`` at once.
- ``BlockingConnectionPool`` makes callers wait up to ``timeout`` and then
  raises ``ConnectionError("No connection available.")``. The sync one (and the
  asyncio one before redis 5.0.1) keeps a LIFO queue ``pool`` of connections and
  ``None`` placeholders plus the list ``_connections`` of every connection
  made; the asyncio one since 5.0.1 keeps the two lists above and waits on an
  ``asyncio.Condition``.

Counts are read from those containers at collection time. A connection object
is made before it connects and stays in the pool after a disconnect, so only
connected ones count (``is_connected``, or a socket/stream for older versions).
Waiters are read from the queue's or condition's own waiter list. Timeouts and
timings come from the instance's ``get_connection``/``release``, shadowed by
instance attributes (every caller goes through ``pool.get_connection``), so
other pools pay nothing; ``close()`` removes them. redis-py opens the socket
inside ``get_connection``, so ``create_time`` is not measured separately: a new
connection's connect time is part of its checkout's ``wait_time``.

Example::

    from otel_backpressure.pool._redis import RedisPoolSource

    source = RedisPoolSource(pool, name="127.0.0.1:6379/0", clock=time.perf_counter,
                             on_gone=print)
    source.read()     # PoolReading(used=1, idle=3, pending=0, timeouts=0, max=10, ...)
"""

from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar, Final

from otel_backpressure.pool._checkout import HookedPoolSource
from otel_backpressure.pool._source import PoolReading, peek_first_byte

__all__ = ["RedisPoolSource", "is_redis_pool", "read_redis"]

_logger = logging.getLogger(__name__)

# redis-py before 6 stores "unbounded" as 2**31.
_UNBOUNDED: Final = 2**31
_POOL_MODULES: Final = ("redis.connection", "redis.asyncio.connection")


def _pool_classes() -> tuple[type, ...]:
    return tuple(
        module.ConnectionPool
        for module in (sys.modules.get(name) for name in _POOL_MODULES)
        if module is not None
    )


def is_redis_pool(target: object) -> bool:
    """Whether ``target`` is a redis-py connection pool (without importing redis)."""
    return isinstance(target, _pool_classes())


def _connected(connection: Any) -> bool:
    if connection is None:
        return False
    flag = getattr(type(connection), "is_connected", None)
    if isinstance(flag, property):
        return bool(connection.is_connected)
    if hasattr(connection, "_sock"):  # sync, before is_connected
        return connection._sock is not None
    return getattr(connection, "_writer", None) is not None  # asyncio, before is_connected


def _open_idle(connection: Any) -> bool:
    """Whether an idle (checked-in) connection is still open.

    redis-py learns that the server closed a connection (``CLIENT KILL``, its
    ``timeout`` setting, a restart) only when it next uses it. Until then the
    socket holds the server's EOF: one non-blocking ``recv(MSG_PEEK)`` reads it
    without taking anything (a RESP3 push waiting there means open). An
    asyncio connection's stream reader has already seen the EOF.
    """
    if not _connected(connection):
        return False
    reader = getattr(connection, "_reader", None)
    if reader is not None and hasattr(reader, "at_eof"):  # redis.asyncio
        return not bool(reader.at_eof())
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return True
    try:
        fileno = sock.fileno()
    except (OSError, ValueError):
        return False
    return fileno >= 0 and peek_first_byte(fileno) != b""  # -1: closed under us


def _parked(pool: Any) -> Any | None:
    """What a ``BlockingConnectionPool``'s LIFO queue holds (``queue.LifoQueue``'s
    ``queue``; ``asyncio.LifoQueue``'s ``_queue``, redis.asyncio before 5.0.1), or
    None for a pool without one."""
    queue = getattr(pool, "pool", None)
    if queue is None:
        return None
    items = getattr(queue, "queue", None)
    return getattr(queue, "_queue", None) if items is None else items


def _waiters(pool: Any) -> int:
    """Callers blocked for a connection now (0 for a pool that never waits)."""
    condition = getattr(pool, "_condition", None)
    if condition is not None:  # redis.asyncio BlockingConnectionPool, redis >= 5.0.1
        return len(condition._waiters)
    queue = getattr(pool, "pool", None)
    not_empty = getattr(queue, "not_empty", None)  # queue.LifoQueue: a threading.Condition
    if not_empty is not None:
        return len(not_empty._waiters)
    getters = getattr(queue, "_getters", None)  # asyncio.LifoQueue
    if getters is None:
        return 0
    return sum(1 for getter in list(getters) if not getter.done())


def _blocking_counts(pool: Any, items: Any) -> tuple[int, int]:
    """(used, idle) of a ``BlockingConnectionPool``: its queue parks idle
    connections and ``None`` placeholders for slots never filled."""
    parked = [c for c in list(items) if c is not None]
    idle = sum(1 for c in parked if _open_idle(c))
    parked_ids = {id(c) for c in parked}
    used = sum(1 for c in list(pool._connections) if id(c) not in parked_ids and _connected(c))
    return used, idle


def _plain_counts(pool: Any) -> tuple[int, int]:
    """(used, idle) of a ``ConnectionPool``: available and in-use lists."""
    idle = sum(1 for c in list(pool._available_connections) if _open_idle(c))
    used = sum(1 for c in list(pool._in_use_connections) if _connected(c))
    return used, idle


def read_redis(pool: Any, *, timeouts: int) -> PoolReading:
    """What a redis-py pool's containers say now; ``timeouts`` as counted by the source."""
    items = _parked(pool)
    if items is not None and hasattr(pool, "_connections"):
        used, idle = _blocking_counts(pool, items)
    else:
        used, idle = _plain_counts(pool)
    limit = pool.max_connections
    bounded = isinstance(limit, int) and 0 < limit < _UNBOUNDED
    return PoolReading(
        used=used,
        idle=idle,
        pending=_waiters(pool),
        timeouts=timeouts,
        max=limit if bounded else None,
        idle_max=limit if bounded else None,
    )


class RedisPoolSource(HookedPoolSource):
    """A ``PoolSource`` over one redis-py ``ConnectionPool`` (any flavour)."""

    acquire: ClassVar[str] = "get_connection"
    give_back: ClassVar[str] = "release"

    __slots__ = ()

    @staticmethod
    def resolve(target: object) -> Any | None:
        if is_redis_pool(target):
            return target
        pool = getattr(target, "connection_pool", None)  # redis.Redis, redis.asyncio.Redis
        return pool if is_redis_pool(pool) else None

    @staticmethod
    def server(key: Any) -> str:
        kwargs = key.connection_kwargs
        database = kwargs.get("db", 0)
        path = kwargs.get("path")
        if path:  # UnixDomainSocketConnection
            return f"{path}/{database}"
        host = str(kwargs.get("host") or "localhost")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{kwargs.get('port') or 6379}/{database}"

    @staticmethod
    def peek(target: object) -> PoolReading | None:
        pool = RedisPoolSource.resolve(target)
        return read_redis(pool, timeouts=0) if pool is not None else None

    def read(self) -> PoolReading:
        return read_redis(self._live_pool(), timeouts=self.timeouts)

    def _times_out(self, pool: Any) -> bool:
        # only a BlockingConnectionPool waits (a queue or a condition to wait on)
        return hasattr(pool, "_condition") or _parked(pool) is not None

    def _is_timeout(self, error: Exception) -> bool:
        # BlockingConnectionPool's own words; a failed connect is a ConnectionError too
        return str(error).startswith("No connection available")
