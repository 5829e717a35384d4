"""Open connections as ``pg_stat_activity`` sees them, after connections are lost.

Each pool connects with its own ``application_name``, so the backends counted
are this test's only, on the shared server; the restart tests use a private
server. After every event the pool's ``used + idle`` must equal the backends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import psycopg_pool
import pytest
import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import otel_backpressure
from otel_backpressure.testing import MetricsCapture
from pool_states import IDLE, NAME, USED
from private_postgres import PrivatePostgres, private_postgres
from sqlalchemy_compat import SYNC_DRIVER

pytestmark = pytest.mark.integration


@pytest.fixture
def app_name() -> str:
    return f"bp-lost-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


class Watch:
    """One instrumented pool and ``pg_stat_activity``'s view of its application's backends."""

    def __init__(self, target: Any, dsn: str, app_name: str, metrics: MetricsCapture) -> None:
        self.dsn = dsn
        self.app_name = app_name
        self.metrics = metrics
        self.handle = otel_backpressure.instrument(target, meter_provider=metrics.meter_provider)

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

    def counts(self) -> tuple[int, int]:
        state = self.metrics.snapshot({NAME: self.handle.pool_name})
        return state.get(USED, 0), state.get(IDLE, 0)

    async def settled(self, expected: tuple[int, int] | None) -> tuple[int, int]:
        """Wait until the pool's open connections equal the server's backends (and, if
        given, read ``expected``); return (used, idle)."""
        backends = -1
        for _ in range(500):
            backends = await self.backends()  # a round trip: the pool's loop runs meanwhile
            counts = self.counts()
            if sum(counts) == backends and expected in (None, counts):
                return counts
        raise AssertionError(f"pool {self.counts()}, server {backends}, want {expected}")


Watcher = Callable[[Any, str], "Watch"]


@pytest.fixture
def watch(app_name: str, metrics: MetricsCapture) -> Iterator[Watcher]:
    """``watch(pool, dsn)``: instrument it (until the test ends) and compare with the server."""
    made: list[Watch] = []

    def make(target: Any, dsn: str) -> Watch:
        made.append(Watch(target, dsn, app_name, metrics))
        return made[-1]

    yield make
    for watched in made:
        watched.handle.uninstrument()


def _async_engine(dsn: str, app_name: str, **kwargs: Any) -> AsyncEngine:
    url = sqlalchemy.engine.make_url(dsn).set(drivername="postgresql+asyncpg")
    return create_async_engine(
        url, connect_args={"server_settings": {"application_name": app_name}}, **kwargs
    )


@pytest.fixture
async def engine(postgres_dsn: str, app_name: str) -> AsyncIterator[AsyncEngine]:
    engine = _async_engine(postgres_dsn, app_name, pool_size=3, max_overflow=0)
    yield engine
    await engine.dispose()


async def test_async_queue_pool_after_invalidate_and_terminate(
    engine: AsyncEngine, postgres_dsn: str, watch: Watcher
) -> None:
    w = watch(engine, postgres_dsn)
    a, b, c = [await engine.connect() for _ in range(3)]
    for connection in (a, b, c):
        await connection.execute(text("SELECT 1"))
    await w.settled((3, 0))
    await a.invalidate()  # held, its connection closed
    await w.settled((2, 0))
    for connection in (a, b, c):
        await connection.close()
    await w.settled((0, 2))  # the issue: idle read 3
    await w.terminate(1)  # the server ends one pooled backend
    await w.settled((0, 1))
    health = otel_backpressure.pool_health(engine)
    assert (health["available"], health["in_use"]) == (1, 0)


async def test_async_queue_pool_soft_invalidation_and_recycle(
    engine: AsyncEngine, postgres_dsn: str, watch: Watcher
) -> None:
    w = watch(engine, postgres_dsn)
    a, b = await engine.connect(), await engine.connect()
    for connection in (a, b):
        await connection.execute(text("SELECT 1"))
    (await a.get_raw_connection()).invalidate(soft=True)  # closed at its next checkout
    await a.close()
    await b.close()
    await w.settled((0, 2))
    engine.sync_engine.pool._recycle = 3600
    for record in list(engine.sync_engine.pool._pool._queue._queue):  # type: ignore[attr-defined]
        record.starttime -= 7200  # past pool_recycle: replaced at the next checkout
    async with engine.connect() as x, engine.connect() as y:
        for connection in (x, y):
            await connection.execute(text("SELECT 1"))
        await w.settled((2, 0))
    await w.settled((0, 2))


async def test_pre_ping_replaces_a_terminated_connection(
    postgres_dsn: str, app_name: str, watch: Watcher
) -> None:
    engine = _async_engine(postgres_dsn, app_name, pool_size=2, pool_pre_ping=True)
    w = watch(engine, postgres_dsn)
    try:
        async with engine.connect() as a, engine.connect() as b:
            for connection in (a, b):
                await connection.execute(text("SELECT 1"))
        await w.settled((0, 2))
        await w.terminate(2)
        await w.settled((0, 0))
        async with engine.connect() as connection:  # the ping fails; a new connection
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
            await w.settled((1, 0))
        await w.settled((0, 1))
    finally:
        await engine.dispose()


async def test_async_queue_pool_across_a_server_restart(
    private_server: PrivatePostgres, app_name: str, watch: Watcher
) -> None:
    engine = _async_engine(private_server.dsn, app_name, pool_size=2, pool_pre_ping=True)
    w = watch(engine, private_server.dsn)
    try:
        async with engine.connect() as a, engine.connect() as b:
            for connection in (a, b):
                await connection.execute(text("SELECT 1"))
        await w.settled((0, 2))
        private_server.restart()
        await w.settled((0, 0))
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        await w.settled((0, 1))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("restart", [False, True], ids=["terminate", "restart"])
async def test_asyncpg_pool_after_lost_connections(
    restart: bool,
    postgres_dsn: str,
    private_server: PrivatePostgres,
    app_name: str,
    watch: Watcher,
) -> None:
    dsn = private_server.dsn if restart else postgres_dsn
    pool = await asyncpg.create_pool(
        dsn, min_size=2, max_size=3, server_settings={"application_name": app_name}
    )
    w = watch(pool, dsn)
    try:
        await w.settled((0, 2))
        async with pool.acquire() as held:
            await w.settled((1, 1))
            if restart:
                private_server.restart()
            else:
                await w.terminate(2)
            # asyncpg reconnects its min_size connections at once: whatever it
            # holds now, the pool and the server agree on it
            used, _ = await w.settled(None)
            assert used == 0  # the held connection is gone
            with pytest.raises(asyncpg.InterfaceError):
                await held.fetchval("SELECT 1")
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 1") == 1
            assert (await w.settled(None))[0] == 1
    finally:
        await pool.close()


@pytest.fixture
def sync_engine(postgres_dsn: str, app_name: str) -> Iterator[Engine]:
    url = sqlalchemy.engine.make_url(postgres_dsn).set(drivername=SYNC_DRIVER)
    engine = create_engine(
        url,
        pool_size=3,
        max_overflow=0,
        connect_args={"application_name": app_name},
        future=True,  # Connection.commit() on SQLAlchemy 1.4 too
    )
    yield engine
    engine.dispose()


async def test_sync_queue_pool_after_invalidate(
    sync_engine: Engine, postgres_dsn: str, watch: Watcher
) -> None:
    w = watch(sync_engine, postgres_dsn)
    held = [sync_engine.connect() for _ in range(3)]
    await w.settled((3, 0))
    held[0].invalidate()
    await w.settled((2, 0))
    held[1].connection.invalidate(soft=True)  # type: ignore[union-attr]
    for connection in held:
        connection.close()
    await w.settled((0, 2))
    # FIFO: the empty slot connects anew, the soft-invalidated one is replaced
    with sync_engine.connect(), sync_engine.connect():
        await w.settled((2, 1))
    await w.settled((0, 3))


async def test_sync_queue_pool_sees_terminated_idle_backends(
    sync_engine: Engine, postgres_dsn: str, watch: Watcher
) -> None:
    # psycopg learns of it only at its next use; the reading peeks at the
    # idle sockets for the server's FATAL message
    w = watch(sync_engine, postgres_dsn)
    with sync_engine.connect(), sync_engine.connect(), sync_engine.connect():
        pass
    await w.settled((0, 3))
    await w.terminate(2)
    await w.settled((0, 1))
    health = otel_backpressure.pool_health(sync_engine)
    assert (health["available"], health["in_use"]) == (1, 0)


async def test_sync_queue_pool_idle_connection_with_a_notification_is_open(
    sync_engine: Engine, postgres_dsn: str, watch: Watcher
) -> None:
    w = watch(sync_engine, postgres_dsn)
    with sync_engine.connect() as connection:
        connection.execute(text("LISTEN bp_lost_test"))
        connection.commit()
    await w.settled((0, 1))
    admin = await w._admin()
    try:
        await admin.execute("NOTIFY bp_lost_test, 'hello'")
    finally:
        await admin.close()
    await w.settled((0, 1))  # the notification waits in the socket: still open
    with sync_engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1


async def test_sync_queue_pool_after_a_restart(
    private_server: PrivatePostgres, app_name: str, watch: Watcher
) -> None:
    url = sqlalchemy.engine.make_url(private_server.dsn).set(drivername=SYNC_DRIVER)
    engine = create_engine(
        url, pool_size=2, pool_pre_ping=True, connect_args={"application_name": app_name}
    )
    w = watch(engine, private_server.dsn)
    try:
        with engine.connect(), engine.connect():
            pass
        await w.settled((0, 2))
        private_server.restart()
        await w.settled((0, 0))
        with engine.connect() as connection:  # pre-ping fails, a new connection
            assert connection.execute(text("SELECT 1")).scalar() == 1
        await w.settled((0, 1))
    finally:
        engine.dispose()


@pytest.mark.parametrize("restart", [False, True], ids=["terminate", "restart"])
async def test_psycopg_pool_after_lost_connections(
    restart: bool,
    postgres_dsn: str,
    private_server: PrivatePostgres,
    app_name: str,
    watch: Watcher,
) -> None:
    dsn = private_server.dsn if restart else postgres_dsn
    pool = psycopg_pool.ConnectionPool(
        dsn, min_size=3, kwargs={"application_name": app_name}, open=False
    )
    pool.open(wait=True)
    w = watch(pool, dsn)
    try:
        await w.settled((0, 3))
        if restart:
            private_server.restart()
            await w.settled((0, 0))
        else:
            await w.terminate(2)
            await w.settled((0, 1))
    finally:
        pool.close()
