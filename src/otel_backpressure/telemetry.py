"""OTLP tracer and meter providers for apps that do not run under ``opentelemetry-instrument``.

``opentelemetry-instrument`` configures the SDK through the distro; an app that
starts itself (a worker, a script, a test harness) calls this instead and gets
the same behaviour from the same standard variables: ``OTEL_TRACES_EXPORTER`` /
``OTEL_METRICS_EXPORTER`` (default ``otlp``, ``none`` switches a signal off),
``OTEL_EXPORTER_OTLP_PROTOCOL`` and the per-signal ``..._TRACES_PROTOCOL`` /
``..._METRICS_PROTOCOL`` (``grpc`` or ``http/protobuf``), endpoints, headers,
timeouts, ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``. Arguments given here win over the variables.

Usage::

    from otel_backpressure import configure_telemetry

    telemetry = configure_telemetry(service_name="game-api", instrument=True)
    try:
        run_app()
    finally:
        telemetry.shutdown()   # flushes both signals; safe to call twice
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import metrics, trace

from otel_backpressure._shared import check_meter_provider, check_tracer_provider

if TYPE_CHECKING:  # the SDK is the otlp extra's: imported when configure_telemetry runs
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["Telemetry", "configure_telemetry"]

_logger = logging.getLogger(__name__)

# OTLP protocol value -> the exporter entry point the SDK registers for it
_OTLP_PROTOCOLS: Final = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
# signal -> (exporter-list variable, per-signal protocol variable, entry-point group, HTTP path)
_SIGNALS: Final = {
    "traces": (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "opentelemetry_traces_exporter",
        "v1/traces",
    ),
    "metrics": (
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "opentelemetry_metrics_exporter",
        "v1/metrics",
    ),
}

# How long shutdown waits for the providers to stop past its timeout (seconds), so that
# a collector that took the final flush also takes the readers' last collection (a
# few milliseconds on loopback); an unreachable one is waited for no longer than this.
_STOP_GRACE_S: Final = 0.5


class _Call:
    """One call handed to a ``_Runner``: its result once ``done`` is set."""

    __slots__ = ("done", "function", "result")

    def __init__(self, function: Callable[[], bool]) -> None:
        self.function = function
        self.done = threading.Event()
        self.result = False

    def run(self) -> None:
        try:
            self.result = self.function()
        except Exception:  # the calls catch what they expect; this is the last net
            _logger.exception("Telemetry's background call failed")
        finally:
            self.done.set()


class _Runner:
    """Runs the SDK's flush and shutdown calls in daemon threads that callers stop waiting for.

    The SDK's calls can block for a minute (the OTLP exporters before SDK 1.35
    retry with ``time.sleep``, which their ``shutdown()`` does not interrupt, and
    the providers' ``shutdown()`` waits for it); a caller waits only as long as
    it was told, and a call that outlives that goes on until it ends or the
    process exits. Its own thread starts with the Telemetry and then waits for
    work, because at interpreter exit Python 3.12 starts no new thread; a call
    made while that thread is busy, or after a fork (the child has none of the
    parent's threads), gets a new one.
    """

    __slots__ = ("_busy_with", "_calls", "_lock", "_thread")

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # the last call given to the own thread (None: none yet)
        self._busy_with: _Call | None = None
        self._thread = _start_thread(self._serve, "otel-backpressure-telemetry")

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call.run()

    def call(self, function: Callable[[], bool], wait_s: float) -> _Call | None:
        """Start ``function`` and wait up to ``wait_s`` seconds for it.

        Returns the call (``done`` set or not), or None when no thread could run
        it (interpreter exit on Python 3.12 with the own thread gone).
        """
        call = _Call(function)
        with self._lock:
            own = self._thread is not None and self._thread.is_alive()
            if own and (self._busy_with is None or self._busy_with.done.is_set()):
                self._busy_with = call
                self._calls.put(call)
            elif _start_thread(call.run, "otel-backpressure-telemetry-call") is None:
                return None
        call.done.wait(max(wait_s, 0.0))
        return call

    def stop(self) -> None:
        """Let the own thread end once it is idle."""
        self._calls.put(None)


def _start_thread(target: Callable[[], None], name: str) -> threading.Thread | None:
    """A started daemon thread, or None at interpreter exit on Python 3.12."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        return None
    return thread


class Telemetry:
    """The providers ``configure_telemetry`` built, and their orderly shutdown.

    Keeps one daemon thread, idle but for its flushes, that ends with ``shutdown()``.
    """

    __slots__ = (
        "_flush_call",
        "_instrumentor",
        "_lock",
        "_runner",
        "_shut_down",
        "meter_provider",
        "metric_exporters",
        "metric_readers",
        "span_exporters",
        "tracer_provider",
    )

    def __init__(
        self,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        span_exporters: dict[str, SpanExporter],
        metric_exporters: dict[str, MetricExporter],
        metric_readers: Sequence[MetricReader] = (),
        instrumentor: Any = None,
    ) -> None:
        check_tracer_provider(tracer_provider)
        check_meter_provider(meter_provider)
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        # exporter entry-point name (otlp_proto_grpc, ...) -> the exporter built for it
        self.span_exporters = span_exporters
        self.metric_exporters = metric_exporters
        # the periodic readers that drive metric_exporters
        self.metric_readers = tuple(metric_readers)
        self._instrumentor = instrumentor
        self._lock = threading.Lock()
        self._shut_down = False
        self._runner = _Runner()
        # the last flush that outlived its wait (None: none did)
        self._flush_call: _Call | None = None

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export what is buffered now, waiting at most ``timeout_millis`` (milliseconds).

        Returns False if either signal did not finish in that time (it goes on
        in the background), or while an earlier flush that did not finish is
        still going on. Never raises. The SDK's OTLP exporters before 1.35
        retry an unreachable collector for about a minute, whatever the
        timeout says; the wait here is bounded on every SDK.
        """
        if self._shut_down:
            return False
        return self._flush_within(timeout_millis)

    def _flush(self, timeout_millis: int) -> bool:
        done = True
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                done = bool(provider.force_flush(timeout_millis)) and done
            except Exception:  # the SDK raises when a reader times out or fails
                _logger.warning("Flushing %s failed", type(provider).__name__, exc_info=True)
                done = False
        return done

    def _flush_within(self, timeout_millis: int) -> bool:
        """``_flush`` that returns after ``timeout_millis`` at the latest.

        The SDK's metric flush exports in the calling thread (and so does its span
        flush on newer SDKs), retrying until the exporter's own timeout whatever
        ``timeout_millis`` says (before SDK 1.35, for about a minute), so it runs
        in the runner's thread, waited for only that long. One such flush at a
        time: while the last one that outlived its wait still runs, no other
        starts (False at once).
        """
        if self._flush_call is not None:
            if not self._flush_call.done.is_set():
                return False
            self._flush_call = None
        call = self._runner.call(lambda: self._flush(timeout_millis), timeout_millis / 1000)
        if call is None:
            # No thread at all: bound each OTLP exporter's own deadline instead
            # (on SDK 1.35 and later its retries stop there).
            exporters: list[Any] = [*self.span_exporters.values(), *self.metric_exporters.values()]
            for exporter in exporters:
                timeout = getattr(exporter, "_timeout", None)
                if isinstance(timeout, (int, float)):
                    exporter._timeout = min(timeout, timeout_millis / 1000)
            return self._flush(timeout_millis)
        if not call.done.is_set():
            self._flush_call = call
            return False
        return call.result

    def shutdown(self, timeout_millis: int = 1_000) -> None:
        """Uninstrument, flush and shut both providers down; later calls do nothing.

        Runs at interpreter exit too (``configure_telemetry`` registers it). The
        final flush gets ``timeout_millis`` (milliseconds): a collector that
        answers takes what is buffered; one that does not costs at most about
        that long and half a second more, on every supported SDK. The exporters
        are then shut down first, which on SDK 1.35 and later stops their
        retries, and what they held is dropped with one warning; the providers'
        shutdown, which on older SDKs waits out a retry's sleep (up to 32 s), is
        waited for only that long and ends in the background. Without this the
        SDK retries each signal for up to ``OTEL_EXPORTER_OTLP_TIMEOUT`` (10 s)
        at exit. Never raises: the app's own shutdown goes on.
        """
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
        started = time.monotonic()
        atexit.unregister(self.shutdown)
        if self._instrumentor is not None:
            try:
                self._instrumentor.uninstrument()
            except Exception:
                _logger.exception("Uninstrumenting backpressure telemetry failed")
        delivered = self._flush_within(timeout_millis)
        if not delivered:
            _logger.warning(
                "Telemetry was not delivered within %d ms at shutdown; dropping what is "
                "buffered (is the collector at the OTLP endpoint up?)",
                timeout_millis,
            )
        left_s = timeout_millis / 1000 - (time.monotonic() - started)
        call = self._runner.call(lambda: self._stop(delivered), left_s + _STOP_GRACE_S)
        self._runner.stop()
        if call is None:
            # Interpreter exit with no thread to spare: the SDK's threads end with it.
            _logger.debug("Not waiting for the telemetry providers to stop at exit")
        elif not call.done.is_set():
            _logger.warning(
                "Telemetry's exporters did not stop within %d ms of shutdown; they go on "
                "in the background until their retries end or the process exits",
                timeout_millis + _STOP_GRACE_S * 1000,
            )

    def _stop(self, delivered: bool) -> bool:
        """Shut the providers down, their exporters first when ``delivered`` is False."""
        if not delivered:
            exporters: list[SpanExporter | MetricExporter] = [
                *self.span_exporters.values(),
                *self.metric_exporters.values(),
            ]
            for exporter in exporters:
                try:
                    exporter.shutdown()
                except Exception:
                    _logger.debug("Shutting down %r failed", exporter, exc_info=True)
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.shutdown()
            except Exception:
                _logger.exception("Shutting down %s failed", type(provider).__name__)
        return True

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "running"
        return (
            f"Telemetry({state}, traces={list(self.span_exporters)}, "
            f"metrics={list(self.metric_exporters)}, "
            f"instrumented={self._instrumentor is not None})"
        )


def configure_telemetry(
    *,
    service_name: str | None = None,
    resource: Resource | None = None,
    metric_export_interval: float | None = None,
    endpoint: str | None = None,
    protocol: str | None = None,
    export: bool = True,
    metric_readers: Sequence[MetricReader] = (),
    span_processors: Sequence[SpanProcessor] = (),
    set_global: bool = True,
    instrument: bool = False,
    **instrument_options: Any,
) -> Telemetry:
    """Build a TracerProvider and a MeterProvider exporting as the ``OTEL_*`` variables say.

    ``metric_export_interval`` is in seconds (``OTEL_METRIC_EXPORT_INTERVAL`` is
    in milliseconds). ``endpoint`` and ``protocol`` (``grpc`` / ``http/protobuf``)
    override the OTLP variables for both signals. ``export=False`` builds the
    providers without exporters: only ``metric_readers`` and ``span_processors``
    see the data. ``set_global`` installs both providers as the process-wide
    ones. ``instrument=True`` also runs ``BackpressureInstrumentor`` on these
    providers (``instrument_options`` go to it) and ``shutdown()`` undoes it.

    Raises ValueError naming the argument or variable that is invalid, and
    TypeError naming an argument of the wrong kind (a single reader where a
    list belongs, an instrumentor option without ``instrument=True``, a
    ``meter_provider`` or ``tracer_provider``, which this function builds): this
    runs at start-up, where a wrong exporter setting should stop the deploy.
    Raises ImportError naming the ``otlp`` extra when the SDK is not installed.
    """
    _require_sdk()
    _check_arguments(service_name, metric_export_interval, protocol)
    _check_kinds(resource, metric_readers, span_processors, instrument, instrument_options)
    span_exporters: dict[str, SpanExporter] = {}
    metric_exporters: dict[str, MetricExporter] = {}
    if export:
        span_exporters = _exporters("traces", protocol, endpoint)
        metric_exporters = _exporters("metrics", protocol, endpoint)
    full_resource = _resource(service_name, resource)
    tracer_provider = _tracer_provider(full_resource, span_processors, span_exporters)
    exporting_readers = _exporting_readers(metric_exporters, metric_export_interval)
    meter_provider = _meter_provider(full_resource, [*exporting_readers, *metric_readers])
    if set_global:
        _set_global(tracer_provider, meter_provider)
    instrumentor = None
    if instrument:
        instrumentor = _instrument(tracer_provider, meter_provider, instrument_options)
    telemetry = Telemetry(
        tracer_provider,
        meter_provider,
        span_exporters,
        metric_exporters,
        exporting_readers,
        instrumentor,
    )
    atexit.register(telemetry.shutdown)
    _logger.debug("Configured %r", telemetry)
    return telemetry


def _require_sdk() -> None:
    """Raise ImportError naming the ``otlp`` extra when the SDK is not installed."""
    try:
        import opentelemetry.sdk.metrics.export
        import opentelemetry.sdk.resources
        import opentelemetry.sdk.trace.export  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "configure_telemetry needs the OpenTelemetry SDK: install "
            "opentelemetry-instrumentation-backpressure[otlp]"
        ) from exc


def _check_arguments(
    service_name: str | None, metric_export_interval: float | None, protocol: str | None
) -> None:
    """Raise ValueError naming the first of configure_telemetry's arguments that is invalid."""
    if metric_export_interval is not None and (
        isinstance(metric_export_interval, bool)
        or not isinstance(metric_export_interval, (int, float))
        or not metric_export_interval > 0
    ):
        raise ValueError(
            f"metric_export_interval must be a positive number of seconds, "
            f"got {metric_export_interval!r}"
        )
    if protocol is not None and protocol not in _OTLP_PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(_OTLP_PROTOCOLS)}, got {protocol!r}")
    if service_name is not None and not (isinstance(service_name, str) and service_name):
        raise ValueError(f"service_name must be a non-empty string, got {service_name!r}")


def _check_kinds(
    resource: object,
    metric_readers: object,
    span_processors: object,
    instrument: bool,
    instrument_options: dict[str, Any],
) -> None:
    """Raise TypeError naming the first of configure_telemetry's arguments of the wrong kind."""
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor

    if resource is not None and not isinstance(resource, Resource):
        raise TypeError(f"resource must be a Resource, got {type(resource).__name__}")
    for argument, items, kind in (
        ("metric_readers", metric_readers, MetricReader),
        ("span_processors", span_processors, SpanProcessor),
    ):
        # any sequence, as annotated; a lone reader or processor, a string or a
        # one-shot iterator is not one (the items are read more than once)
        if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
            raise TypeError(
                f"{argument} must be a list of {kind.__name__}s, got {type(items).__name__}"
            )
        for index, item in enumerate(items):
            if not isinstance(item, kind):
                raise TypeError(
                    f"{argument}[{index}] must be a {kind.__name__}, got {type(item).__name__}"
                )
    for built in ("meter_provider", "tracer_provider"):
        if built in instrument_options:
            raise TypeError(
                f"{built} is not an argument of configure_telemetry, which builds the "
                "providers (metric_readers= and span_processors= see their data)"
            )
    if instrument_options and not instrument:
        raise TypeError(
            f"configure_telemetry got {', '.join(sorted(instrument_options))} without "
            "instrument=True (options of BackpressureInstrumentor().instrument())"
        )


def _resource(service_name: str | None, resource: Resource | None) -> Resource:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME;
    # explicit arguments are merged over them.
    full_resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    if resource is not None:
        full_resource = full_resource.merge(resource)
    return full_resource


def _tracer_provider(
    resource: Resource,
    span_processors: Sequence[SpanProcessor],
    span_exporters: dict[str, SpanExporter],
) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Telemetry.shutdown runs at exit instead of the SDK's own handlers: it bounds the wait.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    for span_exporter in span_exporters.values():
        # bounded queue (OTEL_BSP_MAX_QUEUE_SIZE): spans are dropped, not kept,
        # while the collector is away
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return tracer_provider


def _exporting_readers(
    metric_exporters: dict[str, MetricExporter], metric_export_interval: float | None
) -> list[MetricReader]:
    """One reader per metrics exporter, exporting every ``metric_export_interval`` seconds."""
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

    interval_millis = None if metric_export_interval is None else metric_export_interval * 1000
    # A metrics "exporter" entry point may be a pull reader (Prometheus): used as is.
    return [
        exporter
        if isinstance(exporter, MetricReader)
        else PeriodicExportingMetricReader(exporter, export_interval_millis=interval_millis)
        for exporter in metric_exporters.values()
    ]


def _meter_provider(resource: Resource, metric_readers: Sequence[MetricReader]) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider

    return MeterProvider(
        resource=resource, metric_readers=list(metric_readers), shutdown_on_exit=False
    )


def _set_global(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        # The API keeps the first provider set; ours would be silently ignored.
        _logger.warning(
            "An SDK TracerProvider is already installed (opentelemetry-instrument?); "
            "configure_telemetry's providers are not the global ones"
        )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)


def _instrument(
    tracer_provider: TracerProvider, meter_provider: MeterProvider, options: dict[str, Any]
) -> Any:
    """The instrumentor run on these providers, or None when someone else already ran it."""
    from otel_backpressure.instrumentor import BackpressureInstrumentor

    candidate = BackpressureInstrumentor()
    if candidate.is_instrumented_by_opentelemetry:
        # someone else instrumented (e.g. opentelemetry-instrument): theirs to undo
        _logger.warning("BackpressureInstrumentor is already instrumented; leaving it as is")
        return None
    candidate.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, **options)
    return candidate


def _exporters(signal: str, protocol: str | None, endpoint: str | None) -> dict[str, Any]:
    """Instantiate the exporters the signal's ``OTEL_*_EXPORTER`` list names."""
    names_variable, protocol_variable, group, http_path = _SIGNALS[signal]
    names = [name.strip() for name in os.environ.get(names_variable, "otlp").split(",")]
    if names == ["none"] or names == [""]:
        return {}
    exporters: dict[str, Any] = {}
    for name in names:
        entry_point_name = name
        kwargs: dict[str, Any] = {}
        if name in ("otlp", *_OTLP_PROTOCOLS.values()):
            chosen = _protocol(protocol_variable, protocol)
            entry_point_name = name if name != "otlp" else _OTLP_PROTOCOLS[chosen]
            if endpoint is not None:
                kwargs["endpoint"] = _endpoint_for(endpoint, entry_point_name, http_path)
        found = _entry_points(group, entry_point_name)
        if not found:
            raise ValueError(
                f"{names_variable} names exporter {name!r}, which is not installed "
                f"(no {group!r} entry point {entry_point_name!r})"
            )
        exporters[entry_point_name] = found[0].load()(**kwargs)
    return exporters


def _protocol(variable: str, protocol: str | None) -> str:
    if protocol is not None:
        return protocol
    for name in (variable, "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip()
        if value:
            if value not in _OTLP_PROTOCOLS:
                raise ValueError(
                    f"{name}={value!r} is not supported; use one of {sorted(_OTLP_PROTOCOLS)}"
                )
            return value
    return "grpc"  # the specification's default for the Python SDK


def _endpoint_for(endpoint: str, entry_point_name: str, http_path: str) -> str:
    """OTLP/HTTP takes the full signal URL; the variables' base URL gets the path added."""
    if entry_point_name != "otlp_proto_http":
        return endpoint
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/") + "/" + http_path
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _entry_points(group: str, name: str) -> list[Any]:
    return list(entry_points(group=group, name=name))
