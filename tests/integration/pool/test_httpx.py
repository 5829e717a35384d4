"""httpx (httpcore's pool) against a real local server that holds requests: every count exact."""

from __future__ import annotations

import asyncio
import threading
from importlib.metadata import version
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from packaging.version import Version

import contract
import otel_backpressure
from hold_server import IDLE, TIMEOUTS, HoldServer, counts, settled, settled_async, state
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.testing import FakeClock, MetricsCapture

pytestmark = pytest.mark.integration

# httpcore 1.0.3 (httpx 0.26+) has the one method that gives requests
# connections, which the two histograms need (docs/pool.md): before it, the
# counts and timeouts only
TIMED = Version(version("httpcore")) >= Version("1.0.3")
HISTOGRAMS = ("http.client.request.time_in_queue", "http.client.connection.duration")


def timed(histograms: dict[str, Any]) -> dict[str, Any]:
    """The histograms' expected series where httpcore lets them be measured, else none."""
    return histograms if TIMED else {}


def test_sync_client_queues_past_its_limit(
    server: HoldServer, metrics: MetricsCapture, clock: FakeClock
) -> None:
    client = httpx.Client(limits=httpx.Limits(max_connections=2), timeout=30)
    handle = otel_backpressure.instrument(
        client, meter_provider=metrics.meter_provider, clock=clock
    )
    try:
        assert state(metrics, server) == {}  # no server named yet
        answers: list[int] = []

        def call() -> None:
            answers.append(client.get(server.url + "/hold").status_code)

        threads = [threading.Thread(target=call) for _ in range(5)]
        for thread in threads:
            thread.start()
        server.arrived(2)
        settled(metrics, server, counts(2, 0, 3))  # the three others queue in the pool
        assert server.arrivals == 2

        clock.advance(0.5)  # every queued request has now waited 0.5 s
        server.release(1)
        server.arrived(3)
        # recorded as it leaves the pool: the third request is held at the server
        settled(metrics, server, counts(2, 0, 2))
        server.release(2)
        server.arrived(5)
        # the third left once its response closed; that freed connection may have gone to
        # the fifth in the second's pass already, so wait for the third's own pass
        settled(
            metrics,
            server,
            {
                **counts(2, 0, 0),
                **timed({"http.client.request.time_in_queue": (1, pytest.approx(0.5))}),
            },
        )
        server.release(2)
        for thread in threads:
            thread.join()
        assert answers == [200] * 5
        assert state(metrics, server) == {
            **counts(0, 2, 0),
            **timed({"http.client.request.time_in_queue": (3, pytest.approx(1.5))}),
        }
        clock.advance(2.0)
        client.close()  # both connections end, 2.5 s after they opened
        assert state(metrics, server) == {
            **counts(0, 0, 0),
            **timed(
                {
                    "http.client.request.time_in_queue": (3, pytest.approx(1.5)),
                    "http.client.connection.duration": (2, pytest.approx(5.0)),
                }
            ),
        }
    finally:
        handle.uninstrument()
        client.close()


@pytest.mark.parametrize("timings", ["true", "false"])
def test_pool_timeouts_are_counted(
    server: HoldServer, metrics: MetricsCapture, monkeypatch: pytest.MonkeyPatch, timings: str
) -> None:
    """Counted with the histograms turned off too: the counter does not ride on them."""
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS", timings)
    client = httpx.Client(
        limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(30, pool=0.05)
    )
    handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
    assert handle.timings is (timings == "true")
    try:
        holder = threading.Thread(target=lambda: client.get(server.url + "/hold"))
        holder.start()
        server.arrived(1)
        for _ in range(2):
            with pytest.raises(httpx.PoolTimeout):
                client.get(server.url + "/hold")
        assert state(metrics, server) == counts(1, 0, 0, limit=1, timeouts=2)
        server.release(1)
        holder.join()
        assert state(metrics, server) == counts(0, 1, 0, limit=1, timeouts=2)
    finally:
        handle.uninstrument()
        client.close()


async def test_async_client_queues_past_its_limit(
    server: HoldServer, metrics: MetricsCapture, clock: FakeClock
) -> None:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=2), timeout=30)
    handle = otel_backpressure.instrument(
        client, meter_provider=metrics.meter_provider, clock=clock
    )
    try:
        calls = [asyncio.ensure_future(client.get(server.url + "/hold")) for _ in range(5)]
        await asyncio.to_thread(server.arrived, 2)
        await settled_async(metrics, server, counts(2, 0, 3))
        clock.advance(0.25)
        server.release(1)
        await asyncio.to_thread(server.arrived, 3)
        await settled_async(metrics, server, counts(2, 0, 2))
        server.release(2)
        await asyncio.to_thread(server.arrived, 5)
        server.release(2)
        responses = await asyncio.gather(*calls)
        assert [r.status_code for r in responses] == [200] * 5
        assert state(metrics, server) == {
            **counts(0, 2, 0),
            **timed({"http.client.request.time_in_queue": (3, pytest.approx(0.75))}),
        }
    finally:
        handle.uninstrument()
        await client.aclose()


async def test_async_pool_timeouts_count_and_cancelled_waits_do_not(
    server: HoldServer, metrics: MetricsCapture
) -> None:
    """``httpx.PoolTimeout`` is a pool timeout; a task cancelled while it waited for a
    connection (its caller gave up) is not."""
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(30, pool=0.05)
    )
    handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
    try:
        holder = asyncio.ensure_future(client.get(server.url + "/hold"))
        await asyncio.to_thread(server.arrived, 1)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(server.url + "/")
        queued = asyncio.ensure_future(client.get(server.url + "/", timeout=30))
        await settled_async(metrics, server, counts(1, 0, 1, limit=1, timeouts=1))
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.get(server.url + "/", timeout=30), timeout=0.05)
        assert state(metrics, server) == counts(1, 0, 0, limit=1, timeouts=1)
        server.release(1)
        assert (await holder).status_code == 200
        assert (await client.get(server.url + "/")).status_code == 200
        assert state(metrics, server) == counts(0, 1, 0, limit=1, timeouts=1)
    finally:
        handle.uninstrument()
        await client.aclose()


def test_servers_past_the_bound_share_other(
    server: HoldServer, metrics: MetricsCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_HTTP_CLIENT_MAX_SERVERS", "1")
    client = httpx.Client(limits=httpx.Limits(max_connections=4))
    handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
    try:
        client.get(server.url + "/")  # the first server seen keeps its own series
        assert state(metrics, server) == counts(0, 1, 0, limit=4)
        client.get(f"http://localhost:{server.port}/")  # the second is past the bound
        assert state(metrics, server) == counts(0, 1, 0, limit=4)
        other = metrics.snapshot({"server.address": "_OTHER", "url.scheme": "http"})
        assert other == {
            **counts(0, 1, 0, limit=4),
        }
    finally:
        handle.uninstrument()
        client.close()


def test_instrumentor_catches_clients_the_app_creates(
    server: HoldServer, metrics: MetricsCapture, instrumentor: BackpressureInstrumentor
) -> None:
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    client = httpx.Client()
    try:
        assert client.get(server.url + "/").status_code == 200
        assert state(metrics, server) == counts(0, 1, 0, limit=100)
        instrumentor.uninstrument()
        assert state(metrics, server) == {TIMEOUTS: 0}  # the read-at-collection series stop
        assert "handle_request" not in client._transport._pool.__dict__  # type: ignore[attr-defined]
    finally:
        client.close()


def test_pool_health_reads_the_whole_pool(server: HoldServer, metrics: MetricsCapture) -> None:
    client = httpx.Client(limits=httpx.Limits(max_connections=4))
    handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
    try:
        assert client.get(server.url + "/").status_code == 200
        assert client.get(f"http://localhost:{server.port}/").status_code == 200
        health = otel_backpressure.pool_health(client)
        assert (health["in_use"], health["available"], health["total_capacity"]) == (0, 2, 4)
        assert health["status"] == "healthy"
    finally:
        handle.uninstrument()
        client.close()


def test_every_series_keeps_the_contract(server: HoldServer, metrics: MetricsCapture) -> None:
    """Names, units, kinds and attributes, ``_OTHER`` without a port included."""
    import os

    os.environ["OTEL_PYTHON_BACKPRESSURE_HTTP_CLIENT_MAX_SERVERS"] = "1"
    try:
        client = httpx.Client(
            limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(30, pool=0.01)
        )
        handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
    finally:
        del os.environ["OTEL_PYTHON_BACKPRESSURE_HTTP_CLIENT_MAX_SERVERS"]
    try:
        client.get(server.url + "/")
        client.get(f"http://localhost:{server.port}/")  # past the bound, and drops the first
        holder = threading.Thread(target=lambda: client.get(server.url + "/hold"))
        holder.start()
        server.arrived(1)
        queued = threading.Thread(target=lambda: client.get(server.url + "/", timeout=30))
        queued.start()
        waiting = counts(1, 0, 1, limit=1)
        settled(metrics, server, {**waiting, **timed({HISTOGRAMS[1]: (1, ANY)})})
        with pytest.raises(httpx.PoolTimeout):
            client.get(server.url + "/")
        server.release(1)
        holder.join()
        queued.join()
        collected = metrics.collect()
        assert {name for name in collected if "http" in name} == {
            name
            for name in contract.METRICS
            if "http" in name and (TIMED or name not in HISTOGRAMS)
        }
        for metric in collected.values():
            assert contract.violations(metric) == [], metric.name
    finally:
        handle.uninstrument()
        client.close()


def test_pools_calling_one_server_add_up(server: HoldServer, metrics: MetricsCapture) -> None:
    """No pool attribute: counts and limits add up (usage is all their open connections over
    all their limits), and the timeouts of a pool that is gone stay counted (the sum never
    goes down)."""
    small = httpx.Client(
        limits=httpx.Limits(max_connections=2), timeout=httpx.Timeout(30, pool=0.01)
    )
    large = httpx.Client(limits=httpx.Limits(max_connections=4))
    handles = [
        otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
        for client in (small, large)
    ]
    try:
        held = [threading.Thread(target=small.get, args=(server.url + "/hold",)) for _ in "ab"]
        held.append(threading.Thread(target=large.get, args=(server.url + "/hold",)))
        for thread in held:
            thread.start()
        server.arrived(3)
        with pytest.raises(httpx.PoolTimeout):
            small.get(server.url + "/")
        settled(metrics, server, counts(3, 0, 0, limit=6, timeouts=1))  # usage 3 / 6
        server.release(3)
        for thread in held:
            thread.join()
        handles[0].uninstrument()
        small.close()
        assert state(metrics, server) == counts(0, 1, 0, limit=4, timeouts=1)
    finally:
        for handle in handles:
            handle.uninstrument()
        small.close()
        large.close()


def test_pool_health_of_a_client_nobody_instrumented(server: HoldServer) -> None:
    client = httpx.Client(limits=httpx.Limits(max_connections=3))
    try:
        holder = threading.Thread(target=client.get, args=(server.url + "/hold",))
        holder.start()
        server.arrived(1)
        client.get(server.url + "/")
        health = otel_backpressure.pool_health(client)
        assert (health["pool_name"], health["in_use"], health["available"]) == (None, 1, 1)
        assert (health["pending"], health["total_capacity"]) == (0, 3)
        server.release(1)
        holder.join()
    finally:
        client.close()


def test_idle_connections_the_server_closed_stop_counting(metrics: MetricsCapture) -> None:
    """The server closes idle connections after its keep-alive timeout; httpcore learns it
    when it next hands out a connection, the count at the next collection."""
    with HoldServer(keep_alive=0.2) as closing:
        client = httpx.Client()
        handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
        try:
            assert client.get(closing.url + "/").status_code == 200
            assert state(metrics, closing)[IDLE] == 1
            settled(metrics, closing, counts(0, 0, 0, limit=100))
            assert len(client._transport._pool.connections) == 1  # type: ignore[attr-defined]
        finally:
            handle.uninstrument()
            client.close()


def test_one_unbounded_pool_makes_the_server_unbounded(
    server: HoldServer, metrics: MetricsCapture
) -> None:
    """A server some pool calls without a limit has no max and no usage: a sum of the other
    pools' limits would be a bound that does not hold."""
    bounded = httpx.Client(limits=httpx.Limits(max_connections=2))
    unbounded = httpx.Client(limits=httpx.Limits(max_connections=None))
    handles = [
        otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
        for client in (bounded, unbounded)
    ]
    try:
        for client in (bounded, unbounded):
            assert client.get(server.url + "/").status_code == 200
        expected = counts(0, 2, 0)
        del expected["backpressure.http.client.connection.max"]
        del expected["backpressure.http.client.connection.usage"]
        assert state(metrics, server) == expected
        handles[1].uninstrument()
        assert state(metrics, server) == counts(0, 1, 0)  # usage 1 open / 2
    finally:
        for handle in handles:
            handle.uninstrument()
        bounded.close()
        unbounded.close()
