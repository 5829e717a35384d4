"""AsyncEngine + asyncpg on the real PostgreSQL: every metric, exactly, through known states;
and, for its pool and a sync engine's, that instrumenting leaves the pool's attributes inline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

import otel_backpressure
from otel_backpressure.testing import FakeClock, MetricsCapture
from pool_states import (
    IDLE,
    NAME,
    USED,
    buckets,
    fresh_class,
    instrumenting_keeps_inline,
    slow_connection,
    wait_for,
)
from sqlalchemy_compat import SQLALCHEMY_2, SYNC_DRIVER

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(postgres_dsn: str, clock: FakeClock) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        sqlalchemy.engine.make_url(postgres_dsn).set(drivername="postgresql+asyncpg"),
        # every new connection "takes" 3 ms (SQLAlchemy 1.4 and 2.x pass it to asyncpg)
        connect_args={"connection_class": slow_connection(clock, 0.003)},
        pool_size=2,
        max_overflow=1,
        pool_timeout=30,  # never reached: the test hands the waiter a connection
    )
    yield engine
    await engine.dispose()


async def test_async_engine_through_known_states(
    engine: AsyncEngine, metrics: MetricsCapture, clock: FakeClock
) -> None:
    handle = otel_backpressure.instrument(
        engine, meter_provider=metrics.meter_provider, clock=clock, pool_name="game-db"
    )
    series = {NAME: "game-db"}
    limits = {
        "db.client.connection.max": 3,
        "db.client.connection.idle.max": 2,
        "db.client.connection.idle.min": 0,
    }
    try:
        assert metrics.snapshot(series) == {
            **limits,
            USED: 0,
            IDLE: 0,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 0,
            "backpressure.pool.overflow": 0,
            "backpressure.pool.usage": 0.0,
        }

        held = [await engine.connect() for _ in range(3)]
        for connection in held:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        full = {
            **limits,
            USED: 3,
            IDLE: 0,
            "db.client.connection.timeouts": 0,
            "backpressure.pool.overflow": 1,
            "backpressure.pool.usage": 1.0,
            "db.client.connection.create_time": (3, pytest.approx(0.009), buckets(b1=3)),
            "db.client.connection.wait_time": (3, pytest.approx(0.009), buckets(b1=3)),
        }
        assert metrics.snapshot(series) == {**full, "db.client.connection.pending_requests": 0}

        # a fourth checkout waits (pool_timeout is far away): pending until one returns
        fourth = asyncio.ensure_future(engine.connect())
        await wait_for(
            lambda: metrics.value("db.client.connection.pending_requests", series) == 1,
            "the fourth checkout to wait",
        )
        assert metrics.snapshot(series) == {**full, "db.client.connection.pending_requests": 1}
        await held.pop(0).close()  # checked out at +3 ms, back at +9: handed to the waiter
        held.append(await fourth)
        state = metrics.snapshot(series)
        assert (state[USED], state["db.client.connection.pending_requests"]) == (3, 0)

        engine.sync_engine.pool._timeout = 0  # type: ignore[attr-defined]  # no time to wait
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            await engine.connect()
        state = metrics.snapshot(series)
        assert state["db.client.connection.pending_requests"] == 0
        assert state["db.client.connection.timeouts"] == 1
        assert state["db.client.connection.wait_time"][0] == 4  # a timeout obtained nothing

        clock.advance(0.02)
        for connection in held:
            await connection.close()
        assert metrics.snapshot(series) == {
            **limits,
            USED: 0,
            IDLE: 2,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 1,
            "backpressure.pool.overflow": 0,
            "backpressure.pool.usage": 0.0,
            "db.client.connection.create_time": (3, pytest.approx(0.009), buckets(b1=3)),
            # the waiter waited no time on the fake clock
            "db.client.connection.wait_time": (4, pytest.approx(0.009), buckets(b0=1, b1=3)),
            # 6 ms (the one handed over), then +6, +9, +9 (the waiter's) to +29 ms
            "db.client.connection.use_time": (4, pytest.approx(0.069), buckets(b2=1, b3=3)),
        }
    finally:
        handle.uninstrument()


async def test_async_engine_and_its_sync_engine_are_one_pool(
    engine: AsyncEngine, metrics: MetricsCapture
) -> None:
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        assert (
            otel_backpressure.instrument(engine.sync_engine, meter_provider=metrics.meter_provider)
            is handle
        )
        async with engine.connect():
            assert metrics.snapshot({NAME: handle.pool_name})[USED] == 1
        health = otel_backpressure.pool_health(engine)
        assert (health["pool_name"], health["available"], health["total_capacity"]) == (
            handle.pool_name,
            1,
            3,
        )
    finally:
        handle.uninstrument()


async def test_dispose_keeps_the_series(engine: AsyncEngine, metrics: MetricsCapture) -> None:
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    try:
        async with engine.connect():
            pass
        await engine.dispose()
        state = metrics.snapshot(series)
        assert (state[USED], state[IDLE], state["db.client.connection.max"]) == (0, 0, 3)
        async with engine.connect():
            assert metrics.snapshot(series)[USED] == 1
        state = metrics.snapshot(series)
        assert (state[IDLE], state["db.client.connection.create_time"][0]) == (1, 2)
    finally:
        handle.uninstrument()


async def test_default_name_has_no_password(postgres_dsn: str, metrics: MetricsCapture) -> None:
    url = sqlalchemy.engine.make_url(postgres_dsn).set(
        drivername="postgresql+asyncpg", password="never-exported"
    )
    engine = create_async_engine(url)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        assert handle.pool_name.startswith(f"{url.host}:{url.port}/{url.database}")
        exported = repr(metrics.collect())
        assert "never-exported" not in exported
        assert handle.pool_name in exported
    finally:
        handle.uninstrument()
        await engine.dispose()


def test_sync_engine_pool_attributes_stay_inline(
    postgres_dsn: str, metrics: MetricsCapture
) -> None:
    """Hooking, reading and unhooking a PostgreSQL engine's pool never ask it for
    its ``__dict__`` (see the SQLite test of the same name in tests/unit: only
    a 2.x pool nobody has listened to or checked out from can show it)."""
    engine = create_engine(sqlalchemy.engine.make_url(postgres_dsn).set(drivername=SYNC_DRIVER))
    pool = fresh_class(QueuePool)(engine.pool._creator, dialect=engine.dialect, pool_size=2)
    engine.pool = pool
    try:
        instrumenting_keeps_inline(engine, pool, metrics, library_asks_for_dict=not SQLALCHEMY_2)
        with engine.connect() as connection:  # the pool still works
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


async def test_async_engine_pool_attributes_stay_inline(
    engine: AsyncEngine, metrics: MetricsCapture
) -> None:
    """The same for an ``AsyncEngine``'s ``AsyncAdaptedQueuePool``, whose
    ``asyncio.Queue`` a reading finds without making one."""
    sync_engine = engine.sync_engine
    pool = fresh_class(AsyncAdaptedQueuePool)(
        sync_engine.pool._creator, dialect=sync_engine.dialect
    )
    sync_engine.pool = pool
    instrumenting_keeps_inline(engine, pool, metrics, library_asks_for_dict=not SQLALCHEMY_2)
    async with engine.connect() as connection:  # the pool still works
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1
