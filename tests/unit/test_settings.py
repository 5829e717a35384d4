"""Settings from OTEL_PYTHON_BACKPRESSURE_* variables: one declaration each, bad values never raise.

A bad value (unparseable, or outside its documented range) is logged once per
process for each variable and value, naming the variable, the value and what was
expected, and the setting keeps its default; every part still starts. Values
given in code raise a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

from child_python import run_python
from otel_backpressure import pool_health
from otel_backpressure.settings import PREFIX, VARIABLES, Settings, Variable

LOGGER = "otel_backpressure.settings"

# variable suffix -> (raw value, parsed value)
GOOD_VALUES: dict[str, tuple[str, Any]] = {
    "POOL_ENABLED": ("off", False),
    "POOL_TIMINGS": ("0", False),
    "POOL_WARNING_THRESHOLD": ("0.5", 0.5),
    "POOL_CRITICAL_THRESHOLD": ("0.95", 0.95),
    "RATE_LIMIT_ENABLED": ("no", False),
    "RATE_LIMIT_EVICTION_INTERVAL": ("2.5", 2.5),
    "RATE_LIMIT_IDLE_TIMEOUT": ("30", 30.0),
    "RATE_LIMIT_MAX_KEYS": ("10000", 10_000),
    "HTTP_CLIENT_MAX_SERVERS": ("5", 5),
    "ERRORS_ENABLED": ("FALSE", False),
    "ERROR_MAPPINGS": (" app.Missing=unset:404 ", "app.Missing=unset:404"),
    "EVENT_LOOP_ENABLED": ("off", False),
    "EVENT_LOOP_RESOLUTION": ("0.02", 0.02),
    "THREAD_POOL_ENABLED": ("0", False),
}

# variable suffix -> a value that does not parse (text: test_a_bad_text_value_...)
UNPARSEABLE: dict[str, str] = {
    "POOL_ENABLED": "maybe",
    "POOL_TIMINGS": "2",
    "POOL_WARNING_THRESHOLD": "three quarters",
    "POOL_CRITICAL_THRESHOLD": "ninety",
    "RATE_LIMIT_ENABLED": "enable",
    "RATE_LIMIT_EVICTION_INTERVAL": "1m",
    "RATE_LIMIT_IDLE_TIMEOUT": "forever",
    "RATE_LIMIT_MAX_KEYS": "1e6",
    "HTTP_CLIENT_MAX_SERVERS": "many",
    "ERRORS_ENABLED": "nope",
    "EVENT_LOOP_ENABLED": "sometimes",
    "EVENT_LOOP_RESOLUTION": "10ms",
    "THREAD_POOL_ENABLED": "2",
}

# numeric variable suffix -> (minimum, maximum) as documented in the README
RANGES: dict[str, tuple[float, float]] = {
    "POOL_WARNING_THRESHOLD": (0.0, 1.0),
    "POOL_CRITICAL_THRESHOLD": (0.0, 1.0),
    "RATE_LIMIT_EVICTION_INTERVAL": (0.1, 86_400.0),
    "RATE_LIMIT_IDLE_TIMEOUT": (0.0, 86_400.0),
    "RATE_LIMIT_MAX_KEYS": (1, 10_000_000),
    "EVENT_LOOP_RESOLUTION": (0.001, 10.0),
    "HTTP_CLIENT_MAX_SERVERS": (1, 1000),
}

SPECIALS = ("inf", "-inf", "nan", "NaN", "1e300", "-1e300", "1e-300", "-0.0", "-0", "-1")
# suffix -> the special values it accepts, and what they read as; the rest are rejected
ACCEPTED_SPECIALS: dict[str, dict[str, float]] = {
    "POOL_WARNING_THRESHOLD": {"1e-300": 1e-300, "-0.0": 0.0, "-0": 0.0},
    "POOL_CRITICAL_THRESHOLD": {"1e-300": 1e-300, "-0.0": 0.0, "-0": 0.0},
    "RATE_LIMIT_EVICTION_INTERVAL": {},
    "RATE_LIMIT_IDLE_TIMEOUT": {"1e-300": 1e-300, "-0.0": 0.0, "-0": 0.0},
    "RATE_LIMIT_MAX_KEYS": {},
    "EVENT_LOOP_RESOLUTION": {},
    "HTTP_CLIENT_MAX_SERVERS": {},
}


def _variable(suffix: str) -> Variable:
    return next(variable for variable in VARIABLES if variable.name == PREFIX + suffix)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == LOGGER and record.levelno >= logging.ERROR
    ]


# The other threshold, at the end of its range that lets any value of this one pass.
PARTNERS: dict[str, tuple[str, str]] = {
    "POOL_WARNING_THRESHOLD": ("POOL_CRITICAL_THRESHOLD", "1"),
    "POOL_CRITICAL_THRESHOLD": ("POOL_WARNING_THRESHOLD", "0"),
}


def _read(suffix: str, raw: str, caplog: pytest.LogCaptureFixture) -> Settings:
    env = {PREFIX + suffix: raw}
    if suffix in PARTNERS:
        partner, value = PARTNERS[suffix]
        env[PREFIX + partner] = value
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        return Settings.from_env(env)


def _assert_default_and_logged(
    settings: Settings, suffix: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    variable = _variable(suffix)
    assert getattr(settings, variable.field) == getattr(Settings(), variable.field)
    assert [problem[:2] for problem in settings.problems] == [(variable.name, raw)]
    (message,) = _errors(caplog)
    assert variable.name in message
    assert repr(raw) in message
    assert variable.expected in message
    assert f"using the default {variable.default_text}" in message


def test_every_declared_variable_is_covered_here() -> None:
    names = {variable.name.removeprefix(PREFIX) for variable in VARIABLES}
    assert names == set(GOOD_VALUES)
    assert set(UNPARSEABLE) == names - {"ERROR_MAPPINGS"}
    numeric = {v.name.removeprefix(PREFIX) for v in VARIABLES if v.kind in ("count", "number")}
    assert set(RANGES) == numeric == set(ACCEPTED_SPECIALS)


def test_declarations_and_dataclass_agree() -> None:
    defaults = Settings()
    kinds = {"switch": bool, "count": int, "number": float, "text": str}
    for variable in VARIABLES:
        assert variable.name.startswith(PREFIX)
        assert getattr(defaults, variable.field) == variable.default
        assert type(getattr(defaults, variable.field)) is kinds[variable.kind], variable.name
        assert variable.meaning.endswith("."), variable.name
        if variable.kind in ("count", "number"):
            assert variable.minimum is not None
            assert variable.maximum is not None
            assert math.isfinite(variable.minimum)
            assert math.isfinite(variable.maximum)
            assert (variable.minimum, variable.maximum) == RANGES[variable.name[len(PREFIX) :]]


def test_no_variables_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.problems == ()
    documented = {variable.name: variable.default_text for variable in VARIABLES}
    assert Settings.from_env(documented) == Settings()


@pytest.mark.parametrize("suffix", sorted(GOOD_VALUES))
def test_each_variable_sets_its_field(suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    raw, expected = GOOD_VALUES[suffix]
    field = _variable(suffix).field
    with caplog.at_level(logging.WARNING):
        settings = Settings.from_env({PREFIX + suffix: raw})
    assert getattr(settings, field) == expected
    assert settings.problems == ()
    assert caplog.records == []
    untouched = {name: value for name, value in vars(Settings()).items() if name != field}
    assert {name: getattr(settings, name) for name in untouched} == untouched


@pytest.mark.parametrize("suffix", sorted(UNPARSEABLE))
def test_a_value_that_does_not_parse_is_logged_and_the_default_used(
    suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw = UNPARSEABLE[suffix]
    settings = _read(suffix, raw, caplog)
    _assert_default_and_logged(settings, suffix, raw, caplog)
    assert (settings.pool_enabled, settings.rate_limit_enabled, settings.errors_enabled) == (
        True,
        True,
        True,
    )


@pytest.mark.parametrize("suffix", sorted(RANGES))
@pytest.mark.parametrize("end", ["minimum", "maximum"])
def test_each_number_is_accepted_at_its_bounds(
    suffix: str, end: str, caplog: pytest.LogCaptureFixture
) -> None:
    low, high = RANGES[suffix]
    bound = low if end == "minimum" else high
    raw = str(int(bound)) if _variable(suffix).kind == "count" else repr(float(bound))
    settings = _read(suffix, raw, caplog)
    assert getattr(settings, _variable(suffix).field) == bound
    assert settings.problems == ()
    assert _errors(caplog) == []


@pytest.mark.parametrize("suffix", sorted(RANGES))
@pytest.mark.parametrize("end", ["minimum", "maximum"])
def test_each_number_just_past_its_bounds_is_logged_and_the_default_used(
    suffix: str, end: str, caplog: pytest.LogCaptureFixture
) -> None:
    low, high = RANGES[suffix]
    if _variable(suffix).kind == "count":
        raw = str(int(low) - 1 if end == "minimum" else int(high) + 1)
    else:
        past = (
            math.nextafter(low, -math.inf) if end == "minimum" else math.nextafter(high, math.inf)
        )
        raw = repr(past)
    settings = _read(suffix, raw, caplog)
    _assert_default_and_logged(settings, suffix, raw, caplog)


@pytest.mark.parametrize("suffix", sorted(RANGES))
@pytest.mark.parametrize("raw", SPECIALS)
def test_infinities_nan_huge_tiny_and_negative_zero(
    suffix: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _read(suffix, raw, caplog)
    accepted = ACCEPTED_SPECIALS[suffix]
    value = getattr(settings, _variable(suffix).field)
    if raw in accepted:
        assert value == accepted[raw]
        assert math.copysign(1.0, value) == 1.0  # -0 reads as +0.0
        assert settings.problems == ()
        assert _errors(caplog) == []
    else:
        _assert_default_and_logged(settings, suffix, raw, caplog)


@pytest.mark.parametrize("suffix", ["POOL_ENABLED", "POOL_TIMINGS", "ERRORS_ENABLED"])
@pytest.mark.parametrize("raw", ["1.0", "nan", "-0", "tru", "enabled", "y"])
def test_switches_accept_only_their_words(
    suffix: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _read(suffix, raw, caplog)
    _assert_default_and_logged(settings, suffix, raw, caplog)


COUNTS = sorted(suffix for suffix in RANGES if _variable(suffix).kind == "count")
NUMBERS = sorted(suffix for suffix in RANGES if _variable(suffix).kind == "number")


# int() and float() take more than the README's "whole number" and "number":
# underscores, a plus sign, other scripts' digits (Arabic-Indic, full-width), padding.
@pytest.mark.parametrize("suffix", COUNTS)
@pytest.mark.parametrize("raw", ["1_0", "+10", "\u0661\u0660", "\uff11\uff10", "0x10", "10.0"])
def test_whole_numbers_take_only_ascii_digits(
    suffix: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _read(suffix, raw, caplog)
    _assert_default_and_logged(settings, suffix, raw, caplog)


@pytest.mark.parametrize("suffix", NUMBERS)
@pytest.mark.parametrize("raw", ["0.5_0", "+0.5", "\u0660.\u0665", "0_0.5"])
def test_numbers_take_only_ascii_decimals(
    suffix: str, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _read(suffix, raw, caplog)
    _assert_default_and_logged(settings, suffix, raw, caplog)


@pytest.mark.parametrize("raw", ["0.5", ".5", "5.", "5e-1", "5.E-1", "50E-2", " 0.5 "])
def test_decimal_spellings_that_are_accepted(raw: str) -> None:
    settings = Settings.from_env({PREFIX + "RATE_LIMIT_IDLE_TIMEOUT": raw})
    assert (settings.rate_limit_idle_timeout, settings.problems) == (float(raw), ())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), (" yes ", True), ("On", True), ("0", False), ("OFF", False)],
)
def test_switch_words(raw: str, expected: bool) -> None:
    assert Settings.from_env({PREFIX + "POOL_TIMINGS": raw}).pool_timings is expected


def test_a_bad_value_is_logged_once_per_process_per_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = PREFIX + "RATE_LIMIT_EVICTION_INTERVAL"
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(100):
            assert Settings.from_env({name: "1e-300"}).rate_limit_eviction_interval == 60
        assert len(_errors(caplog)) == 1
        Settings.from_env({name: "1e300"})  # another value: logged too, once
        Settings.from_env({name: "1e300"})
    assert len(_errors(caplog)) == 2
    assert "'1e300'" in _errors(caplog)[1]


def test_a_hundred_pool_health_calls_log_one_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(PREFIX + "POOL_WARNING_THRESHOLD", "inf")
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=4, max_overflow=0)
    try:
        with caplog.at_level(logging.ERROR), engine.connect():
            statuses = {pool_health(engine)["status"] for _ in range(100)}
    finally:
        engine.dispose()
    assert statuses == {"healthy"}  # 25 % against the default 0.75
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert PREFIX + "POOL_WARNING_THRESHOLD" in errors[0].getMessage()


def test_warning_above_critical_is_logged_and_both_keep_their_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {PREFIX + "POOL_WARNING_THRESHOLD": "0.95", PREFIX + "POOL_CRITICAL_THRESHOLD": "0.5"}
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        settings = Settings.from_env(env)
    assert (settings.pool_warning_threshold, settings.pool_critical_threshold) == (0.75, 0.9)
    assert (settings.pool_enabled, settings.rate_limit_enabled, settings.errors_enabled) == (
        True,
        True,
        True,
    )
    errors = _errors(caplog)
    assert len(errors) == 2
    assert all("must not exceed" in message for message in errors)
    assert "'0.95'" in errors[0]
    assert "'0.5'" in errors[1]


def test_a_warning_threshold_above_the_default_critical_one_is_refused() -> None:
    settings = Settings.from_env({PREFIX + "POOL_WARNING_THRESHOLD": "0.95"})
    assert settings.pool_warning_threshold == 0.75
    assert len(settings.problems) == 1


def test_blank_values_mean_the_default() -> None:
    settings = Settings.from_env(
        {PREFIX + "RATE_LIMIT_MAX_KEYS": "  ", PREFIX + "POOL_ENABLED": ""}
    )
    assert settings == Settings()
    assert settings.problems == ()


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "RATE_LIMIT_MAX_KEYS", "42")
    assert Settings.from_env().rate_limit_max_keys == 42


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"pool_warning_threshold": 1.2}, "pool_warning_threshold"),
        ({"pool_warning_threshold": math.nan}, "pool_warning_threshold"),
        ({"pool_critical_threshold": -0.1}, "pool_critical_threshold"),
        ({"pool_warning_threshold": 0.9, "pool_critical_threshold": 0.8}, "pool_warning_threshold"),
        ({"rate_limit_eviction_interval": 0}, "rate_limit_eviction_interval"),
        ({"rate_limit_eviction_interval": 1e-300}, "rate_limit_eviction_interval"),
        ({"rate_limit_eviction_interval": 1e300}, "rate_limit_eviction_interval"),
        ({"rate_limit_eviction_interval": math.inf}, "rate_limit_eviction_interval"),
        ({"rate_limit_idle_timeout": math.nan}, "rate_limit_idle_timeout"),
        ({"rate_limit_idle_timeout": -1}, "rate_limit_idle_timeout"),
        ({"rate_limit_idle_timeout": 86_400.5}, "rate_limit_idle_timeout"),
        ({"rate_limit_max_keys": 0}, "rate_limit_max_keys"),
        ({"rate_limit_max_keys": 10_000_001}, "rate_limit_max_keys"),
        ({"rate_limit_max_keys": 2.5}, "rate_limit_max_keys"),
        ({"rate_limit_max_keys": True}, "rate_limit_max_keys"),
        ({"pool_enabled": 1}, "pool_enabled"),
        ({"pool_timings": "yes"}, "pool_timings"),
        ({"error_mappings": None}, "error_mappings"),
    ],
)
def test_programmatic_settings_raise_naming_the_argument(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Settings(**kwargs)


SWITCHES = sorted(variable.field for variable in VARIABLES if variable.kind == "switch")


@pytest.mark.parametrize("field", SWITCHES)
@pytest.mark.parametrize("value", ["no", "yes", 1, 0, None])
def test_programmatic_switches_say_exactly_what_they_take(field: str, value: object) -> None:
    # the environment's words (yes/no, on/off, 1/0) are not booleans in code
    with pytest.raises(ValueError) as caught:
        Settings(**{field: value})
    assert str(caught.value) == f"{field} must be True or False, got {value!r}"


def test_a_bad_text_value_raises_in_code_naming_the_argument_and_the_entry() -> None:
    with pytest.raises(ValueError) as caught:
        Settings(error_mappings="a.B=unset:404,garbage")
    message = str(caught.value)
    assert message.startswith("error_mappings must be comma-separated ")
    assert "got 'a.B=unset:404,garbage'" in message
    assert "entry 'garbage'" in message
    assert PREFIX not in message  # no variable was involved


def test_a_bad_text_value_from_the_environment_is_logged_and_the_default_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = "a.B=unset:404,garbage"
    settings = _read("ERROR_MAPPINGS", raw, caplog)
    assert settings.error_mappings == ""
    assert [problem[:2] for problem in settings.problems] == [(PREFIX + "ERROR_MAPPINGS", raw)]
    (message,) = _errors(caplog)
    assert f"{PREFIX}ERROR_MAPPINGS={raw!r}" in message
    assert "entry 'garbage'" in message
    assert "using the default (none)" in message


def test_programmatic_numbers_are_normalised() -> None:
    settings = Settings(rate_limit_idle_timeout=-0.0, rate_limit_eviction_interval=2)
    assert math.copysign(1.0, settings.rate_limit_idle_timeout) == 1.0
    assert type(settings.rate_limit_eviction_interval) is float


def test_the_app_starts_under_opentelemetry_instrument_with_every_part_on() -> None:
    """End to end through the real auto-instrumentation path, in a child process."""
    probe = (
        "from otel_backpressure import BackpressureInstrumentor, instrumentor, pool_health\n"
        "from sqlalchemy import create_engine\n"
        "enabled = [i.name for i in BackpressureInstrumentor()._enabled]\n"
        "registered = [i.name for i in instrumentor._integrations()]\n"
        "engine = create_engine('sqlite://')\n"
        "for _ in range(20): pool_health(engine)\n"
        "print(BackpressureInstrumentor().is_instrumented_by_opentelemetry)\n"
        "print(enabled == registered)\n"
        "print('app ran')\n"
    )
    result = run_python(
        "-c", probe, instrument=True, OTEL_PYTHON_BACKPRESSURE_POOL_WARNING_THRESHOLD="1.5"
    )
    assert result.stdout.splitlines() == ["True", "True", "app ran"]
    assert result.stderr.count("OTEL_PYTHON_BACKPRESSURE_POOL_WARNING_THRESHOLD='1.5'") == 1
