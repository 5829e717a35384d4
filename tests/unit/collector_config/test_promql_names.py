"""Every metric and label the dashboard and the alert rules query is one the package emits.

Names come from tests/contract.py after the OpenTelemetry -> Prometheus
translation, so a renamed metric, a forgotten `_total`/`_seconds`/`_ratio`
suffix or a misspelt label fails here instead of as an empty panel or an
alert that can never fire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import contract

CONFIG = Path(__file__).resolve().parents[3] / "collector-config"
DASHBOARD = CONFIG / "grafana" / "dashboards" / "backpressure.json"
ALERTS = CONFIG / "prometheus" / "alerts.yml"
ALERT_TESTS = CONFIG / "prometheus" / "alerts.test.yml"

# Labels the collector's Prometheus exporter adds to every series: `job` and
# `instance` from service.name / service.instance.id, and the scope labels.
EXPORTER_LABELS = frozenset(
    {"job", "instance", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}
)

# Series name -> the labels it carries, for every metric of the contract.
SERIES: dict[str, frozenset[str]] = {
    series: frozenset(spec.prometheus_labels) | EXPORTER_LABELS | {"le"}
    if series.endswith("_bucket")
    else frozenset(spec.prometheus_labels) | EXPORTER_LABELS
    for spec in contract.METRICS.values()
    for series in spec.prometheus_series
}

KEYWORDS = frozenset(
    {
        # aggregation operators
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        # binary operators and modifiers
        "and", "or", "unless", "bool", "on", "ignoring", "group_left", "group_right",
        "by", "without", "offset", "atan2",
        # literals
        "Inf", "NaN", "inf", "nan",
    }
)  # fmt: skip

_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SELECTOR = re.compile(rf"(?<![\w.$])({_IDENT})?\s*\{{((?:[^}}\"]|\"(?:[^\"\\]|\\.)*\")*)\}}")
_MATCHER = re.compile(rf"({_IDENT})\s*(?:=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"")
_OFFSET = re.compile(r"\boffset\s+\S+")
_NAME = re.compile(rf"(?<![\w.$])({_IDENT})(?![\w:])(?!\s*\()")
_TEMPLATE_LABEL = re.compile(r"\{\{\s*\.?\$?(?:labels\.)?(\w+)\s*\}\}")
_ANNOTATION_LABEL = re.compile(r"\$labels\.(\w+)")


@dataclass
class Query:
    """What one PromQL expression uses: metric names, selector labels, grouping labels."""

    source: str
    metrics: set[str] = field(default_factory=set)
    selector_labels: dict[str, set[str]] = field(default_factory=dict)
    grouping_labels: set[str] = field(default_factory=set)


def parse(expr: str, source: str) -> Query:
    query = Query(source)
    for metric, matchers in _SELECTOR.findall(expr):
        labels = {label for label in _MATCHER.findall(matchers) if label != "__name__"}
        query.selector_labels.setdefault(metric, set()).update(labels)
    for group in _GROUPING.findall(expr):
        query.grouping_labels.update(label.strip() for label in group.split(",") if label.strip())
    stripped = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", expr)
    for pattern in (_RANGE, _STRING, _OFFSET, _GROUPING):
        stripped = pattern.sub(" ", stripped)
    query.metrics = {name for name in _NAME.findall(stripped) if name not in KEYWORDS}
    query.metrics.update(metric for metric in query.selector_labels if metric)
    return query


def parse_label_values(definition: str, source: str) -> tuple[Query, str]:
    """Grafana's ``label_values([selector, ]label)`` variable query."""
    match = re.fullmatch(r"label_values\((?:(.*),)?\s*(\w+)\s*\)", definition.strip())
    assert match, f"{source}: not a label_values() query: {definition!r}"
    selector, label = match.groups()
    return parse(selector or "", source), label


def dashboard_queries() -> Iterator[tuple[Query, str]]:
    """(query, legend) for every panel target of the dashboard."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            source = f"dashboard panel {panel['title']!r} {target['refId']}"
            yield parse(target["expr"], source), target.get("legendFormat", "")


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        yield from group["rules"]


def all_queries() -> list[Query]:
    queries = [query for query, _ in dashboard_queries()]
    queries += [parse(rule["expr"], f"alert {rule['alert']}") for rule in alert_rules()]
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        query, _ = parse_label_values(variable["definition"], f"variable {variable['name']}")
        queries.append(query)
    return queries


def query_ids() -> list[str]:
    return [query.source for query in all_queries()]


# -- the parser itself --------------------------------------------------------


def test_parse_finds_metrics_and_labels_but_not_functions_or_strings() -> None:
    query = parse(
        'histogram_quantile(0.95, sum by (le, pool) (rate(a_bucket{job=~"$svc", x="b{c}"}'
        "[$__rate_interval]))) / on (job) group_left max(b offset 5m) > bool 1e3 and c",
        "example",
    )
    assert query.metrics == {"a_bucket", "b", "c"}
    assert query.selector_labels == {"a_bucket": {"job", "x"}}
    assert query.grouping_labels == {"le", "pool", "job"}


def test_parse_label_values() -> None:
    query, label = parse_label_values('label_values(m{job=~"$s"}, pool)', "v")
    assert (query.metrics, label) == ({"m"}, "pool")
    query, label = parse_label_values("label_values(job)", "v")
    assert (query.metrics, label) == (set(), "job")


# -- the dashboard and the alerts against the contract ------------------------


@pytest.mark.parametrize("query", all_queries(), ids=query_ids())
def test_query_uses_only_emitted_metrics_and_their_labels(query: Query) -> None:
    unknown = query.metrics - set(SERIES)
    assert not unknown, f"{query.source}: {sorted(unknown)} are not emitted by the package"
    for metric, labels in query.selector_labels.items():
        allowed = SERIES[metric] if metric else frozenset().union(*SERIES.values())
        assert labels <= allowed, f"{query.source}: {metric} has no {sorted(labels - allowed)}"
    available = frozenset().union(*(SERIES[metric] for metric in query.metrics))
    assert query.grouping_labels <= available, (
        f"{query.source}: groups by {sorted(query.grouping_labels - available)}, "
        f"which {sorted(query.metrics)} do not carry"
    )


def test_every_contract_metric_is_on_the_dashboard() -> None:
    shown = set().union(*(query.metrics for query, _ in dashboard_queries()))
    missing = [
        spec.name for spec in contract.METRICS.values() if not shown & set(spec.prometheus_series)
    ]
    assert not missing, f"not on the dashboard: {missing}"
    # Percentiles need the buckets of every histogram.
    for spec in contract.METRICS.values():
        if spec.data_type is contract.DataType.HISTOGRAM:
            assert f"{spec.prometheus_name}_bucket" in shown, spec.name


def test_dashboard_shows_every_rate_limit_result() -> None:
    text = DASHBOARD.read_text()
    results = contract.ATTRIBUTE_VALUES[contract.RESULT]
    assert results is not None
    for result in results - {"allowed"}:
        assert f'backpressure_rate_limit_result=\\"{result}\\"' in text, result


@pytest.mark.parametrize(
    ("query", "legend"), list(dashboard_queries()), ids=[q.source for q, _ in dashboard_queries()]
)
def test_legends_use_labels_the_query_keeps(query: Query, legend: str) -> None:
    used = set(_TEMPLATE_LABEL.findall(legend))
    kept = query.grouping_labels or frozenset().union(*(SERIES[m] for m in query.metrics))
    assert used <= kept, f"{query.source}: legend uses {sorted(used - kept)}"


def test_variables_select_labels_that_exist() -> None:
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        query, label = parse_label_values(variable["definition"], variable["name"])
        carriers = query.metrics or set(SERIES)
        assert all(label in SERIES[metric] for metric in carriers), variable["name"]


@pytest.mark.parametrize("rule", list(alert_rules()), ids=lambda rule: rule["alert"])
def test_alert_annotations_use_labels_the_alert_keeps(rule: dict[str, Any]) -> None:
    query = parse(rule["expr"], rule["alert"])
    assert query.grouping_labels, f"{rule['alert']}: aggregate by the labels it reports"
    for text in rule["annotations"].values():
        used = set(_ANNOTATION_LABEL.findall(text))
        assert used <= query.grouping_labels, f"{rule['alert']}: {used - query.grouping_labels}"


def test_alert_unit_tests_feed_the_emitted_series() -> None:
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in case["input_series"]:
            query = parse(series["series"], f"input series {series['series']}")
            (metric,) = query.metrics
            assert metric in SERIES, metric
            assert query.selector_labels[metric] <= SERIES[metric], series["series"]
