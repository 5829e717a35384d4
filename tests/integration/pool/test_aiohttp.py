"""aiohttp's connector against a real local server that holds requests: every count exact."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
from packaging.version import Version

import contract
import otel_backpressure
from hold_server import IDLE, TIMEOUTS, HoldServer, counts, state
from hold_server import settled_async as settled
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.testing import FakeClock, MetricsCapture

pytestmark = pytest.mark.integration

# aiohttp 3.10.11 made the wait for a free connection a method the source can
# time (docs/pool.md): before it, the counts only, no queue time, no timeouts
QUEUE_TIMED = Version(aiohttp.__version__) >= Version("3.10.11")


def in_queue(requests: int, seconds: float) -> dict[str, Any]:
    """``http.client.request.time_in_queue`` as (count, sum), where aiohttp lets it be timed."""
    if not QUEUE_TIMED:
        return {}
    return {"http.client.request.time_in_queue": (requests, pytest.approx(seconds))}


async def fetch(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def test_connector_queues_past_its_limit(
    server: HoldServer, metrics: MetricsCapture, clock: FakeClock
) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2))
    handle = otel_backpressure.instrument(
        session, meter_provider=metrics.meter_provider, clock=clock
    )
    try:
        calls = [asyncio.ensure_future(fetch(session, server.url + "/hold")) for _ in range(5)]
        await asyncio.to_thread(server.arrived, 2)
        await settled(metrics, server, counts(2, 0, 3))
        clock.advance(0.5)  # every queued request has now waited 0.5 s
        server.release(1)
        await asyncio.to_thread(server.arrived, 3)
        await settled(
            metrics,
            server,
            {**counts(2, 0, 2), **in_queue(1, 0.5)},
        )
        server.release(2)
        await asyncio.to_thread(server.arrived, 5)
        server.release(2)
        assert await asyncio.gather(*calls) == [200] * 5
        for metric in metrics.collect().values():
            assert contract.violations(metric) == [], metric.name
        assert state(metrics, server) == {**counts(0, 2, 0), **in_queue(3, 1.5)}
        clock.advance(2.0)
        await session.close()  # both connections end, 2.5 s after they opened
        await settled(  # and the closed connector's series stop
            metrics,
            server,
            {
                TIMEOUTS: 0,
                **in_queue(3, 1.5),
                "http.client.connection.duration": (2, pytest.approx(5.0)),
            },
        )
    finally:
        handle.uninstrument()
        await session.close()


async def test_limit_per_host_binds_first(server: HoldServer, metrics: MetricsCapture) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4, limit_per_host=1))
    handle = otel_backpressure.instrument(session, meter_provider=metrics.meter_provider)
    try:
        calls = [asyncio.ensure_future(fetch(session, server.url + "/hold")) for _ in range(2)]
        await asyncio.to_thread(server.arrived, 1)
        # one connection of the pool's four, but the only one this host may have
        await settled(metrics, server, counts(1, 0, 1, limit=1))
        server.release(1)
        await asyncio.to_thread(server.arrived, 2)
        server.release(1)
        assert await asyncio.gather(*calls) == [200, 200]
        assert state(metrics, server)[IDLE] == 1
    finally:
        handle.uninstrument()
        await session.close()


async def test_requests_whose_own_timeout_ends_them_while_queued_are_pool_timeouts(
    server: HoldServer, metrics: MetricsCapture
) -> None:
    """aiohttp's ``connect`` and ``total`` timeouts, which cover the wait for a slot."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    handle = otel_backpressure.instrument(session, meter_provider=metrics.meter_provider)
    try:
        holder = asyncio.ensure_future(fetch(session, server.url + "/hold"))
        await asyncio.to_thread(server.arrived, 1)
        for _ in range(2):
            # ConnectionTimeoutError from aiohttp 3.10, a subclass of this one
            with pytest.raises(aiohttp.ServerTimeoutError):
                await session.get(server.url + "/", timeout=aiohttp.ClientTimeout(connect=0.05))
        with pytest.raises(asyncio.TimeoutError):
            await session.get(server.url + "/", timeout=aiohttp.ClientTimeout(total=0.05))
        timeouts = 3 if QUEUE_TIMED else 0
        assert state(metrics, server) == counts(1, 0, 0, limit=1, timeouts=timeouts)
        server.release(1)
        assert await holder == 200
        assert state(metrics, server) == counts(0, 1, 0, limit=1, timeouts=timeouts)
    finally:
        handle.uninstrument()
        await session.close()


async def test_requests_their_caller_cancels_while_queued_are_not_timeouts(
    server: HoldServer, metrics: MetricsCapture
) -> None:
    """A task cancelled while it waits for a slot (a client that went away, a sibling task
    that failed, the caller's own ``asyncio.wait_for``) did not time out in the pool."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    handle = otel_backpressure.instrument(session, meter_provider=metrics.meter_provider)
    try:
        holder = asyncio.ensure_future(fetch(session, server.url + "/hold"))
        await asyncio.to_thread(server.arrived, 1)
        queued = asyncio.ensure_future(fetch(session, server.url + "/"))
        await settled(metrics, server, counts(1, 0, 1, limit=1))
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fetch(session, server.url + "/"), timeout=0.05)
        assert state(metrics, server) == counts(1, 0, 0, limit=1)
        server.release(1)
        assert await holder == 200
        assert await fetch(session, server.url + "/") == 200  # the slot is free again
        assert state(metrics, server) == counts(0, 1, 0, limit=1)
    finally:
        handle.uninstrument()
        await session.close()


async def test_instrumentor_catches_sessions_the_app_creates(
    server: HoldServer, metrics: MetricsCapture, instrumentor: BackpressureInstrumentor
) -> None:
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    session = aiohttp.ClientSession()
    try:
        assert await fetch(session, server.url + "/") == 200
        assert state(metrics, server) == counts(0, 1, 0, limit=100)
        instrumentor.uninstrument()
        assert state(metrics, server) == {TIMEOUTS: 0}  # the read-at-collection series stop
        assert "_create_connection" not in session.connector.__dict__  # type: ignore[union-attr]
    finally:
        await session.close()


async def test_pool_health_of_a_session_nobody_instrumented(server: HoldServer) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    try:
        calls = [asyncio.ensure_future(fetch(session, server.url + "/hold")) for _ in range(2)]
        await asyncio.to_thread(server.arrived, 1)
        for _ in range(5_000):  # until the second request waits for the one connection
            if otel_backpressure.pool_health(session)["pending"] == 1:
                break
            await asyncio.sleep(0.001)
        health = otel_backpressure.pool_health(session)
        assert (health["in_use"], health["pending"], health["total_capacity"]) == (1, 1, 1)
        assert health["status"] == "critical"
        server.release(1)
        await asyncio.to_thread(server.arrived, 2)
        server.release(1)
        assert await asyncio.gather(*calls) == [200, 200]
    finally:
        await session.close()


async def test_idle_connections_the_server_closed_stop_counting(metrics: MetricsCapture) -> None:
    """The server closes idle connections after its keep-alive timeout; the event loop sees
    it at once and the connection stops counting (and its lifetime is recorded)."""
    with HoldServer(keep_alive=0.2) as closing:
        session = aiohttp.ClientSession()
        handle = otel_backpressure.instrument(session, meter_provider=metrics.meter_provider)
        try:
            assert await fetch(session, closing.url + "/") == 200
            assert state(metrics, closing)[IDLE] == 1
            await settled(
                metrics,
                closing,
                {**counts(0, 0, 0, limit=100), "http.client.connection.duration": (1, ANY)},
            )
        finally:
            handle.uninstrument()
            await session.close()
