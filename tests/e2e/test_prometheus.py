"""The dashboard and the alert rules on a real Prometheus server scraping the demo.

Prometheus (Debian's ``prometheus`` package, installed by
scripts/ensure_promtool.py) runs on a free port with its own data directory
and scrapes the demo through ``opentelemetry-exporter-prometheus``
(``OTEL_METRICS_EXPORTER=prometheus``). The demo runs its whole scenario
(calm, pool rush, rate-limit storm, matchmaker bug, threads, recovery; see
demo/scenario.py) in ``DURATION`` seconds.

To fit minutes, time is compressed by ``SCALE``: the scrape and evaluation
intervals (15 s in the shipped stack) and every duration in the rules (range
windows and ``for:``) are divided by it, so each rule sees as many samples per
window as it does in production. Thresholds and expressions are the shipped
ones. The Python exporter names one thing differently from the Collector's
Prometheus exporter: it does not add ``_ratio`` to gauges in unit ``1``
(``backpressure_pool_usage`` instead of ``backpressure_pool_usage_ratio``);
the scrape config renames those, as docs/collector.md explains. (It also
leaves ``job`` to the scrape config, which is named after the service here.)

Asserted: every dashboard query and every alert expression returns data at
some point of the scenario (for an alert the scenario does not trigger, the
series it reads) (except those on series the demo cannot produce:
store errors); the dashboard variables offer the demo's
service, pool and policies and nothing else; each pool, rate-limit, error,
HTTP and runtime alert goes pending only once the phase that should trigger it has begun, and
fires (the dry-run alert, whose `for:` is the longest, may only be pending);
no other alert fires at any time; none is active at the end of the recovery.
Every series of the package carries the package's scope version. Event rates
in the trouble phases are high enough that each compressed window holds about
as many events as the shipped window does at the alerts' thresholds.
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import contract
import otel_backpressure
from e2e.collector import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "collector-config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "collector-config" / "grafana" / "dashboards" / "backpressure.json"
SERVICE = "backpressure-demo"
SCALE = 30  # 15 s scrapes -> 0.5 s; a 10m window -> 20 s; for: 5m -> 10 s
DURATION = 240  # seconds of demo: rush 67 s, storm 41 s, bug 26 s, threads 34 s, recovery 48 s

# Which phase of the demo's scenario must trigger each alert, and for what.
POLICY = "backpressure_rate_limit_policy"
TRIGGERED_BY: dict[str, tuple[str, dict[str, str]]] = {
    "BackpressurePoolSaturated": ("rush", {}),
    "BackpressurePoolCheckoutsWaiting": ("rush", {}),
    "BackpressurePoolTimeouts": ("rush", {}),
    "BackpressureRateLimitRejecting": ("storm", {POLICY: "player"}),
    "BackpressureRateLimitDryRunWouldReject": ("storm", {POLICY: "player-proposed"}),
    "BackpressureUnhandledExceptions": ("bug", {"error_type": "RuntimeError"}),
    # the profile service slows from the storm through the bug phase: the game's HTTP pool
    "BackpressureHttpPoolSaturated": ("storm", {"server_address": "127.0.0.1"}),
    "BackpressureHttpRequestsQueueing": ("storm", {"server_address": "127.0.0.1"}),
    "BackpressureHttpPoolTimeouts": ("storm", {"server_address": "127.0.0.1"}),
    # sync exports fill anyio's limiter, a stats route blocks the loop
    "BackpressureEventLoopDelayHigh": ("threads", {"backpressure_event_loop_name": "MainThread"}),
    "BackpressureThreadPoolSaturated": ("threads", {"backpressure_thread_pool_name": "anyio"}),
}


# Alerts a phase may trigger as a side effect, depending on the machine. None
# now: the rush's leaderboard renders used to fill asyncio's default executor
# (cpu count + 4 threads) on a small machine; the demo gives it 32 threads.
MAY_FIRE: dict[str, tuple[str, dict[str, str]]] = {}


def matches(alert: dict[str, Any]) -> str | None:
    """The TRIGGERED_BY or MAY_FIRE entry an active alert is, if any."""
    name = alert["labels"]["alertname"]
    expected = {**TRIGGERED_BY, **MAY_FIRE}
    if name not in expected:
        return None
    wanted = expected[name][1]
    return name if all(alert["labels"].get(k) == v for k, v in wanted.items()) else None


# Series the demo cannot produce: its limiter is in memory (no store to fail)
# and it calls no HTTP service (no HTTP client pool). The alerts and panels on
# them are proven by promtool's unit tests and the parts' own tests.
NOT_IN_THE_DEMO = ("backpressure_rate_limit_store_errors_total",)

_DURATION = re.compile(r"(\d+)([smh])")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def scaled(duration: str) -> str:
    """A Prometheus duration (``5m``, ``30s``) divided by SCALE, in milliseconds."""
    match = _DURATION.fullmatch(duration)
    assert match, duration
    return f"{int(match[1]) * _SECONDS[match[2]] * 1000 // SCALE}ms"


def scaled_rules() -> dict[str, Any]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[(\d+[smh])\]", lambda m: f"[{scaled(m[1])}]", rule["expr"])
            rule["for"] = scaled(rule["for"])
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
    """The demo as a process, its stdout read line by line with arrival times."""

    def __init__(self, tmp_path: Path, metrics_port: int) -> None:
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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otel_backpressure.demo", "--duration", str(DURATION),
             "--interval", "5", "--summary-json", str(tmp_path / "summary.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self.phases: dict[str, float] = {}  # phase name -> when its line arrived
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.match(r"-- phase (\w+):", line)
            if match:
                self.phases.setdefault(match[1], time.monotonic())

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self) -> str:
        _, stderr = self.process.communicate(timeout=60)
        self._reader.join(timeout=10)
        assert self.process.returncode == 0, "".join(self.lines) + stderr
        assert "Traceback" not in stderr, stderr
        return "".join(self.lines)


def test_dashboard_and_alerts_on_a_real_prometheus(tmp_path: Path, prometheus: Prometheus) -> None:
    metrics_port = free_port()
    prometheus.start(f"127.0.0.1:{metrics_port}")
    demo = Demo(tmp_path, metrics_port)

    queries = dashboard_queries()
    # the expressions as Prometheus evaluates them here: windows compressed like
    # the scrapes, so a late, short phase is as much of each window as it would be
    rules = {
        rule["alert"]: rule["expr"] for group in scaled_rules()["groups"] for rule in group["rules"]
    }
    # An alert the scenario does not trigger (the store errors: the demo's
    # limiter is in memory) returns no data by design; its input series must,
    # under the names it reads.
    series = {name for spec in contract.METRICS.values() for name in spec.prometheus_series}
    for alert in [name for name in rules if name not in TRIGGERED_BY]:
        expr = rules.pop(alert)
        for name in sorted(series):
            if re.search(rf"\b{name}\b", expr):
                rules[f"{alert} input {name}"] = name
    answered: set[str] = set()
    first_active: dict[str, tuple[float, str]] = {}  # alert -> (when, state)
    first_firing: dict[str, float] = {}
    last_seen: dict[str, float] = {}
    active_in_first_calm: set[str] = set()
    last_active: set[str] = set()
    seen: dict[str, float] = {}  # every active alert with its labels -> first seen
    fired: set[str] = set()  # every alert with its labels that fired
    variables: dict[str, list[str]] = {}
    started = time.monotonic()
    while demo.running():
        now = time.monotonic()
        alerts = prometheus.api("alerts")["alerts"]
        last_active = {name for alert in alerts if (name := matches(alert))}
        for alert in alerts:
            labels = {k: v for k, v in alert["labels"].items() if k not in {"job", "severity"}}
            seen.setdefault(str(labels), now)
            if alert["state"] == "firing":
                fired.add(str(labels) if matches(alert) is None else alert["labels"]["alertname"])
            name = matches(alert)
            if name is None:
                continue
            first_active.setdefault(name, (now, alert["state"]))
            last_seen[name] = now
            if alert["state"] == "firing":
                first_firing.setdefault(name, now)
        if "rush" not in demo.phases:
            active_in_first_calm |= {a["labels"]["alertname"] for a in alerts if matches(a)}
        for title, expr in {**queries, **rules}.items():
            if title not in answered and prometheus.has_data(expr):
                answered.add(title)
        if "recovery" in demo.phases and not variables:
            variables = variable_values(prometheus)
        time.sleep(1.0)
    stdout = demo.finish()
    ended = time.monotonic()

    # Scope version: every series of the package carries it.
    versions = prometheus.api(
        "label/otel_scope_version/values", **{"match[]": '{otel_scope_name="otel_backpressure"}'}
    )
    report = [f"phases (s from start): { {p: round(t - started) for p, t in demo.phases.items()} }"]
    for alert, (phase, _) in {**TRIGGERED_BY, **MAY_FIRE}.items():
        begun = demo.phases.get(phase, ended) - started
        active = first_active.get(alert)
        firing = first_firing.get(alert)
        report.append(
            f"{alert}: phase {phase} at {begun:.0f}s, "
            + (f"{active[1]} at {active[0] - started:.0f}s" if active else "never active")
            + (f", firing at {firing - started:.0f}s" if firing else "")
            + (f", last active at {last_seen[alert] - started:.0f}s" if alert in last_seen else "")
        )
    report += [f"  seen {labels} at {when - started:.0f}s" for labels, when in seen.items()]
    print("\n".join(report))

    assert versions == [otel_backpressure.__version__], versions
    assert set(demo.phases) == {"calm", "rush", "storm", "bug", "threads", "recovery"}, stdout
    assert variables.get("service") == [SERVICE], variables
    assert variables.get("pool"), variables
    assert "player" in variables.get("policy", []), variables

    silent = set({**queries, **rules}) - answered
    impossible = {
        title
        for title, expr in {**queries, **rules}.items()
        if any(name in expr for name in NOT_IN_THE_DEMO)
    }
    assert silent == impossible, f"no data for {sorted(silent - impossible)}"

    assert not active_in_first_calm, f"active while the demo was calm: {active_in_first_calm}"
    for alert, (phase, _) in MAY_FIRE.items():
        if alert in first_active:
            assert first_active[alert][0] >= demo.phases[phase], f"{alert} before {phase}"
    for alert, (phase, _) in TRIGGERED_BY.items():
        assert alert in first_active, f"{alert} never went pending or firing\n" + "\n".join(report)
        assert first_active[alert][0] >= demo.phases[phase], f"{alert} before {phase}"
    for alert in TRIGGERED_BY.keys() - {"BackpressureRateLimitDryRunWouldReject"}:
        assert alert in first_firing, f"{alert} never fired\n" + "\n".join(report)
    # Nothing else fired at any time: a pending alert that never fired (a small
    # policy's noise, held back by `for:`) is what `for:` is for.
    expected = set(TRIGGERED_BY) | set(MAY_FIRE)
    assert fired <= expected, f"fired outside their scenario: {fired - expected}"
    assert not last_active, f"still active at the end of the recovery: {last_active}"
