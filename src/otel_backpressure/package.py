"""The libraries this package instruments and the versions it supports, as data.

Each entry maps the module a patch targets to the requirement its library must
meet, the same string the extra of that name in ``pyproject.toml`` declares
(``tests/unit/test_package.py`` keeps the two equal). Nothing here is a
dependency of the package: a part whose library is not installed is skipped
with one debug line, and a part whose library is installed at a version outside
its range is skipped with a warning naming both, checked when the application
imports the library (against the ``Version`` line of its metadata; when that
does not meet the range, ``opentelemetry-instrumentation``'s own
``get_dependency_conflicts`` decides and words the warning).

The errors part instruments the OpenTelemetry SDK's ``Span``, so the SDK is an
instrumented library like the others, not a dependency.

Example::

    >>> from otel_backpressure.package import requirement_for
    >>> requirement_for("sqlalchemy.engine.base")
    'sqlalchemy >= 1.4.41'
"""

from __future__ import annotations

from typing import Final

__all__ = ["requirement_for"]

_instruments_sqlalchemy: Final = "sqlalchemy >= 1.4.41"
_instruments_asyncpg: Final = "asyncpg >= 0.27"
_instruments_limits: Final = "limits >= 3.0"
_instruments_redis: Final = "redis >= 4.6"
_instruments_psycopg_pool: Final = "psycopg-pool >= 3.1"
# httpx 0.23 to 0.28 use httpcore 0.15 to 1.x
_instruments_httpcore: Final = "httpcore >= 0.15"
_instruments_aiohttp: Final = "aiohttp >= 3.8"
_instruments_sdk: Final = "opentelemetry-sdk >= 1.30"

# Top-level module (or package prefix) a patch target lives in -> its supported range.
_supported: Final[dict[str, str]] = {
    "sqlalchemy": _instruments_sqlalchemy,
    "asyncpg": _instruments_asyncpg,
    "limits": _instruments_limits,
    "redis": _instruments_redis,
    "psycopg_pool": _instruments_psycopg_pool,
    "httpcore": _instruments_httpcore,
    "aiohttp": _instruments_aiohttp,
    "opentelemetry.sdk": _instruments_sdk,
}

# No single library is required: the instrumentor is useful with any one of
# them (``instruments-any`` in pyproject.toml, the convention contrib's
# multi-library instrumentations follow), and each part checks its own.
_instruments: Final[tuple[str, ...]] = ()
_instruments_any: Final[tuple[str, ...]] = tuple(_supported.values())


def requirement_for(module: str) -> str | None:
    """The supported range of the library ``module`` belongs to, or None if none is declared."""
    for prefix, requirement in _supported.items():
        if module == prefix or module.startswith(prefix + "."):
            return requirement
    return None
