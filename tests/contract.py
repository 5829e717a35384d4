"""The telemetry contract of DESIGN.md as data, and the Prometheus names it becomes.

This module is the single source of truth for tests: instrument checks, the
end-to-end tests against a collector, and the dashboard and alert-rule checks
all read it instead of repeating metric names. Change it only together with
DESIGN.md's table, the README's metrics reference, the dashboard and the rules.

Example::

    import contract

    spec = contract.METRICS["db.client.connection.wait_time"]
    spec.prometheus_series
    # ('db_client_connection_wait_time_seconds_bucket',
    #  'db_client_connection_wait_time_seconds_sum',
    #  'db_client_connection_wait_time_seconds_count')
    contract.prometheus_label_name("db.client.connection.pool.name")
    # 'db_client_connection_pool_name'
    problems = contract.violations(metric)  # an SDK ``Metric`` from MetricsCapture
    assert not problems, problems

The Prometheus translation follows the OpenTelemetry specification's
"Prometheus and OpenMetrics compatibility" rules (OTLP metric points to
Prometheus) as the collector's ``prometheus`` exporter applies them with its
default translation strategy, ``UnderscoreEscapingWithSuffixes``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "ATTRIBUTE_VALUES",
    "CONNECTION_STATE",
    "ERROR_TYPE",
    "EVICTION_REASON",
    "HTTP_CONNECTION_STATE",
    "LOOP_NAME",
    "METRICS",
    "OTHER_SERVER",
    "OUTCOME",
    "POLICY",
    "POOL_NAME",
    "RESULT",
    "SCOPE_NAME",
    "SDK_DEFAULT_BUCKETS",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "THREAD_POOL_NAME",
    "URL_SCHEME",
    "DataType",
    "Instrument",
    "MetricSpec",
    "prometheus_label_name",
    "prometheus_metric_name",
    "prometheus_series_names",
    "violations",
]

SCOPE_NAME = "otel_backpressure"


class Instrument(str, enum.Enum):
    """OpenTelemetry API instrument kinds, named as the API's factory methods name them."""

    COUNTER = "counter"
    UP_DOWN_COUNTER = "up_down_counter"
    HISTOGRAM = "histogram"
    OBSERVABLE_COUNTER = "observable_counter"
    OBSERVABLE_UP_DOWN_COUNTER = "observable_up_down_counter"
    OBSERVABLE_GAUGE = "observable_gauge"


class DataType(str, enum.Enum):
    """The OTLP point type an instrument produces; it decides the Prometheus type."""

    MONOTONIC_SUM = "monotonic_sum"  # Prometheus counter (gets `_total`)
    NON_MONOTONIC_SUM = "non_monotonic_sum"  # Prometheus gauge
    GAUGE = "gauge"  # Prometheus gauge (unit `1` gets `_ratio`)
    HISTOGRAM = "histogram"  # `_bucket`, `_sum`, `_count`


_DATA_TYPE = {
    Instrument.COUNTER: DataType.MONOTONIC_SUM,
    Instrument.OBSERVABLE_COUNTER: DataType.MONOTONIC_SUM,
    Instrument.UP_DOWN_COUNTER: DataType.NON_MONOTONIC_SUM,
    Instrument.OBSERVABLE_UP_DOWN_COUNTER: DataType.NON_MONOTONIC_SUM,
    Instrument.OBSERVABLE_GAUGE: DataType.GAUGE,
    Instrument.HISTOGRAM: DataType.HISTOGRAM,
}

# Attribute keys, and the fixed value sets where DESIGN.md fixes them. ``None``
# means free-form (a pool or policy name, an exception type).
POOL_NAME = "db.client.connection.pool.name"
CONNECTION_STATE = "db.client.connection.state"
POLICY = "backpressure.rate_limit.policy"
RESULT = "backpressure.rate_limit.result"
EVICTION_REASON = "backpressure.rate_limit.eviction.reason"
ERROR_TYPE = "error.type"
OUTCOME = "backpressure.exception.outcome"
LOOP_NAME = "backpressure.event_loop.name"
THREAD_POOL_NAME = "backpressure.thread_pool.name"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
URL_SCHEME = "url.scheme"
HTTP_CONNECTION_STATE = "http.connection.state"
#: ``server.address`` of an HTTP pool's servers past its bound; those points have no port.
OTHER_SERVER = "_OTHER"
# Attributes whose values are integers, as the semantic conventions type them.
_INT_ATTRIBUTES = frozenset({SERVER_PORT})

ATTRIBUTE_VALUES: Mapping[str, frozenset[str] | None] = MappingProxyType(
    {
        POOL_NAME: None,
        CONNECTION_STATE: frozenset({"idle", "used"}),
        POLICY: None,
        RESULT: frozenset({"allowed", "rejected", "dry_run_rejected"}),
        EVICTION_REASON: frozenset({"idle", "capacity"}),
        ERROR_TYPE: None,
        OUTCOME: frozenset({"handled", "unhandled"}),
        LOOP_NAME: None,
        THREAD_POOL_NAME: None,
        SERVER_ADDRESS: None,
        SERVER_PORT: None,
        URL_SCHEME: frozenset({"http", "https", "ws", "wss"}),
        HTTP_CONNECTION_STATE: frozenset({"active", "idle"}),
    }
)


@dataclass(frozen=True)
class MetricSpec:
    """One row of the contract: every attribute listed is present on every point."""

    name: str
    instruments: tuple[Instrument, ...]  # the kinds DESIGN.md allows, preferred first
    unit: str
    attributes: tuple[str, ...]
    description: str = field(default="", compare=False)

    @property
    def data_type(self) -> DataType:
        return _DATA_TYPE[self.instruments[0]]

    @property
    def allowed_values(self) -> dict[str, frozenset[str] | None]:
        return {key: ATTRIBUTE_VALUES[key] for key in self.attributes}

    @property
    def prometheus_name(self) -> str:
        """The metric family name the collector's Prometheus exporter exposes."""
        return prometheus_metric_name(self.name, self.unit, self.data_type)

    @property
    def prometheus_series(self) -> tuple[str, ...]:
        """Every series name a query can use (a histogram has three)."""
        return prometheus_series_names(self.name, self.unit, self.data_type)

    @property
    def prometheus_labels(self) -> tuple[str, ...]:
        """Label names of this metric's own attributes (plus `le` on buckets)."""
        return tuple(prometheus_label_name(key) for key in self.attributes)


def _spec(
    name: str,
    instruments: Iterable[Instrument],
    unit: str,
    attributes: Iterable[str],
    description: str,
) -> tuple[str, MetricSpec]:
    return name, MetricSpec(name, tuple(instruments), unit, tuple(attributes), description)


_ASYNC_UDC = (Instrument.OBSERVABLE_UP_DOWN_COUNTER,)

METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    dict(
        [
            # Connection pools (OpenTelemetry database semantic conventions).
            _spec(
                "db.client.connection.count",
                _ASYNC_UDC,
                "{connection}",
                (POOL_NAME, CONNECTION_STATE),
                "Connections in the pool by state: idle (checked in) or used (checked out).",
            ),
            _spec(
                "db.client.connection.max",
                _ASYNC_UDC,
                "{connection}",
                (POOL_NAME,),
                "Most connections the pool allows; absent when the pool is unbounded.",
            ),
            _spec(
                "db.client.connection.idle.max",
                _ASYNC_UDC,
                "{connection}",
                (POOL_NAME,),
                "Most idle connections the pool keeps.",
            ),
            _spec(
                "db.client.connection.idle.min",
                _ASYNC_UDC,
                "{connection}",
                (POOL_NAME,),
                "Fewest idle connections the pool keeps.",
            ),
            _spec(
                "db.client.connection.pending_requests",
                _ASYNC_UDC,
                "{request}",
                (POOL_NAME,),
                "Checkouts waiting for a connection.",
            ),
            _spec(
                "db.client.connection.timeouts",
                # a local count exported asynchronously: the same monotonic sum
                (Instrument.COUNTER, Instrument.OBSERVABLE_COUNTER),
                "{timeout}",
                (POOL_NAME,),
                "Checkouts that gave up waiting for a connection.",
            ),
            _spec(
                "db.client.connection.create_time",
                (Instrument.HISTOGRAM,),
                "s",
                (POOL_NAME,),
                "Time to open a new connection.",
            ),
            _spec(
                "db.client.connection.wait_time",
                (Instrument.HISTOGRAM,),
                "s",
                (POOL_NAME,),
                "Time a checkout waited for a connection.",
            ),
            _spec(
                "db.client.connection.use_time",
                (Instrument.HISTOGRAM,),
                "s",
                (POOL_NAME,),
                "Time between checkout and return of a connection.",
            ),
            _spec(
                "backpressure.pool.overflow",
                _ASYNC_UDC,
                "{connection}",
                (POOL_NAME,),
                "Overflow connections open beyond pool_size; never negative.",
            ),
            _spec(
                "backpressure.pool.usage",
                (Instrument.OBSERVABLE_GAUGE,),
                "1",
                (POOL_NAME,),
                "Used / max connections, 0..1; absent when the pool is unbounded.",
            ),
            # Outbound HTTP connection pools (semantic conventions, and .NET 8's
            # System.Net.Http meter); servers past a pool's bound are _OTHER, no port.
            _spec(
                "http.client.open_connections",
                _ASYNC_UDC,
                "{connection}",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME, HTTP_CONNECTION_STATE),
                "Open outbound HTTP connections by state: active (serving a request) or idle.",
            ),
            _spec(
                "http.client.connection.duration",
                (Instrument.HISTOGRAM,),
                "s",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME),
                "How long an outbound HTTP connection was open.",
            ),
            _spec(
                "http.client.request.time_in_queue",
                (Instrument.HISTOGRAM,),
                "s",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME),
                "Time a request waited for a connection from its pool.",
            ),
            _spec(
                "backpressure.http.client.pending_requests",
                _ASYNC_UDC,
                "{request}",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME),
                "Requests waiting for a connection from their pool now.",
            ),
            _spec(
                "backpressure.http.client.pool.timeouts",
                # DESIGN.md's row says Counter, with no "may be asynchronous"
                (Instrument.COUNTER,),
                "{timeout}",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME),
                "Requests that gave up waiting for a connection (httpx.PoolTimeout).",
            ),
            _spec(
                "backpressure.http.client.connection.max",
                _ASYNC_UDC,
                "{connection}",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME),
                "The pool's connection limit for the server; absent when unbounded.",
            ),
            _spec(
                "backpressure.http.client.connection.usage",
                (Instrument.OBSERVABLE_GAUGE,),
                "1",
                (SERVER_ADDRESS, SERVER_PORT, URL_SCHEME),
                "Open connections (active + idle) / the limit, 0..1; absent when unbounded.",
            ),
            # The event loop and thread pools (modelled on nodejs.eventloop.* and
            # dotnet.thread_pool.*).
            _spec(
                "backpressure.event_loop.delay",
                (Instrument.HISTOGRAM,),
                "s",
                (LOOP_NAME,),
                "How late the event loop ran a sampling callback that was due.",
            ),
            _spec(
                "backpressure.event_loop.utilization",
                (Instrument.OBSERVABLE_GAUGE,),
                "1",
                (LOOP_NAME,),
                "Share of wall time the loop was busy since the previous collection, 0..1.",
            ),
            _spec(
                "backpressure.thread_pool.used",
                _ASYNC_UDC,
                "{thread}",
                (THREAD_POOL_NAME,),
                "Threads (or limiter tokens) in use.",
            ),
            _spec(
                "backpressure.thread_pool.max",
                _ASYNC_UDC,
                "{thread}",
                (THREAD_POOL_NAME,),
                "Most threads (or tokens) the pool allows; absent when unbounded.",
            ),
            _spec(
                "backpressure.thread_pool.queue.length",
                _ASYNC_UDC,
                "{work_item}",
                (THREAD_POOL_NAME,),
                "Calls waiting for a thread or token.",
            ),
            _spec(
                "backpressure.thread_pool.usage",
                (Instrument.OBSERVABLE_GAUGE,),
                "1",
                (THREAD_POOL_NAME,),
                "Used / max, 0..1; absent when unbounded.",
            ),
            _spec(
                "backpressure.thread_pool.wait_time",
                (Instrument.HISTOGRAM,),
                "s",
                (THREAD_POOL_NAME,),
                "How long one call waited for a thread or token.",
            ),
            # Rate limiting (modelled on ASP.NET Core's and Envoy's).
            _spec(
                "backpressure.rate_limit.requests",
                (Instrument.COUNTER, Instrument.OBSERVABLE_COUNTER),
                "{request}",
                (POLICY, RESULT),
                "Rate-limit decisions by policy and result.",
            ),
            _spec(
                "backpressure.rate_limit.keys",
                _ASYNC_UDC,
                "{key}",
                (POLICY,),
                "Keys currently held by the in-memory store.",
            ),
            _spec(
                "backpressure.rate_limit.evictions",
                (Instrument.COUNTER, Instrument.OBSERVABLE_COUNTER),
                "{key}",
                (POLICY, EVICTION_REASON),
                "Keys evicted from the in-memory store, by reason.",
            ),
            _spec(
                "backpressure.rate_limit.store.errors",
                (Instrument.COUNTER, Instrument.OBSERVABLE_COUNTER),
                "{error}",
                (POLICY, ERROR_TYPE),
                "Rate-limit store failures by error type.",
            ),
            # Errors.
            _spec(
                "backpressure.exceptions",
                (Instrument.COUNTER,),
                "{exception}",
                (ERROR_TYPE, OUTCOME),
                "Exceptions by error.type and whether the application handled them.",
            ),
        ]
    )
)

# -- OpenTelemetry -> Prometheus names ---------------------------------------

# UCUM units the translator spells out; "1" is dimensionless (no suffix,
# except `_ratio` on gauges). Units not listed are kept, sanitised.
_UNIT_WORDS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER_UNIT_WORDS = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}
_NAME_SEPARATOR = re.compile(r"[^a-zA-Z0-9:]+")
_NAME_INVALID = re.compile(r"[^a-zA-Z0-9:]")
_LABEL_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_UNDERSCORES = re.compile(r"_{2,}")


def _clean_unit(unit: str) -> str:
    return _UNDERSCORES.sub("_", _NAME_INVALID.sub("_", unit)).lstrip("_")


def _unit_suffixes(unit: str) -> tuple[str, str]:
    """(main, per) unit suffixes: ``{...}`` annotations dropped, ``a/b`` -> ``a``, ``per_b``."""
    main, _, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    main_suffix = per_suffix = ""
    if main and "{" not in main and "}" not in main:
        main_suffix = _UNIT_WORDS.get(main, main)
    if per and "{" not in per and "}" not in per:
        per_suffix = "per_" + _PER_UNIT_WORDS.get(per, per)
    return _clean_unit(main_suffix), _clean_unit(per_suffix)


def prometheus_metric_name(name: str, unit: str, data_type: DataType) -> str:
    """The Prometheus metric family name for an OTLP metric.

    Characters outside ``[a-zA-Z0-9:]`` split the name into tokens joined by
    one ``_``; the unit's words follow unless the name already has them as a
    token; monotonic sums end in ``_total``; gauges with unit ``1`` end in
    ``_ratio``.
    """
    tokens = [token for token in _NAME_SEPARATOR.split(name) if token]
    main, per = _unit_suffixes(unit)
    if main in tokens:
        main = ""
    per = "" if per == "per_" else per.removesuffix("_")
    if per in tokens:
        per = ""
    if per:
        main = main.removesuffix("_")
    tokens += [suffix for suffix in (main, per) if suffix]
    if data_type is DataType.MONOTONIC_SUM:
        tokens = [token for token in tokens if token != "total"] + ["total"]
    if unit == "1" and data_type is DataType.GAUGE:
        tokens = [token for token in tokens if token != "ratio"] + ["ratio"]
    joined = "_".join(tokens)
    return f"_{joined}" if joined[:1].isdigit() else joined


def prometheus_series_names(name: str, unit: str, data_type: DataType) -> tuple[str, ...]:
    """Every series name a PromQL query can select for this metric."""
    family = prometheus_metric_name(name, unit, data_type)
    if data_type is DataType.HISTOGRAM:
        return (f"{family}_bucket", f"{family}_sum", f"{family}_count")
    return (family,)


def prometheus_label_name(key: str) -> str:
    """The Prometheus label for an attribute key: invalid characters -> one ``_``."""
    label = _UNDERSCORES.sub("_", _LABEL_INVALID.sub("_", key))
    return f"key_{label}" if label[:1].isdigit() else label


# -- checking SDK output against the contract --------------------------------

# The SDK's default explicit bucket boundaries are meant for milliseconds;
# DESIGN.md requires histograms in seconds to advise their own.
SDK_DEFAULT_BUCKETS = (
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
    7500.0, 10000.0,
)  # fmt: skip
# user:password@ in a URL-like value (a DSN): never allowed in an attribute.
_CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]*@")


def violations(metric: Any) -> list[str]:
    """What an SDK ``Metric`` (from ``MetricsCapture.collect()``) breaks in the contract.

    Checks name, unit, point type, monotonicity, attribute keys (all present,
    nothing extra), fixed attribute values, string values without DSN
    credentials, and that histograms in seconds do not use the SDK's
    millisecond default buckets. An empty list means it conforms.
    """
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    spec = METRICS.get(metric.name)
    if spec is None:
        return [f"{metric.name!r} is not in the contract"]
    problems: list[str] = []
    if metric.unit != spec.unit:
        problems.append(f"{spec.name}: unit {metric.unit!r}, contract says {spec.unit!r}")
    data = metric.data
    expected = spec.data_type
    if expected is DataType.HISTOGRAM:
        type_ok = isinstance(data, Histogram)
    elif expected is DataType.GAUGE:
        type_ok = isinstance(data, Gauge)
    else:
        monotonic = expected is DataType.MONOTONIC_SUM
        type_ok = isinstance(data, Sum) and data.is_monotonic is monotonic
    if not type_ok:
        problems.append(f"{spec.name}: data {type(data).__name__} is not a {expected.value}")
    for point in data.data_points:
        attributes = dict(point.attributes or {})
        wanted = set(spec.attributes)
        if attributes.get(SERVER_ADDRESS) == OTHER_SERVER:
            wanted.discard(SERVER_PORT)  # the servers past a pool's bound share no port
        if set(attributes) != wanted:
            problems.append(
                f"{spec.name}: attribute keys {sorted(attributes)}, contract says {sorted(wanted)}"
            )
        for key, value in attributes.items():
            allowed = ATTRIBUTE_VALUES.get(key)
            if key in _INT_ATTRIBUTES:
                if not isinstance(value, int) or isinstance(value, bool):
                    problems.append(f"{spec.name}: {key}={value!r} is not an integer")
            elif not isinstance(value, str):
                problems.append(f"{spec.name}: {key}={value!r} is not a string")
            elif allowed is not None and value not in allowed:
                problems.append(f"{spec.name}: {key}={value!r} not in {sorted(allowed)}")
            elif _CREDENTIALS.search(value):
                problems.append(f"{spec.name}: {key} carries credentials")
        bounds = tuple(getattr(point, "explicit_bounds", None) or ())
        if spec.unit == "s" and bounds == SDK_DEFAULT_BUCKETS:
            problems.append(f"{spec.name}: uses the SDK's default (millisecond) buckets")
    return problems
