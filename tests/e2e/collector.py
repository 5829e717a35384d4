"""A real OTLP collector process (``rotel-agent`` from the ``rotel`` wheel) and its output.

The collector prints every batch it receives in its detailed debug log
(``--debug-log metrics --debug-log traces --debug-log-verbosity detailed``),
in the same layout as the OpenTelemetry Collector's debug exporter. The tests
read what was delivered from that log, not from anything in the app.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rotel

from child_python import stop

AGENT = Path(rotel.__file__).parent / "rotel-agent"

_ATTRIBUTE = re.compile(r"^-> ([^:]+): (\w+)\((.*)\)$")
_FIELD = re.compile(r"^(\w[\w ]*?)\s*: (.*)$")


def _agent_env() -> dict[str, str]:
    """The agent's environment: it links this Python's libpython (it can run
    Python processors), which a pyenv build keeps in its own LIBDIR, outside
    the loader's default path."""
    env = {**os.environ, "NO_COLOR": "1"}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            part for part in (libdir, env.get("LD_LIBRARY_PATH")) if part
        )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MetricRecord:
    """Everything the collector received for one metric name."""

    name: str
    data_type: str = ""
    unit: str = ""
    monotonic: bool | None = None
    # attribute set -> last value (number points) or last count (histograms)
    points: dict[frozenset[tuple[str, str]], float] = field(default_factory=dict)
    bounds: list[float] = field(default_factory=list)

    def total(self, **attributes: str) -> float:
        """Sum of the last values of the series that carry ``attributes``."""
        wanted = set(attributes.items())
        return sum(value for key, value in self.points.items() if wanted <= key)

    def attribute_keys(self) -> set[str]:
        return {name for key in self.points for name, _ in key}


@dataclass
class SpanRecord:
    name: str = ""
    kind: str = ""
    status_code: str = ""
    status_message: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    metrics: dict[str, MetricRecord]
    spans: list[SpanRecord]
    resource: dict[str, str]


def parse(text: str) -> Received:
    """Read the debug log: metrics by name (merged over exports) and every span."""
    metrics: dict[str, MetricRecord] = {}
    spans: list[SpanRecord] = []
    resource: dict[str, str] = {}
    # (metric, attributes, value) per data point, committed at the end in log order
    points: list[tuple[MetricRecord, dict[str, str], list[float]]] = []
    state = ""
    metric: MetricRecord | None = None
    span: SpanRecord | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith(("ResourceMetrics #", "ResourceSpans #", "Resource attributes:")):
            state, metric, span = "resource", None, None
        elif raw.startswith("Metric #"):
            state, metric, span = "descriptor", None, None
        elif raw.startswith(("NumberDataPoints #", "HistogramDataPoints #")) and metric:
            state = "histogram" if raw.startswith("Histogram") else "number"
            points.append((metric, {}, []))
        elif line == "Data point attributes:":
            state = state + "_attributes" if state in ("number", "histogram") else state
        elif raw.startswith("Span #"):
            state, metric = "span", None
            span = SpanRecord()
            spans.append(span)
        elif line == "Attributes:" and span is not None:
            state = "span_attributes"
        elif line.startswith("-> ") and state == "descriptor":
            key, _, value = line[3:].partition(": ")
            if key == "Name":
                metric = metrics.setdefault(value, MetricRecord(value))
            elif metric is not None and key == "Unit":
                metric.unit = value
            elif metric is not None and key == "DataType":
                metric.data_type = value
            elif metric is not None and key == "IsMonotonic":
                metric.monotonic = value == "true"
        elif line.startswith("-> "):
            match = _ATTRIBUTE.match(line)
            if match is None:
                continue
            key, value = match.group(1), match.group(3)
            if state == "resource":
                resource[key] = value
            elif state.endswith("_attributes") and state != "span_attributes" and points:
                points[-1][1][key] = value
            elif state == "span_attributes" and span is not None:
                span.attributes[key] = value
        elif state.startswith(("number", "histogram")) and metric is not None and points:
            kind = state.partition("_")[0]
            if (kind == "number" and line.startswith("Value: ")) or (
                kind == "histogram" and line.startswith("Count: ")
            ):
                points[-1][2].append(float(line.split(": ", 1)[1]))
                state = kind
            elif line.startswith("ExplicitBounds #"):
                bound = float(line.split(": ", 1)[1])
                if bound not in metric.bounds:
                    metric.bounds.append(bound)
                state = kind
        elif state == "span" and span is not None:
            match = _FIELD.match(line)
            if match is None:
                continue
            key, value = match.group(1), match.group(2)
            if key == "Name":
                span.name = value
            elif key == "Kind":
                span.kind = value
            elif key == "Status code":
                span.status_code = value
            elif key == "Status message":
                span.status_message = value
    for record, attributes, values in points:
        if values:
            record.points[frozenset(attributes.items())] = values[-1]
    return Received(metrics, spans, resource)


class Collector:
    """One ``rotel-agent`` on free ports, restartable on the same ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._outputs: list[Path] = []

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def endpoint(self, protocol: str) -> str:
        return self.grpc_endpoint if protocol == "grpc" else self.http_endpoint

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError("collector already running")
        output = self.workdir / f"collector-{len(self._outputs)}.log"
        self._outputs.append(output)
        with output.open("wb") as sink:
            self._process = subprocess.Popen(
                [
                    str(AGENT),
                    "start",
                    "--log-format",
                    "text",
                    "--pid-file",
                    str(self.workdir / "rotel.pid"),
                    "--log-file",
                    str(self.workdir / "rotel-agent.log"),
                    "--otlp-grpc-endpoint",
                    f"127.0.0.1:{self.grpc_port}",
                    "--otlp-http-endpoint",
                    f"127.0.0.1:{self.http_port}",
                    "--exporter",
                    "blackhole",
                    "--debug-log",
                    "metrics",
                    "--debug-log",
                    "traces",
                    "--debug-log-verbosity",
                    "detailed",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=_agent_env(),
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"rotel-agent exited: {output.read_text()[-2000:]}")
            if _accepts(self.grpc_port) and _accepts(self.http_port):
                return
            time.sleep(0.05)
        raise RuntimeError("rotel-agent did not open its ports within 15 s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop(process, timeout=10)

    def text(self, run: int | None = None) -> str:
        """The debug log of every run so far, or of one run (0 = first start)."""
        paths = self._outputs if run is None else [self._outputs[run]]
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def received(self, run: int | None = None) -> Received:
        return parse(self.text(run))

    def wait_for(
        self,
        condition: Callable[[Received], bool],
        timeout: float = 30.0,
        run: int | None = None,
        describe: Callable[[Received], Any] = lambda received: sorted(received.metrics),
    ) -> Received:
        """Poll the log until ``condition`` holds; fail with what did arrive."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.received(run)
            if condition(received):
                return received
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"collector did not receive the expected data in {timeout} s; "
                    f"got {describe(received)}"
                )
            time.sleep(0.25)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
