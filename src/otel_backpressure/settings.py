"""Settings read from the environment: one declaration each, checked, never fatal.

Each setting is declared once, as a field of ``Settings``: its variable, type,
default, valid range and meaning. ``VARIABLES`` and the README's configuration
table (``markdown_table()``, checked by ``tests/unit/test_readme.py``) are
derived from those declarations. Adding a setting is one field::

    loop_resolution: float = _number(
        "RUNTIME_LOOP_RESOLUTION", 0.01, 0.001, 1.0, "How often the loop is sampled.", unit="s"
    )

An auto-instrumented application cannot catch an exception from us, so a bad
environment value never raises: it is logged at ERROR, once per process for
each variable and value, with the variable's name, the value and the valid
range, and the setting keeps its default. Every number has a finite range, so
no value can overflow a conversion or make a periodic task spin. Code that
builds ``Settings(...)`` itself gets a ``ValueError`` naming the argument.

Example::

    from otel_backpressure.settings import Settings

    settings = Settings.from_env()          # os.environ
    if settings.pool_enabled:
        ...

The parts read this module; it imports none of them at import time. A value
whose syntax a part owns (``ERROR_MAPPINGS``) is kept as text; its declaration
names the part's checker (``module:function``), imported only to check a
value that is not blank, so that a bad value is refused here like any other:
a ``ValueError`` naming the argument, or a log line naming the variable.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

__all__ = [
    "PREFIX",
    "VARIABLES",
    "Settings",
    "Variable",
    "check_fraction",
    "check_positive",
    "markdown_table",
    "report_invalid",
]

_logger = logging.getLogger(__name__)

PREFIX: Final = "OTEL_PYTHON_BACKPRESSURE_"

Kind = Literal["switch", "count", "number", "text"]
Value = bool | int | float | str
_T = TypeVar("_T")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
# What the environment may spell a number as: ASCII digits, an optional minus,
# a decimal point and exponent for numbers. Stricter than int() and float(),
# which also take "1_000", "+5", other scripts' digits (full-width,
# Arabic-Indic), "inf" and "nan": the README says "whole number".
_WHOLE: Final = re.compile(r"-?[0-9]+")
_DECIMAL: Final = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_METADATA_KEY: Final = "otel_backpressure.variable"


def _show(number: float) -> str:
    """``60`` rather than ``60.0``; ``0.75`` as is."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


# A plain class, not a dataclass or a NamedTuple: this module is imported
# whenever the instrumentor loads, and both of those generate code when the
# class is created (a NamedTuple compiles each string annotation); this one is
# all in the bytecode. ``Settings`` stays a frozen dataclass: it is public, and
# ``dataclasses.replace`` works on it.
class Variable:
    """One setting: its environment variable, kind, default, valid range and meaning.

    ``kind`` is ``switch`` (bool), ``count`` (int), ``number`` (float) or
    ``text`` (str, whose syntax ``syntax`` describes and whose ``checker``, a
    part's ``module:function`` raising ``ValueError`` with the reason, checks).
    ``minimum``/``maximum`` bound counts and numbers, both inclusive; ``unit``
    is shown after the range (``s`` for seconds). ``field`` is the name of the
    ``Settings`` field it declares. Read-only once ``VARIABLES`` is built.
    """

    __slots__ = (
        "checker",
        "default",
        "field",
        "kind",
        "maximum",
        "meaning",
        "minimum",
        "name",
        "syntax",
        "unit",
    )

    def __init__(
        self,
        name: str,
        field: str,
        kind: Kind,
        default: Value,
        meaning: str,
        minimum: float | None = None,
        maximum: float | None = None,
        unit: str = "",
        syntax: str = "",
        checker: str = "",
    ) -> None:
        self.name = name
        self.field = field
        self.kind = kind
        self.default = default
        self.meaning = meaning
        self.minimum = minimum
        self.maximum = maximum
        self.unit = unit
        self.syntax = syntax
        self.checker = checker

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Variable) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Variable(name={self.name!r}, field={self.field!r}, kind={self.kind!r})"

    @property
    def default_text(self) -> str:
        """The default as the README shows it (``(none)`` for empty text)."""
        if self.kind == "switch":
            return "true" if self.default else "false"
        if self.kind == "text":
            return str(self.default)
        return _show(float(self.default))

    @property
    def valid(self) -> str:
        """The valid values as the README shows them: ``true or false``, ``1 to 86400 s``..."""
        if self.kind == "switch":
            return "`true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`)"
        if self.kind == "text":
            return self.syntax
        whole = "whole number " if self.kind == "count" else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{whole}`{_show(self.minimum or 0)}` to `{_show(self.maximum or 0)}`{unit}"

    @property
    def expected(self) -> str:
        """What a bad environment value should have been, in a log line."""
        if self.kind == "switch":
            return "true or false (or 1/0, yes/no, on/off)"
        return self._expected()

    @property
    def expected_in_code(self) -> str:
        """What a bad ``Settings(...)`` argument should have been, in an exception."""
        if self.kind == "switch":
            return "True or False"
        return self._expected()

    def _expected(self) -> str:
        if self.kind == "text":
            return self.syntax.replace("`", "")
        kind = "a whole number" if self.kind == "count" else "a number"
        unit = " seconds" if self.unit == "s" else f" {self.unit}" if self.unit else ""
        return f"{kind} from {_show(self.minimum or 0)} to {_show(self.maximum or 0)}{unit}"

    def parse(self, raw: str) -> Value:
        """The value of ``raw`` from the environment; ``ValueError("expected ...")`` if invalid
        (for text, the reason its part's checker gives)."""
        text = raw.strip()
        if self.kind == "text":
            self._check_text(text)
            return text
        if self.kind == "switch":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"expected {self.expected}")
        spelling = _WHOLE if self.kind == "count" else _DECIMAL
        if not spelling.fullmatch(text):
            raise ValueError(f"expected {self.expected}")
        number: int | float = int(text) if self.kind == "count" else float(text)
        if not self._in_range(number):
            raise ValueError(f"expected {self.expected}")
        return number if self.kind == "count" else float(number) + 0.0  # -0.0 reads as 0.0

    def check(self, value: object) -> Value:
        """``value`` given in code, normalised; ``ValueError`` naming the field if invalid."""
        problem = f"{self.field} must be {self.expected_in_code}, got {value!r}"
        if self.kind == "switch":
            if not isinstance(value, bool):
                raise ValueError(problem)
            return value
        if self.kind == "text":
            if not isinstance(value, str):
                raise ValueError(problem)
            try:
                self._check_text(value)
            except ValueError as exc:  # the checker's reason names the entry
                raise ValueError(f"{problem} ({exc})") from None
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(problem)
        if (self.kind == "count" and not isinstance(value, int)) or not self._in_range(value):
            raise ValueError(problem)
        return value if self.kind == "count" else float(value) + 0.0

    def _check_text(self, text: str) -> None:
        """Run the part's checker on a text that is not blank (a blank one is the default)."""
        if not self.checker or not text.strip():
            return
        module, _, function = self.checker.partition(":")
        getattr(importlib.import_module(module), function)(text)

    def _in_range(self, number: float) -> bool:
        if self.minimum is None or self.maximum is None:  # _declare forbids this
            return False
        # NaN fails both comparisons; the bounds are finite, so inf fails one.
        return self.minimum <= number <= self.maximum


def _declare(default: _T, variable: Variable) -> _T:
    """A dataclass field that carries its ``Variable`` (the field name is filled in later)."""
    if variable.kind in ("count", "number"):
        low, high = variable.minimum, variable.maximum
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{variable.name}: a number needs a finite minimum and maximum")
        if not low <= float(variable.default) <= high:
            raise ValueError(f"{variable.name}: the default is outside the range")
    return field(default=default, metadata={_METADATA_KEY: variable})


def _switch(suffix: str, default: bool, meaning: str) -> bool:
    return _declare(default, Variable(PREFIX + suffix, "", "switch", default, meaning))


def _count(suffix: str, default: int, minimum: int, maximum: int, meaning: str) -> int:
    variable = Variable(PREFIX + suffix, "", "count", default, meaning, minimum, maximum)
    return _declare(default, variable)


def _number(
    suffix: str, default: float, minimum: float, maximum: float, meaning: str, *, unit: str = ""
) -> float:
    variable = Variable(PREFIX + suffix, "", "number", default, meaning, minimum, maximum, unit)
    return _declare(default, variable)


def _text(suffix: str, default: str, meaning: str, *, syntax: str, checker: str) -> str:
    variable = Variable(
        PREFIX + suffix, "", "text", default, meaning, syntax=syntax, checker=checker
    )
    return _declare(default, variable)


# Pairs (lower, upper) of fields where lower must not exceed upper.
_ORDERED: Final = (("pool_warning_threshold", "pool_critical_threshold"),)

_DAY: Final = 86_400.0


@dataclass(frozen=True)
class Settings:
    """The package's settings; ``Settings()`` is the documented defaults.

    Every field is declared with its variable, default, valid range and
    meaning (see the module docstring); ``problems`` lists the
    ``(variable, value, reason)`` of each environment value that was ignored.
    """

    pool_enabled: bool = _switch("POOL_ENABLED", True, "Connection-pool telemetry on or off.")
    pool_timings: bool = _switch(
        "POOL_TIMINGS",
        True,
        "The create/wait/use time histograms; off leaves only the read-at-collection metrics.",
    )
    pool_warning_threshold: float = _number(
        "POOL_WARNING_THRESHOLD",
        0.75,
        0.0,
        1.0,
        "Usage from which pool_health() says `warning`; at most the critical threshold.",
    )
    pool_critical_threshold: float = _number(
        "POOL_CRITICAL_THRESHOLD", 0.9, 0.0, 1.0, "Usage from which pool_health() says `critical`."
    )
    # Each distinct server is a handful of series per HTTP client pool.
    http_client_max_servers: int = _count(
        "HTTP_CLIENT_MAX_SERVERS",
        20,
        1,
        1000,
        "Distinct servers per outbound HTTP pool with their own series; the rest are `_OTHER`.",
    )
    rate_limit_enabled: bool = _switch(
        "RATE_LIMIT_ENABLED", True, "Rate-limit metering (and the `limits` library's) on or off."
    )
    # At least a tenth of a second: a pass walks only the idle keys from the
    # oldest, so ten wake-ups a second cost nothing measurable, while 1e-300
    # made the task a busy loop. At most a day, so the period fits the store's
    # integer nanoseconds and asyncio's timers (1e300 overflowed them).
    rate_limit_eviction_interval: float = _number(
        "RATE_LIMIT_EVICTION_INTERVAL",
        60.0,
        0.1,
        _DAY,
        "Seconds between the in-memory store's cleanup passes.",
        unit="s",
    )
    rate_limit_idle_timeout: float = _number(
        "RATE_LIMIT_IDLE_TIMEOUT",
        0.0,
        0.0,
        _DAY,
        "Extra seconds an idle key is kept after its state stops mattering.",
        unit="s",
    )
    # Ten million keys is a few gigabytes of tables: a bound, not a target.
    rate_limit_max_keys: int = _count(
        "RATE_LIMIT_MAX_KEYS",
        100_000,
        1,
        10_000_000,
        "Most keys the in-memory store holds per policy (a memory bound).",
    )
    errors_enabled: bool = _switch(
        "ERRORS_ENABLED", True, "Exception-to-span-status mapping on or off."
    )
    error_mappings: str = _text(
        "ERROR_MAPPINGS",
        "",
        "Extra exception-to-outcome mappings, checked by the errors part (docs/errors.md).",
        syntax="comma-separated `module.Class=STATUS:HTTP[:ERROR_TYPE]` entries",
        checker="otel_backpressure.errors._mappings:parse_mappings",
    )
    event_loop_enabled: bool = _switch(
        "EVENT_LOOP_ENABLED", True, "Event-loop delay and utilization on or off."
    )
    # At least 1 ms: below it the sampler's own wake-ups show (docs/runtime.md);
    # at most 10 s, the delay histogram's last bucket.
    event_loop_resolution: float = _number(
        "EVENT_LOOP_RESOLUTION",
        0.01,
        0.001,
        10.0,
        "Seconds between event-loop delay samples (docs/runtime.md).",
        unit="s",
    )
    thread_pool_enabled: bool = _switch(
        "THREAD_POOL_ENABLED",
        True,
        "Thread-pool metrics (anyio's default limiter, the loops' default executors) on or off.",
    )
    problems: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Programmatic construction gets an exception naming the argument.
        for variable in VARIABLES:
            value = variable.check(getattr(self, variable.field))
            object.__setattr__(self, variable.field, value)
        for lower, upper in _ORDERED:
            low, high = getattr(self, lower), getattr(self, upper)
            if low > high:
                raise ValueError(f"{lower} must not exceed {upper} (got {low} > {high})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``OTEL_PYTHON_BACKPRESSURE_*`` variable; never raises.

        A bad value is logged once per process (see ``report_invalid``) and the
        setting keeps its default; a blank value means the default.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Value] = {}
        raws: dict[str, str] = {}
        problems: list[tuple[str, str, str]] = []
        for variable in VARIABLES:
            raw = env.get(variable.name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[variable.field] = variable.parse(raw)
                raws[variable.field] = raw
            except ValueError as exc:
                problems.append((variable.name, raw, str(exc)))
        for lower, upper in _ORDERED:
            low = values.get(lower, _BY_FIELD[lower].default)
            high = values.get(upper, _BY_FIELD[upper].default)
            if low > high:  # type: ignore[operator]  # both numbers
                reason = (
                    f"{_BY_FIELD[lower].name}={low} must not exceed "
                    f"{_BY_FIELD[upper].name}={high}; both use their defaults"
                )
                for name in (lower, upper):
                    if name in values:
                        problems.append((_BY_FIELD[name].name, raws[name], reason))
                        del values[name]
        for name, raw, reason in problems:
            report_invalid(name, raw, reason)
        return cls(**values, problems=tuple(problems))  # type: ignore[arg-type]


def _variables() -> tuple[Variable, ...]:
    found = []
    for spec in dataclasses.fields(Settings):
        variable = spec.metadata.get(_METADATA_KEY)
        if variable is not None:
            variable.field = spec.name  # declared before its field had a name
            found.append(variable)
    return tuple(found)


VARIABLES: Final[tuple[Variable, ...]] = _variables()
_BY_FIELD: Final = {variable.field: variable for variable in VARIABLES}
_BY_NAME: Final = {variable.name: variable for variable in VARIABLES}

# (variable, value) pairs already logged; bounded, so odd callers cannot grow it.
_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()
_REPORTED_LIMIT: Final = 1024


def report_invalid(name: str, raw: str, reason: str) -> None:
    """Log that variable ``name``'s value ``raw`` is ignored, once per process per value.

    ``reason`` says what was expected; the message adds the default in use.
    Parts that parse a text setting themselves report through here.
    """
    key = (name, raw)
    with _reported_lock:
        if key in _reported:
            return
        if len(_reported) >= _REPORTED_LIMIT:
            _reported.clear()
        _reported.add(key)
    variable = _BY_NAME.get(name)
    default = "(none)" if variable is None else variable.default_text or "(none)"
    _logger.error("Ignoring %s=%r (%s); using the default %s", name, raw, reason, default)


def markdown_table() -> str:
    """The README's configuration table, one row per variable, from the declarations."""
    lines = ["| variable | default | valid values | meaning |", "|---|---|---|---|"]
    for variable in VARIABLES:
        default = f"`{variable.default_text}`" if variable.default_text else "(none)"
        lines.append(f"| `{variable.name}` | {default} | {variable.valid} | {variable.meaning} |")
    return "\n".join(lines) + "\n"


def check_fraction(argument: str, value: float) -> float:
    """Validate a 0..1 argument, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{argument} must be a number from 0 to 1, got {value!r}")
    return float(value) + 0.0


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
