"""pool_health(): read from the pool itself, no side effects, every pool kind."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

import otel_backpressure
from otel_backpressure import PoolHealth, PoolHealthSnapshot, pool_health
from otel_backpressure.testing import MetricsCapture


def _without_time(health: PoolHealthSnapshot) -> dict[str, Any]:
    rest = dict(health)
    stamp = datetime.fromisoformat(rest.pop("timestamp"))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
    assert set(rest) | {"timestamp"} == set(PoolHealthSnapshot.__annotations__)
    return rest


def test_statuses_follow_the_thresholds_and_the_pools_own_capacity() -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=2, max_overflow=2)
    held = []
    try:
        assert _without_time(pool_health(engine)) == {
            "status": "healthy",
            "pool_name": None,
            "in_use": 0,
            "available": 0,
            "pending": 0,
            "timeouts": 0,
            "total_capacity": 4,
            "idle_max": 2,
            "idle_min": 0,
            "overflow_active": 0,
            "usage_percent": 0.0,
        }
        held.append(engine.connect())
        health = pool_health(engine)
        assert (health["in_use"], health["overflow_active"]) == (1, 0)  # never negative
        held += [engine.connect(), engine.connect()]
        health = pool_health(engine)
        assert (health["status"], health["usage_percent"], health["overflow_active"]) == (
            "warning",
            75.0,
            1,
        )
        held.append(engine.connect())
        assert pool_health(engine)["status"] == "critical"
        assert pool_health(engine, warning_threshold=0.5, critical_threshold=1.0)["status"] == (
            "critical"
        )
        held.pop().close()
        assert pool_health(engine, critical_threshold=0.8)["status"] == "warning"
    finally:
        for connection in held:
            connection.close()
        engine.dispose()


def test_thresholds_default_to_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=1)
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_WARNING_THRESHOLD", "0.4")
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_CRITICAL_THRESHOLD", "0.6")
    with engine.connect():
        assert pool_health(engine)["status"] == "warning"  # 50 %
    engine.dispose()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"warning_threshold": 1.5}, "warning_threshold"),
        ({"critical_threshold": -0.1}, "critical_threshold"),
        ({"warning_threshold": 0.9, "critical_threshold": 0.5}, "must not exceed"),
    ],
)
def test_bad_thresholds_name_the_argument(arguments: dict[str, float], message: str) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool)
    with pytest.raises(ValueError, match=message):
        pool_health(engine, **arguments)


def test_bad_target_and_arguments() -> None:
    with pytest.raises(TypeError, match="target must be"):
        pool_health(object())
    engine = create_engine("sqlite://", poolclass=QueuePool)
    with pytest.raises(ValueError, match="max_history"):
        PoolHealth(engine, max_history=0)
    with pytest.raises(TypeError, match="limit"):
        PoolHealth(engine).history(limit="3")  # type: ignore[arg-type]


def test_unbounded_overflow_has_no_capacity_and_is_healthy() -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=-1)
    held = [engine.connect() for _ in range(3)]
    try:
        health = pool_health(engine)
        assert (health["idle_max"], health["total_capacity"]) == (1, None)
        assert (health["in_use"], health["overflow_active"], health["usage_percent"]) == (
            3,
            2,
            None,
        )
        assert health["status"] == "healthy"
    finally:
        for connection in held:
            connection.close()
        engine.dispose()


def test_null_pool_in_use_is_known_only_when_instrumented(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=NullPool)
    with engine.connect():
        health = pool_health(engine)
        assert (health["available"], health["in_use"], health["total_capacity"]) == (0, None, None)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        with engine.connect(), engine.connect():
            health = pool_health(engine)
            assert (health["pool_name"], health["in_use"]) == (handle.pool_name, 2)
            assert health["status"] == "healthy"
    finally:
        handle.uninstrument()


def test_static_pool_reads_its_one_connection() -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    assert (pool_health(engine)["available"], pool_health(engine)["in_use"]) == (0, 0)
    with engine.connect():
        assert (pool_health(engine)["available"], pool_health(engine)["in_use"]) == (0, 1)
    assert (pool_health(engine)["available"], pool_health(engine)["in_use"]) == (1, 0)
    engine.dispose()


def test_reading_has_no_side_effects_and_history_is_bounded() -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    health = PoolHealth(engine, max_history=3)
    for _ in range(5):
        pool_health(engine)
        health.snapshot()
    assert health.history() == []
    with engine.connect():
        recorded = [health.record() for _ in range(5)]
    assert health.history() == recorded[-3:]
    assert health.history(limit=2) == recorded[-2:]
    assert health.history(limit=0) == []
    assert "history=3/3" in repr(health)
    engine.dispose()


async def test_monitor_records_and_warns_past_the_threshold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    health = PoolHealth(engine, max_history=10)
    with pytest.raises(ValueError, match="interval"):
        health.start_monitor(interval=0)
    connection = engine.connect()  # 100 % in use: critical
    try:
        with caplog.at_level(logging.WARNING, logger="otel_backpressure.pool._health"):
            task = health.start_monitor(interval=0.001)
            for _ in range(5_000):
                if len(health.history()) >= 2:
                    break
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert len(health.history()) >= 2
        assert all(s["status"] == "critical" for s in health.history())
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == len(health.history())
        assert "critical" in warnings[0].getMessage()
        assert "100.0% in use (1 of 1)" in warnings[0].getMessage()
    finally:
        connection.close()
        engine.dispose()


async def test_monitor_survives_a_failing_read(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool)
    health = PoolHealth(engine)

    def broken() -> int:
        raise RuntimeError("unreadable")

    engine.pool.checkedout = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.pool._health"):
        task = health.start_monitor(interval=0.001)
        for _ in range(5_000):
            if len([r for r in caplog.records if r.levelno == logging.ERROR]) >= 2:
                break
            await asyncio.sleep(0.001)
        assert not task.done()  # still running after failures
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert health.history() == []
