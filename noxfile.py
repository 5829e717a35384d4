"""Sessions: ``nox -s tests`` (the README's test command), compat, install, lint, typecheck.

``tests`` runs the whole suite on the interpreter nox itself runs on, with the
newest libraries (``.ci/run`` runs it under the newest Python). ``compat`` runs
the unit and integration tests of the instrumented parts on every supported
Python against the lowest and the highest supported version of each optional
library (the data below), and once more with SQLAlchemy 2.0 (its lowest is
1.4, its highest 2.1); ``install`` proves that installing the package into an
application with old pins moves none of them.
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

# The lowest supported version of each optional library and of OpenTelemetry
# (the ranges in src/otel_backpressure/package.py and the extras).
LOWEST_PINS = (
    "redis==4.6.0",
    "limits==3.0.0",
    "setuptools<82",  # limits before 3.3 imports pkg_resources, which setuptools 82 dropped
    "coredis<5",  # limits before 5 talks to Redis from asyncio through coredis 4
    "psycopg-pool==3.1.0",
    "httpcore==0.15.0",
    "httpx==0.23.3",  # 0.23.0 imports cgi, which Python 3.13 no longer has
    "starlette==0.27.0",
    "fastapi==0.100.0",
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
# The libraries whose lowest differs by Python: the first release built for it.
# SQLAlchemy 1.4.41 is the newest `databases` 0.6 allows (FastAPI 0.79-era
# apps; 0.7+ needs 1.4.42); 1.4.49 has the first 3.12 wheels; 1.4.53 is the
# first to support 3.13 and has no wheels (built from its sdist). asyncpg
# 0.27/0.28 have no 3.12 wheels, 0.29 none for 3.13; aiohttp has 3.11 wheels
# from 3.8.3, 3.12 from 3.9.0, 3.13 from 3.10.5; wrapt 3.12 from 1.16, 3.13 from 1.17.
LOWEST = {
    "3.10": (
        *LOWEST_PINS,
        "sqlalchemy[asyncio]==1.4.41",
        "asyncpg==0.27.0",
        "aiohttp==3.8.0",
        "wrapt==1.14.1",
    ),
    "3.11": (
        *LOWEST_PINS,
        "sqlalchemy[asyncio]==1.4.41",
        "asyncpg==0.27.0",
        "aiohttp==3.8.3",
        "wrapt==1.14.1",
    ),
    "3.12": (
        *LOWEST_PINS,
        "sqlalchemy[asyncio]==1.4.49",
        "asyncpg==0.29.0",
        "aiohttp==3.9.0",
        "wrapt==1.16.0",
    ),
    "3.13": (
        *LOWEST_PINS,
        "sqlalchemy[asyncio]==1.4.53",
        "asyncpg==0.30.0",
        "aiohttp==3.10.5",
        "wrapt==1.17.0",
    ),
}
# SQLAlchemy 1.4 is the lowest everywhere, 2.1 the highest: 2.0 gets a session
# of its own, its first release with everything else at the lowest.
SQLALCHEMY_20 = ("3.11", "sqlalchemy[asyncio]==2.0.0")

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
    "f'{n}=={m.version(n)}' for n in ('sqlalchemy', 'asyncpg', 'redis', 'limits',"
    " 'psycopg-pool', 'httpcore', 'httpx', 'aiohttp', 'anyio', 'starlette', 'fastapi',"
    " 'opentelemetry-api', 'opentelemetry-sdk', 'wrapt')))"
)

COMPAT = [
    *((python, "lowest") for python in PYTHONS),
    *((python, "highest") for python in PYTHONS if python != NEWEST),  # NEWEST: ``tests``
    (SQLALCHEMY_20[0], "sqlalchemy2.0"),
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
    """The parts' tests on one Python with every optional library at one bound
    (``sqlalchemy2.0``: the lowest, SQLAlchemy at its first 2.0 release)."""
    pins: tuple[str, ...] = ()
    deselect: tuple[str, ...] = ()
    if bound == "lowest":
        pins = LOWEST[str(session.python)]
        # SQLAlchemy 1.4: the tests about a 2.0-only feature, by name
        deselect = ("-m", "not sqlalchemy2")
    elif bound == "sqlalchemy2.0":
        lowest = LOWEST[str(session.python)]
        pins = (*(p for p in lowest if not p.startswith("sqlalchemy")), SQLALCHEMY_20[1])
    # One resolution with the pins, so that nothing else drags a pin upwards.
    session.install("-e", ".[test]", *pins)
    session.run("python", "-c", SHOW_VERSIONS)
    session.run("pytest", "-p", "no:randomly", *COMPAT_TESTS, *deselect, *session.posargs)


@nox.session(python="3.11")
def install(session: nox.Session) -> None:
    """An application with old pins installs the package; every pin stays (tests/install)."""
    session.install("pytest>=8", "packaging")
    # only tests/install's own conftest: the suite's root one needs the package's test extra
    session.run(
        "pytest", "tests/install", "--confcutdir=tests/install", "-m", "install", *session.posargs
    )


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
