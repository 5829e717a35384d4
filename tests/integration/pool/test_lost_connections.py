"""Open connections as ``pg_stat_activity`` sees them, after connections are lost.

Each pool connects with its own ``application_name``, so the backends counted
are this test's only, on the shared server; the restart tests use a private
server. After every event the pool's ``used + idle`` must equal the backends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import otel_backpressure
from otel_backpressure.pool import PoolInstrumentation
from otel_backpressure.testing import MetricsCapture
from pool_states import IDLE, NAME, USED
from private_postgres import PrivatePostgres, private_postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def app_name() -> str:
    return f"bp-lost-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


class Server:
    """Asks ``pg_stat_activity`` about one application's backends."""

    def __init__(self, dsn: str, app_name: str) -> None:
        self.dsn = dsn
        self.app_name = app_name

    async def _admin(self) -> Any:
        return await asyncpg.connect(self.dsn, server_settings={"application_name": "bp-admin"})

    async def backends(self) -> int:
        admin = await self._admin()
        try:
            count = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                self.app_name,
            )
        finally:
            await admin.close()
        return int(count)

    async def terminate(self, limit: int) -> None:
        """Terminate ``limit`` of this application's backends."""
        admin = await self._admin()
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity"
                " WHERE application_name = $1 LIMIT $2) AS chosen",
                self.app_name,
                limit,
            )
        finally:
            await admin.close()


def _counts(metrics: MetricsCapture, handle: PoolInstrumentation) -> tuple[int, int]:
    state = metrics.snapshot({NAME: handle.pool_name})
    return state.get(USED, 0), state.get(IDLE, 0)


async def _settled(
    server: Server,
    metrics: MetricsCapture,
    handle: PoolInstrumentation,
    expected: tuple[int, int] | None,
) -> tuple[int, int]:
    """Wait until the pool's open connections equal the server's backends (and, if
    given, read ``expected``); return (used, idle)."""
    backends = -1
    for _ in range(500):
        backends = await server.backends()  # a round trip: the pool's loop runs meanwhile
        counts = _counts(metrics, handle)
        if sum(counts) == backends and expected in (None, counts):
            return counts
    raise AssertionError(f"pool {_counts(metrics, handle)}, server {backends}, want {expected}")


def _async_engine(dsn: str, app_name: str, **kwargs: Any) -> AsyncEngine:
    url = sqlalchemy.make_url(dsn).set(drivername="postgresql+asyncpg")
    return create_async_engine(
        url, connect_args={"server_settings": {"application_name": app_name}}, **kwargs
    )


@pytest.fixture
async def engine(postgres_dsn: str, app_name: str) -> AsyncIterator[AsyncEngine]:
    engine = _async_engine(postgres_dsn, app_name, pool_size=3, max_overflow=0)
    yield engine
    await engine.dispose()


async def test_async_queue_pool_after_invalidate_and_terminate(
    engine: AsyncEngine, postgres_dsn: str, app_name: str, metrics: MetricsCapture
) -> None:
    server = Server(postgres_dsn, app_name)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        a, b, c = [await engine.connect() for _ in range(3)]
        for connection in (a, b, c):
            await connection.execute(text("SELECT 1"))
        await _settled(server, metrics, handle, (3, 0))
        await a.invalidate()  # held, its connection closed
        await _settled(server, metrics, handle, (2, 0))
        for connection in (a, b, c):
            await connection.close()
        await _settled(server, metrics, handle, (0, 2))  # the issue: idle read 3
        await server.terminate(1)  # the server ends one pooled backend
        await _settled(server, metrics, handle, (0, 1))
        health = otel_backpressure.pool_health(engine)
        assert (health["available"], health["in_use"]) == (1, 0)
    finally:
        handle.uninstrument()


async def test_async_queue_pool_soft_invalidation_and_recycle(
    engine: AsyncEngine, postgres_dsn: str, app_name: str, metrics: MetricsCapture
) -> None:
    server = Server(postgres_dsn, app_name)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        a, b = await engine.connect(), await engine.connect()
        for connection in (a, b):
            await connection.execute(text("SELECT 1"))
        (await a.get_raw_connection()).invalidate(soft=True)  # closed at its next checkout
        await a.close()
        await b.close()
        await _settled(server, metrics, handle, (0, 2))
        engine.sync_engine.pool._recycle = 3600
        for record in list(engine.sync_engine.pool._pool._queue._queue):  # type: ignore[attr-defined]
            record.starttime -= 7200  # past pool_recycle: replaced at the next checkout
        async with engine.connect() as x, engine.connect() as y:
            for connection in (x, y):
                await connection.execute(text("SELECT 1"))
            await _settled(server, metrics, handle, (2, 0))
        await _settled(server, metrics, handle, (0, 2))
    finally:
        handle.uninstrument()


async def test_pre_ping_replaces_a_terminated_connection(
    postgres_dsn: str, app_name: str, metrics: MetricsCapture
) -> None:
    engine = _async_engine(postgres_dsn, app_name, pool_size=2, pool_pre_ping=True)
    server = Server(postgres_dsn, app_name)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        async with engine.connect() as a, engine.connect() as b:
            for connection in (a, b):
                await connection.execute(text("SELECT 1"))
        await _settled(server, metrics, handle, (0, 2))
        await server.terminate(2)
        await _settled(server, metrics, handle, (0, 0))
        async with engine.connect() as connection:  # the ping fails; a new connection
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
            await _settled(server, metrics, handle, (1, 0))
        await _settled(server, metrics, handle, (0, 1))
    finally:
        handle.uninstrument()
        await engine.dispose()


async def test_async_queue_pool_across_a_server_restart(
    private_server: PrivatePostgres, app_name: str, metrics: MetricsCapture
) -> None:
    engine = _async_engine(private_server.dsn, app_name, pool_size=2, pool_pre_ping=True)
    server = Server(private_server.dsn, app_name)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        async with engine.connect() as a, engine.connect() as b:
            for connection in (a, b):
                await connection.execute(text("SELECT 1"))
        await _settled(server, metrics, handle, (0, 2))
        private_server.restart()
        await _settled(server, metrics, handle, (0, 0))
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        await _settled(server, metrics, handle, (0, 1))
    finally:
        handle.uninstrument()
        await engine.dispose()


@pytest.mark.parametrize("restart", [False, True], ids=["terminate", "restart"])
async def test_asyncpg_pool_after_lost_connections(
    restart: bool,
    postgres_dsn: str,
    private_server: PrivatePostgres,
    app_name: str,
    metrics: MetricsCapture,
) -> None:
    dsn = private_server.dsn if restart else postgres_dsn
    server = Server(dsn, app_name)
    pool = await asyncpg.create_pool(
        dsn, min_size=2, max_size=3, server_settings={"application_name": app_name}
    )
    handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
    try:
        await _settled(server, metrics, handle, (0, 2))
        async with pool.acquire() as held:
            await _settled(server, metrics, handle, (1, 1))
            if restart:
                private_server.restart()
            else:
                await server.terminate(2)
            # asyncpg reconnects its min_size connections at once: whatever it
            # holds now, the pool and the server agree on it
            used, _ = await _settled(server, metrics, handle, None)
            assert used == 0  # the held connection is gone
            with pytest.raises(asyncpg.InterfaceError):
                await held.fetchval("SELECT 1")
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 1") == 1
            assert (await _settled(server, metrics, handle, None))[0] == 1
    finally:
        handle.uninstrument()
        await pool.close()


@pytest.fixture
def sync_engine(postgres_dsn: str, app_name: str) -> Iterator[Engine]:
    url = sqlalchemy.make_url(postgres_dsn).set(drivername="postgresql+psycopg")
    engine = create_engine(
        url, pool_size=3, max_overflow=0, connect_args={"application_name": app_name}
    )
    yield engine
    engine.dispose()


async def test_sync_queue_pool_after_invalidate(
    sync_engine: Engine, postgres_dsn: str, app_name: str, metrics: MetricsCapture
) -> None:
    server = Server(postgres_dsn, app_name)
    handle = otel_backpressure.instrument(sync_engine, meter_provider=metrics.meter_provider)
    try:
        held = [sync_engine.connect() for _ in range(3)]
        await _settled(server, metrics, handle, (3, 0))
        held[0].invalidate()
        await _settled(server, metrics, handle, (2, 0))
        held[1].connection.invalidate(soft=True)  # type: ignore[union-attr]
        for connection in held:
            connection.close()
        await _settled(server, metrics, handle, (0, 2))
        # FIFO: the empty slot connects anew, the soft-invalidated one is replaced
        with sync_engine.connect(), sync_engine.connect():
            await _settled(server, metrics, handle, (2, 1))
        await _settled(server, metrics, handle, (0, 3))
    finally:
        handle.uninstrument()


async def test_sync_queue_pool_learns_of_a_terminated_backend_on_use(
    postgres_dsn: str, app_name: str, metrics: MetricsCapture
) -> None:
    # A sync driver cannot know of a server-side close before its next use; a
    # failed use tells it (and SQLAlchemy invalidates the connection), and
    # pre-ping makes that use the checkout itself.
    url = sqlalchemy.make_url(postgres_dsn).set(drivername="postgresql+psycopg")
    engine = create_engine(
        url, pool_size=2, pool_pre_ping=True, connect_args={"application_name": app_name}
    )
    server = Server(postgres_dsn, app_name)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        with engine.connect(), engine.connect():
            pass
        await _settled(server, metrics, handle, (0, 2))
        await server.terminate(2)
        with engine.connect() as connection:  # pre-ping fails, a new connection
            assert connection.execute(text("SELECT 1")).scalar() == 1
        with engine.connect(), engine.connect():  # the other one is found dead too
            pass
        await _settled(server, metrics, handle, (0, 2))
    finally:
        handle.uninstrument()
        engine.dispose()
