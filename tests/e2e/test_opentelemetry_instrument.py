"""``opentelemetry-instrument python app.py`` with OTEL_* variables only, into a real collector.

What is asserted is read from the collector's own debug log: every metric of
the contract with its kind, unit and attributes, and spans with mapped
statuses; then the collector goes away and comes back while the app runs.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import contract
from child_python import stop
from e2e.collector import Collector, Received, SpanRecord, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

APP = Path(__file__).with_name("app.py")
SECRET = "s3cret-e2e-password"
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")

# contract data type -> (collector DataType, IsMonotonic)
COLLECTOR_TYPES = {
    contract.DataType.MONOTONIC_SUM: ("Sum", True),
    contract.DataType.NON_MONOTONIC_SUM: ("Sum", False),
    contract.DataType.GAUGE: ("Gauge", None),
    contract.DataType.HISTOGRAM: ("Histogram", None),
}


class App:
    """The subprocess app; its JSON status lines arrive on a queue."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(INSTRUMENT), sys.executable, str(APP)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def next_status(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict:
        """The first status line from now on that satisfies ``condition``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise AssertionError(
                    f"app status never matched (exit {self.process.poll()}); last {self.last}; "
                    f"stderr: {''.join(self.stderr)[-3000:]}"
                )
            try:
                status = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            self.last = status
            self.history.append(status)
            if condition(status):
                return status

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then the app's last status; it must exit 0."""
        code = stop(self.process, timeout=30)
        if code is None:
            raise AssertionError("app did not stop on SIGTERM")
        while not self.lines.empty():
            self.last = self.lines.get()
            self.history.append(self.last)
        assert code == 0, "".join(self.stderr)[-3000:]
        return self.last

    def unexpected(self) -> list[str]:
        """Everything unexpected the app saw over its whole run."""
        rounds = [status for status in self.history if "unexpected_count" in status]
        assert rounds, "the app never finished a round"
        return [] if rounds[-1]["unexpected_count"] == 0 else rounds[-1]["unexpected"]


@pytest.fixture
def start_app(
    collector: Collector, postgres_dsn: str, redis_url: str
) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def start(protocol: str, **extra: str) -> App:
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        dsn = postgres_dsn.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)
        env.update(
            OTEL_SERVICE_NAME="backpressure-e2e",
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint(protocol),
            OTEL_EXPORTER_OTLP_TIMEOUT="2",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            OTEL_BSP_SCHEDULE_DELAY="200",
            OTEL_LOGS_EXPORTER="none",
            OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_MAX_KEYS="4",
            OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_EVICTION_INTERVAL="0.5",
            E2E_POSTGRES_URL=dsn,
            E2E_REDIS_URL=redis_url,
            E2E_DEAD_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            E2E_PREFIX=f"backpressure-e2e:{uuid.uuid4().hex[:12]}",
            **extra,
        )
        app = App(env)
        apps.append(app)
        app.ready = app.next_status(lambda status: status.get("ready", False))
        return app

    yield start
    for app in apps:
        if app.process.poll() is None:
            app.process.kill()
            app.process.wait()


def mapped_spans_arrived(received: Received) -> bool:
    return all(
        any(matches(span) for span in received.spans) for matches in SPAN_EXPECTATIONS.values()
    )


def every_metric_arrived(received: Received) -> bool:
    metrics = received.metrics
    if not all(name in metrics and metrics[name].points for name in contract.METRICS):
        return False
    evictions = metrics["backpressure.rate_limit.evictions"]
    results = metrics["backpressure.rate_limit.requests"]
    return (
        evictions.total(**{contract.EVICTION_REASON: "idle"}) > 0
        and evictions.total(**{contract.EVICTION_REASON: "capacity"}) > 0
        and all(
            results.total(**{contract.POLICY: policy, contract.RESULT: "rejected"}) > 0
            for policy in ("e2e-memory", "e2e-redis", limits_policy(received))
        )
        and metrics["db.client.connection.timeouts"].total() > 0
    )


def limits_policy(received: Received) -> str:
    """The policy name the `limits` metering gives "4/second" (not one of the app's own)."""
    policies = {
        dict(key)[contract.POLICY]
        for key in received.metrics["backpressure.rate_limit.requests"].points
    }
    others = policies - {"e2e-memory", "e2e-redis", "e2e-redis-down"}
    return next(iter(sorted(others)), "<none>")


def _span(name: str, kind: str, status: str, error_type: str, http_status: str | None = None):
    def matches(span: SpanRecord) -> bool:
        return (
            (span.name == name or name == "*")
            and span.kind == kind
            and span.status_code == status
            and span.attributes.get("error.type") == error_type
            and (http_status is None or span.attributes.get("http.status_code") == http_status)
        )

    return matches


SPAN_EXPECTATIONS = {
    "internal span, expected error": _span(
        "e2e.lookup", "SPAN_KIND_INTERNAL", "STATUS_CODE_UNSET", "not_found"
    ),
    "internal span, pool timeout": _span(
        "e2e.checkout", "SPAN_KIND_INTERNAL", "STATUS_CODE_ERROR", "pool_exhausted"
    ),
    "server span, 404": _span(
        "GET /players/{player_id}", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "not_found", "404"
    ),
    "server span, 422": _span(
        "POST /validate", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "validation_error", "422"
    ),
    "server span, 409": _span(
        "POST /conflict", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET", "conflict", "409"
    ),
    "server span, 503": _span(
        "*", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR", "pool_exhausted", "503"
    ),
}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_every_contract_metric_and_mapped_spans_reach_the_collector(
    collector: Collector, start_app: Callable[..., App], protocol: str
) -> None:
    app = start_app(protocol)
    received = collector.wait_for(
        lambda got: every_metric_arrived(got) and mapped_spans_arrived(got),
        timeout=60,
        describe=lambda got: (
            sorted(set(contract.METRICS) - set(got.metrics)),
            [label for label, match in SPAN_EXPECTATIONS.items() if not any(map(match, got.spans))],
        ),
    )
    final = app.stop()
    assert final.get("stopped") is True
    assert app.unexpected() == []

    for name, spec in contract.METRICS.items():
        record = received.metrics[name]
        data_type, monotonic = COLLECTOR_TYPES[spec.data_type]
        assert (record.data_type, record.unit) == (data_type, spec.unit), name
        if monotonic is not None:
            assert record.monotonic is monotonic, name
        for key in record.points:
            attributes = dict(key)
            assert set(attributes) == set(spec.attributes), (name, attributes)
            for attribute, allowed in spec.allowed_values.items():
                assert allowed is None or attributes[attribute] in allowed, (name, attributes)
        if spec.data_type is contract.DataType.HISTOGRAM:
            # bucket advice in seconds, not the SDK's millisecond defaults
            assert record.bounds, name
            assert 0 < min(b for b in record.bounds if b > 0) <= 0.01, (name, record.bounds)
            # (connection lifetimes reach minutes: the semantic conventions advise up to 300 s)
            assert max(record.bounds) <= 300, (name, record.bounds)

    pool_names = {
        dict(key)[contract.POOL_NAME] for key in received.metrics["backpressure.pool.usage"].points
    }
    # the SQLAlchemy engine and the raw asyncpg pool on one database, and the
    # RedisStores' redis-py pools (bounded since redis-py 6)
    databases = {name.split("#")[0] for name in pool_names if not name.endswith("/0")}
    assert len(pool_names - {n for n in pool_names if n.endswith("/0")}) == 2, pool_names
    assert len(databases) == 1, pool_names
    outbound = received.metrics["http.client.request.time_in_queue"]
    assert {dict(key)[contract.SERVER_ADDRESS] for key in outbound.points} == {"127.0.0.1"}
    store_errors = received.metrics["backpressure.rate_limit.store.errors"]
    assert store_errors.total(**{contract.POLICY: "e2e-redis-down"}) > 0
    assert received.resource["service.name"] == "backpressure-e2e"

    text = collector.text()
    assert SECRET not in text
    status_messages = {span.status_message for span in received.spans}
    assert not any("SELECT" in message for message in status_messages), status_messages


def test_collector_outage_does_not_disturb_the_app_and_memory_stays_bounded(
    collector: Collector, start_app: Callable[..., App]
) -> None:
    queue_size = 128
    app = start_app(
        "grpc",
        E2E_TRACEMALLOC="1",
        E2E_EXTRA_SPANS="1000",
        OTEL_BSP_MAX_QUEUE_SIZE=str(queue_size),
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="64",
    )
    collector.wait_for(lambda got: "backpressure.pool.usage" in got.metrics and bool(got.spans))

    collector.stop()
    # let the span queue fill up first: from then on a bounded queue must not grow
    first = app.next_status(lambda status: True)
    window_start = app.next_status(lambda status: status["round"] >= first["round"] + 2)
    spans_needed = 32 * queue_size
    window_end = app.next_status(
        lambda status: status["spans_ended"] - window_start["spans_ended"] >= spans_needed
    )
    spans = window_end["spans_ended"] - window_start["spans_ended"]
    growth = window_end["traced_bytes"] - window_start["traced_bytes"]
    per_span = float(app.ready["bytes_per_span"])
    # Keeping every span would grow memory by at least spans * per_span; the
    # bounded queue (and cumulative metrics) must stay well under a quarter of that.
    assert per_span > 100
    assert growth < spans * per_span / 4, (growth, spans, per_span)
    assert window_end["unexpected_count"] == 0, window_end["unexpected"]
    assert window_end["round"] > window_start["round"]  # requests kept being served

    collector.start()  # same ports
    collector.wait_for(
        lambda got: (
            "backpressure.pool.usage" in got.metrics
            and "backpressure.rate_limit.requests" in got.metrics
            and bool(got.spans)
        ),
        run=1,
        timeout=60,
    )
    final = app.stop()
    assert final.get("stopped") is True
    assert app.unexpected() == []


def test_disabled_instrumentations_variable_removes_what_the_instrumentor_does(
    collector: Collector, start_app: Callable[..., App]
) -> None:
    app = start_app("grpc", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="backpressure")
    # the app's own middleware and limiter still meter; the auto-loaded parts do not
    received = collector.wait_for(
        lambda got: (
            "backpressure.rate_limit.requests" in got.metrics
            and any(span.name == "e2e.lookup" for span in got.spans)
            and any(span.name == "e2e.checkout" for span in got.spans)
        )
    )
    final = app.stop()
    assert final.get("stopped") is True
    assert app.unexpected() == []
    pool_metrics = [name for name in received.metrics if name.startswith("db.client.connection")]
    assert pool_metrics == []
    assert "backpressure.pool.usage" not in received.metrics
    policies = {
        dict(key)[contract.POLICY]
        for key in received.metrics["backpressure.rate_limit.requests"].points
    }
    assert policies <= {"e2e-memory", "e2e-redis", "e2e-redis-down"}  # no `limits` metering
    # without the span mapping, an expected error ends its span with OpenTelemetry's default
    lookup = next(span for span in received.spans if span.name == "e2e.lookup")
    assert lookup.status_code == "STATUS_CODE_ERROR"
    assert "error.type" not in lookup.attributes
