"""``db.client.connection.count`` is open connections: a lost connection's slot is not one.

SQLite pools, every SQLAlchemy pool class, after invalidation, soft
invalidation, recycling and detaching. The same states on the real PostgreSQL
(against ``pg_stat_activity``) are in ``tests/integration/pool/test_lost_connections.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import AssertionPool, NullPool, QueuePool, SingletonThreadPool, StaticPool

import otel_backpressure
from otel_backpressure.pool import PoolInstrumentation
from otel_backpressure.testing import MetricsCapture
from pool_states import IDLE, NAME, USED


class Opened:
    """Counts the DBAPI connections an engine holds open (SQLite has no server to ask)."""

    def __init__(self, engine: Engine) -> None:
        self.open = 0
        event.listen(engine, "connect", self._connected)
        event.listen(engine, "close", self._closed)
        event.listen(engine, "close_detached", self._closed)

    def _connected(self, *_: object) -> None:
        self.open += 1

    def _closed(self, *_: object) -> None:
        self.open -= 1


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/x.db"


def _instrumented(engine: Engine, metrics: MetricsCapture) -> PoolInstrumentation:
    return otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)


def _counts(metrics: MetricsCapture, handle: PoolInstrumentation) -> tuple[int, int]:
    state = metrics.snapshot({NAME: handle.pool_name})
    return state.get(USED, 0), state.get(IDLE, 0)


@pytest.fixture
def queue_engine(sqlite_file: str) -> Iterator[Engine]:
    engine = create_engine(sqlite_file, poolclass=QueuePool, pool_size=5, max_overflow=0)
    yield engine
    engine.dispose()


def test_the_issues_example(queue_engine: Engine, metrics: MetricsCapture) -> None:
    opened = Opened(queue_engine)
    handle = _instrumented(queue_engine, metrics)
    a, b = queue_engine.connect(), queue_engine.connect()
    a.invalidate()
    a.close()
    b.close()
    assert opened.open == 1
    assert _counts(metrics, handle) == (0, 1)
    health = otel_backpressure.pool_health(queue_engine)
    assert (health["available"], health["in_use"], health["overflow_active"]) == (1, 0, 0)
    handle.uninstrument()


def test_a_slot_invalidated_while_held_is_not_used(
    queue_engine: Engine, metrics: MetricsCapture
) -> None:
    opened = Opened(queue_engine)
    handle = _instrumented(queue_engine, metrics)
    a, b = queue_engine.connect(), queue_engine.connect()
    a.invalidate()  # still checked out, its connection closed
    assert opened.open == 1
    assert _counts(metrics, handle) == (1, 0)
    a.close()
    b.close()
    with queue_engine.connect():  # the idle open one is handed out (LIFO or FIFO alike)
        assert _counts(metrics, handle)[0] == 1
    assert opened.open == sum(_counts(metrics, handle))
    handle.uninstrument()


def test_uninstrumented_health_counts_idle_open_connections(queue_engine: Engine) -> None:
    a, b = queue_engine.connect(), queue_engine.connect()
    a.invalidate()
    a.close()
    b.close()
    assert otel_backpressure.pool_health(queue_engine)["available"] == 1


def test_soft_invalidation_and_recycle_keep_the_connection_until_next_checkout(
    sqlite_file: str, metrics: MetricsCapture
) -> None:
    engine = create_engine(sqlite_file, poolclass=QueuePool, pool_size=2, pool_recycle=3600)
    opened = Opened(engine)
    handle = _instrumented(engine, metrics)
    try:
        a, b = engine.connect(), engine.connect()
        a.connection.invalidate(soft=True)  # closed only at its next checkout
        a.close()
        b.close()
        assert opened.open == 2
        assert _counts(metrics, handle) == (0, 2)
        for record in list(engine.pool._pool.queue):  # type: ignore[attr-defined]
            record.starttime -= 7200  # both are now past pool_recycle
        with engine.connect(), engine.connect():  # both recycled: closed, opened again
            assert opened.open == 2
            assert _counts(metrics, handle) == (2, 0)
        assert _counts(metrics, handle) == (0, 2)
    finally:
        handle.uninstrument()
        engine.dispose()


def test_pool_wide_invalidation_counts_connections_still_open(
    sqlite_file: str, metrics: MetricsCapture
) -> None:
    # A disconnect error invalidates the pool's whole generation; the other
    # connections stay open until their next checkout recycles them.
    engine = create_engine(sqlite_file, poolclass=QueuePool, pool_size=3)
    opened = Opened(engine)
    handle = _instrumented(engine, metrics)
    try:
        held = [engine.connect() for _ in range(3)]
        for connection in held:  # SQLAlchemy compares time.time() stamps: make them differ
            connection.connection._connection_record.starttime -= 60  # type: ignore[union-attr]
        engine.pool._invalidate(held[0].connection)
        for connection in held:
            connection.close()
        assert opened.open == 2
        assert _counts(metrics, handle) == (0, 2)
    finally:
        handle.uninstrument()
        engine.dispose()


def test_detached_connections_leave_the_pool(queue_engine: Engine, metrics: MetricsCapture) -> None:
    handle = _instrumented(queue_engine, metrics)
    connection = queue_engine.connect()
    connection.detach()  # no longer the pool's: not counted, not used
    assert _counts(metrics, handle) == (0, 0)
    connection.close()
    assert _counts(metrics, handle) == (0, 0)
    handle.uninstrument()


@pytest.mark.parametrize(
    ("poolclass", "held_after", "idle_after"),
    [
        (StaticPool, 0, 0),  # its one connection invalidated: none open
        (SingletonThreadPool, 0, 0),  # this thread's connection invalidated
        (AssertionPool, 0, 0),
        (NullPool, 0, 0),  # never idle anyway
    ],
)
def test_every_pool_class_drops_an_invalidated_connection(
    poolclass: type,
    held_after: int,
    idle_after: int,
    sqlite_file: str,
    metrics: MetricsCapture,
) -> None:
    engine = create_engine(sqlite_file, poolclass=poolclass)
    opened = Opened(engine)
    handle = _instrumented(engine, metrics)
    try:
        connection = engine.connect()
        assert _counts(metrics, handle) == (1, 0)
        connection.invalidate()
        assert _counts(metrics, handle) == (held_after, 0)
        connection.close()
        assert _counts(metrics, handle) == (0, idle_after)
        assert opened.open == sum(_counts(metrics, handle))
        with engine.connect():  # a new connection is opened for the next checkout
            assert _counts(metrics, handle) == (1, 0)
            assert opened.open == 1
    finally:
        handle.uninstrument()
        engine.dispose()
