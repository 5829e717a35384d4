"""Settings from OTEL_PYTHON_BACKPRESSURE_* variables: every variable works, bad values never raise.

A bad value is logged with the variable's name and value, and only the part it
configures is switched off; the process under ``opentelemetry-instrument``
still starts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from otel_backpressure.settings import PREFIX, VARIABLES, Settings

# variable suffix -> (raw value, field, parsed value)
GOOD_VALUES: dict[str, tuple[str, str, Any]] = {
    "POOL_ENABLED": ("off", "pool_enabled", False),
    "POOL_TIMINGS": ("0", "pool_timings", False),
    "POOL_WARNING_THRESHOLD": ("0.5", "pool_warning_threshold", 0.5),
    "POOL_CRITICAL_THRESHOLD": ("0.95", "pool_critical_threshold", 0.95),
    "RATE_LIMIT_ENABLED": ("no", "rate_limit_enabled", False),
    "RATE_LIMIT_EVICTION_INTERVAL": ("2.5", "rate_limit_eviction_interval", 2.5),
    "RATE_LIMIT_IDLE_TIMEOUT": ("30", "rate_limit_idle_timeout", 30.0),
    "RATE_LIMIT_MAX_KEYS": ("10_000", "rate_limit_max_keys", 10_000),
    "ERRORS_ENABLED": ("FALSE", "errors_enabled", False),
    "ERROR_MAPPINGS": (" app.Missing=unset:404 ", "error_mappings", "app.Missing=unset:404"),
}

# variable suffix -> (bad raw value, part it switches off)
BAD_VALUES: dict[str, tuple[str, str]] = {
    "POOL_ENABLED": ("maybe", "pool"),
    "POOL_TIMINGS": ("2", "pool"),
    "POOL_WARNING_THRESHOLD": ("1.5", "pool"),
    "POOL_CRITICAL_THRESHOLD": ("ninety", "pool"),
    "RATE_LIMIT_ENABLED": ("enable", "rate_limit"),
    "RATE_LIMIT_EVICTION_INTERVAL": ("0", "rate_limit"),
    "RATE_LIMIT_IDLE_TIMEOUT": ("-1", "rate_limit"),
    "RATE_LIMIT_MAX_KEYS": ("1e6", "rate_limit"),
    "ERRORS_ENABLED": ("nope", "errors"),
    "ERROR_MAPPINGS": ("app.Missing=404", "errors"),
}

PARTS = ("pool", "rate_limit", "errors")


def test_every_documented_variable_is_covered_here() -> None:
    names = {variable.name.removeprefix(PREFIX) for variable in VARIABLES}
    assert names == set(GOOD_VALUES)
    assert set(BAD_VALUES) == names


def test_no_variables_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.problems == ()
    documented = {variable.name: variable.default for variable in VARIABLES if variable.default}
    assert Settings.from_env(documented) == Settings()


@pytest.mark.parametrize("suffix", sorted(GOOD_VALUES))
def test_each_variable_sets_its_field(suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    raw, field, expected = GOOD_VALUES[suffix]
    with caplog.at_level(logging.WARNING):
        settings = Settings.from_env({PREFIX + suffix: raw})
    assert getattr(settings, field) == expected
    assert settings.problems == ()
    assert caplog.records == []
    untouched = {name: value for name, value in vars(Settings()).items() if name != field}
    assert {name: getattr(settings, name) for name in untouched} == untouched


@pytest.mark.parametrize("suffix", sorted(BAD_VALUES))
def test_a_bad_value_is_logged_by_name_and_value_and_switches_only_its_part_off(
    suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw, part = BAD_VALUES[suffix]
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.settings"):
        settings = Settings.from_env({PREFIX + suffix: raw})
    assert [record.levelno for record in caplog.records] == [logging.ERROR]
    message = caplog.records[0].getMessage()
    assert PREFIX + suffix in message
    assert repr(raw) in message
    assert getattr(settings, f"{part}_enabled") is False
    for other in PARTS:
        if other != part:
            assert getattr(settings, f"{other}_enabled") is True
    assert [problem[:2] for problem in settings.problems] == [(PREFIX + suffix, raw)]


def test_blank_values_mean_the_default() -> None:
    settings = Settings.from_env(
        {PREFIX + "RATE_LIMIT_MAX_KEYS": "  ", PREFIX + "POOL_ENABLED": ""}
    )
    assert settings == Settings()
    assert settings.problems == ()


def test_warning_above_critical_is_a_logged_problem_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {PREFIX + "POOL_WARNING_THRESHOLD": "0.95", PREFIX + "POOL_CRITICAL_THRESHOLD": "0.5"}
    with caplog.at_level(logging.ERROR, logger="otel_backpressure.settings"):
        settings = Settings.from_env(env)
    assert settings.pool_enabled is False
    assert settings.rate_limit_enabled
    assert settings.errors_enabled
    assert "POOL_WARNING_THRESHOLD" in caplog.text
    assert "POOL_CRITICAL_THRESHOLD" in caplog.text
    assert (settings.pool_warning_threshold, settings.pool_critical_threshold) == (0.75, 0.9)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "RATE_LIMIT_MAX_KEYS", "42")
    assert Settings.from_env().rate_limit_max_keys == 42


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"pool_warning_threshold": 1.2}, "pool_warning_threshold"),
        ({"pool_critical_threshold": -0.1}, "pool_critical_threshold"),
        ({"pool_warning_threshold": 0.9, "pool_critical_threshold": 0.8}, "pool_warning_threshold"),
        ({"rate_limit_eviction_interval": 0}, "rate_limit_eviction_interval"),
        ({"rate_limit_idle_timeout": float("nan")}, "rate_limit_idle_timeout"),
        ({"rate_limit_max_keys": 0}, "rate_limit_max_keys"),
        ({"rate_limit_max_keys": 2.5}, "rate_limit_max_keys"),
    ],
)
def test_programmatic_settings_raise_naming_the_argument(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Settings(**kwargs)


def test_the_app_starts_under_opentelemetry_instrument_with_the_bad_part_off() -> None:
    """End to end through the real auto-instrumentation path, in a child process."""
    probe = (
        "from otel_backpressure import BackpressureInstrumentor, instrumentor\n"
        "enabled = [i.name for i in BackpressureInstrumentor()._enabled]\n"
        "registered = [i.name for i in instrumentor._integrations()]\n"
        "print(BackpressureInstrumentor().is_instrumented_by_opentelemetry)\n"
        "print(','.join(enabled))\n"
        "print(','.join(name for name in registered if name != 'pool'))\n"
        "print('app ran')\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_BACKPRESSURE_POOL_WARNING_THRESHOLD="1.5",
    )
    command = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    result = subprocess.run(
        [command, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    instrumented, enabled, expected, ran = result.stdout.splitlines()
    assert (instrumented, ran) == ("True", "app ran")
    assert enabled == expected  # every registered part but the pool
    assert "OTEL_PYTHON_BACKPRESSURE_POOL_WARNING_THRESHOLD" in result.stderr
    assert "'1.5'" in result.stderr
