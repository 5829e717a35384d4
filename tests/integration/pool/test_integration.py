"""BackpressureInstrumentor catches every engine and asyncpg pool once, and undoes it all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy
import sqlalchemy.engine
import wrapt
from sqlalchemy import create_engine as create_engine_taken_early
from sqlalchemy.engine import Engine, engine_from_config
from sqlalchemy.ext.asyncio import create_async_engine

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.pool.api import source_of
from otel_backpressure.pool.metrics import PoolMetrics
from otel_backpressure.testing import MetricsCapture

pytestmark = pytest.mark.integration

NAME = "db.client.connection.pool.name"


@pytest.fixture
def instrumentor() -> Iterator[BackpressureInstrumentor]:
    instrumentor = BackpressureInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def _pool_names(metrics: MetricsCapture) -> list[str]:
    count = metrics.collect().get("db.client.connection.count")
    if count is None:
        return []
    return sorted(
        {str(point.attributes[NAME]) for point in count.data.data_points if point.attributes}
    )


def _asyncpg_url(postgres_dsn: str) -> str:
    return postgres_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def test_every_spelling_is_instrumented_exactly_once(
    tmp_path: Path,
    postgres_dsn: str,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
) -> None:
    existing = create_engine_taken_early(f"sqlite:///{tmp_path}/existing.sqlite")
    instrumentor.instrument(meter_provider=metrics.meter_provider, engines=[existing])
    engines: list[Engine] = [
        create_engine_taken_early(f"sqlite:///{tmp_path}/early.sqlite"),
        sqlalchemy.create_engine(f"sqlite:///{tmp_path}/package.sqlite"),
        sqlalchemy.engine.create_engine(f"sqlite:///{tmp_path}/engine.sqlite"),
        engine_from_config({"sqlalchemy.url": f"sqlite:///{tmp_path}/config.sqlite"}),
    ]
    async_engine = create_async_engine(_asyncpg_url(postgres_dsn))
    pool = await asyncpg.create_pool(postgres_dsn, min_size=0, max_size=1)
    try:
        address = sqlalchemy.make_url(postgres_dsn)
        database = f"{address.host}:{address.port}/{address.database}"
        assert _pool_names(metrics) == sorted(
            [
                "config.sqlite",
                "early.sqlite",
                "engine.sqlite",
                "existing.sqlite",
                "package.sqlite",
                database,  # the async engine: once, though create_engine ran inside it
                f"{database}#2",  # the asyncpg pool, a second pool on the same database
            ]
        )
        assert len(PoolMetrics.for_provider(metrics.meter_provider)) == 7
        for engine in [existing, *engines, async_engine]:
            assert source_of(engine) is not None
        assert source_of(pool) is not None

        async with async_engine.connect():
            pass
        async with pool.acquire():
            pass
        for name in (database, f"{database}#2"):
            wait = metrics.histogram("db.client.connection.wait_time", {NAME: name})
            assert wait is not None
            assert wait.count == 1  # one hook per pool, not two
    finally:
        instrumentor.uninstrument()
        await async_engine.dispose()
        await pool.close()

    # everything is undone: no series, no hooks, no patches, new engines untouched
    assert _pool_names(metrics) == []
    assert len(PoolMetrics.for_provider(metrics.meter_provider)) == 0
    assert not isinstance(Engine.__dict__["__init__"], wrapt.ObjectProxy)
    assert not isinstance(asyncpg.pool.Pool.__dict__["__init__"], wrapt.ObjectProxy)
    assert type(pool) is asyncpg.Pool
    for engine in [existing, *engines]:
        assert "connect" not in engine.pool.__dict__
    later = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/later.sqlite")
    assert source_of(later) is None


def test_instrument_uninstrument_instrument(
    tmp_path: Path, metrics: MetricsCapture, instrumentor: BackpressureInstrumentor
) -> None:
    for round_ in range(2):
        instrumentor.instrument(meter_provider=metrics.meter_provider)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/round{round_}.sqlite")
        with engine.connect():
            assert _pool_names(metrics) == [f"round{round_}.sqlite"]
        instrumentor.uninstrument()
        assert _pool_names(metrics) == []
        engine.dispose()


def test_timings_setting_reaches_instrumented_engines(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS", "off")
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/quiet.sqlite")
    with engine.connect():
        pass
    collected = metrics.collect()
    assert "db.client.connection.count" in collected
    assert "db.client.connection.wait_time" not in collected
    engine.dispose()


def test_pool_part_can_be_switched_off(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_ENABLED", "false")
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/off.sqlite")
    assert source_of(engine) is None
    assert _pool_names(metrics) == []


def test_a_bad_engines_option_is_logged_not_raised(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # opentelemetry-instrument would turn an exception into a failed start
    instrumentor.instrument(meter_provider=metrics.meter_provider, engines=["sqlite://"])
    assert "engines must hold SQLAlchemy Engines" in caplog.text
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/after.sqlite")
    assert source_of(engine) is None  # the pool part did not start half-way
