from __future__ import annotations

import logging

import pytest

from otel_backpressure.ratelimit.metrics import RateLimitMetrics, StoreCounts
from otel_backpressure.testing import MetricsCapture

POLICY = "backpressure.rate_limit.policy"
RESULT = "backpressure.rate_limit.result"


def test_one_instance_per_provider(metrics: MetricsCapture) -> None:
    first = RateLimitMetrics.for_provider(metrics.meter_provider)
    assert RateLimitMetrics.for_provider(metrics.meter_provider) is first
    other = MetricsCapture()
    assert RateLimitMetrics.for_provider(other.meter_provider) is not first
    other.shutdown()


def test_record_feeds_the_requests_counter(metrics: MetricsCapture) -> None:
    meter = RateLimitMetrics.for_provider(metrics.meter_provider)
    meter.record("10/1second", "allowed")
    meter.record("10/1second", "allowed")
    meter.record("10/1second", "rejected")
    meter.counter("10/1second", "dry_run_rejected").value += 1
    assert (
        metrics.value("backpressure.rate_limit.requests", {POLICY: "10/1second", RESULT: "allowed"})
        == 2
    )
    assert (
        metrics.value(
            "backpressure.rate_limit.requests", {POLICY: "10/1second", RESULT: "rejected"}
        )
        == 1
    )
    assert (
        metrics.value(
            "backpressure.rate_limit.requests", {POLICY: "10/1second", RESULT: "dry_run_rejected"}
        )
        == 1
    )
    metric = metrics.collect()["backpressure.rate_limit.requests"]
    assert metric.unit == "{request}"
    assert metric.data.is_monotonic


def test_unknown_result_is_refused(metrics: MetricsCapture) -> None:
    with pytest.raises(ValueError, match="result"):
        RateLimitMetrics.for_provider(metrics.meter_provider).record("p", "maybe")


class Store:
    def __init__(self, keys: int) -> None:
        self.counts = StoreCounts()
        self.keys = keys

    def key_counts(self) -> list[tuple[str, int]]:
        return [("p", self.keys)]


def test_store_counts_outlive_the_store_and_keys_do_not(metrics: MetricsCapture) -> None:
    meter = RateLimitMetrics.for_provider(metrics.meter_provider)
    store = Store(keys=7)
    meter.watch(store)
    store.counts.evicted("p", "idle", 3)
    store.counts.failed("p", "redis.exceptions.ConnectionError")
    assert metrics.value("backpressure.rate_limit.keys", {POLICY: "p"}) == 7
    del store
    evictions = {POLICY: "p", "backpressure.rate_limit.eviction.reason": "idle"}
    assert metrics.value("backpressure.rate_limit.evictions", evictions) == 3
    errors = {POLICY: "p", "error.type": "redis.exceptions.ConnectionError"}
    assert metrics.value("backpressure.rate_limit.store.errors", errors) == 1
    assert metrics.value("backpressure.rate_limit.keys", {POLICY: "p"}) is None


class BrokenStore(Store):
    def key_counts(self) -> list[tuple[str, int]]:
        raise RuntimeError("boom")


def test_callbacks_never_raise_into_the_sdk(
    metrics: MetricsCapture, caplog: pytest.LogCaptureFixture
) -> None:
    meter = RateLimitMetrics.for_provider(metrics.meter_provider)
    broken = BrokenStore(keys=1)
    meter.watch(broken)
    meter.record("p", "allowed")
    with caplog.at_level(logging.ERROR):
        collected = metrics.collect()
    assert "backpressure.rate_limit.requests" in collected
    assert "backpressure.rate_limit.keys" not in collected
    assert "backpressure.rate_limit.keys" in caplog.text
    assert repr(meter) == "RateLimitMetrics(series=1, decisions=1)"
