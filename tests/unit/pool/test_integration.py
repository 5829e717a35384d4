"""BackpressureInstrumentor's pool part on SQLite: round trips, settings, bad options."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy
import sqlalchemy.engine

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.pool import REGISTRY
from otel_backpressure.testing import MetricsCapture
from pool_states import pool_names


def test_instrument_uninstrument_instrument(
    tmp_path: Path, metrics: MetricsCapture, instrumentor: BackpressureInstrumentor
) -> None:
    for round_ in range(2):
        instrumentor.instrument(meter_provider=metrics.meter_provider)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/round{round_}.sqlite")
        with engine.connect():
            assert pool_names(metrics) == [f"round{round_}.sqlite"]
        instrumentor.uninstrument()
        assert pool_names(metrics) == []
        engine.dispose()


def test_timings_setting_reaches_instrumented_engines(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_TIMINGS", "off")
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/quiet.sqlite")
    with engine.connect():
        pass
    collected = metrics.collect()
    assert "db.client.connection.count" in collected
    assert "db.client.connection.wait_time" not in collected
    engine.dispose()


def test_pool_part_can_be_switched_off(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_ENABLED", "false")
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/off.sqlite")
    assert REGISTRY.source_of(engine) is None
    assert pool_names(metrics) == []


POOL_LOGGER = "otel_backpressure.pool._integration"


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_one_engine_as_engines_or_engine_is_instrumented(
    tmp_path: Path, metrics: MetricsCapture, instrumentor: BackpressureInstrumentor
) -> None:
    first = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/first.sqlite")
    second = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/second.sqlite")
    third = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/third.sqlite")
    try:
        # contrib's SQLAlchemyInstrumentor takes engine= and engines=
        instrumentor.instrument(meter_provider=metrics.meter_provider, engines=first)
        instrumentor.instrument(meter_provider=metrics.meter_provider, engine=second)
        instrumentor.instrument(engine=third)  # the first call's provider
        assert pool_names(metrics) == ["first.sqlite", "second.sqlite", "third.sqlite"]
    finally:
        for engine in (first, second, third):
            engine.dispose()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"engines": 42}, "engines must be a list of pools"),
        ({"engines": "sqlite://"}, "engines must be a list of pools"),
        ({"engines": {"main": "sqlite://"}}, "engines must be a list of pools"),
        ({"engines": ["sqlite://"]}, "engines[0] must be a SQLAlchemy Engine or AsyncEngine, "),
        ({"engine": "sqlite://"}, "engine must be a SQLAlchemy Engine or AsyncEngine, "),
    ],
)
def test_a_bad_pool_option_is_logged_naming_it_and_the_part_still_starts(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, object],
    named: str,
) -> None:
    # opentelemetry-instrument would turn an exception into a failed start
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(meter_provider=metrics.meter_provider, **options)
    (message,) = _errors(caplog)
    assert message.startswith(f"Backpressure pool telemetry: {named}")
    assert message.endswith(", ignored")
    assert "failed to start" not in caplog.text
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/after.sqlite")
    try:
        assert REGISTRY.source_of(engine) is not None  # engines made later: instrumented
    finally:
        engine.dispose()


def test_a_bad_item_of_engines_is_left_out_and_the_others_instrumented(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/first.sqlite")
    second = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/second.sqlite")
    try:
        with caplog.at_level(logging.ERROR):
            instrumentor.instrument(
                meter_provider=metrics.meter_provider, engines=[first, object(), second]
            )
        assert pool_names(metrics) == ["first.sqlite", "second.sqlite"]
        (message,) = _errors(caplog)
        assert "engines[1] must be " in message
        assert "got object" in message
    finally:
        first.dispose()
        second.dispose()


def test_a_second_instrument_call_instruments_its_engines(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/first.sqlite")
    second = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/second.sqlite")
    other = MetricsCapture()
    third = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/third.sqlite")
    try:
        # engines made before instrumenting, as one per tenant would be
        instrumentor.instrument(meter_provider=metrics.meter_provider, engines=[first])
        with caplog.at_level(logging.WARNING):
            BackpressureInstrumentor().instrument(
                meter_provider=metrics.meter_provider, engines=[second]
            )
        assert "already instrumented" not in caplog.text
        assert pool_names(metrics) == ["first.sqlite", "second.sqlite"]
        # a later call's provider gets the engines it hands over
        BackpressureInstrumentor().instrument(meter_provider=other.meter_provider, engines=[third])
        assert pool_names(other) == ["third.sqlite"]
        assert pool_names(metrics) == ["first.sqlite", "second.sqlite"]
        instrumentor.uninstrument()
        assert (pool_names(metrics), pool_names(other)) == ([], [])
    finally:
        other.shutdown()
        for engine in (first, second, third):
            engine.dispose()


def test_a_second_call_with_the_pool_part_off_warns_by_name(
    tmp_path: Path,
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_POOL_ENABLED", "false")
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/ignored.sqlite")
    with caplog.at_level(logging.WARNING):
        instrumentor.instrument(meter_provider=metrics.meter_provider, engines=[engine])
    assert "engines= was ignored" in caplog.text
    assert "otel_backpressure.instrument(engine)" in caplog.text
    assert REGISTRY.source_of(engine) is None


def test_a_bad_engines_option_in_a_second_call_is_logged_not_raised(
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrumentor.instrument(meter_provider=metrics.meter_provider)
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(meter_provider=metrics.meter_provider, engines=[object()])
    (message,) = _errors(caplog)
    assert message.startswith("Backpressure pool telemetry: engines[0] must be ")
