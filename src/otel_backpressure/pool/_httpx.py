"""Read httpcore's connection pool (what ``httpx.Client``/``AsyncClient`` send through).

httpcore keeps a pool's whole state in two lists: ``_connections`` (``_pool``
before httpcore 1.0.3, i.e. httpx 0.23-0.25) and ``_requests``, whose entries
have ``connection`` None while they wait for one. At collection time a
connection that is not closed counts as ``idle`` (``is_idle()``) or
``active``, by its origin (``_remote_origin`` for a proxy's connections); a
waiting request counts as pending by its URL's origin. The limit is
``_max_connections`` (``max_connections=None`` is ``sys.maxsize``: unbounded).

Hooks, as instance attributes on the pool (its transport calls
``self._pool.handle_request``, and the pool calls its own methods through
``self``), removed by ``close()``:

- ``handle_request``/``handle_async_request`` notes when each request arrived
  and counts ``httpcore.PoolTimeout`` by server.
- ``_assign_requests_to_connections`` (httpcore >= 1.0.3; the one place that
  gives requests connections, always called with the pool's lock held): after
  it, a request still without a connection is queued, and a queued one that got
  one notes when. One pass may give a freed HTTP/1.1 connection to every
  queued request; all but one then find it busy and queue again, so the *last*
  assignment is the one that counted, and ``http.client.request.time_in_queue``
  is recorded when the request leaves ``handle_request`` (as in .NET, only
  requests that queued are recorded). A connection no longer in the list was
  dropped: its ``http.client.connection.duration`` is recorded.
- ``create_connection`` notes when a connection was made; ``close``/``aclose``
  end every connection left.

With httpcore before 1.0.3 the counts and timeouts are exact and the two
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

    __slots__ = ("_arrived", "_assigned", "_opened", "_queued")

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
        # id(request) -> arrived at, for requests in handle_request now
        self._arrived: dict[int, float] = {}
        self._queued: set[int] = set()  # id(request) of those seen waiting
        self._assigned: dict[int, float] = {}  # id(queued request) -> last given a connection
        # id(connection) -> (connection, made at, server key), for connections in the pool
        self._opened: dict[int, tuple[Any, float, ServerKey]] = {}
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
        from httpcore import PoolTimeout

        arrived, queued, assigned, opened = (
            self._arrived,
            self._queued,
            self._assigned,
            self._opened,
        )
        clock, key_of, timed_out = self._clock, self._key, self._timed_out
        source = self

        def enter(request: Any) -> int:
            ident = id(request)
            if source.recorders:
                arrived[ident] = clock()
            return ident

        def leave(ident: int, error: BaseException | None, request: Any) -> None:
            start = arrived.pop(ident, None)
            if ident in queued:
                queued.discard(ident)
                left = assigned.pop(ident, None)
                try:
                    if left is not None and start is not None:
                        key = key_of(request.url.origin)
                        for recorder in source.recorders:
                            recorder.add(recorder.queue, key, left - start)
                except Exception:
                    _logger.debug("httpx queue telemetry failed", exc_info=True)
            if isinstance(error, PoolTimeout):
                try:
                    timed_out(key_of(request.url.origin))
                except Exception:
                    _logger.debug("httpx pool timeout telemetry failed", exc_info=True)

        if hasattr(pool, "handle_async_request"):

            async def hooked_async(request: Any) -> Any:
                ident = enter(request)
                try:
                    response = await handle_async(request)
                except BaseException as error:
                    leave(ident, error, request)
                    raise
                leave(ident, None, request)
                return response

            handle_async: Callable[[Any], Awaitable[Any]] = pool.handle_async_request
            pool.handle_async_request = hooked_async
        else:

            def hooked_sync(request: Any) -> Any:
                ident = enter(request)
                try:
                    response = handle(request)
                except BaseException as error:
                    leave(ident, error, request)
                    raise
                leave(ident, None, request)
                return response

            handle: Callable[[Any], Any] = pool.handle_request
            pool.handle_request = hooked_sync

        assign = getattr(pool, "_assign_requests_to_connections", None)
        if assign is None:
            return  # httpcore < 1.0.3: counts and timeouts only
        create_connection = pool.create_connection

        def hooked_create_connection(origin: Any) -> Any:
            connection = create_connection(origin)
            try:
                if source.recorders:
                    opened[id(connection)] = (connection, clock(), key_of(origin))
            except Exception:
                _logger.debug("httpx connection telemetry failed", exc_info=True)
            return connection

        def hooked_assign() -> Any:
            closing = assign()
            try:
                recorders = source.recorders
                if recorders:
                    source._after_assign(pool, recorders)
            except Exception:
                _logger.debug("httpx queue telemetry failed", exc_info=True)
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

    def _closed(self) -> None:
        """The pool closed every connection it had: they all end now."""
        try:
            recorders = self.recorders
            now = self._clock()
            for _, made, key in list(self._opened.values()):
                for recorder in recorders:
                    recorder.add(recorder.duration, key, now - made)
            self._opened.clear()
        except Exception:
            _logger.debug("httpx connection telemetry failed", exc_info=True)

    def _after_assign(self, pool: Any, recorders: tuple[Any, ...]) -> None:
        """Note queued requests and when they got a connection; record dropped connections.

        Runs with the pool's lock held, right after the pool handed out connections.
        """
        now = self._clock()
        arrived, queued, assigned = self._arrived, self._queued, self._assigned
        for pool_request in pool._requests:
            ident = id(pool_request.request)
            if pool_request.connection is None:
                if ident in arrived:
                    queued.add(ident)
            elif ident in queued:
                assigned[ident] = now
        opened = self._opened
        if opened:
            present = {id(c) for c in pool._connections}
            for ident in [i for i in opened if i not in present]:
                _, made, key = opened.pop(ident)
                for recorder in recorders:
                    recorder.add(recorder.duration, key, now - made)


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
