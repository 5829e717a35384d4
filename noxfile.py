"""Sessions: ``nox -s tests`` (the README's test command), compat, install, lint, typecheck.

``tests`` runs the whole suite on the interpreter nox itself runs on, with the
newest libraries (``.ci/run`` runs it under the newest Python). ``compat`` runs
the unit and integration tests of the instrumented parts on every supported
Python against the lowest and the highest supported version of each optional
library (the data below); ``install`` proves that installing the package into
an application with old pins moves none of them.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
# uv when it is installed (seconds per environment instead of a minute), else virtualenv.
nox.options.default_venv_backend = "uv|virtualenv"
# A session whose interpreter is missing must fail CI, not be skipped.
nox.options.error_on_missing_interpreters = True

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
NEWEST = PYTHONS[-1]

# The lowest supported version of each optional library and of OpenTelemetry,
# per Python where the lowest release has no build for that Python (asyncpg
# ships wheels for 3.12 from 0.29 and for 3.13 from 0.30). SQLAlchemy's 1.4
# series is tested at its last release, the one 1.4 applications run.
_LOWEST_COMMON = (
    "sqlalchemy[asyncio]==1.4.54",
    "redis==4.6.0",
    "limits==3.0.0",
    "setuptools<81",  # limits 3.0 imports pkg_resources, which setuptools 81 removed
    "starlette==0.27.0",
    "fastapi==0.100.0",
    "httpx==0.23.3",
    "opentelemetry-api==1.30.0",
    "opentelemetry-sdk==1.30.0",
    "opentelemetry-exporter-otlp-proto-grpc==1.30.0",
    "opentelemetry-exporter-otlp-proto-http==1.30.0",
    "opentelemetry-instrumentation==0.51b0",
    "opentelemetry-semantic-conventions==0.51b0",
    "opentelemetry-distro==0.51b0",
    "opentelemetry-instrumentation-asgi==0.51b0",
    "opentelemetry-instrumentation-fastapi==0.51b0",
)
LOWEST = {
    "3.10": (*_LOWEST_COMMON, "asyncpg==0.27.0", "wrapt==1.14.1"),
    "3.11": (*_LOWEST_COMMON, "asyncpg==0.27.0", "wrapt==1.14.1"),
    "3.12": (*_LOWEST_COMMON, "asyncpg==0.29.0", "wrapt==1.16.0"),
    "3.13": (*_LOWEST_COMMON, "asyncpg==0.30.0", "wrapt==1.17.0"),
}
# Between the bounds: the SQLAlchemy series users are moving to.
MIDDLE = ("sqlalchemy[asyncio]==2.0.*",)

# What a library bound can change: the parts' unit and integration tests. The
# dashboard, alert rules and demo do not depend on a library's version, and
# the end-to-end tests run in ``tests``.
COMPAT_TESTS = (
    "tests/unit",
    "tests/integration",
    "--ignore=tests/unit/collector_config",
    "--ignore=tests/unit/demo",
)

SHOW_VERSIONS = (
    "import importlib.metadata as m, sys; print(sys.version.split()[0], *("
    "f'{n}=={m.version(n)}' for n in ('sqlalchemy', 'asyncpg', 'redis', 'limits', 'starlette',"
    " 'fastapi', 'httpx', 'opentelemetry-api', 'opentelemetry-sdk', 'wrapt')))"
)

COMPAT = [
    *((python, "lowest") for python in PYTHONS),
    *((python, "highest") for python in PYTHONS if python != NEWEST),  # NEWEST: ``tests``
    ("3.11", "sqlalchemy-2.0"),
]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite against the real PostgreSQL, Redis and an OTLP collector."""
    session.install("-e", ".[test,demo]")
    session.run("python", "scripts/ensure_promtool.py")
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize(("python", "bound"), COMPAT, ids=[f"{p}-{b}" for p, b in COMPAT])
def compat(session: nox.Session, bound: str) -> None:
    """The parts' tests on one Python with every optional library at one bound."""
    pins: tuple[str, ...] = ()
    if bound == "lowest":
        pins = LOWEST[str(session.python)]
    elif bound == "sqlalchemy-2.0":
        pins = MIDDLE
    # One resolution with the pins, so that nothing else drags a pin upwards.
    session.install("-e", ".[test]", *pins)
    session.run("python", "-c", SHOW_VERSIONS)
    session.run("pytest", "-p", "no:randomly", *COMPAT_TESTS, *session.posargs)


@nox.session(python="3.11")
def install(session: nox.Session) -> None:
    """An application with old pins installs the package; every pin stays (tests/install)."""
    session.install("pytest>=8", "packaging")
    session.run("pytest", "tests/install", "-m", "install", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "scripts", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "scripts", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[all]", "mypy>=1.11")
    session.run("mypy")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Side-by-side runs against the anchors; prints the ratios BENCHMARKS.md reports."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
