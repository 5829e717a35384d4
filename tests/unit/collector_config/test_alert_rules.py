"""The alert rules and the Prometheus config pass promtool, and every alert is unit-tested.

promtool is a real dependency of these tests: scripts/ensure_promtool.py
installs it (the nox `tests` session runs it first). Without it they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[3] / "collector-config" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    assert executable, "promtool not found: run `python scripts/ensure_promtool.py`"
    return subprocess.run(
        [executable, *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def alert_names() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"]]


def rule_tests() -> list[dict[str, Any]]:
    cases = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    return [check for case in cases for check in case["alert_rule_test"]]


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("check", "config", "prometheus.yml"),
        ("test", "rules", "alerts.test.yml"),
    ],
    ids=" ".join,
)
def test_promtool_passes(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests are live: a wrong expected label makes promtool fail."""
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
    broken = (
        (PROMETHEUS / "alerts.test.yml").read_text().replace("severity: critical", "severity: page")
    )
    (tmp_path / "alerts.test.yml").write_text(broken)
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert result.returncode != 0
    assert 'severity="critical"' in result.stdout + result.stderr


@pytest.mark.parametrize("alert", alert_names())
def test_each_alert_has_a_firing_and_a_quiet_case(alert: str) -> None:
    checks = [check for check in rule_tests() if check["alertname"] == alert]
    assert any(check["exp_alerts"] for check in checks), f"{alert}: no case where it fires"
    assert any(not check["exp_alerts"] for check in checks), f"{alert}: no case where it does not"


@pytest.mark.parametrize("alert", alert_names())
def test_each_alert_has_severity_for_and_annotations(alert: str) -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == alert]
    assert rule["labels"]["severity"] in {"info", "warning", "critical"}
    assert rule.get("for"), f"{alert}: fires on a single evaluation"
    assert {"summary", "description"} <= set(rule["annotations"])


_DURATION = re.compile(r"(\d+)([smh])")


def seconds(duration: str) -> int:
    """A Prometheus duration (``2m``, ``1m30s``) in seconds."""
    assert re.fullmatch(r"(\d+[smh])+", duration), duration
    return sum(
        int(n) * {"s": 1, "m": 60, "h": 3600}[unit] for n, unit in _DURATION.findall(duration)
    )


def multiwindow_rules() -> list[dict[str, Any]]:
    """The rules that read a long window and a short "still happening" one."""
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [
        rule
        for group in rules["groups"]
        for rule in group["rules"]
        if len(set(re.findall(r"\[(\w+)\]", rule["expr"]))) > 1
    ]


def test_seconds_reads_prometheus_durations() -> None:
    assert [seconds(d) for d in ("15s", "2m", "1m30s", "1h")] == [15, 120, 90, 3600]


@pytest.mark.parametrize("rule", multiwindow_rules(), ids=lambda rule: rule["alert"])
def test_a_short_window_rule_holds_through_the_pauses_of_one_incident(rule: dict[str, Any]) -> None:
    """The short window empties between bursts; keep_firing_for bridges that (docs/alerts.md).

    Short window + keep_firing_for is the long window, the longest pause that
    is still one incident, and `for:` outlasts the short window by a minute,
    so a burst shorter than that never fires. alerts.test.yml proves the
    behaviour; this keeps the numbers of every such rule in step.
    """
    short, long = sorted({seconds(w) for w in re.findall(r"\[(\w+)\]", rule["expr"])})
    assert seconds(rule.get("keep_firing_for", "0s")) + short == long, rule["alert"]
    assert seconds(rule["for"]) >= short + 60, rule["alert"]


def test_docs_explain_every_alert() -> None:
    docs = (PROMETHEUS.parents[1] / "docs" / "collector.md").read_text()
    for alert in alert_names():
        assert f"| `{alert}` |" in docs, alert


def github_anchors(markdown: str) -> dict[str, str]:
    """Anchor -> heading text, as GitHub makes them: lower case, punctuation out, spaces -."""
    anchors: dict[str, str] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = re.match(r"(#{1,6}) (.+)", line)
        if in_code or not match:
            continue
        heading = match[2].strip()
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        unique, n = anchor, 0
        while unique in anchors:  # GitHub numbers repeats: -1, -2, ...
            n += 1
            unique = f"{anchor}-{n}"
        anchors[unique] = heading
    return anchors


def project_url(label: str) -> str:
    """An entry of pyproject.toml's [project.urls], as the installed metadata has it."""
    entries = metadata("opentelemetry-instrumentation-backpressure").get_all("Project-URL") or []
    urls = dict(entry.split(", ", 1) for entry in entries)
    return urls[label]


def test_github_anchors_follow_githubs_rule() -> None:
    anchors = github_anchors("# A, b: c\n## Proven on a real Prometheus\n## A, b: c\n```\n# x\n```")
    assert anchors == {
        "a-b-c": "A, b: c",
        "proven-on-a-real-prometheus": "Proven on a real Prometheus",
        "a-b-c-1": "A, b: c",
    }


def test_each_alert_links_its_runbook_section() -> None:
    """`runbook_url` is absolute, on the project's docs, at an anchor of docs/alerts.md."""
    runbook = (PROMETHEUS.parents[1] / "docs" / "alerts.md").read_text()
    anchors = github_anchors(runbook)
    # the Documentation URL is the docs folder (a tree); a file in it is a blob
    docs = project_url("Documentation").replace("/tree/", "/blob/")
    assert docs.startswith("https://")
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        alert = rule["alert"]
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == f"{docs}/alerts.md", url
        assert anchors.get(anchor) == alert, f"{url}: no section {alert} in docs/alerts.md"
        section = runbook.split(f"## {alert}\n", 1)[1].split("\n## ", 1)[0]
        assert "**Reads**" in section
        assert "**What to do**" in section
