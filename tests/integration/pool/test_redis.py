"""redis-py pools on the real Redis: every count exact at each step, checked against CLIENT LIST."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

import contract
import otel_backpressure
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.testing import FakeClock, MetricsCapture
from pool_states import IDLE, NAME, USED, counts_of, poll, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def client_name() -> str:
    return f"bp-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def open_on_server(admin: redis.Redis, client_name: str) -> int:
    """Connections the server has open under our client name (other tests' are not ours)."""
    return sum(1 for client in admin.client_list() if client.get("name") == client_name)


def checkout(pool: Any) -> Any:
    """``pool.get_connection()``; redis-py before 5.3 wants a command name."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("PING")


async def acheckout(pool: Any) -> Any:
    """``checkout`` for ``redis.asyncio``."""
    try:
        return await pool.get_connection()
    except TypeError:
        return await pool.get_connection("PING")


def state(used: int, idle: int, pending: int = 0, timeouts: int = 0) -> dict[str, Any]:
    return {
        USED: used,
        IDLE: idle,
        "db.client.connection.pending_requests": pending,
        "db.client.connection.timeouts": timeouts,
        "db.client.connection.max": 2,
        "db.client.connection.idle.max": 2,
        "backpressure.pool.usage": used / 2,
    }


def test_blocking_pool_through_known_states(
    redis_url: str, client_name: str, admin: redis.Redis, metrics: MetricsCapture, clock: FakeClock
) -> None:
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=2, timeout=30, client_name=client_name
    )
    handle = otel_backpressure.instrument(
        pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="blocking"
    )
    try:
        assert counts_of(metrics, "blocking") == state(0, 0)
        first, second = checkout(pool), checkout(pool)
        assert counts_of(metrics, "blocking") == state(2, 0)
        assert open_on_server(admin, client_name) == 2

        got: list[Any] = []
        waiters = [threading.Thread(target=lambda: got.append(checkout(pool))) for _ in "abc"]
        for waiter in waiters:
            waiter.start()
        poll(lambda: counts_of(metrics, "blocking") == state(2, 0, pending=3), "three waiters")

        clock.advance(0.02)
        pool.release(first)  # one waiter takes it, two still wait
        poll(lambda: len(got) == 1, "a waiter to get the connection")
        assert counts_of(metrics, "blocking") == state(2, 0, pending=2)
        pool.release(second)
        poll(lambda: len(got) == 2, "a second waiter to get a connection")
        assert counts_of(metrics, "blocking") == state(2, 0, pending=1)
        for connection in list(got):
            pool.release(connection)
        poll(lambda: len(got) == 3, "the third waiter")
        for waiter in waiters:
            waiter.join()
        pool.release(got[2])
        assert counts_of(metrics, "blocking") == state(0, 2)
        assert open_on_server(admin, client_name) == 2
        for metric in metrics.collect().values():
            assert contract.violations(metric) == [], metric.name

        # five checkouts timed; first and second were held across the 0.02 s advance
        snapshot = metrics.snapshot({NAME: "blocking"})
        assert snapshot["db.client.connection.wait_time"][0] == 5
        assert snapshot["db.client.connection.use_time"][:2] == (5, pytest.approx(0.04))
    finally:
        handle.uninstrument()
        pool.disconnect()


def test_blocking_pool_counts_timeouts(
    redis_url: str, client_name: str, admin: redis.Redis, metrics: MetricsCapture
) -> None:
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=1, timeout=0.05, client_name=client_name
    )
    handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    try:
        held = checkout(pool)
        for _ in range(2):
            with pytest.raises(redis.ConnectionError, match="No connection available"):
                checkout(pool)
        assert metrics.value("db.client.connection.timeouts", series) == 2
        assert metrics.value("db.client.connection.pending_requests", series) == 0
        pool.release(held)
        assert metrics.value("db.client.connection.timeouts", series) == 2
        assert open_on_server(admin, client_name) == 1
    finally:
        handle.uninstrument()
        pool.disconnect()


def test_plain_pool_counts_only_connected_connections(
    redis_url: str, client_name: str, admin: redis.Redis, metrics: MetricsCapture
) -> None:
    client = redis.Redis.from_url(redis_url, max_connections=2, client_name=client_name)
    handle = otel_backpressure.instrument(client, meter_provider=metrics.meter_provider)
    try:
        assert handle.pool_name == "127.0.0.1:6379/0"
        key = f"{client_name}:k"
        client.set(key, "1", ex=60)
        assert client.get(key) == b"1"
        assert counts_of(metrics, handle.pool_name) == state(0, 1)
        assert open_on_server(admin, client_name) == 1
        client.connection_pool.disconnect()  # the pool keeps the objects, not the sockets
        assert counts_of(metrics, handle.pool_name) == state(0, 0)
        poll(lambda: open_on_server(admin, client_name) == 0, "the server to see the close")
    finally:
        handle.uninstrument()
        client.close()


async def test_asyncio_blocking_pool_through_known_states(
    redis_url: str, client_name: str, admin: redis.Redis, metrics: MetricsCapture
) -> None:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url, max_connections=2, timeout=30, client_name=client_name
    )
    handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
    name = handle.pool_name
    try:
        assert name == "127.0.0.1:6379/0"
        held = [await acheckout(pool), await acheckout(pool)]
        assert counts_of(metrics, name) == state(2, 0)
        assert open_on_server(admin, client_name) == 2
        waiters = [asyncio.ensure_future(acheckout(pool)) for _ in range(3)]
        await wait_for(lambda: counts_of(metrics, name) == state(2, 0, pending=3), "three waiters")
        await pool.release(held.pop())
        got = [await next(asyncio.as_completed(waiters))]
        assert counts_of(metrics, name) == state(2, 0, pending=2)
        await pool.release(held.pop())
        await pool.release(got.pop())
        results = await asyncio.gather(*waiters)
        assert counts_of(metrics, name) == state(2, 0)
        for connection in {id(c): c for c in results}.values():
            await pool.release(connection)
        assert counts_of(metrics, name) == state(0, 2)
        assert open_on_server(admin, client_name) == 2
    finally:
        handle.uninstrument()
        await pool.disconnect()


def test_instrumentor_catches_pools_the_app_creates(
    redis_url: str,
    client_name: str,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
) -> None:
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3", client_name=client_name)
    try:
        client.ping()
        # redis-py 6 bounds a pool at 100 by default; before, "unbounded" was 2**31
        limit = client.connection_pool.max_connections
        limits = (
            {
                "db.client.connection.max": limit,
                "db.client.connection.idle.max": limit,
                "backpressure.pool.usage": 0.0,
            }
            if limit < 2**31
            else {}
        )
        assert counts_of(metrics, "127.0.0.1:6379/3") == {
            USED: 0,
            IDLE: 1,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 0,
            **limits,
        }
        instrumentor.uninstrument()
        assert counts_of(metrics, "127.0.0.1:6379/3") == {}
        assert "get_connection" not in client.connection_pool.__dict__
    finally:
        client.close()


def test_a_client_made_before_is_taken_alone_as_engines(
    redis_url: str,
    client_name: str,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
) -> None:
    # one client, not a list: taken as a list of one, and later pools still caught
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/4", client_name=client_name)
    try:
        instrumentor.instrument(meter_provider=metrics.meter_provider, engines=client)
        client.ping()
        assert counts_of(metrics, "127.0.0.1:6379/4")[IDLE] == 1
        later = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5", client_name=client_name)
        try:
            later.ping()
            assert counts_of(metrics, "127.0.0.1:6379/5")[IDLE] == 1
        finally:
            later.close()
    finally:
        client.close()


def test_timings_off_hooks_only_what_counts_timeouts(
    redis_url: str, client_name: str, metrics: MetricsCapture
) -> None:
    """A plain pool is not hooked at all; a blocking one only counts its timeouts."""
    plain = redis.ConnectionPool.from_url(redis_url, client_name=client_name)
    blocking = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=1, timeout=0.05, client_name=client_name
    )
    handles = [
        otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider, timings=False)
        for pool in (plain, blocking)
    ]
    try:
        assert "get_connection" not in plain.__dict__
        assert "release" not in plain.__dict__
        assert "release" not in blocking.__dict__
        held = checkout(blocking)
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            checkout(blocking)
        blocking.release(held)
        series = {NAME: handles[1].pool_name}
        assert metrics.value("db.client.connection.timeouts", series) == 1
        assert metrics.histogram("db.client.connection.wait_time", series) is None
    finally:
        for handle in handles:
            handle.uninstrument()
        plain.disconnect()
        blocking.disconnect()
    assert "get_connection" not in blocking.__dict__


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
async def test_idle_connections_the_server_closed_stop_counting(
    redis_url: str, client_name: str, admin: redis.Redis, metrics: MetricsCapture, flavour: str
) -> None:
    """CLIENT KILL of an idle connection: redis-py learns it at next use, the count at once."""
    if flavour == "sync":
        pool: Any = redis.ConnectionPool.from_url(redis_url, client_name=client_name)
        held = [checkout(pool), checkout(pool)]
        for connection in held:
            pool.release(connection)
    else:
        pool = redis.asyncio.ConnectionPool.from_url(redis_url, client_name=client_name)
        held = [await acheckout(pool), await acheckout(pool)]
        for connection in held:
            await pool.release(connection)
    handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name, "db.client.connection.state": "idle"}
    try:
        assert metrics.value("db.client.connection.count", series) == 2
        assert open_on_server(admin, client_name) == 2
        (victim,) = [c["id"] for c in admin.client_list() if c.get("name") == client_name][:1]
        admin.client_kill_filter(_id=victim)
        assert open_on_server(admin, client_name) == 1
        await wait_for(
            lambda: metrics.value("db.client.connection.count", series) == 1,
            "the killed connection to stop counting",
        )
    finally:
        handle.uninstrument()
        if flavour == "sync":
            pool.disconnect()
        else:
            await pool.disconnect()


def test_a_keyword_release_is_timed(
    redis_url: str, client_name: str, metrics: MetricsCapture, clock: FakeClock
) -> None:
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=2, timeout=1, client_name=client_name
    )
    handle = otel_backpressure.instrument(
        pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="keyword"
    )
    try:
        connection = checkout(pool)
        clock.advance(0.5)
        pool.release(connection=connection)
        snapshot = metrics.snapshot({NAME: "keyword"})
        assert snapshot["db.client.connection.use_time"][:2] == (1, 0.5)
    finally:
        handle.uninstrument()
        pool.disconnect()
