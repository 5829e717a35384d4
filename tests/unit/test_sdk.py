"""HistogramSink must export exactly what record() per value would have exported."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    DropAggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)

from otel_backpressure._sdk import HistogramSink
from otel_backpressure.pool._metrics import BOUNDARIES

ATTRS = {"db.client.connection.pool.name": "db"}


def _provider(views: tuple[View, ...] = (), delta: bool = False):
    from opentelemetry.sdk.metrics import Histogram

    temporality = {Histogram: AggregationTemporality.DELTA} if delta else {}
    reader = InMemoryMetricReader(preferred_temporality=temporality)
    provider = MeterProvider(metric_readers=[reader], views=list(views))
    histogram = provider.get_meter("t").create_histogram(
        "h", unit="s", explicit_bucket_boundaries_advisory=list(BOUNDARIES)
    )
    return provider, reader, histogram


def _point(reader: InMemoryMetricReader) -> Any:
    data = reader.get_metrics_data()
    if data is None:
        return None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                (point,) = metric.data.data_points
                return point
    return None


def _summary(point: HistogramDataPoint | None):
    assert point is not None
    return (
        point.count,
        point.sum,
        point.bucket_counts,
        point.explicit_bounds,
        point.min,
        point.max,
        dict(point.attributes),
    )


VALUES = (
    [random.Random(7).uniform(0, 12) for _ in range(500)]
    + [0.001, 0.005, 10.0, 0.0]
    # mostly below the first boundary, as pool durations are
    + [random.Random(8).expovariate(2000) for _ in range(300)]
)


@pytest.mark.parametrize(
    "views",
    [
        (),
        (View(instrument_name="h", aggregation=ExplicitBucketHistogramAggregation([0.5, 2.0])),),
        (View(instrument_name="h", attribute_keys=set()),),
        (View(instrument_name="h", aggregation=ExponentialBucketHistogramAggregation()),),
    ],
    ids=["advice", "other-boundaries", "attributes-filtered", "exponential"],
)
@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
def test_batch_equals_one_record_per_value(views: tuple[View, ...], delta: bool) -> None:
    expected_provider, expected_reader, expected = _provider(views, delta)
    actual_provider, actual_reader, actual = _provider(views, delta)
    sink = HistogramSink(actual, ATTRS)
    exponential = bool(views) and isinstance(
        views[0]._aggregation, ExponentialBucketHistogramAggregation
    )
    try:
        for batch in (VALUES[:1], VALUES[1:300], VALUES[300:]):
            for value in batch:
                expected.record(value, ATTRS)
            sink.record_many(batch)
            if exponential:
                # not mergeable: every value went through record(), still identical
                exp, act = _point(expected_reader), _point(actual_reader)
                assert exp is not None
                assert act is not None
                assert (exp.count, exp.sum, exp.min, exp.max) == (
                    act.count,
                    act.sum,
                    act.min,
                    act.max,
                )
                assert exp.positive.bucket_counts == act.positive.bucket_counts
            else:
                assert _summary(_point(actual_reader)) == _summary(_point(expected_reader))
        assert sink.fast is not exponential
    finally:
        expected_provider.shutdown()
        actual_provider.shutdown()


def test_dropped_histogram_stays_dropped() -> None:
    provider, reader, histogram = _provider(
        (View(instrument_name="h", aggregation=DropAggregation()),)
    )
    try:
        HistogramSink(histogram, ATTRS).record_many([0.1, 0.2, 0.3])
        assert _point(reader) is None
    finally:
        provider.shutdown()


def test_non_finite_values_are_skipped_like_record() -> None:
    provider, reader, histogram = _provider()
    try:
        HistogramSink(histogram, ATTRS).record_many([0.1, float("nan"), float("inf"), 0.2])
        point = _point(reader)
        assert point is not None
        assert (point.count, point.sum) == (2, 0.1 + 0.2)
    finally:
        provider.shutdown()


def test_api_histogram_without_sdk_uses_record() -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    histogram = NoOpMeterProvider().get_meter("t").create_histogram("h")
    sink = HistogramSink(histogram, ATTRS)
    assert not sink.fast
    sink.record_many([0.1, 0.2])  # no error, nothing to see


def test_a_series_past_the_cardinality_limit_goes_where_record_would_send_it() -> None:
    from opentelemetry.sdk.metrics import Histogram

    captures = []
    for _ in range(2):
        try:
            reader = InMemoryMetricReader(cardinality_limits={Histogram: 2})  # type: ignore[call-arg]
        except TypeError:
            # SDKs before 1.45.2 have no cardinality limit: no overflow series,
            # and the sink must still land where record() does beside others
            reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        histogram = provider.get_meter("t").create_histogram(
            "h", unit="s", explicit_bucket_boundaries_advisory=list(BOUNDARIES)
        )
        for other in ("a", "b"):  # the two series the limit allows
            histogram.record(0.5, {"other": other})
        captures.append((provider, reader, histogram))
    (expected_provider, expected_reader, expected), (actual_provider, actual_reader, actual) = (
        captures
    )
    sink = HistogramSink(actual, ATTRS)
    try:
        for batch in (VALUES[:5], VALUES[5:50]):
            for value in batch:
                expected.record(value, ATTRS)
            sink.record_many(batch)

        def points(reader: InMemoryMetricReader) -> list[Any]:
            data = reader.get_metrics_data()
            assert data is not None
            (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
            return sorted((_summary(p) for p in metric.data.data_points), key=repr)

        assert points(actual_reader) == points(expected_reader)
        assert sink.fast
    finally:
        expected_provider.shutdown()
        actual_provider.shutdown()
