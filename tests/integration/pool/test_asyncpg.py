"""A raw asyncpg.Pool on the real PostgreSQL: every metric, exactly, through known states."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import otel_backpressure
from otel_backpressure.testing import FakeClock, MetricsCapture
from pool_states import IDLE, NAME, USED, buckets, slow_connection, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(postgres_dsn: str, clock: FakeClock) -> AsyncIterator[asyncpg.Pool]:
    pool = asyncpg.create_pool(
        postgres_dsn, min_size=1, max_size=3, connection_class=slow_connection(clock, 0.003)
    )
    yield pool
    # close() waits for every connection a failed test still holds: bound it
    try:
        await asyncio.wait_for(pool.close(), 10)
    except (asyncio.TimeoutError, TimeoutError):
        pool.terminate()


async def test_asyncpg_pool_through_known_states(
    pool: asyncpg.Pool, metrics: MetricsCapture, clock: FakeClock
) -> None:
    # instrumented before its first await, so the min_size connection is timed too
    handle = otel_backpressure.instrument(
        pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="raw"
    )
    series = {NAME: "raw"}
    limits = {
        "db.client.connection.max": 3,
        "db.client.connection.idle.max": 3,
        "db.client.connection.idle.min": 1,
    }
    try:
        await pool
        assert isinstance(pool, asyncpg.Pool)
        assert metrics.snapshot(series) == {
            **limits,
            USED: 0,
            IDLE: 1,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 0,
            "backpressure.pool.overflow": 0,
            "backpressure.pool.usage": 0.0,
            "db.client.connection.create_time": (1, pytest.approx(0.003), buckets(b1=1)),
        }

        held = [await pool.acquire() for _ in range(3)]
        for connection in held:
            assert await connection.fetchval("SELECT 1") == 1
        full = {
            **limits,
            USED: 3,
            IDLE: 0,
            "db.client.connection.timeouts": 0,
            "backpressure.pool.overflow": 2,  # beyond min_size
            "backpressure.pool.usage": 1.0,
            "db.client.connection.create_time": (3, pytest.approx(0.009), buckets(b1=3)),
            # the first acquire found an idle connection; the two others opened one
            "db.client.connection.wait_time": (3, pytest.approx(0.006), buckets(b0=1, b1=2)),
        }
        assert metrics.snapshot(series) == {**full, "db.client.connection.pending_requests": 0}

        # a fourth acquire waits (no timeout): pending until one is released
        fourth = asyncio.ensure_future(pool.acquire())
        await wait_for(
            lambda: metrics.value("db.client.connection.pending_requests", series) == 1,
            "the fourth acquire to wait",
        )
        assert metrics.snapshot(series) == {**full, "db.client.connection.pending_requests": 1}
        await pool.release(held.pop(0))  # acquired at +3 ms, back at +9: handed to the waiter
        held.append(await fourth)
        state = metrics.snapshot(series)
        assert (state[USED], state["db.client.connection.pending_requests"]) == (3, 0)

        # 3.10: the builtin from asyncpg 0.30, asyncio's (another class there) before
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await pool.acquire(timeout=0)  # no time to wait
        state = metrics.snapshot(series)
        assert state["db.client.connection.pending_requests"] == 0
        assert state["db.client.connection.timeouts"] == 1
        assert state["db.client.connection.wait_time"][0] == 4  # a timeout obtained nothing

        clock.advance(0.02)
        for connection in held:
            await pool.release(connection)
        state = metrics.snapshot(series)
        assert state == {
            **full,
            USED: 0,
            IDLE: 3,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 1,
            "backpressure.pool.usage": 0.0,
            # the waiter waited no time on the fake clock
            "db.client.connection.wait_time": (4, pytest.approx(0.006), buckets(b0=2, b1=2)),
            # 6 ms (the one handed over), then +6, +9, +9 (the waiter's) to +29 ms
            "db.client.connection.use_time": (4, pytest.approx(0.069), buckets(b2=1, b3=3)),
        }
        health = otel_backpressure.pool_health(pool)
        # asyncpg's min_size and max_size are the fewest and most idle connections kept
        assert (health["idle_min"], health["idle_max"], health["total_capacity"]) == (1, 3, 3)
        assert (health["overflow_active"], health["timeouts"]) == (2, 1)
        assert (health["available"], health["in_use"], health["status"]) == (3, 0, "healthy")
    finally:
        handle.uninstrument()
    assert type(pool) is asyncpg.Pool  # its own class again


async def test_closed_pool_drops_out(postgres_dsn: str, metrics: MetricsCapture) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT 1") == 1
        assert metrics.snapshot(series)[USED] == 1
    await pool.close()
    assert not any(key.startswith("db.client.connection.count") for key in metrics.snapshot(series))
    handle.uninstrument()
    assert type(pool) is asyncpg.Pool


async def test_uninstrument_silences_and_restores(
    postgres_dsn: str, metrics: MetricsCapture
) -> None:
    async def init(connection: Any) -> None:
        pass

    pool = await asyncpg.create_pool(postgres_dsn, min_size=0, max_size=2, init=init)
    try:
        connect = getattr(pool, "_connect", None)  # asyncpg 0.30+
        handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
        assert otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider) is handle
        handle.uninstrument()
        assert (type(pool), getattr(pool, "_connect", None), pool._init) == (
            asyncpg.Pool,
            connect,
            init,
        )
        assert not any(
            key.startswith("db.client.connection.count")
            for key in metrics.snapshot({NAME: handle.pool_name})
        )
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_create_time_is_the_connect_without_the_init_callback(
    postgres_dsn: str, metrics: MetricsCapture, clock: FakeClock
) -> None:
    # asyncpg 0.30+ times the pool's connect callable, older versions the pool's
    # own _get_new_connection up to init: the same figure either way
    async def init(connection: Any) -> None:
        clock.advance(1.0)  # the application's own set-up, not the connect

    pool = asyncpg.create_pool(
        postgres_dsn,
        min_size=0,
        max_size=2,
        init=init,
        connection_class=slow_connection(clock, 0.003),
    )
    handle = otel_backpressure.instrument(
        pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="init"
    )
    try:
        await pool
        async with pool.acquire(), pool.acquire():
            pass
        assert metrics.snapshot({NAME: "init"})["db.client.connection.create_time"] == (
            2,
            pytest.approx(0.006),
            buckets(b1=2),
        )
    finally:
        handle.uninstrument()
        await pool.close()
