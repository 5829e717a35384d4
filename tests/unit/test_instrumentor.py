"""BackpressureInstrumentor's generic behaviour: entry point, settings switches, symmetry.

The parts' own integrations are tested with their parts; here a recording
integration stands in for them where the wiring itself is under test, and the
real ones are round-tripped as a whole.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from child_python import run_under_opentelemetry_instrument
from otel_backpressure import BackpressureInstrumentor, Settings, instrumentor
from otel_backpressure._patching import (
    BackpressureWrapper,
    InstrumentationContext,
    Patch,
    Wrapper,
    _raw_attribute,
)

TARGET_MODULE = "otel_backpressure_test_target"


class RecordingIntegration:
    """An integration that patches one function of a throwaway module and records calls."""

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.patches = (Patch(TARGET_MODULE, f"{name}_call", self._build_wrapper),)
        self.context: InstrumentationContext | None = None

    def _build_wrapper(self, context: InstrumentationContext) -> Wrapper:
        def wrapper(
            wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
        ) -> Any:
            return ("wrapped", wrapped(*args, **kwargs))

        return wrapper

    def enable(self, context: InstrumentationContext) -> None:
        if self.fail:
            raise RuntimeError("integration could not start")
        self.context = context
        self.log.append(f"enable {self.name}")

    def disable(self) -> None:
        self.log.append(f"disable {self.name}")


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType(TARGET_MODULE)
    for part in ("pool", "rate_limit", "errors"):
        setattr(module, f"{part}_call", lambda: "plain")
    monkeypatch.setitem(sys.modules, TARGET_MODULE, module)
    return module


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def parts(
    monkeypatch: pytest.MonkeyPatch, target: types.ModuleType, log: list[str]
) -> dict[str, RecordingIntegration]:
    integrations = {
        name: RecordingIntegration(name, log) for name in ("pool", "rate_limit", "errors")
    }
    monkeypatch.setattr(instrumentor, "_integrations", lambda: tuple(integrations.values()))
    return integrations


@pytest.fixture
def backpressure() -> Iterator[BackpressureInstrumentor]:
    instance = BackpressureInstrumentor()
    yield instance
    instance.uninstrument()


def test_entry_point_is_registered_and_loads_the_instrumentor() -> None:
    found = list(entry_points(group="opentelemetry_instrumentor", name="backpressure"))
    assert len(found) == 1
    assert found[0].load() is BackpressureInstrumentor
    assert found[0].dist is not None
    assert found[0].dist.metadata["Name"] == "opentelemetry-instrumentation-backpressure"


def test_requires_no_library_as_a_whole() -> None:
    """Each part checks its own library (package.py); no one library gates the rest."""
    assert list(BackpressureInstrumentor().instrumentation_dependencies()) == []


def test_enables_every_part_then_undoes_in_reverse(
    parts: dict[str, RecordingIntegration],
    target: types.ModuleType,
    log: list[str],
    backpressure: BackpressureInstrumentor,
) -> None:
    backpressure.instrument(settings=Settings())
    assert log == ["enable pool", "enable rate_limit", "enable errors"]
    assert target.pool_call() == ("wrapped", "plain")
    assert target.errors_call() == ("wrapped", "plain")

    backpressure.uninstrument()
    assert log[3:] == ["disable errors", "disable rate_limit", "disable pool"]
    assert target.pool_call() == "plain"
    assert target.errors_call() == "plain"


def test_round_trip_instrument_uninstrument_instrument(
    parts: dict[str, RecordingIntegration],
    target: types.ModuleType,
    backpressure: BackpressureInstrumentor,
) -> None:
    for _ in range(2):
        backpressure.instrument(settings=Settings())
        assert target.rate_limit_call() == ("wrapped", "plain")
        backpressure.uninstrument()
        assert target.rate_limit_call() == "plain"
    backpressure.uninstrument()  # a second uninstrument is harmless
    assert target.rate_limit_call() == "plain"


@pytest.mark.parametrize("part", ["pool", "rate_limit", "errors"])
def test_a_part_switched_off_in_settings_is_neither_enabled_nor_patched(
    parts: dict[str, RecordingIntegration],
    target: types.ModuleType,
    log: list[str],
    backpressure: BackpressureInstrumentor,
    part: str,
) -> None:
    backpressure.instrument(settings=Settings(**{f"{part}_enabled": False}))
    assert f"enable {part}" not in log
    assert len(log) == 2
    assert getattr(target, f"{part}_call")() == "plain"
    others = [name for name in parts if name != part]
    assert all(getattr(target, f"{name}_call")() == ("wrapped", "plain") for name in others)


@pytest.mark.parametrize(
    ("variable", "part"),
    [
        ("OTEL_PYTHON_BACKPRESSURE_POOL_ENABLED", "pool"),
        ("OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_ENABLED", "rate_limit"),
        ("OTEL_PYTHON_BACKPRESSURE_ERRORS_ENABLED", "errors"),
    ],
)
def test_settings_come_from_the_environment_by_default(
    parts: dict[str, RecordingIntegration],
    log: list[str],
    backpressure: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    part: str,
) -> None:
    monkeypatch.setenv(variable, "false")
    backpressure.instrument()
    assert f"enable {part}" not in log
    assert len(log) == 2


def test_a_bad_variable_keeps_its_default_and_every_part_starts(
    parts: dict[str, RecordingIntegration],
    log: list[str],
    backpressure: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_MAX_KEYS", "lots")
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.settings"):
        backpressure.instrument()
    assert log == ["enable pool", "enable rate_limit", "enable errors"]
    assert "OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_MAX_KEYS" in caplog.text
    assert "'lots'" in caplog.text


def test_providers_and_options_reach_the_parts(
    parts: dict[str, RecordingIntegration], backpressure: BackpressureInstrumentor
) -> None:
    meter_provider, tracer_provider = NoOpMeterProvider(), TracerProvider()
    settings = Settings(pool_timings=False)
    backpressure.instrument(
        settings=settings,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        engines=["e"],
    )
    context = parts["pool"].context
    assert context is not None
    assert context.settings is settings
    assert context.meter_provider is meter_provider
    assert context.tracer_provider is tracer_provider
    assert context.options == {"engines": ["e"]}


@pytest.mark.parametrize("bad", ["x", 42, MeterProvider, object()])
def test_a_bad_meter_provider_is_logged_naming_it_and_the_global_one_used(
    parts: dict[str, RecordingIntegration],
    log: list[str],
    backpressure: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
    bad: object,
) -> None:
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.instrumentor"):
        backpressure.instrument(meter_provider=bad)
    assert log == ["enable pool", "enable rate_limit", "enable errors"]
    assert all(part.context and part.context.meter_provider is None for part in parts.values())
    (message,) = [record.getMessage() for record in caplog.records]
    assert message == (
        "BackpressureInstrumentor: meter_provider must be a MeterProvider (with get_meter), "
        f"got {type(bad).__name__}; using the global meter provider"
    )


def test_bad_settings_are_logged_naming_them_and_the_environment_used(
    parts: dict[str, RecordingIntegration],
    backpressure: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS", "off")
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.instrumentor"):
        backpressure.instrument(settings={"pool_timings": False})
    context = parts["pool"].context
    assert context is not None
    assert context.settings == Settings(pool_timings=False)
    assert "settings must be a Settings, got dict; using the environment's" in caplog.text


def test_an_unknown_option_is_logged_by_name_and_the_rest_apply(
    parts: dict[str, RecordingIntegration],
    backpressure: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_backpressure.instrumentor"):
        backpressure.instrument(engins=["e"], meter_provider=None)
    assert "ignores the unknown option(s) engins (it takes engine, engines, " in caplog.text
    assert log_of(parts) == ["enable pool", "enable rate_limit", "enable errors"]


def log_of(parts: dict[str, RecordingIntegration]) -> list[str]:
    return next(iter(parts.values())).log


def test_a_failing_part_is_logged_and_does_not_stop_the_others(
    parts: dict[str, RecordingIntegration],
    target: types.ModuleType,
    log: list[str],
    backpressure: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts["rate_limit"].fail = True
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.instrumentor"):
        backpressure.instrument(settings=Settings())
    assert log == ["enable pool", "enable errors"]
    assert "rate_limit" in caplog.text
    assert target.rate_limit_call() == "plain"
    assert target.errors_call() == ("wrapped", "plain")
    backpressure.uninstrument()
    assert log[2:] == ["disable errors", "disable pool"]


def test_the_real_parts_round_trip(backpressure: BackpressureInstrumentor) -> None:
    """Every real patch target is wrapped, then restored to the very object it was."""
    names = [integration.name for integration in instrumentor._integrations()]
    assert all(hasattr(Settings(), f"{name}_enabled") for name in names), names
    assert len(set(names)) == len(names)
    targets = {}
    for integration in instrumentor._integrations():
        for patch in integration.patches:
            owner: Any = importlib.import_module(patch.module)
            *path, name = patch.attribute.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            if owner is not None and hasattr(owner, name):
                targets[patch.target] = (owner, name, _raw_attribute(owner, name))
    # every part has its targets installed here (the test extra brings every library)
    assert {target.split(".")[0] for target in targets} >= {"sqlalchemy", "asyncpg", "limits"}
    assert any(target.startswith("opentelemetry.sdk.trace.Span.") for target in targets)
    for _ in range(2):
        backpressure.instrument(settings=Settings())
        assert backpressure.is_instrumented_by_opentelemetry
        for target, (owner, name, _) in targets.items():
            assert isinstance(vars(owner).get(name), BackpressureWrapper), target
        backpressure.uninstrument()
        assert not backpressure.is_instrumented_by_opentelemetry
        for target, (owner, name, original) in targets.items():
            assert _raw_attribute(owner, name) is original, target
            assert (name in vars(owner)) == (vars(owner).get(name) is original), target


PROBE = (
    "from otel_backpressure import BackpressureInstrumentor\n"
    "print(BackpressureInstrumentor().is_instrumented_by_opentelemetry)\n"
)


def test_opentelemetry_instrument_loads_it_and_the_standard_variable_turns_it_off() -> None:
    assert run_under_opentelemetry_instrument(PROBE) == "True"
    disabled = run_under_opentelemetry_instrument(
        PROBE, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="fastapi, backpressure"
    )
    assert disabled == "False"
