"""Read aiohttp's connector (``TCPConnector`` and every ``BaseConnector``).

A connector keeps idle connections in ``_conns`` (per ``ConnectionKey``: host,
port, TLS, proxy), the connections lent to requests in ``_acquired``, and the
requests waiting for a slot in ``_waiters`` (per key). Requests queue when
``len(_acquired)`` reaches ``limit`` (default 100) or the key's share reaches
``limit_per_host``; idle connections do not count against either.

At collection time an idle connection counts by its key if it is still
connected; a lent one counts by the key it was made for, which the source
learns from the instance's ``_create_connection`` (aiohttp itself tracks lent
connections per key only when ``limit_per_host`` is set). Connections made
before the connector was instrumented are not counted while lent (the
instrumentor instruments connectors when they are created, so only a late
``instrument()`` meets them). ``max`` is the tighter of the two limits.

Hooks, as instance attributes removed by ``close()`` (the connector calls
them through ``self``, the session calls ``connect`` through its connector):

- ``_create_connection`` notes the new connection's key and open time, and
  shadows the connection's ``connection_lost`` (called once by the transport
  when it closes) to record ``http.client.connection.duration``.
- ``_wait_for_available_connection`` (aiohttp >= 3.10.11; what a request awaits
  while queued) records ``http.client.request.time_in_queue`` when the wait
  ends with a slot, and notes the task when the wait is cancelled.
- ``connect`` (aiohttp >= 3.10.11) decides what such a cancellation was. aiohttp
  enforces its timeouts by cancelling the wait: the ``connect`` timeout
  surfaces from ``connect`` as ``asyncio.TimeoutError``, the ``total`` one as
  the cancellation with the request's timer marked expired. Either is a pool
  timeout, counted once; any other cancellation (the caller's: a task
  cancelled, ``asyncio.wait_for``, a task group) is not.

Example::

    from otel_backpressure.pool._aiohttp import AiohttpPoolSource

    source = AiohttpPoolSource(session.connector, name="aiohttp", clock=time.perf_counter,
                               on_gone=print)
    source.read()   # HttpReading({(("server.address", "api.example"), ...): ServerLoad(...)})
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from typing import Any, ClassVar

from otel_backpressure.pool._http import (
    HttpPoolSource,
    HttpReading,
    ServerKey,
    ServerLoad,
    load_of,
)
from otel_backpressure.pool._source import PoolReading

__all__ = ["AiohttpPoolSource", "is_aiohttp_connector"]

_logger = logging.getLogger(__name__)


def is_aiohttp_connector(target: object) -> bool:
    """Whether ``target`` is an aiohttp connector (without importing aiohttp)."""
    module = sys.modules.get("aiohttp.connector")
    return module is not None and isinstance(target, module.BaseConnector)


class AiohttpPoolSource(HttpPoolSource):
    """An HTTP ``PoolSource`` over one aiohttp connector."""

    hooked: ClassVar[tuple[str, ...]] = (
        "_create_connection",
        "_wait_for_available_connection",
        "connect",
    )

    __slots__ = ("_owners",)

    @staticmethod
    def resolve(target: object) -> Any | None:
        """The connector itself, or an ``aiohttp.ClientSession``'s connector."""
        if is_aiohttp_connector(target):
            return target
        session = sys.modules.get("aiohttp.client")
        if session is not None and isinstance(target, session.ClientSession):
            connector = target.connector
            return connector if is_aiohttp_connector(connector) else None
        return None

    @staticmethod
    def server(key: Any) -> str:
        return "aiohttp"

    @staticmethod
    def peek(target: object) -> PoolReading | None:
        """The whole connector's counts (for ``pool_health()`` of one nobody instrumented)."""
        connector = AiohttpPoolSource.resolve(target)
        if connector is None:
            return None
        idle = sum(
            1 for conns in list(connector._conns.values()) for proto, _ in list(conns)
            if proto.is_connected()
        )  # fmt: skip
        waiters = list(connector._waiters.values())
        return PoolReading(
            used=len(connector._acquired),
            idle=idle,
            pending=sum(1 for queue in waiters for waiter in list(queue) if not waiter.done()),
            timeouts=0,
            max=connector._limit or None,
        )

    def __init__(self, connector: Any, **kwargs: Any) -> None:
        # lent or idle connection -> its server key, until its transport closes
        self._owners: dict[Any, ServerKey] = {}
        super().__init__(connector, **kwargs)

    @property
    def alive(self) -> bool:
        connector = self._pool()
        return connector is not None and not connector.closed  # a closed connector stays closed

    def _key(self, connection_key: Any) -> ServerKey:
        scheme = "https" if connection_key.is_ssl else "http"
        port = connection_key.port or (443 if connection_key.is_ssl else 80)
        return self.servers.key(scheme, connection_key.host, port)

    def read(self) -> HttpReading:
        connector = self._live_pool()
        loads = self._new_reading()
        self._count(connector, loads)
        limit: int = connector._limit
        # the tighter of limit and limit_per_host binds each server (0: no limit)
        limits = [n for n in (limit, connector._limit_per_host) if n]
        if limits:
            bound = min(limits)
            for load in loads.values():
                load.max = bound
        return HttpReading(loads, limit or None)

    def _count(self, connector: Any, loads: dict[ServerKey, ServerLoad]) -> None:
        """Idle, active and pending connections per server, from the connector's own tables."""
        for connection_key, idle in list(connector._conns.items()):
            load = load_of(loads, self._key(connection_key))
            load.idle += sum(1 for proto, _ in list(idle) if proto.is_connected())
        owners = self._owners
        for proto in list(connector._acquired):
            owner = owners.get(proto)
            if owner is not None:
                load_of(loads, owner).active += 1
        for connection_key, waiters in list(connector._waiters.items()):
            load = load_of(loads, self._key(connection_key))
            load.pending += sum(1 for waiter in list(waiters) if not waiter.done())

    # -- hot path: never raise into the connector's caller ------------------------------

    def _hook(self, connector: Any) -> None:
        create_connection = connector._create_connection
        clock, key_of, source = self._clock, self._key, self

        async def hooked_create_connection(request: Any, *args: Any, **kwargs: Any) -> Any:
            proto = await create_connection(request, *args, **kwargs)
            try:
                source._opened(proto, key_of(request.connection_key))
            except Exception:
                _logger.debug("aiohttp connection telemetry failed", exc_info=True)
            return proto

        connector._create_connection = hooked_create_connection
        wait = getattr(connector, "_wait_for_available_connection", None)
        if wait is None:
            return  # aiohttp < 3.10.11: counts only

        # a task whose wait for a slot was cancelled -> that slot's server, until its
        # connect() says why (weak: a task that never gets there leaves nothing behind)
        cancelled: weakref.WeakKeyDictionary[asyncio.Task[Any], Any] = weakref.WeakKeyDictionary()

        async def hooked_wait(connection_key: Any, *args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                result = await wait(connection_key, *args, **kwargs)
            except asyncio.CancelledError:
                _note_cancelled(cancelled, connection_key)
                raise
            source._left_queue(connection_key, start)
            return result

        connect = connector.connect

        # connect(req, traces, timeout) since aiohttp 3.10: named, so the session's keyword
        # call binds without a dict and the call through passes them positionally
        async def hooked_connect(request: Any, traces: Any, timeout: Any) -> Any:
            try:
                return await connect(request, traces, timeout)
            except BaseException as error:
                if cancelled:  # a wait was cancelled: was it this request's, by its timeout?
                    source._connect_failed(cancelled, request, error)
                raise

        connector._wait_for_available_connection = hooked_wait
        connector.connect = hooked_connect

    def _opened(self, proto: Any, key: ServerKey) -> None:
        self._owners[proto] = key
        made = self._clock()
        connection_lost = proto.connection_lost
        owners, clock, source = self._owners, self._clock, self

        def hooked_connection_lost(error: BaseException | None) -> None:
            try:
                owners.pop(proto, None)
                del proto.connection_lost  # one call per connection (not via __dict__)
                took = clock() - made
                for recorder in source.recorders:
                    recorder.add(recorder.duration, key, took)
            except Exception:
                _logger.debug("aiohttp connection telemetry failed", exc_info=True)
            connection_lost(error)

        proto.connection_lost = hooked_connection_lost

    def _connect_failed(
        self,
        cancelled: weakref.WeakKeyDictionary[asyncio.Task[Any], Any],
        request: Any,
        error: BaseException,
    ) -> None:
        """Count a pool timeout if ``request`` was queued and aiohttp's own timeout ended it."""
        try:
            task = asyncio.current_task()
            connection_key = None if task is None else cancelled.pop(task, None)
            if connection_key is None:
                return  # it was not waiting for a slot: a connect or DNS failure
            if isinstance(error, asyncio.TimeoutError) or _timer_expired(request):
                self._timed_out(self._key(connection_key))
        except Exception:
            _logger.debug("aiohttp queue telemetry failed", exc_info=True)

    def _left_queue(self, connection_key: Any, start: float) -> None:
        try:
            recorders = self.recorders
            if recorders:
                waited = self._clock() - start
                key = self._key(connection_key)
                for recorder in recorders:
                    recorder.add(recorder.queue, key, waited)
        except Exception:
            _logger.debug("aiohttp queue telemetry failed", exc_info=True)


def _note_cancelled(
    cancelled: weakref.WeakKeyDictionary[asyncio.Task[Any], Any], connection_key: Any
) -> None:
    try:
        task = asyncio.current_task()
        if task is not None:
            cancelled[task] = connection_key
    except Exception:
        _logger.debug("aiohttp queue telemetry failed", exc_info=True)


def _timer_expired(request: Any) -> bool:
    """Whether the request's ``total`` timeout fired (aiohttp's ``TimerContext`` marks it)."""
    return getattr(getattr(request, "_timer", None), "_cancelled", False) is True
