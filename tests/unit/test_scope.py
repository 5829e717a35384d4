"""Every meter the package creates carries one instrumentation scope: its name and version.

A series without ``otel_scope_version`` (the pool meter once lacked it) makes a
collector see two scopes for one package and breaks queries that select by
version; the Prometheus end-to-end test checks the same on scraped series.
"""

from __future__ import annotations

import sqlalchemy as sa
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

import otel_backpressure
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure._shared import SCOPE
from otel_backpressure.errors._metrics import count_exception
from otel_backpressure.ratelimit import Policy, RateLimiter
from otel_backpressure.testing import MetricsCapture


def test_every_metric_of_every_part_carries_the_package_scope_and_version() -> None:
    capture = MetricsCapture()
    provider = capture.meter_provider
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.QueuePool, pool_size=1)
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(meter_provider=provider, engines=[engine])
    try:
        with engine.connect() as connection:  # the pool's gauges and histograms
            connection.execute(sa.text("select 1"))
        RateLimiter([Policy("scope-test", rate=1, period=1.0)], meter_provider=provider).hit_sync(
            "k"
        )
        MovingWindowRateLimiter(MemoryStorage()).hit(parse("1/second"), "k")  # `limits` metering
        count_exception(ValueError(), "ValueError", handled=False, meter_provider=provider)
        data = capture.reader.get_metrics_data()
    finally:
        instrumentor.uninstrument()
        engine.dispose()
    assert data is not None
    scopes = {
        (scope_metrics.scope.name, scope_metrics.scope.version): {
            m.name for m in scope_metrics.metrics
        }
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
    }
    assert list(scopes) == [(SCOPE, otel_backpressure.__version__)], scopes
    (names,) = scopes.values()
    # one metric of each part reached the reader through that one scope
    assert {
        "db.client.connection.count",
        "db.client.connection.use_time",
        "backpressure.rate_limit.requests",
        "backpressure.exceptions",
    } <= names, names
    assert any(
        point.attributes.get("backpressure.rate_limit.policy") == "1/1second"
        for metric in data.resource_metrics[0].scope_metrics[0].metrics
        if metric.name == "backpressure.rate_limit.requests"
        for point in metric.data.data_points
    )
