"""The collector config wires the required components, and the compose stack fits together.

No Docker engine runs here, so the compose file is checked as data: the files
it mounts exist, and the addresses the services use to reach each other
(collector -> Jaeger, Prometheus -> collector, Grafana -> Prometheus/Jaeger)
name a service and a port that service really listens on.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[3] / "collector-config"


def load(relative: str) -> Any:
    return yaml.safe_load((CONFIG / relative).read_text())


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    loaded: dict[str, Any] = load("otel-collector.yaml")
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load("docker-compose.yaml")
    return loaded


def component_type(component_id: str) -> str:
    """`otlp_grpc/jaeger` -> `otlp_grpc`: the collector's `type[/name]` ids."""
    return component_id.split("/", 1)[0]


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def host(endpoint: str) -> str:
    return endpoint.split("://")[-1].rsplit(":", 1)[0]


# -- collector ------------------------------------------------------------------


def test_otlp_receiver_listens_on_grpc_and_http_on_all_interfaces(
    collector: dict[str, Any],
) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_memory_limiter_is_configured(collector: dict[str, Any]) -> None:
    limiter = collector["processors"]["memory_limiter"]
    assert limiter["check_interval"]  # 0s (the default) disables the limiter
    assert limiter.get("limit_mib") or limiter.get("limit_percentage")
    if "limit_mib" in limiter:
        assert 0 < limiter["spike_limit_mib"] < limiter["limit_mib"]


@pytest.mark.parametrize("signal", ["metrics", "traces"])
def test_pipeline_runs_memory_limiter_first_and_no_batch_processor(
    collector: dict[str, Any], signal: str
) -> None:
    """The batch processor is deprecated: pushing exporters batch after their queue."""
    pipeline = collector["service"]["pipelines"][signal]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["processors"][0] == "memory_limiter"
    assert "batch" not in {component_type(p) for p in pipeline["processors"]}


def test_pushing_exporters_batch_in_their_sending_queue(collector: dict[str, Any]) -> None:
    for exporter_id, exporter in collector["exporters"].items():
        if component_type(exporter_id) not in {"otlp_grpc", "otlp_http"}:
            continue  # prometheus is scraped; debug only logs
        queue = exporter["sending_queue"]
        assert queue["enabled"] is True, exporter_id
        batch = queue["batch"]
        assert batch["sizer"] in {"items", "bytes"}  # the only sizers batching accepts
        assert batch["flush_timeout"], exporter_id


def test_batch_sizes_fit_the_queue(collector: dict[str, Any]) -> None:
    """exporterhelper: min_size <= queue_size when the batch and the queue count alike."""
    for exporter_id, exporter in collector["exporters"].items():
        queue = exporter.get("sending_queue")
        if not queue or "batch" not in queue:
            continue
        queue_sizer = queue.get("sizer", "requests")
        batch = queue["batch"]
        if batch.get("sizer", queue_sizer) == queue_sizer:
            assert batch.get("min_size", 8192) <= queue.get("queue_size", 1000), exporter_id
        assert batch.get("max_size", 0) in (0, None) or batch["max_size"] >= batch["min_size"]


def test_prometheus_exporter_names_series_as_the_rules_read_them(
    collector: dict[str, Any],
) -> None:
    """The translation the alert rules and the dashboard rely on, stated, not defaulted."""
    exporter = collector["exporters"]["prometheus"]
    assert exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    # deprecated keys (translation_strategy and resource_constant_labels replace them)
    assert not {"add_metric_suffixes", "resource_to_telemetry_conversion"} & set(exporter)
    assert not exporter.get("without_scope_info")  # otel_scope_version is on every series


def test_metrics_go_to_prometheus_and_traces_to_jaeger_and_debug(
    collector: dict[str, Any],
) -> None:
    pipelines = collector["service"]["pipelines"]
    exporters = collector["exporters"]
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert exporters["prometheus"]["endpoint"] == "0.0.0.0:8889"
    traces = pipelines["traces"]["exporters"]
    assert "debug" in traces
    jaeger = [e for e in traces if component_type(e) in {"otlp_grpc", "otlp_http"}]
    assert len(jaeger) == 1
    assert exporters[jaeger[0]]["endpoint"] == "jaeger:4317"


def test_health_check_extension_is_enabled(collector: dict[str, Any]) -> None:
    assert collector["service"]["extensions"] == ["health_check"]
    assert collector["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"


def test_every_component_is_defined_known_and_used(collector: dict[str, Any]) -> None:
    # Component types of current collector-contrib releases; `logging` (removed,
    # now `debug`), the deprecated `otlp`/`otlphttp` exporter aliases and the
    # deprecated `batch` processor are not.
    known = {
        "receivers": {"otlp"},
        "processors": {"memory_limiter"},
        "exporters": {"prometheus", "otlp_grpc", "otlp_http", "debug"},
        "extensions": {"health_check"},
    }
    for kind, types in known.items():
        for component_id in collector[kind]:
            assert component_type(component_id) in types, f"{kind}: {component_id}"
    pipelines = collector["service"]["pipelines"].values()
    for kind in ("receivers", "processors", "exporters"):
        used = {component for pipeline in pipelines for component in pipeline[kind]}
        assert used == set(collector[kind]), kind


# -- compose --------------------------------------------------------------------


def test_compose_starts_the_four_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"otel-collector", "prometheus", "grafana", "jaeger"}
    images = {name: service["image"] for name, service in compose["services"].items()}
    assert "opentelemetry-collector-contrib" in images["otel-collector"]
    assert "prometheus" in images["prometheus"]
    assert "grafana/grafana" in images["grafana"]
    assert "jaegertracing/jaeger" in images["jaeger"]
    for image in images.values():
        assert ":latest" not in image, "pin image versions"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> repository-relative source of each bind mount."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        result[target] = source
    return result


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    count = 0
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert source.startswith("./"), f"{name}: {source} is not a file in the repository"
            assert (CONFIG / source).exists(), f"{name}: {source} -> {target} does not exist"
            count += 1
    assert count >= 6


def published(service: dict[str, Any]) -> set[int]:
    return {int(str(mapping).split("#")[0].split(":")[0]) for mapping in service["ports"]}


def test_published_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {4317, 4318, 13133} <= published(services["otel-collector"])
    assert published(services["prometheus"]) == {9090}
    assert published(services["grafana"]) == {3000}
    assert published(services["jaeger"]) == {16686}


def test_collector_container_loads_this_config(compose: dict[str, Any]) -> None:
    service = compose["services"]["otel-collector"]
    (config_arg,) = [arg for arg in service["command"] if arg.startswith("--config=")]
    target = config_arg.removeprefix("--config=")
    assert mounts(service)[target] == "./otel-collector.yaml"


def test_prometheus_scrapes_the_collector_and_loads_the_rules(
    compose: dict[str, Any], collector: dict[str, Any]
) -> None:
    service = compose["services"]["prometheus"]
    config_path = PurePosixPath(
        next(a for a in service["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    )
    container = mounts(service)
    assert container[str(config_path)] == "./prometheus/prometheus.yml"
    prometheus = load("prometheus/prometheus.yml")
    for rule_file in prometheus["rule_files"]:
        assert container[str(config_path.parent / rule_file)] == f"./prometheus/{rule_file}"
    (job,) = prometheus["scrape_configs"]
    assert job["honor_labels"] is True  # keeps job/instance from service.name
    (target,) = job["static_configs"][0]["targets"]
    assert host(target) == "otel-collector"
    assert port(target) == port(collector["exporters"]["prometheus"]["endpoint"])


def test_collector_reaches_jaeger_on_the_compose_network(
    compose: dict[str, Any], collector: dict[str, Any]
) -> None:
    endpoint = collector["exporters"]["otlp_grpc/jaeger"]["endpoint"]
    assert host(endpoint) in compose["services"]
    assert port(endpoint) == 4317  # Jaeger v2 all-in-one's OTLP gRPC receiver
    # ... which listens on localhost only, unreachable from the collector, unless:
    assert compose["services"][host(endpoint)]["environment"]["JAEGER_LISTEN_HOST"] == "0.0.0.0"


def test_grafana_provisions_datasources_and_the_dashboard(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    container = mounts(service)
    assert (
        container["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    )
    assert container["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    assert container["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
    home = PurePosixPath(service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (CONFIG / container[str(home.parent)] / home.name).is_file()
    assert service["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    datasources = load("grafana/provisioning/datasources/datasources.yaml")["datasources"]
    urls = {ds["type"]: ds["url"] for ds in datasources}
    assert urls == {"prometheus": "http://prometheus:9090", "jaeger": "http://jaeger:16686"}
    for url in urls.values():
        assert host(url) in compose["services"]
