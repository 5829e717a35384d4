"""Exceptions in a plain FastAPI app under ``opentelemetry-instrument uvicorn``, no middleware.

Issue 8 §6: 500s of a real FastAPI app produced no ``backpressure.exceptions``
series until ``ErrorMappingMiddleware`` was added. Here a real uvicorn serves
the app of ``errors_app.py`` with OTEL_* variables only, into a real collector;
once with the contrib FastAPI instrumentation (what ``opentelemetry-instrument``
loads) and once with FastAPI's own telemetry (the contrib ASGI/FastAPI
instrumentations disabled). Every exception that escaped the server span is
counted ``unhandled`` exactly once, and every span it escaped shows the
mapped outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from child_python import stop
from e2e.collector import Collector, Received, SpanRecord, free_port

pytestmark = pytest.mark.e2e

APP_DIR = Path(__file__).parent
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
REQUESTS = 4  # per route

# mode -> extra environment
MODES: dict[str, dict[str, str]] = {
    "contrib-fastapi": {},
    "fastapi-telemetry": {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "fastapi,asgi,starlette"},
}

# route -> error.type of what it raises
ROUTES = {"/missing": "not_found", "/exhausted": "pool_exhausted", "/broken": "LookupError"}


@pytest.fixture(params=list(MODES))
def server(
    request: pytest.FixtureRequest, collector: Collector, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """(mode, base URL) of the app under opentelemetry-instrument uvicorn."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_SERVICE_NAME="backpressure-e2e-errors",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint("grpc"),
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_LOGS_EXPORTER="none",
        **MODES[request.param],
    )
    command = [str(INSTRUMENT), sys.executable, "-m", "uvicorn", "errors_app:app"]
    command += ["--app-dir", str(APP_DIR), "--port", str(port), "--log-level", "warning"]
    log = tmp_path / "uvicorn.log"  # a file, not a pipe: tracebacks must never block the app
    with log.open("w") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, base, log)
        yield request.param, base
    finally:
        stop(process, timeout=30)


def _wait_until_serving(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            raise AssertionError(f"uvicorn exited {process.returncode}: {output[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("uvicorn did not serve within 60 s")


def _span(name: str, kind: str, status: str, error_type: str) -> Callable[[SpanRecord], bool]:
    def matches(span: SpanRecord) -> bool:
        return (
            (span.name == name or name == "*")
            and span.kind == f"SPAN_KIND_{kind}"
            and span.status_code == f"STATUS_CODE_{status}"
            and span.attributes.get("error.type") == error_type
        )

    return matches


def _expected_spans(mode: str) -> dict[str, Callable[[SpanRecord], bool]]:
    expected = {
        "app span, expected outcome": _span("app.lookup", "INTERNAL", "UNSET", "not_found"),
        "app span, failure outcome": _span("app.checkout", "INTERNAL", "ERROR", "pool_exhausted"),
        # the client got a 500: the HTTP rule makes the server span an Error
        "server span, expected outcome": _span("*", "SERVER", "ERROR", "not_found"),
        "server span, failure outcome": _span("*", "SERVER", "ERROR", "pool_exhausted"),
    }
    if mode == "fastapi-telemetry":  # FastAPI's own operation span
        expected["fastapi.endpoint, expected outcome"] = _span(
            "fastapi.endpoint", "INTERNAL", "UNSET", "not_found"
        )
        expected["fastapi.endpoint, failure outcome"] = _span(
            "fastapi.endpoint", "INTERNAL", "ERROR", "pool_exhausted"
        )
    return expected


def _counts(received: Received) -> dict[tuple[str, str], float]:
    metric = received.metrics.get("backpressure.exceptions")
    if metric is None:
        return {}
    return {
        (dict(key)["error.type"], dict(key)["backpressure.exception.outcome"]): value
        for key, value in metric.points.items()
    }


def test_escaping_exceptions_are_counted_and_every_span_shows_the_outcome(
    server: tuple[str, str], collector: Collector
) -> None:
    mode, base = server
    # uvicorn closes a connection after an exception escaped the app: one per request
    with httpx.Client(base_url=base, timeout=30, headers={"connection": "close"}) as client:
        for _ in range(REQUESTS):
            for route in ROUTES:
                assert client.get(route).status_code == 500

    expected_counts = {(error_type, "unhandled"): REQUESTS for error_type in ROUTES.values()}
    expected_spans = _expected_spans(mode)

    def arrived(received: Received) -> bool:
        return _counts(received) == expected_counts and all(
            any(matches(span) for span in received.spans) for matches in expected_spans.values()
        )

    received = collector.wait_for(
        arrived,
        timeout=60,
        describe=lambda r: (
            _counts(r),
            [(s.name, s.kind, s.status_code, s.attributes.get("error.type")) for s in r.spans],
        ),
    )
    # no span disagrees about what the exception was
    for span in received.spans:
        error_type = span.attributes.get("error.type")
        assert error_type in (None, *ROUTES.values()), (span.name, error_type)
