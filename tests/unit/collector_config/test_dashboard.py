"""The committed Grafana dashboard is what build_dashboard.py makes, and is well formed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

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


def test_dashboard_provider_loads_the_mounted_directory() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text()
    )["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert dashboard()["uid"] == "otel-backpressure"


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
    executable = shutil.which("promtool")
    assert executable, "promtool not found: run `python scripts/ensure_promtool.py`"
    result = subprocess.run(
        [executable, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
