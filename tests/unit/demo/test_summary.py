"""The demo's summary reads exported metrics back correctly (through a real SDK reader)."""

from __future__ import annotations

from opentelemetry.metrics import CallbackOptions, Observation

from otel_backpressure.demo.summary import DemoSummary, quantile, read_snapshot
from otel_backpressure.testing import MetricsCapture

POOL = {"db.client.connection.pool.name": "db"}


def test_summary_tracks_peaks_totals_and_percentiles(metrics: MetricsCapture) -> None:
    overflow = [2]

    def observe_overflow(options: CallbackOptions) -> list[Observation]:
        return [Observation(overflow[0], POOL)]

    meter = metrics.meter_provider.get_meter("test")
    meter.create_observable_up_down_counter("backpressure.pool.overflow", [observe_overflow])
    meter.create_counter("db.client.connection.timeouts").add(3, POOL)
    requests = meter.create_counter("backpressure.rate_limit.requests")
    requests.add(
        5, {"backpressure.rate_limit.policy": "player", "backpressure.rate_limit.result": "allowed"}
    )
    requests.add(
        2,
        {"backpressure.rate_limit.policy": "player", "backpressure.rate_limit.result": "rejected"},
    )
    meter.create_counter("backpressure.rate_limit.store.errors").add(
        9, {"backpressure.rate_limit.policy": "player", "error.type": "circuit_open"}
    )
    meter.create_counter("backpressure.exceptions").add(
        4, {"error.type": "not_found", "backpressure.exception.outcome": "handled"}
    )
    wait = meter.create_histogram(
        "db.client.connection.wait_time", explicit_bucket_boundaries_advisory=[0.01, 0.1, 1.0]
    )
    for seconds in (0.005, 0.005, 0.05, 0.5):
        wait.record(seconds, POOL)

    summary = DemoSummary()
    summary.update(read_snapshot(metrics.reader))
    overflow[0] = 0  # the peak stays
    summary.update(read_snapshot(metrics.reader))

    assert summary.pools["db"].overflow == 2
    assert summary.timeouts() == {"db": 3}
    assert summary.rate_limits() == {"player": {"allowed": 5, "rejected": 2}}
    assert summary.exceptions() == {"not_found": {"handled": 4}}
    assert summary.store_errors() == {"player": {"circuit_open": 9}}
    point = summary.latest.histograms("db.client.connection.wait_time")["db"]
    assert quantile(point, 0.5) == 0.01
    assert quantile(point, 0.95) == 1.0
    report = "\n".join(summary.report())
    assert "peak_overflow=2" in report
    assert "timeouts=3" in report
    assert "rate limit player: allowed=5 rejected=2" in report
    assert "exceptions not_found: handled=4" in report
    assert "rate limit store errors player: circuit_open=9" in report
    assert summary.as_dict()["pools"]["db"]["peak_overflow"] == 2
    assert summary.as_dict()["rate_limit_store_errors"] == {"player": {"circuit_open": 9}}


def test_empty_reader_gives_an_empty_summary(metrics: MetricsCapture) -> None:
    summary = DemoSummary()
    summary.update(read_snapshot(metrics.reader))
    assert summary.report() == []
