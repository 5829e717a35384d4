"""BackpressureInstrumentor catches every engine and asyncpg pool once, and undoes it all."""

from __future__ import annotations

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
from otel_backpressure.pool import REGISTRY
from otel_backpressure.testing import MetricsCapture
from pool_states import NAME, pool_names

pytestmark = pytest.mark.integration


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
        address = sqlalchemy.engine.make_url(postgres_dsn)
        database = f"{address.host}:{address.port}/{address.database}"
        assert pool_names(metrics) == sorted(
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
        assert len(REGISTRY.metrics_for(metrics.meter_provider)) == 7
        for engine in [existing, *engines, async_engine]:
            assert REGISTRY.source_of(engine) is not None
        assert REGISTRY.source_of(pool) is not None

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
    assert pool_names(metrics) == []
    assert len(REGISTRY.metrics_for(metrics.meter_provider)) == 0
    assert not isinstance(Engine.__dict__["__init__"], wrapt.ObjectProxy)
    assert not isinstance(asyncpg.pool.Pool.__dict__["__init__"], wrapt.ObjectProxy)
    assert type(pool) is asyncpg.Pool
    for engine in [existing, *engines]:
        assert "connect" not in engine.pool.__dict__
    later = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/later.sqlite")
    assert REGISTRY.source_of(later) is None
