"""Read httpcore's connection pool (what ``httpx.Client``/``AsyncClient`` send through).

httpcore keeps a pool's whole state in two lists: ``_connections`` (``_pool``
before httpcore 1.0.3, i.e. httpx 0.23-0.25) and ``_requests``, whose entries
have ``connection`` None while they wait for one. At collection time a
connection that is not closed counts as ``idle`` (``is_idle()``) or
``active``, by its origin (``_remote_origin`` for a proxy's connections); a
waiting request counts as pending by its URL's origin. The limit is
``_max_connections`` (``max_connections=None`` is ``sys.maxsize``: unbounded).

Hooks, as instance attributes on the pool (the pool calls its own methods
through ``self``), removed by ``close()``:

- ``_assign_requests_to_connections`` (httpcore >= 1.0.3): the one place that
  gives requests connections, called with the pool's lock held whenever a
  request arrives, leaves (its response closed, or an error) or a connection
  frees. After each pass a request still without a connection is queued (its
  wait starts), and a queued one that has one notes when it got it. One pass
  may give a freed HTTP/1.1 connection to every queued request; all but one
  then find it busy and queue again, so the *last* assignment is the one that
  counted. A queued request that left ``_requests`` is done: with a connection,
  its ``http.client.request.time_in_queue`` is recorded (as in .NET, only
  requests that queued are); still waiting, while the pool handles
  ``httpcore.PoolTimeout`` (the pass runs inside the pool's ``except`` block),
  it is a pool timeout, counted by server; otherwise its caller gave up (a
  cancellation, an interrupt). A connection no longer in ``_connections`` was
  dropped: its ``http.client.connection.duration`` is recorded.
- ``create_connection`` notes when a connection was made; ``close``/``aclose``
  end every connection left.

The common pass (no request queued, no connection dropped) reads no clock and
allocates nothing: one loop over the few requests in the pool and one length
comparison. There is no hook on ``handle_request``: every request is one
Python frame cheaper (``BENCHMARKS.md``, ``pool_kinds``).

With httpcore before 1.0.3 (no ``_assign_requests_to_connections``)
``handle_request``/``handle_async_request`` are hooked to count
``httpcore.PoolTimeout``; the counts and timeouts are exact and the two
histograms stay empty.

Example::

    from otel_backpressure.pool._httpx import HttpxPoolSource

    source = HttpxPoolSource(client._transport._pool, name="httpcore", clock=time.perf_counter,
                             on_gone=print)
    source.read()   # HttpReading({(("server.address", "api.example"), ...): ServerLoad(...)})
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

from otel_backpressure.pool._http import (
    HttpPoolSource,
    HttpReading,
    ServerKey,
    load_of,
)
from otel_backpressure.pool._source import PoolReading

__all__ = ["HttpxPoolSource", "is_httpcore_pool"]

_logger = logging.getLogger(__name__)

_POOL_CLASSES: Final = (
    ("httpcore._sync.connection_pool", "ConnectionPool"),
    ("httpcore._async.connection_pool", "AsyncConnectionPool"),
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_UNBOUNDED: Final = sys.maxsize


def is_httpcore_pool(target: object) -> bool:
    """Whether ``target`` is an httpcore pool (without importing httpcore)."""
    for module_name, class_name in _POOL_CLASSES:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(target, getattr(module, class_name)):
            return True
    return False


def _origin_key(origin: Any) -> tuple[str, str, int]:
    scheme = origin.scheme.decode("ascii")
    port = origin.port or _DEFAULT_PORTS.get(scheme, 0)
    return scheme, origin.host.decode("ascii"), port


class HttpxPoolSource(HttpPoolSource):
    """An HTTP ``PoolSource`` over one httpcore ``ConnectionPool``/``AsyncConnectionPool``."""

    hooked: ClassVar[tuple[str, ...]] = (
        "handle_request",
        "handle_async_request",
        "_assign_requests_to_connections",
        "create_connection",
        "close",
        "aclose",
    )

    __slots__ = ("_assigned", "_opened", "_queued")

    @staticmethod
    def resolve(target: object) -> Any | None:
        """The pool itself, an httpx transport's ``_pool``, or an httpx client's transport's."""
        if is_httpcore_pool(target):
            return target
        transport = getattr(target, "_transport", target)  # httpx.Client / AsyncClient
        pool = getattr(transport, "_pool", None)  # httpx.HTTPTransport / AsyncHTTPTransport
        return pool if is_httpcore_pool(pool) else None

    @staticmethod
    def server(key: Any) -> str:
        return "httpx"

    @staticmethod
    def peek(target: object) -> PoolReading | None:
        """The whole pool's counts (for ``pool_health()`` of a pool nobody instrumented)."""
        pool = HttpxPoolSource.resolve(target)
        if pool is None:
            return None
        connections = [c for c in list(_connections_of(pool)) if not c.is_closed()]
        idle = sum(1 for c in connections if c.is_idle())
        closed = sum(1 for c in connections if c.is_idle() and _server_closed(c))
        limit = pool._max_connections
        return PoolReading(
            used=len(connections) - idle,
            idle=idle - closed,
            pending=sum(1 for r in list(pool._requests) if r.connection is None),
            timeouts=0,
            max=limit if 0 < limit < _UNBOUNDED else None,
        )

    def __init__(self, pool: Any, **kwargs: Any) -> None:
        # id(pool request) -> (pool request, server key, queued since), for requests seen
        # waiting for a connection and still in the pool; the entry holds the request, so
        # its id cannot be reused while it is here
        self._queued: dict[int, tuple[Any, ServerKey, float]] = {}
        self._assigned: dict[int, float] = {}  # id(queued pool request) -> last given one
        # id(connection) -> (connection, made at or None if before the hooks, server key),
        # for every connection in the pool: the pool holds no connection that is not here
        self._opened: dict[int, tuple[Any, float | None, ServerKey | None]] = {}
        super().__init__(pool, **kwargs)

    def _key(self, origin: Any) -> ServerKey:
        return self.servers.key(*_origin_key(origin))

    def read(self) -> HttpReading:
        pool = self._live_pool()
        connections = _connections_of(pool)
        loads = self._new_reading()
        for connection in list(connections):
            if connection.is_closed():
                continue
            load = load_of(loads, self._key(_connection_origin(connection)))
            if connection.is_idle():
                if not _server_closed(connection):
                    load.idle += 1
            else:
                load.active += 1
        for request in list(pool._requests):
            if request.connection is None:
                load_of(loads, self._key(request.request.url.origin)).pending += 1
        limit = pool._max_connections
        if not 0 < limit < _UNBOUNDED:
            return HttpReading(loads)
        for load in loads.values():
            load.max = limit
        return HttpReading(loads, limit)

    # -- hot path: never raise into the pool's caller -----------------------------------

    def _hook(self, pool: Any) -> None:
        assign = getattr(pool, "_assign_requests_to_connections", None)
        if assign is None:
            self._hook_timeouts_only(pool)  # httpcore < 1.0.3
            return
        opened, queued, clock, key_of = self._opened, self._queued, self._clock, self._key
        for connection in _connections_of(pool):  # made before the hooks: no start time
            opened[id(connection)] = (connection, None, None)
        create_connection = pool.create_connection
        source = self

        def hooked_create_connection(origin: Any) -> Any:
            connection = create_connection(origin)
            try:
                opened[id(connection)] = (connection, clock(), key_of(origin))
            except Exception:
                _logger.debug("httpx connection telemetry failed", exc_info=True)
            return connection

        def hooked_assign() -> Any:
            closing = assign()
            try:
                # the common pass: nobody waits, nobody waited, no connection dropped
                waiting = False
                for pool_request in pool._requests:
                    if pool_request.connection is None:
                        waiting = True
                        break
                if waiting or queued:
                    source._after_queueing(pool)
                if len(opened) > len(pool._connections):
                    source._dropped(pool)
            except Exception:
                _logger.debug("httpx pool telemetry failed", exc_info=True)
            return closing

        pool.create_connection = hooked_create_connection
        pool._assign_requests_to_connections = hooked_assign
        if hasattr(pool, "aclose"):
            aclose = pool.aclose

            async def hooked_aclose() -> None:
                await aclose()
                source._closed()

            pool.aclose = hooked_aclose
        else:
            close = pool.close

            def hooked_close() -> None:
                close()
                source._closed()

            pool.close = hooked_close

    def _after_queueing(self, pool: Any) -> None:
        """After a pass in which a request waits or waited: who queued, who got a
        connection, who left (done, timed out, or given up by its caller)."""
        from httpcore import PoolTimeout

        now = self._clock()
        queued, assigned = self._queued, self._assigned
        present = set()
        for pool_request in pool._requests:
            ident = id(pool_request)
            present.add(ident)
            if pool_request.connection is None:
                if ident not in queued:
                    key = self._key(pool_request.request.url.origin)
                    queued[ident] = (pool_request, key, now)
            elif ident in queued:
                assigned[ident] = now
        for ident in [ident for ident in queued if ident not in present]:
            pool_request, key, since = queued.pop(ident)
            got = assigned.pop(ident, None)
            if pool_request.connection is None:
                # still waiting as it left: the pool is handling its exception now
                if isinstance(sys.exc_info()[1], PoolTimeout):
                    self._timed_out(key)
            elif got is not None:
                for recorder in self.recorders:
                    recorder.add(recorder.queue, key, got - since)

    def _dropped(self, pool: Any) -> None:
        """Record the lifetime of each connection the pool no longer holds."""
        now = self._clock()
        opened = self._opened
        present = {id(connection) for connection in pool._connections}
        for ident in [ident for ident in opened if ident not in present]:
            _, made, key = opened.pop(ident)
            if made is not None and key is not None:
                for recorder in self.recorders:
                    recorder.add(recorder.duration, key, now - made)

    def _closed(self) -> None:
        """The pool closed every connection it had: they all end now."""
        try:
            now = self._clock()
            for _, made, key in list(self._opened.values()):
                if made is not None and key is not None:
                    for recorder in self.recorders:
                        recorder.add(recorder.duration, key, now - made)
            self._opened.clear()
        except Exception:
            _logger.debug("httpx connection telemetry failed", exc_info=True)

    def _hook_timeouts_only(self, pool: Any) -> None:
        """httpcore < 1.0.3: count ``PoolTimeout`` around ``handle_request``."""
        from httpcore import PoolTimeout

        key_of, timed_out = self._key, self._timed_out

        def count(error: BaseException, request: Any) -> None:
            if isinstance(error, PoolTimeout):
                try:
                    timed_out(key_of(request.url.origin))
                except Exception:
                    _logger.debug("httpx pool timeout telemetry failed", exc_info=True)

        if hasattr(pool, "handle_async_request"):
            handle_async: Callable[[Any], Awaitable[Any]] = pool.handle_async_request

            async def hooked_async(request: Any) -> Any:
                try:
                    return await handle_async(request)
                except BaseException as error:
                    count(error, request)
                    raise

            pool.handle_async_request = hooked_async
        else:
            handle: Callable[[Any], Any] = pool.handle_request

            def hooked_sync(request: Any) -> Any:
                try:
                    return handle(request)
                except BaseException as error:
                    count(error, request)
                    raise

            pool.handle_request = hooked_sync


def _server_closed(connection: Any) -> bool:
    """Whether the server closed this *idle* HTTP/1.1 connection (httpcore has not looked yet).

    httpcore's own rule (``HTTP11Connection.has_expired``): an idle connection
    whose socket is readable can only be about to read the server's EOF. It
    looks only when it next hands out a connection; the count should not wait.
    """
    inner = getattr(connection, "_connection", None)
    if inner is None or not type(inner).__name__.endswith("HTTP11Connection"):
        return False  # not connected yet, or HTTP/2 (whose server may send frames)
    try:
        return bool(inner._network_stream.get_extra_info("is_readable"))
    except Exception:
        return False


def _connections_of(pool: Any) -> list[Any]:
    connections = getattr(pool, "_connections", None)
    if connections is None:
        connections = pool._pool  # httpcore < 1.0.3
    return list(connections)


def _connection_origin(connection: Any) -> Any:
    origin = getattr(connection, "_remote_origin", None)  # forwarding and tunnelling proxies
    return origin if origin is not None else connection._origin
