"""configure_telemetry(): exporter choice from the standard variables, validation, shutdown.

Delivery to a real collector is proven in tests/e2e/test_configure_telemetry.py.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_backpressure import Telemetry, configure_telemetry

ALL_OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_METRIC_EXPORT_INTERVAL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # nothing listens here: exporters are built but never reach anything
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")


def span_exporters(telemetry: Telemetry) -> list[Any]:
    return list(telemetry.span_exporters.values())


def metric_exporters(telemetry: Telemetry) -> list[Any]:
    return list(telemetry.metric_exporters.values())


def configure(**kwargs: Any) -> Telemetry:
    return configure_telemetry(set_global=False, **kwargs)


def test_defaults_to_otlp_grpc_for_both_signals() -> None:
    telemetry = configure()
    try:
        assert [type(e) for e in span_exporters(telemetry)] == [GrpcSpanExporter]
        assert [type(e) for e in metric_exporters(telemetry)] == [GrpcMetricExporter]
        assert list(telemetry.span_exporters) == ["otlp_proto_grpc"]
        assert list(telemetry.metric_exporters) == ["otlp_proto_grpc"]
    finally:
        telemetry.shutdown()


def test_protocol_variable_selects_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    telemetry = configure()
    try:
        assert [type(e) for e in span_exporters(telemetry)] == [HttpSpanExporter]
        assert [type(e) for e in metric_exporters(telemetry)] == [HttpMetricExporter]
    finally:
        telemetry.shutdown()


def test_per_signal_protocol_wins_over_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
    telemetry = configure()
    try:
        assert [type(e) for e in span_exporters(telemetry)] == [GrpcSpanExporter]
        assert [type(e) for e in metric_exporters(telemetry)] == [HttpMetricExporter]
    finally:
        telemetry.shutdown()


def test_explicit_http_endpoint_gets_the_signal_path() -> None:
    telemetry = configure(endpoint="http://collector:4318/", protocol="http/protobuf")
    try:
        assert span_exporters(telemetry)[0]._endpoint == "http://collector:4318/v1/traces"
        assert metric_exporters(telemetry)[0]._endpoint == "http://collector:4318/v1/metrics"
    finally:
        telemetry.shutdown()


def test_none_switches_a_signal_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    telemetry = configure()
    try:
        assert span_exporters(telemetry) == []
        assert [type(e) for e in metric_exporters(telemetry)] == [GrpcMetricExporter]
    finally:
        telemetry.shutdown()


def test_export_false_feeds_only_the_given_reader_and_processor() -> None:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    telemetry = configure(
        export=False, metric_readers=[reader], span_processors=[SimpleSpanProcessor(spans)]
    )
    try:
        assert span_exporters(telemetry) == []
        assert metric_exporters(telemetry) == []
        telemetry.meter_provider.get_meter("t").create_counter("hits").add(2)
        with telemetry.tracer_provider.get_tracer("t").start_as_current_span("work"):
            pass
        data = reader.get_metrics_data()
        assert data is not None
        names = [
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        ]
        assert names == ["hits"]
        assert [s.name for s in spans.get_finished_spans()] == ["work"]
    finally:
        telemetry.shutdown()


def test_resource_from_arguments_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    telemetry = configure(
        export=False, service_name="game-api", resource=Resource({"service.version": "1.2"})
    )
    try:
        attributes = telemetry.tracer_provider.resource.attributes
        assert attributes["service.name"] == "game-api"
        assert attributes["service.version"] == "1.2"
        assert attributes["deployment.environment.name"] == "test"
        assert (
            telemetry.meter_provider._sdk_config.resource.attributes == attributes
        )  # no public API
    finally:
        telemetry.shutdown()


def test_metric_export_interval_is_in_seconds() -> None:
    telemetry = configure(metric_export_interval=2.5)
    try:
        readers = telemetry.metric_readers
        assert [type(r) for r in readers] == [PeriodicExportingMetricReader]
        assert [r._export_interval_millis for r in readers] == [2500]  # no public API
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"metric_export_interval": 0}, "metric_export_interval"),
        ({"metric_export_interval": -1.0}, "metric_export_interval"),
        ({"metric_export_interval": True}, "metric_export_interval"),
        ({"protocol": "http/json"}, "protocol"),
        ({"service_name": ""}, "service_name"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        configure(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resource": {"service.name": "x"}}, "resource must be a Resource, got dict"),
        (
            {"metric_readers": InMemoryMetricReader()},
            "metric_readers must be a list of MetricReaders, got InMemoryMetricReader",
        ),
        (
            {"metric_readers": [InMemoryMetricReader(), "reader"]},
            "metric_readers[1] must be a MetricReader, got str",
        ),
        (
            {"metric_readers": (reader for reader in [InMemoryMetricReader()])},
            "metric_readers must be a list of MetricReaders, got generator",
        ),
        (
            {"span_processors": SimpleSpanProcessor(InMemorySpanExporter())},
            "span_processors must be a list of SpanProcessors, got SimpleSpanProcessor",
        ),
        (
            {"span_processors": [InMemorySpanExporter()]},
            "span_processors[0] must be a SpanProcessor, got InMemorySpanExporter",
        ),
        (
            {"instrument": True, "meter_provider": object()},
            "meter_provider is not an argument of configure_telemetry, which builds",
        ),
        (
            {"instrument": True, "tracer_provider": object()},
            "tracer_provider is not an argument of configure_telemetry, which builds",
        ),
        (
            {"engines": []},  # an instrumentor option, silently dropped before
            "configure_telemetry got engines without instrument=True",
        ),
        ({"servce_name": "x"}, "configure_telemetry got servce_name without instrument=True"),
    ],
)
def test_arguments_of_the_wrong_kind_raise_naming_them_before_anything_is_built(
    kwargs: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    monkeypatch.setattr("otel_backpressure.telemetry._set_global", calls.append)
    with pytest.raises(TypeError) as caught:
        configure_telemetry(export=False, **kwargs)
    assert str(caught.value).startswith(message)
    assert calls == []  # the global providers were left alone


@pytest.mark.parametrize("argument", ["tracer_provider", "meter_provider"])
def test_telemetry_refuses_what_is_no_provider_naming_it(argument: str) -> None:
    providers: dict[str, Any] = {"tracer_provider": None, "meter_provider": None}
    providers[argument] = "x"
    kind = (
        "TracerProvider (with get_tracer)"
        if argument == "tracer_provider"
        else ("MeterProvider (with get_meter)")
    )
    with pytest.raises(TypeError) as caught:
        Telemetry(span_exporters={}, metric_exporters={}, **providers)
    assert str(caught.value) == f"{argument} must be a {kind}, got str"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
        ("OTEL_METRICS_EXPORTER", "no_such_exporter"),
    ],
)
def test_bad_variables_raise_naming_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        configure()


def test_shutdown_is_safe_twice_and_via_context_manager() -> None:
    with configure(export=False) as telemetry:
        assert "running" in repr(telemetry)
    assert telemetry.is_shut_down
    assert "shut down" in repr(telemetry)
    telemetry.shutdown()
    assert telemetry.force_flush() is False


def test_shutdown_with_an_unreachable_collector_does_not_raise() -> None:
    telemetry = configure()
    telemetry.meter_provider.get_meter("t").create_counter("hits").add(1)
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("work"):
        pass
    telemetry.shutdown()
    assert telemetry.is_shut_down


def free_port() -> int:
    """A loopback port where nothing listens (bound, read and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class CollectorDown(BaseHTTPRequestHandler):
    """A gateway whose collector is down: every OTLP/HTTP export gets 503, which the
    exporters retry (before SDK 1.35 sleeping 1, 2, 4 ... 32 s in between)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def answering_503() -> Iterator[str]:
    """The base URL of a real HTTP server that answers every request with 503."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CollectorDown)
    threading.Thread(target=server.serve_forever, name="answering-503", daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("protocol", "endpoint"),
    [("grpc", "nothing listens"), ("http/protobuf", "nothing listens"), ("http/protobuf", "503")],
)
def test_shutdown_without_a_collector_returns_within_its_timeout(
    protocol: str, endpoint: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before SDK 1.35 the exporters retry with ``time.sleep``, which their shutdown does
    not interrupt, and the providers' shutdown waits for that: 4 to 62 s over gRPC and
    93 s against the 503s were measured on SDK 1.30 before shutdown bounded its wait."""
    # each export may go on for 30 s: only shutdown's own bound keeps it short
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    url = (
        request.getfixturevalue("answering_503")
        if endpoint == "503"
        else (f"http://127.0.0.1:{free_port()}")
    )
    telemetry = configure(endpoint=url, protocol=protocol, metric_export_interval=3600)
    telemetry.meter_provider.get_meter("t").create_counter("hits").add(1)
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("work"):
        pass
    started = time.monotonic()
    telemetry.shutdown(timeout_millis=1000)
    elapsed = time.monotonic() - started
    # the documented bound is 1 s and a half-second grace; the rest is room for a busy machine
    assert elapsed < 3, f"shutdown took {elapsed:.1f} s"
    assert telemetry.is_shut_down


def test_instrument_runs_the_instrumentor_and_shutdown_undoes_it() -> None:
    from otel_backpressure import BackpressureInstrumentor

    telemetry = configure(export=False, instrument=True)
    try:
        assert BackpressureInstrumentor().is_instrumented_by_opentelemetry
        assert "instrumented=True" in repr(telemetry)
    finally:
        telemetry.shutdown()
    assert not BackpressureInstrumentor().is_instrumented_by_opentelemetry


def test_set_global_installs_both_providers() -> None:
    """Run in a child interpreter: the global providers can be set once per process."""
    import subprocess
    import sys

    code = (
        "from opentelemetry import metrics, trace\n"
        "from otel_backpressure import configure_telemetry\n"
        "t = configure_telemetry(export=False)\n"
        "assert trace.get_tracer_provider() is t.tracer_provider\n"
        "assert metrics.get_meter_provider() is t.meter_provider\n"
        "t.shutdown()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_instrument_leaves_an_existing_instrumentation_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from otel_backpressure import BackpressureInstrumentor

    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument()
    try:
        telemetry = configure(export=False, instrument=True)
        assert "already instrumented" in caplog.text
        assert "instrumented=False" in repr(telemetry)
        telemetry.shutdown()
        assert instrumentor.is_instrumented_by_opentelemetry  # not ours to undo
    finally:
        instrumentor.uninstrument()


def test_warns_when_an_sdk_provider_is_already_global() -> None:
    """Run in a child interpreter: the global providers can be set once per process."""
    import subprocess
    import sys

    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from otel_backpressure import configure_telemetry\n"
        "first = TracerProvider()\n"
        "trace.set_tracer_provider(first)\n"
        "t = configure_telemetry(export=False)\n"
        "assert trace.get_tracer_provider() is first\n"
        "t.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stderr


def test_other_installed_exporters_are_loaded_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    telemetry = configure(metric_export_interval=3600)
    try:
        assert [type(e) for e in span_exporters(telemetry)] == [
            ConsoleSpanExporter,
            GrpcSpanExporter,
        ]
        assert [type(e) for e in metric_exporters(telemetry)] == [ConsoleMetricExporter]
    finally:
        telemetry.shutdown()


class BrokenReader(MetricReader):
    """A reader whose exporter blows up: the SDK's force_flush raises for it."""

    def __init__(self) -> None:
        super().__init__()

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 0, **kwargs: Any) -> None:
        raise RuntimeError("exporter exploded")

    def shutdown(self, timeout_millis: float = 0, **kwargs: Any) -> None:
        pass


def test_readers_and_processors_come_in_any_sequence() -> None:
    """Annotated ``Sequence``: a deque serves as a list does."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    telemetry = configure(
        export=False,
        metric_readers=collections.deque([reader]),
        span_processors=collections.deque([SimpleSpanProcessor(spans)]),
    )
    try:
        telemetry.meter_provider.get_meter("t").create_counter("hits").add(1)
        with telemetry.tracer_provider.get_tracer("t").start_as_current_span("work"):
            pass
        assert reader.get_metrics_data() is not None
        assert [span.name for span in spans.get_finished_spans()] == ["work"]
    finally:
        telemetry.shutdown()


def test_force_flush_reports_a_failing_reader_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = configure(export=False, metric_readers=[BrokenReader()])
    try:
        telemetry.meter_provider.get_meter("t").create_counter("hits").add(1)
        assert telemetry.force_flush(timeout_millis=500) is False
        assert "Flushing MeterProvider failed" in caplog.text
    finally:
        telemetry.shutdown()


def test_force_flush_with_an_unreachable_collector_returns_within_its_timeout() -> None:
    telemetry = configure()  # OTLP to a port where nothing listens, 1 s timeout
    try:
        telemetry.meter_provider.get_meter("t").create_counter("hits").add(1)
        started = time.monotonic()
        assert isinstance(telemetry.force_flush(timeout_millis=500), bool)
        # a bound, not a speed: the SDK's exporters before 1.35 retry for about a minute
        assert time.monotonic() - started < 10
    finally:
        telemetry.shutdown()


EXITING_SCRIPT = """
import atexit, sys, time
import otel_backpressure
from opentelemetry import metrics, trace

# registered before configure_telemetry's shutdown, so it runs after it (last in, first out)
atexit.register(lambda: print(f"exit took {time.monotonic() - ended:.3f} s", file=sys.stderr))
otel_backpressure.configure_telemetry(service_name="short-script")
metrics.get_meter("t").create_counter("hits").add(1)
with trace.get_tracer("t").start_as_current_span("work"):
    pass
ended = time.monotonic()
# no shutdown(): the interpreter's exit runs it
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_short_script_exits_without_waiting_out_the_exporter_timeout(protocol: str) -> None:
    """Nothing listens at the endpoint and each export may retry for 10 minutes
    (``OTEL_EXPORTER_OTLP_TIMEOUT=600``): the exit shutdown is bounded to 1 s and
    the half-second grace, also on Python 3.12, where no thread starts at exit
    (the flush runs in the thread the Telemetry started). Before that bound, SDK
    1.30 took 8.6 s here over gRPC on Python 3.11 and 64.8 s on 3.12."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_TIMEOUT="600",
    )
    result = subprocess.run(
        [sys.executable, "-c", EXITING_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,  # a safety net five times below the exporters' own 600 s
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Exception ignored in atexit" not in result.stderr, result.stderr
    took = [line for line in result.stderr.splitlines() if line.startswith("exit took ")]
    assert took, result.stderr
    assert float(took[0].split()[2]) < 3, result.stderr
    if (
        protocol == "grpc"
    ):  # the flush gave up and said so (OTLP/HTTP before SDK 1.35 fails at once)
        assert "Telemetry was not delivered within 1000 ms at shutdown" in result.stderr


def test_without_the_sdk_it_names_the_otlp_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # a None entry in sys.modules makes the import fail, as when the SDK is not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)
    with pytest.raises(
        ImportError, match=r"install opentelemetry-instrumentation-backpressure\[otlp\]$"
    ):
        configure_telemetry(service_name="game-api", export=False)
