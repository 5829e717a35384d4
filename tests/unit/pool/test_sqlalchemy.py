"""Sync SQLAlchemy engines on SQLite: every metric, exactly, through known pool states."""

from __future__ import annotations

import gc
import logging
import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import (
    AssertionPool,
    NullPool,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

import otel_backpressure
from otel_backpressure.testing import FakeClock, MetricsCapture
from pool_states import IDLE, NAME, USED, buckets, fresh_class, instrumenting_keeps_inline
from sqlalchemy_compat import SQLALCHEMY_2

# bucket counts for the advice boundaries (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
NO_BUCKETS = (0,) * 10


@pytest.fixture
def file_engine(tmp_path: Path, clock: FakeClock) -> Iterator[Engine]:
    path = tmp_path / "pool.sqlite"

    def connect() -> sqlite3.Connection:
        clock.advance(0.003)  # every new connection "takes" 3 ms
        return sqlite3.connect(path, check_same_thread=False)

    engine = create_engine(
        f"sqlite:///{path}",
        poolclass=QueuePool,
        pool_size=2,
        max_overflow=1,
        pool_timeout=30,  # never reached: the test hands the waiter a connection
        creator=connect,
    )
    yield engine
    engine.dispose()


def _wait_for(predicate: Any, what: str) -> None:
    for _ in range(2_000):
        if predicate():
            return
        threading.Event().wait(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def test_queue_pool_through_known_states(
    file_engine: Engine, metrics: MetricsCapture, clock: FakeClock
) -> None:
    handle = otel_backpressure.instrument(
        file_engine, meter_provider=metrics.meter_provider, clock=clock, pool_name="orders"
    )
    try:
        series = {NAME: "orders"}
        common = {
            "db.client.connection.max": 3,
            "db.client.connection.idle.max": 2,
            "db.client.connection.idle.min": 0,
        }
        assert metrics.snapshot(series) == {
            **common,
            USED: 0,
            IDLE: 0,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 0,
            "backpressure.pool.overflow": 0,
            "backpressure.pool.usage": 0.0,
        }

        held = [file_engine.connect() for _ in range(3)]  # 2 pooled + 1 overflow
        state = metrics.snapshot(series)
        assert state == {
            **common,
            USED: 3,
            IDLE: 0,
            "db.client.connection.pending_requests": 0,
            "db.client.connection.timeouts": 0,
            "backpressure.pool.overflow": 1,
            "backpressure.pool.usage": 1.0,
            "db.client.connection.create_time": (3, pytest.approx(0.009), buckets(b1=3)),
            "db.client.connection.wait_time": (3, pytest.approx(0.009), buckets(b1=3)),
        }

        # a fourth checkout waits (pool_timeout is far away): pending until one returns
        obtained: queue.Queue[Any] = queue.Queue()
        waiter = threading.Thread(target=lambda: obtained.put(file_engine.connect()))
        waiter.start()
        _wait_for(
            lambda: metrics.value("db.client.connection.pending_requests", series) == 1,
            "the fourth checkout to wait",
        )
        assert metrics.snapshot(series)[USED] == 3
        held.pop(0).close()  # checked out at +3 ms, back at +9: handed to the waiter
        waiter.join()
        held.append(obtained.get_nowait())
        state = metrics.snapshot(series)
        assert (state[USED], state["db.client.connection.pending_requests"]) == (3, 0)
        assert state["db.client.connection.wait_time"][0] == 4

        file_engine.pool._timeout = 0  # type: ignore[attr-defined]  # no time to wait
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            file_engine.connect()
        state = metrics.snapshot(series)
        assert state["db.client.connection.pending_requests"] == 0
        assert state["db.client.connection.timeouts"] == 1
        assert state["db.client.connection.wait_time"][0] == 4  # a timeout obtained nothing

        clock.advance(0.02)
        for connection in held:
            connection.close()
        assert metrics.snapshot(series) == {
            **common,
            USED: 0,
            IDLE: 2,  # the overflow connection was closed on checkin
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


def test_dispose_keeps_series_and_timings(
    file_engine: Engine, metrics: MetricsCapture, clock: FakeClock
) -> None:
    handle = otel_backpressure.instrument(
        file_engine, meter_provider=metrics.meter_provider, clock=clock
    )
    series = {NAME: handle.pool_name}
    try:
        with file_engine.connect():
            pass
        old_pool = file_engine.pool
        file_engine.dispose()
        assert file_engine.pool is not old_pool
        state = metrics.snapshot(series)
        assert (state[USED], state[IDLE], state["db.client.connection.max"]) == (0, 0, 3)
        with file_engine.connect():
            assert metrics.snapshot(series)[USED] == 1
        state = metrics.snapshot(series)
        assert state["db.client.connection.wait_time"][0] == 2
        assert state["db.client.connection.use_time"][0] == 2
    finally:
        handle.uninstrument()
    # every pool it hooked, old and new, is given its own methods back
    assert "connect" not in file_engine.pool.__dict__
    assert "connect" not in old_pool.__dict__


def test_uninstrument_silences_and_restores_the_pool(
    file_engine: Engine, metrics: MetricsCapture
) -> None:
    pool = file_engine.pool
    creator = pool._invoke_creator
    handle = otel_backpressure.instrument(file_engine, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    assert metrics.snapshot(series)[USED] == 0
    handle.uninstrument()
    handle.uninstrument()  # twice is harmless
    assert not handle.active
    assert not any(key.startswith("db.client.connection.count") for key in metrics.snapshot(series))
    assert "connect" not in pool.__dict__
    assert pool._invoke_creator is creator
    with file_engine.connect() as connection:  # the pool still works
        assert connection.execute(text("SELECT 1")).scalar() == 1
    # and can be instrumented again
    again = otel_backpressure.instrument(file_engine, meter_provider=metrics.meter_provider)
    try:
        with file_engine.connect():
            assert metrics.snapshot({NAME: again.pool_name})[USED] == 1
    finally:
        again.uninstrument()


def test_uninstrument_gives_back_what_the_app_set_on_the_pool(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool)
    pool = engine.pool
    class_recreate = pool.recreate
    recreated: list[object] = []

    def recreate() -> Any:  # an app's own wrapper, on the instance
        new_pool = class_recreate()
        recreated.append(new_pool)
        return new_pool

    pool.recreate = recreate  # type: ignore[method-assign]
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    assert pool.recreate is not recreate  # hooked over it
    handle.uninstrument()
    assert pool.recreate is recreate
    # and the class's own methods show through again
    assert pool.connect.__func__ is QueuePool.connect  # type: ignore[attr-defined]
    assert pool._return_conn.__func__ is QueuePool._return_conn  # type: ignore[attr-defined]
    engine.dispose()
    assert recreated == [engine.pool]


@pytest.mark.parametrize("poolclass", [QueuePool, SingletonThreadPool, NullPool, AssertionPool])
def test_instrumenting_leaves_the_pool_attributes_inline(
    poolclass: type[Any], metrics: MetricsCapture
) -> None:
    """Hooking, reading and unhooking never ask the pool for its ``__dict__``.

    Only a pool SQLAlchemy has not made a dictionary for itself shows it: a
    2.x pool that nobody has listened to or checked out from (``create_engine()``
    listens to its pool, every checkout reads ``pool.dispatch``, and SQLAlchemy
    stores that in the instance dict; 1.4 writes the dict in ``Pool.__init__``),
    here put in place as the engine's pool (of a class of its own: see
    ``fresh_class``). StaticPool is left out: reading it needs the dict (see
    ``read_pool``).
    """
    engine = create_engine("sqlite://", poolclass=poolclass)
    pool = fresh_class(poolclass)(engine.pool._creator, dialect=engine.dialect)
    engine.pool = pool
    instrumenting_keeps_inline(engine, pool, metrics, library_asks_for_dict=not SQLALCHEMY_2)
    with engine.connect() as connection:  # the pool still works
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_instrument_twice_is_one_set_of_series(
    file_engine: Engine, metrics: MetricsCapture
) -> None:
    first = otel_backpressure.instrument(file_engine, meter_provider=metrics.meter_provider)
    second = otel_backpressure.instrument(file_engine, meter_provider=metrics.meter_provider)
    try:
        assert second is first
        with file_engine.connect():
            points = metrics.collect()["db.client.connection.count"].data.data_points
        assert [(dict(p.attributes), p.value) for p in points if p.value] == [
            ({NAME: first.pool_name, "db.client.connection.state": "used"}, 1)
        ]
        wait = metrics.histogram("db.client.connection.wait_time", {NAME: first.pool_name})
        assert wait is not None
        assert wait.count == 1
    finally:
        first.uninstrument()


def test_garbage_collected_engine_drops_out(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    assert USED in metrics.snapshot(series)
    del engine
    gc.collect()
    assert not any(key.startswith("db.client.connection.count") for key in metrics.snapshot(series))


def test_rejects_what_is_not_a_pool() -> None:
    with pytest.raises(TypeError, match="target must be"):
        otel_backpressure.instrument("sqlite://")
    engine = create_engine("sqlite://")
    with pytest.raises(ValueError, match="pool_name"):
        otel_backpressure.instrument(engine, pool_name="")
    with pytest.raises(TypeError, match="timings"):
        otel_backpressure.instrument(engine, timings="yes")  # type: ignore[arg-type]


def test_timings_off_leaves_only_read_metrics(file_engine: Engine, metrics: MetricsCapture) -> None:
    handle = otel_backpressure.instrument(
        file_engine, meter_provider=metrics.meter_provider, timings=False
    )
    try:
        with file_engine.connect():
            pass
        state = metrics.snapshot({NAME: handle.pool_name})
        assert not any(key.endswith("_time") for key in state)
        assert state[IDLE] == 1
    finally:
        handle.uninstrument()


def test_timings_setting_is_the_default(
    file_engine: Engine, metrics: MetricsCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS", "false")
    handle = otel_backpressure.instrument(file_engine, meter_provider=metrics.meter_provider)
    try:
        with file_engine.connect():
            pass
        assert "db.client.connection.wait_time" not in metrics.collect()
    finally:
        handle.uninstrument()


def test_a_broken_pool_is_skipped_and_logged_once(
    metrics: MetricsCapture, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = create_engine("sqlite://", poolclass=QueuePool)
    healthy = create_engine("sqlite://", poolclass=QueuePool)
    handles = [
        otel_backpressure.instrument(e, meter_provider=metrics.meter_provider, pool_name=n)
        for e, n in ((broken, "broken"), (healthy, "healthy"))
    ]
    try:

        def explode() -> int:
            raise RuntimeError("pool state unreadable")

        monkeypatch.setattr(broken.pool, "checkedout", explode)
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                assert metrics.snapshot({NAME: "broken"}) == {}
                assert metrics.snapshot({NAME: "healthy"})[IDLE] == 0
        logged = [r for r in caplog.records if "Cannot read pool" in r.getMessage()]
        assert len(logged) == 1
    finally:
        for handle in handles:
            handle.uninstrument()


def test_telemetry_failure_never_reaches_the_checkout(
    file_engine: Engine, metrics: MetricsCapture
) -> None:
    handle = otel_backpressure.instrument(
        file_engine,
        meter_provider=metrics.meter_provider,
        clock=lambda: "not a number",  # type: ignore[arg-type,return-value]
    )
    try:
        with file_engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        handle.uninstrument()


@pytest.mark.parametrize(
    ("poolclass", "checkouts", "used", "idle", "idle_after", "idle_max", "returns"),
    [
        (NullPool, 2, 2, 0, 0, 0, 2),
        # one connection shared by both checkouts; SQLAlchemy itself treats the
        # second close as a double checkin, so only one use is timed
        (StaticPool, 2, 1, 0, 1, 1, 1),
        # one connection, kept open between checkouts
        (AssertionPool, 1, 1, 0, 1, 1, 1),
    ],
)
def test_pools_without_counters_report_what_is_known(
    poolclass: type,
    checkouts: int,
    used: int,
    idle: int | None,
    idle_after: int | None,
    idle_max: int | None,
    returns: int,
    metrics: MetricsCapture,
) -> None:
    engine = create_engine("sqlite://", poolclass=poolclass)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    try:
        held = [engine.connect() for _ in range(checkouts)]
        state = metrics.snapshot(series)
        assert state[USED] == used
        assert state.get(IDLE) == idle
        assert state.get("db.client.connection.idle.max") == idle_max
        for absent in ("max", "idle.min"):
            assert f"db.client.connection.{absent}" not in state
        assert "backpressure.pool.usage" not in state
        assert "backpressure.pool.overflow" not in state
        assert state["db.client.connection.wait_time"][0] == len(held)
        for connection in held:
            connection.close()
        state = metrics.snapshot(series)
        assert state[USED] == 0
        assert state.get(IDLE) == idle_after
        assert state["db.client.connection.use_time"][0] == returns
    finally:
        handle.uninstrument()
        engine.dispose()


def test_singleton_thread_pool_counts_nested_checkouts_once(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=SingletonThreadPool)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    series = {NAME: handle.pool_name}
    try:
        outer = engine.raw_connection()
        inner = engine.raw_connection()  # the same thread's connection again
        assert metrics.snapshot(series)[USED] == 1
        inner.close()
        assert metrics.snapshot(series)[USED] == 1
        outer.close()
        assert metrics.snapshot(series)[USED] == 0
    finally:
        handle.uninstrument()
        engine.dispose()


def test_unbounded_overflow_omits_max_and_usage(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=-1)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        held = [engine.connect() for _ in range(3)]
        state = metrics.snapshot({NAME: handle.pool_name})
        assert (state[USED], state["backpressure.pool.overflow"]) == (3, 2)
        assert "db.client.connection.max" not in state
        assert "backpressure.pool.usage" not in state
        for connection in held:
            connection.close()
    finally:
        handle.uninstrument()
        engine.dispose()


def test_execution_option_copies_are_the_same_pool(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool)
    copy = engine.execution_options(isolation_level="SERIALIZABLE")
    first = otel_backpressure.instrument(copy, meter_provider=metrics.meter_provider)
    try:
        assert otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider) is first
        with copy.connect():
            points = metrics.collect()["db.client.connection.count"].data.data_points
        assert [p.value for p in points if p.attributes[NAME] == first.pool_name] == [1, 0]
    finally:
        first.uninstrument()
        engine.dispose()


def test_counts_stay_exact_across_threads(tmp_path: Path, metrics: MetricsCapture) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path}/threads.sqlite",
        poolclass=NullPool,
        connect_args={"check_same_thread": False},
    )
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    threads, cycles = 8, 300
    try:

        def work() -> None:
            for _ in range(cycles):
                with engine.connect():
                    pass

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for _ in range(20):  # collections racing the checkouts must not disturb them
            metrics.collect()
        for worker in workers:
            worker.join()
        state = metrics.snapshot({NAME: handle.pool_name})
        assert (state[USED], state["db.client.connection.pending_requests"]) == (0, 0)
        assert state["db.client.connection.wait_time"][0] == threads * cycles
        assert state["db.client.connection.use_time"][0] == threads * cycles
        assert state["db.client.connection.create_time"][0] == threads * cycles
    finally:
        handle.uninstrument()


def test_instrumenting_again_with_other_timings_warns_by_name(
    file_engine: Engine, metrics: MetricsCapture, caplog: pytest.LogCaptureFixture
) -> None:
    first = otel_backpressure.instrument(
        file_engine, meter_provider=metrics.meter_provider, timings=False
    )
    try:
        with caplog.at_level(logging.WARNING):
            again = otel_backpressure.instrument(
                file_engine, meter_provider=metrics.meter_provider, timings=True
            )
        assert again is first
        assert "ignoring timings=True" in caplog.text
        assert first.pool_name in caplog.text
    finally:
        first.uninstrument()
