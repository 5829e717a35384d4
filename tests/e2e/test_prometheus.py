"""The dashboard and every alert rule on a real Prometheus server scraping the demo.

Prometheus (Debian's ``prometheus`` package, installed by
scripts/ensure_promtool.py) runs on a free port with its own data directory
and scrapes the demo through ``opentelemetry-exporter-prometheus``
(``OTEL_METRICS_EXPORTER=prometheus``). The demo runs its whole scenario
(calm, pool rush, rate-limit storm, matchmaker bug, threads, Redis outage,
recovery; see demo/scenario.py) in ``DURATION`` seconds, its rate limiter on a
private ``redis-server`` (a free port, never the shared one) that this test
stops when the outage phase begins and starts again, empty, at the recovery.

To fit minutes, time is compressed by ``SCALE``: the scrape and evaluation
intervals (15 s in the shipped stack) and every duration in the rules (range
windows, ``for:`` and ``keep_firing_for:``) are divided by it, so each rule
sees as many samples per window as it does in production. Thresholds and expressions are the shipped
ones. The Python exporter names one thing differently from the Collector's
Prometheus exporter: it does not add ``_ratio`` to gauges in unit ``1``
(``backpressure_pool_usage`` instead of ``backpressure_pool_usage_ratio``);
the scrape config renames those, as docs/collector.md explains. (It also
leaves ``job`` to the scrape config, which is named after the service here.)

Asserted: every dashboard query and every alert expression returns data at
some point of the scenario; the dashboard variables offer the demo's service,
pool and policies and nothing else; every alert of alerts.yml has a phase
that must fire it (``EXPECTED``) and, from Prometheus's own ``ALERTS`` series
over the run: it goes pending while that phase runs, and fires (the dry-run
alert, whose ``for:`` is the longest, may only go pending), each of its series
at most once while the trouble lasts (no flapping: trouble comes in bursts,
and an alert that resolves and fires again within one incident is noise),
it never fires in another phase (going pending and no further is what
``for:`` is for), and it has resolved by the end of the recovery; it is
silent, not even pending, in its must-not-fire phase, a phase with load of the
same kind below its threshold; nothing fires in the first calm phase and no
other alert (another policy, pool or server) fires at any time. Every series
of the package carries the package's scope version. Event rates in the
trouble phases are high enough that each compressed window holds about as
many events as the shipped window does at the alerts' thresholds.

The times (from the start of the phase to pending, firing and resolved, in
compressed seconds and as the shipped 15 s intervals would take) are printed
and written to ``alert_timings.json`` in the test's tmp directory; the table
in docs/alerts.md comes from them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchmarks._redis_server import Server as PrivateRedis

import contract
import otel_backpressure
from e2e.collector import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "collector-config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "collector-config" / "grafana" / "dashboards" / "backpressure.json"
SERVICE = "backpressure-demo"
SCALE = 30  # 15 s scrapes -> 0.5 s; a 10m window -> 20 s; for: 5m -> 10 s
EVALUATION = 15 / SCALE  # seconds between rule evaluations here
# seconds of demo: calm 24, rush 68, storm 40, bug 27, threads 35, outage 27, recovery 49
DURATION = 270
PHASES = ("calm", "rush", "storm", "bug", "threads", "outage", "recovery")

POLICY = "backpressure_rate_limit_policy"
POOL = {"db_client_connection_pool_name": "game.db"}  # the demo's SQLite pool
UPSTREAM = {"server_address": "127.0.0.1"}  # the profile service the game calls


@dataclass(frozen=True)
class Expected:
    """An alert's part in the scenario.

    ``fires_in``: the phase that must fire it (its series: ``labels``), and
    ``through``, the last phase of that trouble if it lasts longer (each
    series fires at most once in all of it); ``quiet_in``: a phase with load
    of the same kind below the threshold, in which it must not even go
    pending; ``why_quiet`` says what that load is.
    """

    fires_in: str
    labels: dict[str, str]
    quiet_in: str
    why_quiet: str
    through: str | None = None

    @property
    def last(self) -> str:
        return self.through or self.fires_in


EXPECTED: dict[str, Expected] = {
    "BackpressurePoolSaturated": Expected(
        "rush", POOL, "outage", "twice calm's requests, short holds: the pool busy, not full"
    ),
    "BackpressurePoolCheckoutsWaiting": Expected(
        "rush", POOL, "outage", "twice calm's checkouts, none waits for a connection"
    ),
    "BackpressurePoolTimeouts": Expected(
        "rush", POOL, "outage", "twice calm's checkouts, none times out"
    ),
    "BackpressureRateLimitRejecting": Expected(
        "storm",
        {POLICY: "player"},
        "rush",
        "leaderboard readers near the leaderboard policy's 1/s",
    ),
    "BackpressureRateLimitDryRunWouldReject": Expected(
        "storm",
        {POLICY: "player-proposed"},
        "rush",
        "every request decided in dry run, under player-proposed's 2.5/s",
    ),
    "BackpressureUnhandledExceptions": Expected(
        "bug",
        {"error_type": "RuntimeError"},
        "rush",
        "hundreds of handled errors (503 pool_exhausted), none unhandled",
    ),
    # the profile service slows from the storm through the bug phase: the game's HTTP pool
    "BackpressureHttpPoolSaturated": Expected(
        "storm",
        UPSTREAM,
        "rush",
        "profile lookups while the database pool is in trouble",
        through="bug",
    ),
    "BackpressureHttpRequestsQueueing": Expected(
        "storm",
        UPSTREAM,
        "rush",
        "profile lookups answered in 20 ms: brief queueing",
        through="bug",
    ),
    "BackpressureHttpPoolTimeouts": Expected(
        "storm",
        UPSTREAM,
        "rush",
        "profile lookups answered in 20 ms: no pool timeout",
        through="bug",
    ),
    # sync exports fill anyio's limiter, a stats route blocks the loop
    "BackpressureEventLoopDelayHigh": Expected(
        "threads",
        {"backpressure_event_loop_name": "MainThread"},
        "storm",
        "the most requests a second, nothing blocking the loop",
    ),
    "BackpressureThreadPoolSaturated": Expected(
        "threads",
        {"backpressure_thread_pool_name": "anyio"},
        "rush",
        "asyncio's executor busy with every leaderboard render, never full",
    ),
    # this test stops the limiter's Redis: decisions fail open, every error type fires
    "BackpressureRateLimitStoreErrors": Expected(
        "outage", {}, "storm", "the most rate-limit decisions a second, Redis up"
    ),
}
MAY_ONLY_GO_PENDING = {"BackpressureRateLimitDryRunWouldReject"}  # for: 15m, the longest


def matches(labels: dict[str, str]) -> str | None:
    """The EXPECTED alert an ALERTS series (its labels) is, if any."""
    name = labels["alertname"]
    expected = EXPECTED.get(name)
    if expected is None:
        return None
    return name if all(labels.get(k) == v for k, v in expected.labels.items()) else None


_DURATION = re.compile(r"(\d+)([smh])")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def scaled(duration: str) -> str:
    """A Prometheus duration (``5m``, ``30s``) divided by SCALE, in milliseconds."""
    match = _DURATION.fullmatch(duration)
    assert match, duration
    return f"{int(match[1]) * _SECONDS[match[2]] * 1000 // SCALE}ms"


@functools.cache
def carry_over(alert: str) -> float:
    """How long ``alert`` can stay active here after its cause ends, in seconds.

    Its longest range window, scaled (a rate over ``[5m]`` stays up for that
    long), and two evaluations to notice: an episode that began in the phase
    before a quiet one may run that far into it without the quiet phase's
    load having anything to do with it.
    """
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                windows = [int(m[1]) * _SECONDS[m[2]] for m in _WINDOW.finditer(rule["expr"])]
                return max(windows, default=0) / SCALE + 2 * EVALUATION
    raise KeyError(alert)


_WINDOW = re.compile(r"\[(\d+)([smh])\]")


def scaled_rules() -> dict[str, Any]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+[smh])\]", lambda m: f"[{scaled(m[1])}]", rule["expr"])
            rule["for"] = scaled(rule["for"])
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = scaled(rule["keep_firing_for"])
    return rules


def unit_one_gauge_renames() -> list[dict[str, Any]]:
    """metric_relabel_configs giving unit-`1` gauges the Collector's `_ratio` suffix."""
    renames = []
    for spec in contract.METRICS.values():
        if spec.unit == "1" and spec.data_type is contract.DataType.GAUGE:
            python_name = spec.prometheus_name.removesuffix("_ratio")
            renames.append(
                {
                    "source_labels": ["__name__"],
                    "regex": python_name,
                    "target_label": "__name__",
                    "replacement": spec.prometheus_name,
                }
            )
    assert renames  # backpressure.pool.usage
    return renames


@dataclass
class Prometheus:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, target: str) -> None:
        executable = shutil.which("prometheus")
        assert executable, "prometheus not found: run `python scripts/ensure_promtool.py`"
        interval = scaled("15s")
        (self.directory / "alerts.yml").write_text(yaml.safe_dump(scaled_rules()))
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    # The Collector's exporter turns service.name into `job`.
                    "job_name": SERVICE,
                    "static_configs": [{"targets": [target]}],
                    "metric_relabel_configs": unit_one_gauge_renames(),
                }
            ],
        }
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [
                executable,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "prometheus.log").open("wb"),
        )
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, (self.directory / "prometheus.log").read_text()
                time.sleep(0.2)
        raise AssertionError("Prometheus did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def has_data(self, expr: str) -> bool:
        return bool(self.api("query", query=expr)["result"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def prometheus(tmp_path: Path) -> Any:
    server = Prometheus(tmp_path)
    yield server
    server.stop()


def dashboard_queries() -> dict[str, str]:
    """Every panel query as Grafana sends it with the variables at All."""
    board = json.loads(DASHBOARD.read_text())
    rate_interval = f"{4 * int(scaled('15s').removesuffix('ms'))}ms"  # Grafana: 4 scrapes
    queries = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            expr = expr.replace("$__range", "60s")
            queries[f"{panel['title']} {target['refId']}"] = re.sub(r"\$\w+", ".*", expr)
    return queries


def variable_values(prometheus: Prometheus) -> dict[str, list[str]]:
    """Each dashboard variable's values, asked the way Grafana asks (label values API)."""
    values = {}
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector = re.sub(r"\$\w+", ".*", match[1])
        values[variable["name"]] = prometheus.api(
            f"label/{match[2]}/values", **{"match[]": selector}
        )
    return values


class Demo:
    """The demo as a process, its stdout read line by line; ``on_phase`` runs as each begins."""

    def __init__(
        self,
        tmp_path: Path,
        metrics_port: int,
        limiter_redis_url: str,
        on_phase: Callable[[str], None],
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {
            "OTEL_SERVICE_NAME": SERVICE,
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
            "OTEL_TRACES_EXPORTER": "none",
            # idle keys are evicted (the dashboard's evictions panel) within the run
            "OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_EVICTION_INTERVAL": "2",
        }
        self.summary_path = tmp_path / "summary.json"
        self.on_phase = on_phase
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otel_backpressure.demo", "--duration", str(DURATION),
             "--interval", "5", "--summary-json", str(self.summary_path),
             "--limiter-redis-url", limiter_redis_url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.started = time.time()
        self.lines: list[str] = []
        self.phases: dict[str, float] = {}  # phase name -> when its line arrived (epoch s)
        self.errors: list[BaseException] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.match(r"-- phase (\w+):", line)
            if match and match[1] not in self.phases:
                self.phases[match[1]] = time.time()
                try:
                    self.on_phase(match[1])
                except Exception as exc:  # reported by finish()
                    self.errors.append(exc)

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self) -> str:
        _, stderr = self.process.communicate(timeout=60)
        self._reader.join(timeout=30)
        assert not self.errors, self.errors
        assert self.process.returncode == 0, "".join(self.lines) + stderr
        assert "Traceback" not in stderr, stderr
        return "".join(self.lines)

    def window(self, phase: str, ended: float) -> tuple[float, float]:
        """When ``phase`` began and ended (epoch seconds)."""
        later = [self.phases[p] for p in PHASES[PHASES.index(phase) + 1 :] if p in self.phases]
        return self.phases[phase], min(later, default=ended)


@dataclass
class Episode:
    """One stretch of an alert being active (pending, then maybe firing), from ALERTS."""

    labels: dict[str, str]
    start: float
    end: float  # the last evaluation that found it active
    firing: float | None = None
    samples: list[tuple[float, str]] = field(default_factory=list)

    def active_between(self, start: float, end: float, state: str | None = None) -> bool:
        return any(start <= t < end and state in (None, s) for t, s in self.samples)


def alert_episodes(prometheus: Prometheus, start: float, end: float) -> list[Episode]:
    """Every alert's active stretches over [start, end], read from Prometheus's ALERTS series.

    Prometheus writes ``ALERTS{alertstate="pending"|"firing"}`` at each
    evaluation of an active alert and marks it stale when it resolves, so a
    range query at half the evaluation interval sees each stretch to within
    one evaluation.
    """
    data = prometheus.api(
        "query_range", query="ALERTS", start=f"{start:.3f}", end=f"{end:.3f}",
        step=f"{EVALUATION / 2}",
    )  # fmt: skip
    samples: dict[tuple[tuple[str, str], ...], list[tuple[float, str]]] = {}
    for series in data["result"]:
        labels = dict(series["metric"])
        state = labels.pop("alertstate")
        samples.setdefault(tuple(sorted(labels.items())), []).extend(
            (float(t), state) for t, _ in series["values"]
        )
    episodes = []
    for key, points in samples.items():
        points.sort()
        current: Episode | None = None
        for t, state in points:
            if current is None or t - current.end > 1.2 * EVALUATION:  # absent an evaluation
                current = Episode(dict(key), t, t)
                episodes.append(current)
            current.end = t
            current.samples.append((t, state))
            if state == "firing" and current.firing is None:
                current.firing = t
    return sorted(episodes, key=lambda e: e.start)


def shipped(seconds: float) -> str:
    """Compressed seconds as the shipped 15 s intervals would take them."""
    real = seconds * SCALE
    return f"{real / 60:.1f} min" if real >= 90 else f"{real:.0f} s"


def trouble(demo: Demo, expected: Expected, ended: float) -> tuple[float, float]:
    """When the trouble that must fire the alert began and ended (epoch seconds)."""
    return demo.window(expected.fires_in, ended)[0], demo.window(expected.last, ended)[1]


def shown(labels: dict[str, str]) -> dict[str, str]:
    """An ALERTS series' labels without those every one has."""
    return {k: v for k, v in labels.items() if k not in {"__name__", "job", "severity"}}


def times_fired(episodes: list[Episode]) -> dict[str, int]:
    """How many of the episodes fired, per series (its labels, as shown)."""
    fired: dict[str, int] = {}
    for e in episodes:
        key = json.dumps(shown(e.labels), sort_keys=True)
        fired[key] = fired.get(key, 0) + (e.firing is not None)
    return fired


def alert_timings(
    demo: Demo, episodes: list[Episode], ended: float, outage: dict[str, float]
) -> dict[str, Any]:
    """What each alert did, by the phases of the scenario (seconds, compressed).

    Per alert: the phase that must fire it, the seconds from that phase's
    start to pending and to firing (and the same at the shipped intervals),
    from the phase's end to resolved, how many times each of its series fired
    in that trouble, its episodes, and what was active in its must-not-fire
    phase (its own series in any state, any series firing).
    """

    def since(when: float) -> float:
        return round(when - demo.started, 1)

    timings: dict[str, Any] = {}
    for alert, expected in EXPECTED.items():
        begun, over = trouble(demo, expected, ended)
        quiet = demo.window(expected.quiet_in, ended)
        own = [e for e in episodes if matches(e.labels) == alert]
        inside = [e for e in own if begun <= e.start < over]
        pending = inside[0].start - begun if inside else None
        firing = next((e.firing - begun for e in inside if e.firing is not None), None)
        timings[alert] = {
            "fires_in": expected.fires_in,
            "through": expected.last,
            "labels": expected.labels,
            "pending_after_s": None if pending is None else round(pending, 1),
            "firing_after_s": None if firing is None else round(firing, 1),
            "firing_after_shipped": None if firing is None else shipped(firing),
            "resolved_after_phase_s": (
                round(max(e.end for e in inside) - over, 1) if inside else None
            ),
            "times_fired": times_fired(inside),
            "pending_elsewhere": [
                {"from_s": since(e.start), "to_s": since(e.end), "fired": e.firing is not None}
                for e in own
                if e not in inside
            ],
            "episodes": [
                {
                    "labels": shown(e.labels),
                    "from_s": since(e.start),
                    "to_s": since(e.end),
                    "fired": e.firing is not None,
                }
                for e in own
            ],
            "quiet_in": expected.quiet_in,
            "why_quiet": expected.why_quiet,
            "active_in_quiet_phase": [
                e.labels
                for e in episodes
                if e.labels["alertname"] == alert
                and e.active_between(*quiet, state=None if matches(e.labels) else "firing")
                and not (e.start < quiet[0] and e.end <= quiet[0] + carry_over(alert))
            ],
        }
    return {
        "scale": SCALE,
        "evaluation_s": EVALUATION,
        "phases_s": {phase: since(when) for phase, when in demo.phases.items()},
        "ended_s": since(ended),
        "redis_s": {event: since(when) for event, when in outage.items()},
        "alerts": timings,
        "also_active": [
            {
                "labels": shown(e.labels),
                "from_s": since(e.start),
                "to_s": since(e.end),
                "fired": e.firing is not None,
            }
            for e in episodes
            if matches(e.labels) is None
        ],
    }


def markdown_table(report: dict[str, Any]) -> list[str]:
    """The report as docs/alerts.md shows it: one row per alert."""

    def cell(seconds: float | None) -> str:
        return "never" if seconds is None else f"{seconds:.0f} s ({shipped(seconds)})"

    lines = [
        f"phases (s from the start): {report['phases_s']}, ended {report['ended_s']}; "
        f"limiter's Redis: {report['redis_s']}",
        "| alert | fired by (phases) | pending after | firing after | times fired "
        "| resolved after the phases | must not fire in |",
        "|---|---|---|---|---|---|---|",
    ]
    for alert, t in report["alerts"].items():
        phases = (
            t["fires_in"] if t["through"] == t["fires_in"] else f"{t['fires_in']}-{t['through']}"
        )
        fired = t["times_fired"].values()
        lines.append(
            f"| `{alert}` | {phases} | {cell(t['pending_after_s'])} "
            f"| {cell(t['firing_after_s'])} | {max(fired, default=0)} "
            f"({len(fired)} series) | {cell(t['resolved_after_phase_s'])} "
            f"| {t['quiet_in']}: {t['why_quiet']} |"
        )
    lines += [
        f"{alert} also active outside its phase: {e['from_s']}-{e['to_s']} s"
        + (" FIRED" if e["fired"] else ", pending only")
        for alert, t in report["alerts"].items()
        for e in t["pending_elsewhere"]
    ]
    lines += [
        f"also active (not its scenario): {o['labels']} {o['from_s']}-{o['to_s']} s"
        + (" FIRED" if o["fired"] else ", pending only")
        for o in report["also_active"]
    ]
    return lines


@pytest.fixture
def limiter_redis() -> Iterator[PrivateRedis]:
    """The demo limiter's own redis-server on a free port: this test stops and restarts it."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def test_dashboard_and_alerts_on_a_real_prometheus(
    tmp_path: Path, prometheus: Prometheus, limiter_redis: PrivateRedis
) -> None:
    rules = {
        rule["alert"]: rule["expr"] for group in scaled_rules()["groups"] for rule in group["rules"]
    }
    assert set(EXPECTED) == set(rules), "every alert needs a phase that fires it"
    metrics_port = free_port()
    prometheus.start(f"127.0.0.1:{metrics_port}")
    outage: dict[str, float] = {}

    def redis_outage(phase: str) -> None:
        if phase == "outage":
            limiter_redis.stop()
            outage["stopped"] = time.time()
        elif phase == "recovery" and "stopped" in outage:
            limiter_redis.start()  # the same port, empty: no keys, no scripts loaded
            outage["started"] = time.time()

    demo = Demo(tmp_path, metrics_port, limiter_redis.url, redis_outage)

    # the expressions as Prometheus evaluates them here: windows compressed like
    # the scrapes, so a late, short phase is as much of each window as it would be
    queries = {**dashboard_queries(), **{f"alert {name}": expr for name, expr in rules.items()}}
    answered: set[str] = set()
    variables: dict[str, list[str]] = {}
    while demo.running():
        for title, expr in queries.items():
            if title not in answered and prometheus.has_data(expr):
                answered.add(title)
        if "recovery" in demo.phases and not variables:
            variables = variable_values(prometheus)
        time.sleep(1.0)
    stdout = demo.finish()
    ended = time.time()  # the demo stopped serving metrics: everything goes stale from here
    assert set(demo.phases) == set(PHASES), stdout

    versions = prometheus.api(
        "label/otel_scope_version/values", **{"match[]": '{otel_scope_name="otel_backpressure"}'}
    )
    episodes = alert_episodes(prometheus, demo.started, ended + 5)
    summary = json.loads(demo.summary_path.read_text())

    report = alert_timings(demo, episodes, ended, outage)
    (tmp_path / "alert_timings.json").write_text(json.dumps(report, indent=2))
    detail = "\n".join([*markdown_table(report), f"written to {tmp_path / 'alert_timings.json'}"])
    print(detail)
    timings = report["alerts"]
    others = [e for e in episodes if matches(e.labels) is None]

    # -- the scenario ran, and the outage was real -------------------------------
    assert versions == [otel_backpressure.__version__], versions
    assert set(outage) == {"stopped", "started"}, outage
    errors = summary["rate_limit_store_errors"].get("player", {})
    assert errors.get("circuit_open", 0) > 0, summary["rate_limit_store_errors"]
    assert variables.get("service") == [SERVICE], variables
    assert variables.get("pool"), variables
    assert "player" in variables.get("policy", []), variables
    assert not set(queries) - answered, f"no data for {sorted(set(queries) - answered)}"

    # -- each alert: fires in its phase and only there, resolves, silent in its quiet phase.
    # Elsewhere it may go pending and not fire: holding back a passing shape
    # (a start-up stall, a small policy's noise) is what `for:` is for.
    calm = demo.window("calm", ended)
    for alert, expected in EXPECTED.items():
        begun, over = trouble(demo, expected, ended)
        own = [e for e in episodes if matches(e.labels) == alert]
        inside = [e for e in own if begun <= e.start < over]
        assert inside, f"{alert} never went pending or firing in {expected.fires_in}\n{detail}"
        if alert not in MAY_ONLY_GO_PENDING:
            assert any(e.firing for e in inside), f"{alert} never fired\n{detail}"
        flapping = {k: n for k, n in timings[alert]["times_fired"].items() if n > 1}
        assert not flapping, f"{alert} fired more than once in its trouble: {flapping}\n{detail}"
        stray = [e for e in own if e not in inside and e.firing]
        assert not stray, f"{alert} fired outside {expected.fires_in}\n{detail}"
        still = [e for e in own if e.firing and e.end >= ended - 2 * EVALUATION]
        assert not still, f"{alert} still firing at the end\n{detail}"
        assert not timings[alert]["active_in_quiet_phase"], (
            f"{alert} active in {expected.quiet_in}\n{detail}"
        )
    firing_in_calm = [e.labels for e in episodes if e.active_between(*calm, state="firing")]
    assert not firing_in_calm, f"fired while the demo was calm: {firing_in_calm}"
    fired_elsewhere = [e.labels for e in others if e.firing]
    assert not fired_elsewhere, f"fired outside their scenario: {fired_elsewhere}"
