"""Settings read from the environment, validated once, with errors that name the variable.

An auto-instrumented application cannot catch an exception from us, so a bad
value never raises here: it is logged with the variable's name and value, and
the part of the package that the variable configures is switched off. The rest
keeps working and the application starts.

Example::

    from otel_backpressure.settings import Settings

    settings = Settings.from_env()          # os.environ
    if settings.pool_enabled:
        ...

Every variable is listed in ``VARIABLES`` (name, default, meaning); the README's
configuration table is generated from the same facts.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

__all__ = ["PREFIX", "VARIABLES", "Settings", "Variable"]

_logger = logging.getLogger(__name__)

PREFIX: Final = "OTEL_PYTHON_BACKPRESSURE_"


@dataclass(frozen=True)
class Variable:
    """One documented environment variable and the part it switches off when invalid."""

    name: str
    field: str
    part: str
    default: str
    meaning: str


# part -> the Settings flag that a bad value in that part turns off
_PART_FLAGS: Final = {
    "pool": "pool_enabled",
    "rate_limit": "rate_limit_enabled",
    "errors": "errors_enabled",
}

VARIABLES: Final[tuple[Variable, ...]] = (
    Variable(
        PREFIX + "POOL_ENABLED",
        "pool_enabled",
        "pool",
        "true",
        "Connection-pool telemetry on or off.",
    ),
    Variable(
        PREFIX + "POOL_TIMINGS",
        "pool_timings",
        "pool",
        "true",
        "The create/wait/use time histograms; off leaves only the read-at-collection metrics.",
    ),
    Variable(
        PREFIX + "POOL_WARNING_THRESHOLD",
        "pool_warning_threshold",
        "pool",
        "0.75",
        "Usage (0..1) from which pool_health() says `warning`.",
    ),
    Variable(
        PREFIX + "POOL_CRITICAL_THRESHOLD",
        "pool_critical_threshold",
        "pool",
        "0.9",
        "Usage (0..1) from which pool_health() says `critical`.",
    ),
    Variable(
        PREFIX + "RATE_LIMIT_ENABLED",
        "rate_limit_enabled",
        "rate_limit",
        "true",
        "Rate-limit metering (and the `limits` library's) on or off.",
    ),
    Variable(
        PREFIX + "RATE_LIMIT_EVICTION_INTERVAL",
        "rate_limit_eviction_interval",
        "rate_limit",
        "60",
        "Seconds between the in-memory store's cleanup passes.",
    ),
    Variable(
        PREFIX + "RATE_LIMIT_IDLE_TIMEOUT",
        "rate_limit_idle_timeout",
        "rate_limit",
        "0",
        "Extra seconds an idle key is kept after its state stops mattering.",
    ),
    Variable(
        PREFIX + "RATE_LIMIT_MAX_KEYS",
        "rate_limit_max_keys",
        "rate_limit",
        "100000",
        "Most keys the in-memory store holds (a memory bound).",
    ),
    Variable(
        PREFIX + "ERRORS_ENABLED",
        "errors_enabled",
        "errors",
        "true",
        "Exception-to-span-status mapping on or off.",
    ),
    Variable(
        PREFIX + "ERROR_MAPPINGS",
        "error_mappings",
        "errors",
        "",
        "Extra exception-to-outcome mappings (syntax in docs/errors.md).",
    ),
)


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _number(raw: str, expected: str) -> float:
    # float()'s own message ("could not convert string to float") names neither
    # the setting nor what it wants; say what is expected instead.
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected {expected}") from None


def _parse_fraction(raw: str) -> float:
    value = _number(raw, "a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number from 0 to 1")
    return value


def _parse_positive_seconds(raw: str) -> float:
    value = _number(raw, "a positive number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ValueError("expected a positive number of seconds")
    return value


def _parse_non_negative_seconds(raw: str) -> float:
    value = _number(raw, "zero or a positive number of seconds")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("expected zero or a positive number of seconds")
    return value


def _parse_positive_int(raw: str) -> int:
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError("expected a positive whole number") from None
    if value <= 0:
        raise ValueError("expected a positive whole number")
    return value


def _parse_error_mappings(raw: str) -> str:
    # Imported here: the errors part depends on settings, not the other way round.
    from otel_backpressure.errors._mappings import parse_mappings

    parse_mappings(raw)  # ValueError naming the bad entry
    return raw.strip()


_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    "pool_enabled": _parse_bool,
    "pool_timings": _parse_bool,
    "pool_warning_threshold": _parse_fraction,
    "pool_critical_threshold": _parse_fraction,
    "rate_limit_enabled": _parse_bool,
    "rate_limit_eviction_interval": _parse_positive_seconds,
    "rate_limit_idle_timeout": _parse_non_negative_seconds,
    "rate_limit_max_keys": _parse_positive_int,
    "errors_enabled": _parse_bool,
    "error_mappings": _parse_error_mappings,
}


@dataclass(frozen=True)
class Settings:
    """The package's settings; ``Settings()`` is the documented defaults."""

    pool_enabled: bool = True
    pool_timings: bool = True
    pool_warning_threshold: float = 0.75
    pool_critical_threshold: float = 0.9
    rate_limit_enabled: bool = True
    rate_limit_eviction_interval: float = 60.0
    rate_limit_idle_timeout: float = 0.0
    rate_limit_max_keys: int = 100_000
    errors_enabled: bool = True
    error_mappings: str = ""
    # (variable, value, reason) for every value that was rejected
    problems: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Programmatic construction gets an exception naming the argument.
        check_fraction("pool_warning_threshold", self.pool_warning_threshold)
        check_fraction("pool_critical_threshold", self.pool_critical_threshold)
        if self.pool_warning_threshold > self.pool_critical_threshold:
            raise ValueError(
                "pool_warning_threshold must not exceed pool_critical_threshold "
                f"(got {self.pool_warning_threshold} > {self.pool_critical_threshold})"
            )
        check_positive("rate_limit_eviction_interval", self.rate_limit_eviction_interval)
        idle = self.rate_limit_idle_timeout
        if not (math.isfinite(idle) and idle >= 0):
            raise ValueError(f"rate_limit_idle_timeout must be >= 0 seconds, got {idle!r}")
        if not (isinstance(self.rate_limit_max_keys, int) and self.rate_limit_max_keys > 0):
            raise ValueError(
                f"rate_limit_max_keys must be a positive int, got {self.rate_limit_max_keys!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``OTEL_PYTHON_BACKPRESSURE_*`` variable; never raises."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        problems: list[tuple[str, str, str]] = []
        disabled_parts: set[str] = set()
        for variable in VARIABLES:
            raw = env.get(variable.name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[variable.field] = _PARSERS[variable.field](raw)
            except ValueError as exc:
                problems.append((variable.name, raw, str(exc)))
                disabled_parts.add(variable.part)
        settings = _build(cls, values, problems, disabled_parts)
        for name, raw, reason in settings.problems:
            part = next(v.part for v in VARIABLES if v.name == name)
            _logger.error(
                "Ignoring %s=%r (%s); %s telemetry is disabled until it is fixed",
                name,
                raw,
                reason,
                part.replace("_", " "),
            )
        return settings


def _build(
    cls: type[Settings],
    values: dict[str, object],
    problems: list[tuple[str, str, str]],
    disabled_parts: set[str],
) -> Settings:
    """Construct, turning cross-field conflicts into logged problems as well."""
    try:
        settings = cls(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        # Only cross-field checks can fail here (each value parsed on its own):
        # the thresholds. Fall back to their defaults and disable the pool part.
        for name in ("pool_warning_threshold", "pool_critical_threshold"):
            if name in values:
                variable = next(v for v in VARIABLES if v.field == name)
                problems.append((variable.name, str(values[name]), str(exc)))
                del values[name]
        disabled_parts.add("pool")
        settings = cls(**values)  # type: ignore[arg-type]
    flags = {_PART_FLAGS[part]: False for part in disabled_parts}
    return replace(settings, problems=tuple(problems), **flags)  # type: ignore[arg-type]


def check_fraction(argument: str, value: float) -> float:
    """Validate a 0..1 argument, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{argument} must be a number from 0 to 1, got {value!r}")
    return float(value)


def check_positive(argument: str, value: float) -> float:
    """Validate a positive finite number argument, naming it in the error."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{argument} must be a positive number, got {value!r}")
    return float(value)
