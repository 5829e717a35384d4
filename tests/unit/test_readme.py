"""The README is the newcomer's contract: its tables and commands must stay true."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from opentelemetry.metrics import NoOpMeter, NoOpMeterProvider

import contract
from child_python import run_python
from otel_backpressure.settings import VARIABLES, markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")

_KIND_WORDS = {
    contract.Instrument.COUNTER: "Counter",
    contract.Instrument.OBSERVABLE_COUNTER: "asynchronous Counter",
    contract.Instrument.UP_DOWN_COUNTER: "UpDownCounter",
    contract.Instrument.OBSERVABLE_UP_DOWN_COUNTER: "asynchronous UpDownCounter",
    contract.Instrument.OBSERVABLE_GAUGE: "asynchronous Gauge",
    contract.Instrument.HISTOGRAM: "Histogram",
}


def _section(name: str) -> str:
    match = re.search(rf"<!-- BEGIN {name}.*?-->\n(.*?)<!-- END {name} -->", README, re.S)
    assert match, f"README has no {name} section"
    return match.group(1)


def _rows(table: str) -> list[list[str]]:
    lines = [line for line in table.strip().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


class _KindRecorder(NoOpMeterProvider):
    """A meter provider that notes which API factory created each instrument."""

    def __init__(self) -> None:
        self.kinds: dict[str, contract.Instrument] = {}

    def get_meter(self, name: str, version: str | None = None, *args: Any, **kwargs: Any) -> Any:
        recorder = self

        class Meter(NoOpMeter):
            def __getattribute__(self, attribute: str) -> Any:
                found = super().__getattribute__(attribute)
                if not attribute.startswith("create_"):
                    return found

                def create(name: str, *args: Any, **kwargs: Any) -> Any:
                    recorder.kinds[name] = contract.Instrument(attribute.removeprefix("create_"))
                    return found(name, *args, **kwargs)

                return create

        return Meter(name, version)


def _instrument_kinds() -> dict[str, contract.Instrument]:
    """What each part's code really creates (not what the contract would allow)."""
    from otel_backpressure.errors._metrics import _counter
    from otel_backpressure.pool._http import HttpClientMetrics
    from otel_backpressure.pool._metrics import PoolMetrics
    from otel_backpressure.ratelimit.metrics import RateLimitMetrics
    from otel_backpressure.runtime._loop import LoopMonitors
    from otel_backpressure.runtime._metrics import LoopMetrics, ThreadPoolMetrics

    provider = _KindRecorder()
    PoolMetrics(provider)
    HttpClientMetrics(provider)
    RateLimitMetrics(provider)
    _counter(provider)
    LoopMetrics(provider, LoopMonitors())
    ThreadPoolMetrics(provider)
    return provider.kinds


def test_metrics_reference_matches_the_contract() -> None:
    rows = {row[0].strip("`"): row for row in _rows(_section("metrics reference"))}
    assert set(rows) == set(contract.METRICS)
    created = _instrument_kinds()
    for name, spec in contract.METRICS.items():
        _, kind, unit, attributes, prometheus = rows[name]
        assert created[name] in spec.instruments, name
        assert kind == _KIND_WORDS[created[name]], name
        assert unit == f"`{spec.unit}`", name
        keys = re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", attributes)
        assert tuple(keys) == spec.attributes, name
        for key, allowed in spec.allowed_values.items():
            if allowed is not None:
                listed = re.search(rf"`{re.escape(key)}` \(([^)]*)\)", attributes)
                assert listed, f"{name}: values of {key} not listed"
                assert set(re.findall(r"`([a-z_]+)`", listed.group(1))) == allowed, name
        assert prometheus == f"`{spec.prometheus_name}`", name


def test_configuration_table_is_the_one_generated_from_the_declarations() -> None:
    """Regenerate with ``python -c "from otel_backpressure.settings import markdown_table as t;
    print(t())"`` and paste between the settings markers."""
    assert _section("settings") == markdown_table()
    rows = {row[0].strip("`"): row for row in _rows(_section("settings"))}
    assert list(rows) == [variable.name for variable in VARIABLES]
    for variable in VARIABLES:
        default, valid = rows[variable.name][1:3]
        assert default == (f"`{variable.default_text}`" if variable.default_text else "(none)")
        if variable.kind in ("count", "number"):  # every number's range is documented
            bounds = re.fullmatch(r"(?:whole number )?`([\d.]+)` to `([\d.]+)`(?: s)?", valid)
            assert bounds, variable.name
            assert tuple(map(float, bounds.groups())) == (variable.minimum, variable.maximum)


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"^    (pip install .*)$", README, re.M)
    assert commands[:2] == [
        'pip install -e ".[all]" && python -m otel_backpressure.demo',
        "pip install nox && nox -s tests",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^(?:\S+ -m )?nox -s tests(?: \|\| .*)?$", ci, re.M)


BY_HAND_DRIVER = """
import asyncio

import httpx


async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://game") as client:
        response = await client.get("/players/7")
    print(response.status_code, response.headers["content-type"])


asyncio.run(main())
"""


def test_the_by_hand_example_runs_as_written(tmp_path: Path) -> None:
    """The README's block as a script, with one request to its app before it ends."""
    match = re.search(r"### By hand\n.*?```python\n(.*?)```", README, re.S)
    assert match, "README has no By hand example"
    script = tmp_path / "by_hand.py"
    code = match.group(1)
    # one request to its app where the example says to serve it
    code = code.replace("# serve app with", BY_HAND_DRIVER + "# serve app with")
    script.write_text(code, encoding="utf-8")
    result = run_python(str(script), cwd=tmp_path)
    assert result.stdout.split("\n")[:2] == ["healthy", "404 application/problem+json"]


def test_every_extra_the_readme_names_is_one_pip_finds_as_written() -> None:
    # pip before 23.3 does not normalise extra names: `psycopg_pool` found nothing
    from importlib.metadata import metadata

    declared = set(metadata("opentelemetry-instrumentation-backpressure").get_all("Provides-Extra"))
    table = re.findall(
        r"^\| `([^`]+)` \|", README.split("\n## Install", 1)[1].split("\n## ", 1)[0], re.M
    )
    assert table, "README's install table has no extras"
    named = set(table)
    # the install lines of the README and of docs/ (the demo's, the telemetry set-up's)
    for text in (README, *(page.read_text(encoding="utf-8") for page in ROOT.glob("docs/*.md"))):
        for line in re.findall(r"pip install [^\n]*\[([^\]]+)\]", text):
            named.update(extra.strip() for extra in line.split(",") if extra != "extras")
    assert {"all", "demo", "otlp", "asyncpg", "sqlalchemy", "dev"} <= named
    assert named <= declared, sorted(named - declared)
