"""The pool instruments against the telemetry contract, and the collection's costs and bounds."""

from __future__ import annotations

from unittest import mock

from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool, StaticPool

import contract
import otel_backpressure
from otel_backpressure.pool import REGISTRY
from otel_backpressure.pool import _sqlalchemy as pool_sqlalchemy
from otel_backpressure.pool._metrics import BOUNDARIES
from otel_backpressure.pool._source import MAX_BUFFERED
from otel_backpressure.testing import MetricsCapture

POOL_METRICS = sorted(
    name
    for name in contract.METRICS
    if name.startswith(("db.client.connection.", "backpressure.pool."))
)


def test_every_pool_metric_of_the_contract_is_emitted_and_conforms(
    metrics: MetricsCapture,
) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=1)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    try:
        with engine.connect():
            pass
        collected = metrics.collect()
        assert sorted(collected) == POOL_METRICS  # eleven, none missing, none extra
        for name in POOL_METRICS:
            assert contract.violations(collected[name]) == [], name
        data = metrics.reader.get_metrics_data()
        assert data is not None
        scopes = {s.scope.name for r in data.resource_metrics for s in r.scope_metrics}
        assert scopes == {contract.SCOPE_NAME}
        for name in ("create_time", "wait_time", "use_time"):
            (point,) = collected[f"db.client.connection.{name}"].data.data_points
            assert tuple(point.explicit_bounds) == BOUNDARIES
    finally:
        handle.uninstrument()
        engine.dispose()


def test_instruments_are_created_once_per_provider(metrics: MetricsCapture) -> None:
    first = REGISTRY.metrics_for(metrics.meter_provider)
    assert REGISTRY.metrics_for(metrics.meter_provider) is first
    other = MetricsCapture()
    try:
        assert REGISTRY.metrics_for(other.meter_provider) is not first
    finally:
        other.shutdown()


def test_each_pool_is_read_once_per_collection(metrics: MetricsCapture) -> None:
    engines = [create_engine("sqlite://", poolclass=QueuePool) for _ in range(3)]
    handles = [
        otel_backpressure.instrument(e, meter_provider=metrics.meter_provider) for e in engines
    ]
    try:
        with mock.patch.object(
            pool_sqlalchemy, "read_pool", wraps=pool_sqlalchemy.read_pool
        ) as read_pool:
            metrics.collect()
            assert read_pool.call_count == 3  # not once per instrument
    finally:
        for handle in handles:
            handle.uninstrument()


def test_one_pool_on_two_providers_reports_to_both(metrics: MetricsCapture) -> None:
    other = MetricsCapture()
    engine = create_engine("sqlite://", poolclass=StaticPool)
    first = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    second = otel_backpressure.instrument(engine, meter_provider=other.meter_provider)
    try:
        assert first is not second
        assert first.pool_name == second.pool_name
        with engine.connect():
            pass
        series = {"db.client.connection.pool.name": first.pool_name}
        for capture in (metrics, other):
            wait = capture.histogram("db.client.connection.wait_time", series)
            assert wait is not None
            assert wait.count == 1
        first.uninstrument()
        assert metrics.snapshot(series).get("db.client.connection.idle.max") is None
        assert other.snapshot(series)["db.client.connection.idle.max"] == 1
    finally:
        second.uninstrument()
        other.shutdown()


def test_buffers_stay_bounded_between_collections(metrics: MetricsCapture) -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    handle = otel_backpressure.instrument(engine, meter_provider=metrics.meter_provider)
    source = handle._source
    cycles = MAX_BUFFERED * 2 + 10
    try:
        for _ in range(cycles):
            with engine.connect():
                pass
            (recorder,) = source.recorders
            assert len(recorder.wait) <= MAX_BUFFERED + 1
            assert len(recorder.use) <= MAX_BUFFERED + 1
        series = {"db.client.connection.pool.name": handle.pool_name}
        state = metrics.snapshot(series)
        assert state["db.client.connection.wait_time"][0] == cycles
        assert state["db.client.connection.use_time"][0] == cycles
    finally:
        handle.uninstrument()
