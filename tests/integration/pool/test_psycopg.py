"""psycopg_pool on the real PostgreSQL: every count exact, checked against pg_stat_activity."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

import contract
import otel_backpressure
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.pool._psycopg import PsycopgPoolSource
from otel_backpressure.testing import FakeClock, MetricsCapture
from pool_states import IDLE, NAME, USED, counts_of, poll, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def application_name() -> str:
    return f"bp-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        yield connection


def open_on_server(admin: psycopg.Connection[Any], application_name: str) -> int:
    """Backends the server has open under our application_name (other tests' are not ours)."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def state(used: int, idle: int, pending: int = 0, timeouts: int = 0) -> dict[str, Any]:
    return {
        USED: used,
        IDLE: idle,
        "db.client.connection.pending_requests": pending,
        "db.client.connection.timeouts": timeouts,
        "db.client.connection.max": 2,
        "db.client.connection.idle.max": 2,
        "db.client.connection.idle.min": 1,
        "backpressure.pool.overflow": max(0, used + idle - 1),
        "backpressure.pool.usage": used / 2,
    }


def test_pool_through_known_states(
    postgres_dsn: str,
    application_name: str,
    admin: psycopg.Connection[Any],
    metrics: MetricsCapture,
    clock: FakeClock,
) -> None:
    pool = psycopg_pool.ConnectionPool(
        postgres_dsn,
        min_size=1,
        max_size=2,
        timeout=30,
        kwargs={"application_name": application_name},
        open=False,
    )
    handle = otel_backpressure.instrument(
        pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="psycopg"
    )
    try:
        pool.open(wait=True)
        assert counts_of(metrics, "psycopg") == state(0, 1)
        assert open_on_server(admin, application_name) == 1

        first = pool.getconn()
        second = pool.getconn()  # the pool grows to max_size for it
        assert counts_of(metrics, "psycopg") == state(2, 0)
        assert open_on_server(admin, application_name) == 2

        got: list[Any] = []
        waiters = [threading.Thread(target=lambda: got.append(pool.getconn())) for _ in "abc"]
        for waiter in waiters:
            waiter.start()
        poll(lambda: counts_of(metrics, "psycopg") == state(2, 0, pending=3), "three waiters")
        clock.advance(0.02)
        pool.putconn(first)
        poll(lambda: len(got) == 1, "a waiter to get the connection")
        assert counts_of(metrics, "psycopg") == state(2, 0, pending=2)
        pool.putconn(second)
        poll(lambda: len(got) == 2, "a second waiter")
        for connection in list(got):
            pool.putconn(connection)
        poll(lambda: len(got) == 3, "the third waiter")
        for waiter in waiters:
            waiter.join()
        pool.putconn(got[2])
        assert counts_of(metrics, "psycopg") == state(0, 2)
        assert open_on_server(admin, application_name) == 2
        for metric in metrics.collect().values():
            assert contract.violations(metric) == [], metric.name

        # five checkouts timed; first and second were held across the 0.02 s advance;
        # two connections were opened
        snapshot = metrics.snapshot({NAME: "psycopg"})
        assert snapshot["db.client.connection.wait_time"][0] == 5
        assert snapshot["db.client.connection.use_time"][:2] == (5, pytest.approx(0.04))
        assert snapshot["db.client.connection.create_time"][0] == 2
    finally:
        handle.uninstrument()
        pool.close()
    assert "getconn" not in pool.__dict__


def test_pool_counts_timeouts(
    postgres_dsn: str,
    application_name: str,
    admin: psycopg.Connection[Any],
    metrics: MetricsCapture,
) -> None:
    with psycopg_pool.ConnectionPool(
        postgres_dsn, min_size=1, max_size=1, kwargs={"application_name": application_name}
    ) as pool:
        pool.wait()
        handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
        name = handle.pool_name
        assert name == "127.0.0.1:5432/test"
        with pool.connection() as held:
            held.execute("SELECT 1")
            for _ in range(2):
                with pytest.raises(psycopg_pool.PoolTimeout):
                    pool.getconn(timeout=0.05)
            assert counts_of(metrics, name) == {
                **state(1, 0, timeouts=2),
                "db.client.connection.max": 1,
                "db.client.connection.idle.max": 1,
                "backpressure.pool.usage": 1.0,
            }
        pool.pop_stats()  # resets the pool's own counters; an exported counter must not go down
        assert metrics.snapshot({NAME: name})["db.client.connection.timeouts"] == 2
        assert open_on_server(admin, application_name) == 1
        handle.uninstrument()


async def test_async_pool_through_known_states(
    postgres_dsn: str,
    application_name: str,
    admin: psycopg.Connection[Any],
    metrics: MetricsCapture,
) -> None:
    pool = psycopg_pool.AsyncConnectionPool(
        postgres_dsn,
        min_size=1,
        max_size=2,
        kwargs={"application_name": application_name},
        open=False,
    )
    handle = otel_backpressure.instrument(pool, meter_provider=metrics.meter_provider)
    name = handle.pool_name
    try:
        await pool.open(wait=True)
        assert counts_of(metrics, name) == state(0, 1)
        held = [await pool.getconn(), await pool.getconn()]
        assert counts_of(metrics, name) == state(2, 0)
        assert open_on_server(admin, application_name) == 2
        waiters = [asyncio.ensure_future(pool.getconn()) for _ in range(3)]
        await wait_for(lambda: counts_of(metrics, name) == state(2, 0, pending=3), "three waiters")
        for connection in held:
            await pool.putconn(connection)
        got = [await waiter for waiter in waiters[:2]]
        assert counts_of(metrics, name) == state(2, 0, pending=1)
        for connection in got:
            await pool.putconn(connection)
        await pool.putconn(await waiters[2])
        assert counts_of(metrics, name) == state(0, 2)
        assert open_on_server(admin, application_name) == 2
        await pool.close()
        assert counts_of(metrics, name) == {}  # closed for good: its series stop
    finally:
        handle.uninstrument()
        await pool.close()


def test_instrumentor_catches_pools_the_app_creates(
    application_name: str, metrics: MetricsCapture, instrumentor: BackpressureInstrumentor
) -> None:
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    conninfo = (
        f"host=127.0.0.1 port=5432 dbname=test user=postgres application_name={application_name}"
    )
    with psycopg_pool.ConnectionPool(conninfo, min_size=1, max_size=3) as pool:
        pool.wait()
        assert counts_of(metrics, "127.0.0.1:5432/test")[IDLE] == 1
        instrumentor.uninstrument()
        assert counts_of(metrics, "127.0.0.1:5432/test") == {}
        assert "getconn" not in pool.__dict__


def test_pools_made_before_are_taken_as_engine_and_engines_and_a_bad_item_named(
    application_name: str,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conninfo = f"host=127.0.0.1 port=5432 user=postgres application_name={application_name}"
    with (
        psycopg_pool.ConnectionPool(f"{conninfo} dbname=test", min_size=1, max_size=3) as one,
        psycopg_pool.ConnectionPool(f"{conninfo} dbname=postgres", min_size=1, max_size=3) as two,
    ):
        one.wait()
        two.wait()
        with caplog.at_level(logging.ERROR):
            instrumentor.instrument(
                meter_provider=metrics.meter_provider, engine=one, engines=[two, conninfo]
            )
        assert counts_of(metrics, "127.0.0.1:5432/test")[IDLE] == 1
        assert counts_of(metrics, "127.0.0.1:5432/postgres")[IDLE] == 1
        (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert message.startswith("Backpressure pool telemetry: engines[1] must be ")
        assert "a psycopg_pool pool" in message


@pytest.mark.parametrize(
    ("conninfo", "kwargs", "name"),
    [
        ("postgresql://alice:s3cret@db.example:6432/app", {}, "db.example:6432/app"),
        ("host=db.example port=6432 dbname=app password=s3cret", {}, "db.example:6432/app"),
        ("host=db.example dbname=app", {"port": 6543, "password": "s3cret"}, "db.example:6543/app"),
        (
            "host=a.example,b.example port=5433,5434 dbname=app",
            {},
            "a.example:5433,b.example:5434/app",
        ),
    ],
)
def test_default_names_never_carry_credentials(
    conninfo: str, kwargs: dict[str, Any], name: str
) -> None:
    pool = psycopg_pool.ConnectionPool(conninfo, kwargs=kwargs, open=False)
    assert PsycopgPoolSource.server(pool) == name


def test_two_providers_each_get_every_timing(
    postgres_dsn: str, application_name: str, metrics: MetricsCapture, clock: FakeClock
) -> None:
    other = MetricsCapture()
    pool = psycopg_pool.ConnectionPool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        kwargs={"application_name": application_name},
        open=True,
    )
    handles = [
        otel_backpressure.instrument(
            pool, meter_provider=capture.meter_provider, clock=clock, pool_name="both"
        )
        for capture in (metrics, other)
    ]
    try:
        pool.wait()
        for held_for in (0.25, 0.5):
            connection = pool.getconn(timeout=5)  # a keyword argument goes through as well
            clock.advance(held_for)
            pool.putconn(connection)
        handles.pop().uninstrument()  # the remaining provider keeps timing on its own
        connection = pool.getconn()
        clock.advance(2.0)
        pool.putconn(connection)
        first = metrics.snapshot({NAME: "both"})
        second = other.snapshot({NAME: "both"})
        # wait_time is 0 (the fake clock stands still during getconn); use_time exact
        assert first["db.client.connection.wait_time"][:2] == (3, 0)
        assert first["db.client.connection.use_time"][:2] == (3, 2.75)
        assert second["db.client.connection.use_time"][:2] == (2, 0.75)
    finally:
        for handle in handles:
            handle.uninstrument()
        pool.close()
        other.shutdown()
    assert "getconn" not in pool.__dict__


def test_use_time_counts_only_checkouts_this_source_timed(
    postgres_dsn: str, application_name: str, metrics: MetricsCapture, clock: FakeClock
) -> None:
    """A connection checked out before ``instrument()``, or under an earlier source of
    the same pool, is not use-timed at its checkin; a keyword checkin is."""
    pool = psycopg_pool.ConnectionPool(
        postgres_dsn,
        min_size=2,
        max_size=2,
        kwargs={"application_name": application_name},
        open=True,
    )
    try:
        pool.wait()
        before = pool.getconn()
        first = otel_backpressure.instrument(
            pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="stamps"
        )
        earlier = pool.getconn()  # stamped by the first source
        first.uninstrument()
        clock.advance(1.0)
        second = otel_backpressure.instrument(
            pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="stamps"
        )
        try:
            pool.putconn(before)
            pool.putconn(conn=earlier)
            timed = pool.getconn(timeout=5)
            clock.advance(0.25)
            pool.putconn(conn=timed)
            snapshot = metrics.snapshot({NAME: "stamps"})
            # the first source's one checkout and the second's; one checkin timed
            assert snapshot["db.client.connection.wait_time"][0] == 2
            assert snapshot["db.client.connection.use_time"][:2] == (1, 0.25)
        finally:
            second.uninstrument()
    finally:
        pool.close()


def test_a_pool_whose_methods_take_other_arguments_is_still_timed(
    postgres_dsn: str, application_name: str, metrics: MetricsCapture, clock: FakeClock
) -> None:
    """Hooks mirror ``getconn(timeout=None)``/``putconn(conn)``; any other signature gets
    hooks that take anything and pass it on."""

    class TaggedPool(psycopg_pool.ConnectionPool):
        def getconn(self, timeout: float | None = None, tag: str = "") -> Any:
            return super().getconn(timeout)

        def putconn(self, conn: Any, tag: str = "") -> None:
            super().putconn(conn)

    pool = TaggedPool(
        postgres_dsn,
        min_size=1,
        max_size=1,
        kwargs={"application_name": application_name},
        open=True,
    )
    handle = otel_backpressure.instrument(
        pool, meter_provider=metrics.meter_provider, clock=clock, pool_name="tagged"
    )
    try:
        pool.wait()
        connection = pool.getconn(5, tag="a")
        clock.advance(0.5)
        pool.putconn(connection, tag="a")
        with pool.connection():
            clock.advance(0.25)
        with pytest.raises(psycopg_pool.PoolTimeout), pool.connection():
            pool.getconn(timeout=0.05, tag="b")
        snapshot = metrics.snapshot({NAME: "tagged"})
        assert snapshot["db.client.connection.wait_time"][0] == 3
        assert snapshot["db.client.connection.use_time"][:2] == (3, 0.75)
        assert snapshot["db.client.connection.timeouts"] == 1
    finally:
        handle.uninstrument()
        pool.close()
