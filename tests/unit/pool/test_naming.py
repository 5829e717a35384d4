"""Default pool names: no credentials, unique while alive, reused once free."""

from __future__ import annotations

import gc
import sqlite3

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

import otel_backpressure
from otel_backpressure.pool import REGISTRY
from otel_backpressure.pool._registry import _Names
from otel_backpressure.testing import MetricsCapture


def test_lowest_free_suffix_is_reused() -> None:
    names = _Names()
    assert [names.acquire("db") for _ in range(3)] == ["db", "db#2", "db#3"]
    names.release("db#2")
    assert names.acquire("db") == "db#2"
    names.release("db")
    assert names.acquire("db") == "db"
    assert names.acquire("other#7") == "other#7"  # a '#' in the base is not a suffix
    for name in ("db", "db#2", "db#3", "other#7"):
        names.release(name)
    assert len(names) == 0


def test_two_live_engines_on_one_database_get_distinct_names(metrics: MetricsCapture) -> None:
    first = create_engine("sqlite:///shared.sqlite", poolclass=QueuePool)
    second = create_engine("sqlite:///shared.sqlite", poolclass=QueuePool)
    a = otel_backpressure.instrument(first, meter_provider=metrics.meter_provider)
    b = otel_backpressure.instrument(second, meter_provider=metrics.meter_provider)
    assert (a.pool_name, b.pool_name) == ("shared.sqlite", "shared.sqlite#2")
    del first
    gc.collect()
    third = create_engine("sqlite:///shared.sqlite", poolclass=QueuePool)
    c = otel_backpressure.instrument(third, meter_provider=metrics.meter_provider)
    assert c.pool_name == "shared.sqlite"  # the collected engine's name is free again
    b.uninstrument()
    c.uninstrument()


def test_churning_engines_keeps_names_and_memory_flat(metrics: MetricsCapture) -> None:
    """10,000 instrumented engines on one URL, created, used, disposed, collected.

    Engines are built with the Engine constructor (the class create_engine
    returns) around one dialect, which keeps SQLAlchemy's own per-engine set-up
    out of the measurement and the test fast.
    """
    template = create_engine("sqlite:///churn.sqlite")
    names: set[str] = set()

    def churn(count: int) -> None:
        for i in range(count):
            engine = Engine(
                QueuePool(lambda: sqlite3.connect(":memory:"), pool_size=1),
                template.dialect,
                template.url,
            )
            names.add(
                otel_backpressure.instrument(
                    engine, meter_provider=metrics.meter_provider
                ).pool_name
            )
            if i % 10 == 0:  # every tenth engine is used, so timings churn too
                with engine.connect():
                    pass
            engine.dispose()
            del engine
            gc.collect()  # engines sit in reference cycles; cheap after gc.freeze()
            if i % 500 == 0:
                metrics.collect()

    def footprint() -> tuple[int, int, int, int]:
        gc.collect()
        metrics.collect()
        points = sum(len(m.data.data_points) for m in metrics.collect().values())
        return len(gc.get_objects()), len(REGISTRY), REGISTRY.live_names, points

    gc.collect()
    gc.freeze()  # the collections below then only walk what the churn allocates
    try:
        churn(1_000)
        objects_1k, sources_1k, names_1k, points_1k = footprint()
        churn(9_000)
        objects_10k, sources_10k, names_10k, points_10k = footprint()
    finally:
        gc.unfreeze()

    assert (sources_1k, sources_10k) == (0, 0)
    assert names_10k == names_1k
    assert points_10k == points_1k  # no new series in the SDK's cumulative state
    assert names == {"churn.sqlite"}  # each engine was gone before the next was named
    assert objects_10k - objects_1k < 100, (objects_1k, objects_10k)
