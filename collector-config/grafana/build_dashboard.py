"""Build the Grafana dashboard ``dashboards/backpressure.json`` from readable Python.

The JSON is committed (Grafana provisions it as is); this script is its
source, so a panel is a few lines here instead of a hundred there. After an
edit, regenerate and commit both::

    python collector-config/grafana/build_dashboard.py

A test fails when the JSON and this script disagree, and another checks every
query against the telemetry contract (tests/contract.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "backpressure-prometheus"}
OUTPUT = Path(__file__).parent / "dashboards" / "backpressure.json"

POOL = "db_client_connection_pool_name"
SERVER = "server_address"
LOOP = "backpressure_event_loop_name"
THREADS = "backpressure_thread_pool_name"
POLICY = "backpressure_rate_limit_policy"
RESULT = "backpressure_rate_limit_result"
OUTCOME = "backpressure_exception_outcome"

# Every series this package exports carries its instrumentation scope, so the
# variables list only services, pools and policies that have our series, never
# a scrape job such as `otel-collector` or another library's pools.
OURS = 'otel_scope_name="otel_backpressure"'

# Label selectors driven by the dashboard variables.
SVC = 'job=~"$service"'
POOLS = f'{SVC}, {POOL}=~"$pool"'
POLICIES = f'{SVC}, {POLICY}=~"$policy"'
RATE = "[$__rate_interval]"

Panel = dict[str, Any]


def target(expr: str, legend: str, ref: str, *, instant: bool = False) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": not instant,
        "instant": instant,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    stack: bool = False,
    thresholds: list[tuple[str, float | None]] | None = None,
    max_value: float | None = None,
) -> Panel:
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if stack else 0,
            "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if thresholds else "off"},
        },
        "thresholds": _thresholds(thresholds or [("green", None)]),
    }
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
    }


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    thresholds: list[tuple[str, float | None]],
) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": _thresholds(thresholds)},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "value",
        },
        "targets": [target(expr, "", "A")],
    }


def bar_gauge(title: str, description: str, expr: str, legend: str) -> Panel:
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {"unit": "short", "min": 0, "thresholds": _thresholds([("red", None)])},
            "overrides": [],
        },
        "options": {
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
        "targets": [target(expr, legend, "A", instant=True)],
    }


def _thresholds(steps: list[tuple[str, float | None]]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def quantiles(metric: str, selector: str, by: str, *, label: str = POOL) -> list[tuple[str, str]]:
    """p50/p95/p99 from the histogram's buckets, and the mean from _sum / _count."""
    series = [
        (
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{round(q * 100)} {{{{{label}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
    series.append(
        (
            f"sum by ({by}) (rate({metric}_sum{{{selector}}}{RATE}))"
            f" / sum by ({by}) (rate({metric}_count{{{selector}}}{RATE}))",
            f"mean {{{{{label}}}}}",
        )
    )
    return series


def http_pools() -> list[tuple[Panel, int, int]]:
    """Outbound HTTP pools (httpx, aiohttp), by server: the HTTP client table of the contract."""
    by_server = f"job, {SERVER}"
    legend = f"{{{{{SERVER}}}}} ({{{{job}}}})"
    return [
        (row("Outbound HTTP pools"), 24, 1),
        (
            timeseries(
                "HTTP pool saturation",
                "Active connections / the pool's limit for the server (httpx max_connections, "
                "aiohttp limit or limit_per_host): at 100% the next request queues (see HTTP "
                "requests queued; an httpx pool full of other servers' connections queues "
                "earlier). Open / limit (the usage gauge) counts idle connections too, which "
                "the next request reuses.",
                [
                    (
                        f"max by ({by_server}) "
                        f'(http_client_open_connections{{{SVC}, http_connection_state="active"}} '
                        "/ ignoring (http_connection_state) "
                        f"backpressure_http_client_connection_max{{{SVC}}})",
                        f"{legend} active",
                    ),
                    (
                        f"max by ({by_server}) "
                        f"(backpressure_http_client_connection_usage_ratio{{{SVC}}})",
                        f"{legend} open",
                    ),
                ],
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.85), ("red", 1)],
                max_value=1,
            ),
            8,
            8,
        ),
        (
            timeseries(
                "HTTP requests queued",
                "Requests waiting for a connection from their pool right now.",
                [
                    (
                        f"sum by ({by_server}) "
                        f"(backpressure_http_client_pending_requests{{{SVC}}})",
                        legend,
                    )
                ],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "HTTP pool timeouts",
                "Requests per second that gave up waiting for a connection "
                "(httpx.PoolTimeout; aiohttp: its connect or total timeout while queued).",
                [
                    (
                        f"sum by ({by_server}) "
                        f"(rate(backpressure_http_client_pool_timeouts_total{{{SVC}}}{RATE}))",
                        legend,
                    )
                ],
                thresholds=[("green", None), ("red", 0.001)],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "HTTP connections by state",
                "Active (serving a request) and idle connections per server, and the limit.",
                [
                    (
                        f"sum by ({by_server}, http_connection_state) "
                        f"(http_client_open_connections{{{SVC}}})",
                        f"{{{{{SERVER}}}}} {{{{http_connection_state}}}}",
                    ),
                    (
                        f"sum by ({by_server}) (backpressure_http_client_connection_max{{{SVC}}})",
                        f"{{{{{SERVER}}}}} max",
                    ),
                ],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "HTTP time in queue",
                "How long requests that queued waited for a connection: percentiles and mean.",
                quantiles(
                    "http_client_request_time_in_queue_seconds", SVC, by_server, label=SERVER
                ),
                unit="s",
            ),
            8,
            8,
        ),
        (
            timeseries(
                "HTTP connection lifetime",
                "How long connections stayed open: short lives mean churn (no keep-alive).",
                quantiles("http_client_connection_duration_seconds", SVC, by_server, label=SERVER),
                unit="s",
            ),
            8,
            8,
        ),
    ]


def runtime() -> list[tuple[Panel, int, int]]:
    """The event loops (by thread name) and thread pools (anyio, default executors, named)."""
    by_loop, by_threads = f"job, {LOOP}", f"job, {THREADS}"
    loop_legend = f"{{{{{LOOP}}}}} ({{{{job}}}})"
    threads_legend = f"{{{{{THREADS}}}}} ({{{{job}}}})"
    return [
        (row("Event loop and thread pools"), 24, 1),
        (
            timeseries(
                "Event loop delay",
                "How long the loop had been unresponsive when a sample fell due (every 10 ms "
                "by default): a blocking call shows as a sample as long as the stall. "
                "Every request waits this long behind it.",
                quantiles("backpressure_event_loop_delay_seconds", SVC, by_loop, label=LOOP),
                unit="s",
                thresholds=[("green", None), ("orange", 0.05), ("red", 0.1)],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Event loop utilization",
                "Share of the time the loop was running callbacks rather than waiting for I/O "
                "(asyncio selector loops; not uvloop). Near 100% the loop is the bottleneck.",
                [
                    (
                        f"max by ({by_loop}) (backpressure_event_loop_utilization_ratio{{{SVC}}})",
                        loop_legend,
                    )
                ],
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.8), ("red", 0.95)],
                max_value=1,
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Thread pool usage",
                "Threads or tokens in use / the limit: anyio's default limiter (Starlette and "
                "FastAPI sync endpoints, 40 tokens), asyncio's default executor, named pools.",
                [
                    (
                        f"max by ({by_threads}) (backpressure_thread_pool_usage_ratio{{{SVC}}})",
                        threads_legend,
                    )
                ],
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.85), ("red", 1)],
                max_value=1,
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Thread pool queue",
                "Calls waiting for a thread or token right now.",
                [
                    (
                        f"sum by ({by_threads}) (backpressure_thread_pool_queue_length{{{SVC}}})",
                        threads_legend,
                    )
                ],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Thread pool wait time",
                "How long calls waited for a thread or token (0 when one was free): "
                "percentiles and mean.",
                quantiles(
                    "backpressure_thread_pool_wait_time_seconds", SVC, by_threads, label=THREADS
                ),
                unit="s",
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Threads in use",
                "Threads (or limiter tokens) in use and the limit, per pool.",
                [
                    (
                        f"sum by ({by_threads}) (backpressure_thread_pool_used{{{SVC}}})",
                        f"{{{{{THREADS}}}}} used",
                    ),
                    (
                        f"sum by ({by_threads}) (backpressure_thread_pool_max{{{SVC}}})",
                        f"{{{{{THREADS}}}}} max",
                    ),
                ],
            ),
            8,
            8,
        ),
    ]


def panels() -> list[tuple[Panel, int, int]]:
    """(panel, width, height) in reading order; positions are laid out by ``layout``."""
    by_pool = f"job, {POOL}"
    by_policy = f"job, {POLICY}"
    pool_legend = f"{{{{{POOL}}}}} ({{{{job}}}})"
    policy_legend = f"{{{{{POLICY}}}}} ({{{{job}}}})"
    return [
        # -- at a glance --------------------------------------------------------
        (
            stat(
                "Highest pool usage",
                "The fullest selected pool: checked-out connections / the most it allows.",
                f"max(backpressure_pool_usage_ratio{{{POOLS}}})",
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.85), ("red", 1)],
            ),
            6,
            4,
        ),
        (
            stat(
                "Pool timeouts / s",
                "Checkouts that gave up waiting for a connection, all selected pools.",
                f"sum(rate(db_client_connection_timeouts_total{{{POOLS}}}{RATE}))",
                unit="short",
                thresholds=[("green", None), ("red", 0.001)],
            ),
            6,
            4,
        ),
        (
            stat(
                "Rejected requests",
                "Share of rate-limit decisions that rejected the request (HTTP 429).",
                f"sum(rate(backpressure_rate_limit_requests_total"
                f'{{{POLICIES}, {RESULT}="rejected"}}{RATE}))'
                f" / sum(rate(backpressure_rate_limit_requests_total{{{POLICIES}}}{RATE}))",
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.05), ("red", 0.1)],
            ),
            6,
            4,
        ),
        (
            stat(
                "Unhandled exceptions / s",
                "Exceptions that escaped the application's handlers: real failures.",
                f'sum(rate(backpressure_exceptions_total{{{SVC}, {OUTCOME}="unhandled"}}{RATE}))',
                thresholds=[("green", None), ("red", 0.1)],
            ),
            6,
            4,
        ),
        # -- pools -------------------------------------------------------------
        (row("Connection pools"), 24, 1),
        (
            timeseries(
                "Pool usage (saturation)",
                "Checked-out connections / the most the pool allows (pool_size + max_overflow). "
                "Absent for unbounded pools. The alert fires above 85% for 5 minutes.",
                [(f"max by ({by_pool}) (backpressure_pool_usage_ratio{{{POOLS}}})", pool_legend)],
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.85), ("red", 1)],
                max_value=1,
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Overflow connections",
                "Connections open beyond pool_size (SQLAlchemy's max_overflow). "
                "Sustained overflow means pool_size is too small for the load.",
                [(f"sum by ({by_pool}) (backpressure_pool_overflow{{{POOLS}}})", pool_legend)],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Pending requests",
                "Checkouts waiting for a connection right now. "
                "The alert fires when this stays above zero for 10 minutes.",
                [
                    (
                        f"sum by ({by_pool}) (db_client_connection_pending_requests{{{POOLS}}})",
                        pool_legend,
                    )
                ],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Connections by state",
                "Used (checked out) and idle (checked in) connections, and the pool's maximum.",
                [
                    (
                        f"sum by ({by_pool}, db_client_connection_state) "
                        f"(db_client_connection_count{{{POOLS}}})",
                        f"{{{{{POOL}}}}} {{{{db_client_connection_state}}}}",
                    ),
                    (
                        f"sum by ({by_pool}) (db_client_connection_max{{{POOLS}}})",
                        f"{{{{{POOL}}}}} max",
                    ),
                ],
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Idle connection limits",
                "The most and fewest idle connections each pool keeps open.",
                [
                    (
                        f"sum by ({by_pool}) (db_client_connection_idle_max{{{POOLS}}})",
                        f"{{{{{POOL}}}}} idle max",
                    ),
                    (
                        f"sum by ({by_pool}) (db_client_connection_idle_min{{{POOLS}}})",
                        f"{{{{{POOL}}}}} idle min",
                    ),
                ],
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Checkout wait time",
                "How long a checkout waited for a connection: percentiles from the histogram "
                "buckets, and the mean. Rising wait time comes before timeouts.",
                quantiles("db_client_connection_wait_time_seconds", POOLS, by_pool),
                unit="s",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Checkout timeouts",
                "Checkouts per second that gave up waiting for a connection (pool_timeout). "
                "Each one failed a request.",
                [
                    (
                        f"sum by ({by_pool}) "
                        f"(rate(db_client_connection_timeouts_total{{{POOLS}}}{RATE}))",
                        pool_legend,
                    )
                ],
                thresholds=[("green", None), ("red", 0.001)],
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Connection create time",
                "Time to open a new database connection.",
                quantiles("db_client_connection_create_time_seconds", POOLS, by_pool),
                unit="s",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Connection use time",
                "Time between checkout and return: how long the application holds a connection.",
                quantiles("db_client_connection_use_time_seconds", POOLS, by_pool),
                unit="s",
            ),
            12,
            8,
        ),
        *http_pools(),
        *runtime(),
        # -- rate limiting -----------------------------------------------------
        (row("Rate limiting"), 24, 1),
        (
            timeseries(
                "Decisions by result",
                "Rate-limit decisions per second by policy: allowed, rejected, and "
                "dry_run_rejected (would have been rejected; the policy is in dry-run mode).",
                [
                    (
                        f"sum by ({by_policy}, {RESULT}) "
                        f"(rate(backpressure_rate_limit_requests_total{{{POLICIES}}}{RATE}))",
                        f"{{{{{POLICY}}}}} {{{{{RESULT}}}}}",
                    )
                ],
                unit="reqps",
                stack=True,
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Rejected share",
                "Rejected and dry-run-rejected decisions as a share of all decisions, per "
                "policy. The alerts fire above 10%.",
                [
                    (
                        f"sum by ({by_policy}) (rate(backpressure_rate_limit_requests_total"
                        f'{{{POLICIES}, {RESULT}="rejected"}}{RATE})) / sum by ({by_policy}) '
                        f"(rate(backpressure_rate_limit_requests_total{{{POLICIES}}}{RATE}))",
                        f"{{{{{POLICY}}}}} rejected",
                    ),
                    (
                        f"sum by ({by_policy}) (rate(backpressure_rate_limit_requests_total"
                        f'{{{POLICIES}, {RESULT}="dry_run_rejected"}}{RATE})) / sum by '
                        f"({by_policy}) (rate(backpressure_rate_limit_requests_total"
                        f"{{{POLICIES}}}{RATE}))",
                        f"{{{{{POLICY}}}}} dry_run_rejected",
                    ),
                ],
                unit="percentunit",
                thresholds=[("green", None), ("orange", 0.1)],
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Keys held",
                "Client keys the in-memory store holds now; bounded by its max keys setting.",
                [
                    (
                        f"sum by ({by_policy}) (backpressure_rate_limit_keys{{{POLICIES}}})",
                        policy_legend,
                    )
                ],
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Key evictions",
                "Keys dropped per second: idle (unused past the idle timeout) or capacity "
                "(the store was full). Capacity evictions mean max keys is too low.",
                [
                    (
                        f"sum by ({by_policy}, backpressure_rate_limit_eviction_reason) "
                        f"(rate(backpressure_rate_limit_evictions_total{{{POLICIES}}}{RATE}))",
                        f"{{{{{POLICY}}}}} {{{{backpressure_rate_limit_eviction_reason}}}}",
                    )
                ],
                stack=True,
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Store errors",
                "Failures of the rate-limit store (e.g. Redis unreachable) per second, by "
                "error.type: the exception's fully qualified class name, the same on every "
                "Python (e.g. redis.exceptions.ConnectionError; builtins bare, e.g. "
                "TimeoutError), or circuit_open.",
                [
                    (
                        f"sum by ({by_policy}, error_type) "
                        f"(rate(backpressure_rate_limit_store_errors_total{{{POLICIES}}}{RATE}))",
                        f"{{{{{POLICY}}}}} {{{{error_type}}}}",
                    )
                ],
                thresholds=[("green", None), ("red", 0.001)],
            ),
            8,
            8,
        ),
        # -- errors ------------------------------------------------------------
        (row("Errors"), 24, 1),
        (
            timeseries(
                "Exceptions by type and outcome",
                "Exceptions per second by error.type: a mapped outcome's name (e.g. "
                "not_found) or an unmapped exception's fully qualified class name (e.g. "
                "sqlalchemy.exc.ProgrammingError; builtins bare, e.g. ValueError). Handled "
                "ones are expected (mapped to a status by the application), unhandled ones "
                "are failures (escaped a server span or the middleware).",
                [
                    (
                        f"sum by (job, error_type, {OUTCOME}) "
                        f"(rate(backpressure_exceptions_total{{{SVC}}}{RATE}))",
                        f"{{{{error_type}}}} {{{{{OUTCOME}}}}}",
                    )
                ],
                stack=True,
            ),
            16,
            8,
        ),
        (
            bar_gauge(
                "Top exception types",
                "The most frequent exception types over the dashboard's time range.",
                f"topk(10, sum by (error_type, {OUTCOME}) "
                f"(increase(backpressure_exceptions_total{{{SVC}}}[$__range])))",
                f"{{{{error_type}}}} {{{{{OUTCOME}}}}}",
            ),
            8,
            8,
        ),
    ]


def layout(items: list[tuple[Panel, int, int]]) -> list[Panel]:
    """Place panels left to right, wrapping at Grafana's 24 columns."""
    placed: list[Panel] = []
    x = y = row_height = 0
    for number, (panel, width, height) in enumerate(items, start=1):
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        placed.append({**panel, "id": number, "gridPos": {"x": x, "y": y, "w": width, "h": height}})
        x += width
        row_height = max(row_height, height)
    return placed


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "otel-backpressure",
        "title": "Backpressure: pools, rate limits, errors",
        "description": "opentelemetry-instrumentation-backpressure: connection-pool saturation, "
        "rate-limit decisions and exceptions, from the collector's Prometheus exporter.",
        "tags": ["opentelemetry", "backpressure", "database", "rate-limit"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                variable("service", "Service", f"label_values({{{OURS}}}, job)"),
                variable(
                    "pool",
                    "Pool",
                    f"label_values(db_client_connection_count{{{OURS}, {SVC}}}, {POOL})",
                ),
                variable(
                    "policy",
                    "Rate-limit policy",
                    f"label_values(backpressure_rate_limit_requests_total{{{OURS}, {SVC}}}, "
                    f"{POLICY})",
                ),
            ]
        },
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
