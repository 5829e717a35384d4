"""A real HTTP server on loopback (``LoopbackServer``: uvicorn, own thread) whose ``/hold``
requests wait for the test.

``arrived(n)`` blocks until ``n`` requests have reached the handler;
``release(n)`` lets the ``n`` oldest held ones answer. Every other path
answers at once. Nothing here sleeps against real time: the test waits for
events the server reports.

Example::

    with HoldServer() as server:
        ...                      # five clients GET server.url + "/hold"
        server.arrived(2)        # two reached the handler: two connections are in use
        server.release(1)
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from otel_backpressure._shared import Receive, Scope, Send
from otel_backpressure.testing import LoopbackServer, MetricsCapture

#: MetricsCapture.snapshot() keys of http.client.open_connections' two states
ACTIVE = "http.client.open_connections{http.connection.state=active}"
IDLE = "http.client.open_connections{http.connection.state=idle}"
#: the synchronous counter: its series outlives the pool (and instrumentation), as a sum must
TIMEOUTS = "backpressure.http.client.pool.timeouts"


class HoldServer:
    def __init__(self, keep_alive: float = 5.0) -> None:
        self._condition = threading.Condition()
        self._arrived = 0
        self._held: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        # seconds before the server closes an idle connection
        self._server = LoopbackServer(self._app, keep_alive=keep_alive)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/hold":
            self._loop = asyncio.get_running_loop()
            gate: asyncio.Future[None] = self._loop.create_future()
            self._held.append(gate)
            with self._condition:
                self._arrived += 1
                self._condition.notify_all()
            await gate
        body = b"ok"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def arrived(self, count: int) -> None:
        """Block until ``count`` requests in all have reached ``/hold``."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._arrived >= count, timeout=10):
                raise AssertionError(f"{self._arrived} of {count} requests arrived")

    @property
    def arrivals(self) -> int:
        return self._arrived

    def release(self, count: int = 1) -> None:
        """Let the ``count`` oldest held requests answer."""
        loop = self._loop
        assert loop is not None, "nothing is held"

        def open_gates() -> None:
            for _ in range(count):
                self._held.popleft().set_result(None)

        loop.call_soon_threadsafe(open_gates)

    def __enter__(self) -> HoldServer:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._held:
            self.release(len(self._held))
        self._server.__exit__(*exc)


@pytest.fixture
def server() -> Iterator[HoldServer]:
    with HoldServer() as server:
        yield server


def state(metrics: MetricsCapture, server: HoldServer) -> dict[str, Any]:
    """Every series of ``server`` now (the histograms as (count, sum))."""
    attributes = {"server.address": "127.0.0.1", "server.port": server.port, "url.scheme": "http"}
    snapshot = metrics.snapshot(attributes)
    return {k: v[:2] if isinstance(v, tuple) else v for k, v in snapshot.items()}


def counts(
    active: int, idle: int, pending: int, limit: int = 2, timeouts: int = 0, usage: float = -1
) -> dict[str, Any]:
    """The series of one server: connections by state, queued requests, timeouts, limit, usage
    (open connections ``(active + idle) / limit``, at most 1, unless given)."""
    return {
        ACTIVE: active,
        IDLE: idle,
        "backpressure.http.client.pending_requests": pending,
        TIMEOUTS: timeouts,
        "backpressure.http.client.connection.max": limit,
        "backpressure.http.client.connection.usage": (
            min(1.0, (active + idle) / limit) if usage < 0 else usage
        ),
    }


def settled(metrics: MetricsCapture, server: HoldServer, expected: dict[str, Any]) -> None:
    """Assert the series reach ``expected`` once the clients' threads settle.

    httpcore may hand a freed connection to every queued request in one pass;
    all but one find it busy and queue again within microseconds, so a reading
    taken in between sees them as not waiting.
    """
    for _ in range(5_000):
        if state(metrics, server) == expected:
            return
        threading.Event().wait(0.001)
    assert state(metrics, server) == expected


async def settled_async(
    metrics: MetricsCapture, server: HoldServer, expected: dict[str, Any]
) -> None:
    """``settled`` for clients on the event loop: yield to them while waiting."""
    for _ in range(5_000):
        if state(metrics, server) == expected:
            return
        await asyncio.sleep(0.001)
    assert state(metrics, server) == expected
