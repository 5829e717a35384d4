"""Helpers for testing code that uses this package: a metrics capture, a fake clock, and
a real HTTP server on loopback for outbound HTTP pools to call.

Example::

    from otel_backpressure.testing import FakeClock, LoopbackServer, MetricsCapture

    capture = MetricsCapture()
    instrument(engine, meter_provider=capture.meter_provider)
    ...
    assert capture.value("db.client.connection.count",
                         {"db.client.connection.pool.name": "db",
                          "db.client.connection.state": "used"}) == 3

    with LoopbackServer(asgi_app) as server:   # uvicorn, 127.0.0.1, a free port
        httpx.get(server.url + "/")
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

try:  # the SDK is the otlp extra's
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        HistogramDataPoint,
        InMemoryMetricReader,
        Metric,
        NumberDataPoint,
    )
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        "otel_backpressure.testing needs the OpenTelemetry SDK: install "
        "opentelemetry-instrumentation-backpressure[otlp]",
        name=exc.name,
    ) from exc

__all__ = ["FakeClock", "LoopbackServer", "MetricsCapture"]

Attributes = Mapping[str, Any]


class FakeClock:
    """A monotonic clock in seconds that moves only when told to."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


class MetricsCapture:
    """An SDK ``MeterProvider`` backed by an ``InMemoryMetricReader``, with lookups.

    Every lookup runs one collection, so observable callbacks run then, as they
    would on an exporter's schedule.
    """

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def collect(self) -> dict[str, Metric]:
        """Collect once and return the metrics by name (all scopes merged)."""
        data = self.reader.get_metrics_data()
        metrics: dict[str, Metric] = {}
        if data is None:
            return metrics
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    metrics[metric.name] = metric
        return metrics

    @staticmethod
    def points(metric: Metric) -> dict[frozenset[tuple[str, Any]], Any]:
        """Data points of one metric keyed by their attribute set."""
        return {
            frozenset((point.attributes or {}).items()): point for point in metric.data.data_points
        }

    def _point(self, name: str, attributes: Attributes) -> Any:
        """One collection's point of the series ``name{attributes}``, or None."""
        metric = self.collect().get(name)
        if metric is None:
            return None
        return self.points(metric).get(frozenset(attributes.items()))

    def value(self, name: str, attributes: Attributes) -> float | None:
        """The value of a counter/gauge point, or None if the series is absent.

        Raises TypeError when ``name`` is not a counter or gauge.
        """
        point = self._point(name, attributes)
        if point is None:
            return None
        if not isinstance(point, NumberDataPoint):
            raise TypeError(f"{name} is not a number metric")
        return point.value

    def histogram(self, name: str, attributes: Attributes) -> HistogramDataPoint | None:
        """The histogram point of one series, or None if absent.

        Raises TypeError when ``name`` is not a histogram.
        """
        point = self._point(name, attributes)
        if point is None:
            return None
        if not isinstance(point, HistogramDataPoint):
            raise TypeError(f"{name} is not a histogram")
        return point

    def snapshot(self, attributes: Attributes) -> dict[str, Any]:
        """One collection: every point whose attributes include ``attributes``.

        Keys are the metric name plus its other attributes (``"name{k=v}"``);
        values are numbers, or ``(count, sum, bucket_counts)`` for histograms.
        """
        wanted = set(attributes.items())
        found: dict[str, Any] = {}
        for name, metric in self.collect().items():
            for point in metric.data.data_points:
                items = set((point.attributes or {}).items())
                if not wanted <= items:
                    continue
                rest = ",".join(f"{k}={v!s}" for k, v in sorted(items - wanted))
                key = f"{name}{{{rest}}}" if rest else name
                if isinstance(point, HistogramDataPoint):
                    found[key] = (point.count, point.sum, tuple(point.bucket_counts))
                elif isinstance(point, NumberDataPoint):
                    found[key] = point.value
        return found

    def shutdown(self) -> None:
        self.meter_provider.shutdown()


class LoopbackServer:
    """An ASGI app served by uvicorn on ``127.0.0.1`` (a free port) in its own thread.

    A context manager: ``__enter__`` returns once uvicorn listens (or raises
    ``RuntimeError`` after ``start_timeout`` seconds); ``__exit__`` stops it
    and waits for its thread. ``keep_alive`` is how many seconds uvicorn keeps
    an idle connection open (short values let tests see a server close one).
    Needs uvicorn (the ``demo`` extra has it).
    """

    __slots__ = ("_server", "_thread", "port", "start_timeout")

    def __init__(
        self,
        app: Callable[[Any, Any, Any], Awaitable[None]],
        *,
        keep_alive: float = 5.0,
        start_timeout: float = 10.0,
    ) -> None:
        try:
            import uvicorn
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "LoopbackServer needs uvicorn: install uvicorn, or "
                "opentelemetry-instrumentation-backpressure[demo]",
                name=exc.name,
            ) from exc

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # annotated int, used as a delay
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.start_timeout = start_timeout
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        ready = threading.Event()
        for _ in range(int(self.start_timeout / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            ready.wait(0.01)
        if not self._server.started:
            self._server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {self.start_timeout} s")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __repr__(self) -> str:
        return f"LoopbackServer(url={self.url!r}, running={self._thread.is_alive()})"
