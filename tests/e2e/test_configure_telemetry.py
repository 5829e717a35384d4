"""configure_telemetry() against a real collector, over both OTLP protocols."""

from __future__ import annotations

import pytest
from opentelemetry.trace import Status, StatusCode

from e2e.collector import Collector
from otel_backpressure import configure_telemetry

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exports_metrics_and_spans_with_protocol_from_the_environment(
    collector: Collector, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint(protocol))
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=e2e")
    telemetry = configure_telemetry(
        service_name="configure-telemetry-e2e", metric_export_interval=60, set_global=False
    )
    meter = telemetry.meter_provider.get_meter("e2e")
    meter.create_counter("e2e.requests", unit="{request}").add(3, {"route": "/players"})
    with telemetry.tracer_provider.get_tracer("e2e").start_as_current_span("lookup") as span:
        span.set_status(Status(StatusCode.ERROR, "player missing"))

    telemetry.shutdown()  # flushes both signals before it returns
    telemetry.shutdown()

    received = collector.wait_for(
        lambda got: "e2e.requests" in got.metrics and any(s.name == "lookup" for s in got.spans)
    )
    requests = received.metrics["e2e.requests"]
    assert (requests.data_type, requests.unit, requests.monotonic) == ("Sum", "{request}", True)
    assert requests.total(route="/players") == 3
    span = next(s for s in received.spans if s.name == "lookup")
    assert (span.status_code, span.status_message) == ("STATUS_CODE_ERROR", "player missing")
    assert received.resource["service.name"] == "configure-telemetry-e2e"
    assert received.resource["deployment.environment.name"] == "e2e"


def test_explicit_endpoint_and_protocol_win_over_the_environment(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    with configure_telemetry(
        endpoint=collector.http_endpoint, protocol="http/protobuf", set_global=False
    ) as telemetry:
        telemetry.meter_provider.get_meter("e2e").create_counter("e2e.explicit").add(1)

    received = collector.wait_for(lambda got: "e2e.explicit" in got.metrics)
    assert received.metrics["e2e.explicit"].total() == 1
