"""The contract data and its OpenTelemetry -> Prometheus name translation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.metrics import CallbackOptions, Observation

import contract
from contract import DataType
from otel_backpressure.testing import MetricsCapture

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("name", "unit", "data_type", "expected"),
    [
        # Examples from the spec and the collector's translator documentation.
        (
            "http.server.request.duration",
            "s",
            DataType.HISTOGRAM,
            "http_server_request_duration_seconds",
        ),
        (
            "system.filesystem.usage",
            "By",
            DataType.NON_MONOTONIC_SUM,
            "system_filesystem_usage_bytes",
        ),
        (
            "system.network.dropped",
            "{packets}",
            DataType.MONOTONIC_SUM,
            "system_network_dropped_total",
        ),
        ("system.network.dropped", "packets", DataType.GAUGE, "system_network_dropped_packets"),
        ("system.memory.utilization", "1", DataType.GAUGE, "system_memory_utilization_ratio"),
        # `1` on anything but a gauge adds nothing.
        ("requests.count", "1", DataType.MONOTONIC_SUM, "requests_count_total"),
        ("queue.fill", "1", DataType.NON_MONOTONIC_SUM, "queue_fill"),
        ("net.io", "By/s", DataType.GAUGE, "net_io_bytes_per_second"),
        ("cache.hits/s", "{hit}/s", DataType.GAUGE, "cache_hits_s_per_second"),
        # A unit or `_total` already in the name is not repeated.
        ("latency_seconds", "s", DataType.HISTOGRAM, "latency_seconds"),
        ("jobs.total", "{job}", DataType.MONOTONIC_SUM, "jobs_total"),
        ("a..b__c", "", DataType.GAUGE, "a_b_c"),
        ("5xx.count", "", DataType.GAUGE, "_5xx_count"),
    ],
)
def test_prometheus_metric_name_follows_the_translator(
    name: str, unit: str, data_type: DataType, expected: str
) -> None:
    assert contract.prometheus_metric_name(name, unit, data_type) == expected


def test_histograms_give_bucket_sum_and_count() -> None:
    assert contract.prometheus_series_names("db.wait", "s", DataType.HISTOGRAM) == (
        "db_wait_seconds_bucket",
        "db_wait_seconds_sum",
        "db_wait_seconds_count",
    )
    assert contract.prometheus_series_names("db.up", "", DataType.GAUGE) == ("db_up",)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("db.client.connection.pool.name", "db_client_connection_pool_name"),
        ("error.type", "error_type"),
        ("a..b", "a_b"),
        ("1st", "key_1st"),
    ],
)
def test_prometheus_label_name(key: str, expected: str) -> None:
    assert contract.prometheus_label_name(key) == expected


# The translation table docs/collector.md publishes, checked against the rules.
EXPECTED_FAMILIES = {
    "db.client.connection.count": "db_client_connection_count",
    "db.client.connection.max": "db_client_connection_max",
    "db.client.connection.idle.max": "db_client_connection_idle_max",
    "db.client.connection.idle.min": "db_client_connection_idle_min",
    "db.client.connection.pending_requests": "db_client_connection_pending_requests",
    "db.client.connection.timeouts": "db_client_connection_timeouts_total",
    "db.client.connection.create_time": "db_client_connection_create_time_seconds",
    "db.client.connection.wait_time": "db_client_connection_wait_time_seconds",
    "db.client.connection.use_time": "db_client_connection_use_time_seconds",
    "backpressure.pool.overflow": "backpressure_pool_overflow",
    "backpressure.pool.usage": "backpressure_pool_usage_ratio",
    "backpressure.rate_limit.requests": "backpressure_rate_limit_requests_total",
    "backpressure.rate_limit.keys": "backpressure_rate_limit_keys",
    "backpressure.rate_limit.evictions": "backpressure_rate_limit_evictions_total",
    "backpressure.rate_limit.store.errors": "backpressure_rate_limit_store_errors_total",
    "backpressure.exceptions": "backpressure_exceptions_total",
    "http.client.open_connections": "http_client_open_connections",
    "http.client.connection.duration": "http_client_connection_duration_seconds",
    "http.client.request.time_in_queue": "http_client_request_time_in_queue_seconds",
    "backpressure.http.client.pending_requests": "backpressure_http_client_pending_requests",
    "backpressure.http.client.pool.timeouts": "backpressure_http_client_pool_timeouts_total",
    "backpressure.http.client.connection.max": "backpressure_http_client_connection_max",
    "backpressure.http.client.connection.usage": (
        "backpressure_http_client_connection_usage_ratio"
    ),
    "backpressure.event_loop.delay": "backpressure_event_loop_delay_seconds",
    "backpressure.event_loop.utilization": "backpressure_event_loop_utilization_ratio",
    "backpressure.thread_pool.used": "backpressure_thread_pool_used",
    "backpressure.thread_pool.max": "backpressure_thread_pool_max",
    "backpressure.thread_pool.queue.length": "backpressure_thread_pool_queue_length",
    "backpressure.thread_pool.usage": "backpressure_thread_pool_usage_ratio",
    "backpressure.thread_pool.wait_time": "backpressure_thread_pool_wait_time_seconds",
}


def test_contract_metrics_translate_to_the_published_names() -> None:
    assert {name: spec.prometheus_name for name, spec in contract.METRICS.items()} == (
        EXPECTED_FAMILIES
    )


def test_docs_translation_table_lists_every_metric() -> None:
    text = (REPO / "docs" / "collector.md").read_text()
    for name, family in EXPECTED_FAMILIES.items():
        assert re.search(rf"`{re.escape(name)}`.*`{family}", text), name


def test_fixed_attribute_values_match_the_design() -> None:
    values = contract.ATTRIBUTE_VALUES
    assert values[contract.CONNECTION_STATE] == {"idle", "used"}
    assert values[contract.RESULT] == {"allowed", "rejected", "dry_run_rejected"}
    assert values[contract.EVICTION_REASON] == {"idle", "capacity"}
    assert values[contract.OUTCOME] == {"handled", "unhandled"}


def test_violations_accepts_conforming_sdk_output(metrics: MetricsCapture) -> None:
    meter = metrics.meter_provider.get_meter(contract.SCOPE_NAME)
    pool = {contract.POOL_NAME: "db"}

    def count(_: CallbackOptions) -> list[Observation]:
        return [Observation(2, {**pool, contract.CONNECTION_STATE: "used"})]

    def usage(_: CallbackOptions) -> list[Observation]:
        return [Observation(0.5, pool)]

    meter.create_observable_up_down_counter(
        "db.client.connection.count", [count], unit="{connection}"
    )
    meter.create_observable_gauge("backpressure.pool.usage", [usage], unit="1")
    meter.create_histogram(
        "db.client.connection.wait_time",
        unit="s",
        explicit_bucket_boundaries_advisory=[0.001, 0.01, 0.1, 1.0, 10.0],
    ).record(0.01, pool)
    meter.create_counter("backpressure.exceptions", unit="{exception}").add(
        1, {contract.ERROR_TYPE: "TimeoutError", contract.OUTCOME: "handled"}
    )
    collected = metrics.collect()
    assert len(collected) == 4
    assert {name: contract.violations(metric) for name, metric in collected.items()} == {
        name: [] for name in collected
    }


def test_violations_names_every_breach(metrics: MetricsCapture) -> None:
    meter = metrics.meter_provider.get_meter(contract.SCOPE_NAME)
    meter.create_up_down_counter("backpressure.exceptions", unit="1").add(
        1, {contract.ERROR_TYPE: "E", contract.OUTCOME: "ignored", "client": "10.0.0.1"}
    )
    meter.create_counter("backpressure.unknown").add(1)
    collected = metrics.collect()
    problems = contract.violations(collected["backpressure.exceptions"])
    assert any("unit '1'" in problem for problem in problems)
    assert any("not a monotonic_sum" in problem for problem in problems)
    assert any("attribute keys" in problem for problem in problems)
    assert any("'ignored'" in problem for problem in problems)
    assert contract.violations(collected["backpressure.unknown"]) == [
        "'backpressure.unknown' is not in the contract"
    ]


def test_violations_flags_credentials_and_millisecond_buckets(metrics: MetricsCapture) -> None:
    meter = metrics.meter_provider.get_meter(contract.SCOPE_NAME)
    dsn_pool = {contract.POOL_NAME: "postgresql://game:hunter2@db:5432/game"}
    meter.create_histogram("db.client.connection.use_time", unit="s").record(0.2, dsn_pool)
    problems = contract.violations(metrics.collect()["db.client.connection.use_time"])
    assert problems == [
        "db.client.connection.use_time: db.client.connection.pool.name carries credentials",
        "db.client.connection.use_time: uses the SDK's default (millisecond) buckets",
    ]
    assert "hunter2" not in " ".join(problems)
