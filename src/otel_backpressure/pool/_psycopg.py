"""Read a ``psycopg_pool`` pool (``ConnectionPool``, ``AsyncConnectionPool``, null pools).

Counts come from the pool's own ``get_stats()`` at collection time:
``pool_size`` (connections open, lent out or being prepared), ``pool_available``
(idle), ``pool_min`` and ``pool_max``. Waiting clients are counted from the
pool's queue, skipping those that already gave up: ``requests_waiting`` keeps a
client that timed out until the next connection comes back. Its counters
(``requests_errors`` and the like) are not used: ``pop_stats()``, which
applications call to log them, resets them, and an exported counter must not
go down. Timeouts (``PoolTimeout`` from ``getconn()``) and the three timings
come from the instance's ``getconn``/``putconn``/``_connect``, shadowed by
instance attributes: ``connection()`` and the pool's workers call them through
``self``, so every checkout is seen and other pools pay nothing; ``close()``
removes them.

A pool is reported from creation until it is closed (a closed psycopg pool
cannot be reopened) or garbage collected. A pool made with ``open=False`` is
reported at zero until it opens.

Example::

    from otel_backpressure.pool._psycopg import PsycopgPoolSource

    source = PsycopgPoolSource(pool, name="127.0.0.1:5432/app", clock=time.perf_counter,
                               on_gone=print)
    source.read()     # PoolReading(used=1, idle=3, pending=0, timeouts=0, max=10, ...)
"""

from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar

from otel_backpressure.pool._checkout import HookedPoolSource
from otel_backpressure.pool._naming import libpq_server, server_name
from otel_backpressure.pool._source import PoolReading, server_ended

__all__ = ["PsycopgPoolSource", "is_psycopg_pool", "read_psycopg"]

_logger = logging.getLogger(__name__)


def is_psycopg_pool(target: object) -> bool:
    """Whether ``target`` is a ``psycopg_pool`` pool (without importing psycopg_pool)."""
    module = sys.modules.get("psycopg_pool.base")
    return module is not None and isinstance(target, module.BasePool)


def _waiting(pool: Any, stats: dict[str, int]) -> int:
    """Clients waiting now. ``requests_waiting`` is ``len(_waiting)``, which keeps a client
    that timed out until a connection comes back (psycopg_pool then skips it): not waiting."""
    waiting = getattr(pool, "_waiting", None)
    if waiting is None:
        return stats.get("requests_waiting", 0)
    return sum(1 for client in list(waiting) if client.conn is None and client.error is None)


def _ended(pool: Any) -> int:
    """How many of the pool's idle connections are closed or ended by the server."""
    idle = getattr(pool, "_pool", None)  # psycopg_pool's deque of idle connections
    if idle is None:
        return 0
    for _ in range(3):  # the pool's own threads may change the deque while it is copied
        try:
            connections = list(idle)
        except RuntimeError:
            continue
        return sum(1 for c in connections if c.closed or server_ended(c))
    return 0


def read_psycopg(pool: Any, *, timeouts: int) -> PoolReading:
    """What ``pool.get_stats()`` says now; ``timeouts`` as counted by the source."""
    stats = pool.get_stats()
    # idle connections the server ended (pg_terminate_backend, a restart) are
    # not open: psycopg_pool learns of them only when it hands one out
    lost = _ended(pool)
    size = max(0, stats.get("pool_size", 0) - lost)
    idle = max(0, stats.get("pool_available", 0) - lost)
    minimum = stats.get("pool_min", pool.min_size)
    maximum = stats.get("pool_max", pool.max_size)
    return PoolReading(
        used=max(0, size - idle),  # two fields read without the pool's lock: never below 0
        idle=idle,
        pending=_waiting(pool, stats),
        timeouts=timeouts,
        max=maximum,
        idle_max=maximum,
        idle_min=minimum,
        overflow=max(0, size - minimum),
    )


def _name(pool: Any) -> str:
    """``host:port/dbname`` for the pool's conninfo and keywords, as libpq reads them."""
    conninfo = pool.conninfo
    kwargs = pool.kwargs
    if callable(conninfo):  # psycopg_pool 3.3: resolved per connection
        conninfo = None
    if callable(kwargs) or not isinstance(kwargs, dict):
        kwargs = {}
    params = {k: v for k, v in kwargs.items() if k in ("host", "hostaddr", "port", "dbname")}
    return server_name(libpq_server, conninfo or None, **params)


class PsycopgPoolSource(HookedPoolSource):
    """A ``PoolSource`` over one ``psycopg_pool`` pool, sync or async."""

    acquire: ClassVar[str] = "getconn"
    give_back: ClassVar[str] = "putconn"
    connect: ClassVar[str | None] = "_connect"

    __slots__ = ()

    @staticmethod
    def resolve(target: object) -> Any | None:
        return target if is_psycopg_pool(target) else None

    @staticmethod
    def server(key: Any) -> str:
        return _name(key)

    @staticmethod
    def peek(target: object) -> PoolReading | None:
        return read_psycopg(target, timeouts=0) if is_psycopg_pool(target) else None

    @property
    def alive(self) -> bool:
        pool = self._pool()
        # closed after being opened is final: psycopg refuses to reopen a pool
        return pool is not None and not (pool._closed and pool._opened)

    def read(self) -> PoolReading:
        return read_psycopg(self._live_pool(), timeouts=self.timeouts)

    def _is_timeout(self, error: Exception) -> bool:
        return type(error).__name__ == "PoolTimeout"  # psycopg_pool.PoolTimeout
