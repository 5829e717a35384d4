"""The committed Grafana dashboard is what build_dashboard.py makes, and is well formed."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

import contract

GRAFANA = Path(__file__).resolve().parents[3] / "collector-config" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "backpressure.json"


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_committed_json_is_generated_by_the_builder() -> None:
    assert DASHBOARD.read_text() == builder().render(), (
        "run `python collector-config/grafana/build_dashboard.py` and commit the JSON"
    )


def test_every_query_uses_the_provisioned_datasource_uid() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    prometheus = [ds for ds in provisioned["datasources"] if ds["type"] == "prometheus"]
    assert len(prometheus) == 1
    uid = prometheus[0]["uid"]
    board = dashboard()
    refs = [variable["datasource"] for variable in board["templating"]["list"]]
    for panel in board["panels"]:
        if panel["type"] != "row":
            refs.append(panel["datasource"])
            refs += [target["datasource"] for target in panel["targets"]]
    assert refs
    assert all(ref == {"type": "prometheus", "uid": uid} for ref in refs)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_panels_explain_themselves_and_refids_are_unique() -> None:
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"], panel
        assert panel["description"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs) > 0, panel["title"]


def test_variables_for_service_pool_and_policy_feed_the_queries() -> None:
    board = dashboard()
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert names == ["service", "pool", "policy"]
    text = DASHBOARD.read_text()
    for name in names:
        assert f'=~\\"${name}\\"' in text, name


def test_variables_offer_only_values_with_this_packages_series() -> None:
    """A scrape job such as `otel-collector` has no series of ours, so it is not offered."""
    from otel_backpressure._shared import SCOPE

    for variable in dashboard()["templating"]["list"]:
        assert f'otel_scope_name="{SCOPE}"' in variable["definition"], variable["name"]
        assert variable["query"]["query"] == variable["definition"]


def test_dashboard_provider_loads_the_mounted_directory() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text()
    )["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert dashboard()["uid"] == "otel-backpressure"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    assert executable, "promtool not found: run `python scripts/ensure_promtool.py`"
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


GRAFANA_MACROS = {"$__rate_interval": "1m", "$__range": "1h"}


def as_promql(expr: str) -> str:
    """A panel query as Prometheus receives it, with the variables at their defaults (All)."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return re.sub(r"\$\w+", ".*", expr)


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), so a typo cannot ship."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": as_promql(expr)}
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        for expr in [target["expr"]]
    ]
    assert len(rules) > 20
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


SAMPLE_VALUES = {  # free-form attribute values for the synthetic series
    contract.POOL_NAME: "db:5432/game",
    contract.POLICY: "login",
    contract.ERROR_TYPE: "DatabaseError",
    contract.LOOP_NAME: "main",
    contract.THREAD_POOL_NAME: "anyio",
    contract.SERVER_ADDRESS: "api.example",
    contract.SERVER_PORT: "443",
}
BUCKETS = ("0.005", "0.05", "0.5", "+Inf")


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    rendered = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def synthetic_series() -> list[dict[str, str]]:
    """promtool input series shaped like the package's output after the collector.

    Every contract metric, with every fixed attribute value (each result, state,
    reason, outcome), scraped every 15s for 20 minutes.
    """
    result = []
    for spec in contract.METRICS.values():
        keys = list(spec.attributes)
        choices = [sorted(spec.allowed_values[key] or {SAMPLE_VALUES[key]}) for key in keys]
        for values in itertools.product(*choices):
            labels = {
                contract.prometheus_label_name(key): value
                for key, value in zip(keys, values, strict=True)
            }
            labels |= {"job": "game", "instance": "i-1", "otel_scope_name": contract.SCOPE_NAME}
            family = spec.prometheus_name
            if spec.data_type is contract.DataType.HISTOGRAM:
                for rank, bound in enumerate(BUCKETS, start=1):
                    result.append(
                        series(f"{family}_bucket", {**labels, "le": bound}, f"0+{rank}x80")
                    )
                result.append(series(f"{family}_sum", labels, "0+0.5x80"))
                result.append(series(f"{family}_count", labels, f"0+{len(BUCKETS)}x80"))
            elif spec.data_type is contract.DataType.MONOTONIC_SUM:
                result.append(series(family, labels, "0+5x80"))
            elif spec.data_type is contract.DataType.GAUGE:
                result.append(series(family, labels, "0.5x80"))
            else:
                result.append(series(family, labels, "3x80"))
    return result


def test_every_panel_query_returns_numbers_for_the_package_output(tmp_path: Path) -> None:
    """Evaluated by promtool on series shaped like the package's: no panel stays empty.

    This catches what name checks cannot: a label value that never occurs, a
    vector match that drops every series, a division that yields only NaN.
    """
    rules, checks = [], []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            name = f"Panel{panel['id']}{target['refId']}"
            query = as_promql(target["expr"])
            rules.append({"alert": name, "expr": f"count(({query}) >= 0) > 0"})
            checks.append(
                {"eval_time": "10m", "alertname": name, "exp_alerts": [{"exp_labels": {}}]}
            )
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    (tmp_path / "queries.test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["queries.yml"],
                "evaluation_interval": "15s",
                "tests": [
                    {
                        "interval": "15s",
                        "input_series": synthetic_series(),
                        "alert_rule_test": checks,
                    }
                ],
            }
        )
    )
    result = promtool("test", "rules", str(tmp_path / "queries.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_explain_every_panel() -> None:
    docs = (GRAFANA.parents[1] / "docs" / "collector.md").read_text()
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert f"| {panel['title']} |" in docs, panel["title"]
    assert dashboard()["title"] in docs
