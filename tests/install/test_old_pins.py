"""Installing into an application with old pins moves none of them.

A public FastAPI application pinned to FastAPI 0.79, Starlette 0.19.1, httpx
0.23 and SQLAlchemy 1.4 (through ``databases``), talking to PostgreSQL through
a raw asyncpg pool, installs the package with the extras it needs (asyncpg pool
metrics, OTLP export). Afterwards every pin is what it was and ``pip check`` is
clean; so it stays with the ``sqlalchemy`` extra added (SQLAlchemy 1.4 is in
range), and the parts of the app's libraries are patched, none skipped as out
of range. Real pip, real PyPI, a fresh virtualenv: what a user runs. Slow and
networked, so it is not in ``testpaths``; ``nox -s install`` (and ``.ci/run``)
runs it.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

APP_PINS = {
    "fastapi": "0.79.0",
    "starlette": "0.19.1",
    "httpx": "0.23.3",
    "sqlalchemy": "1.4.41",
    "databases": "0.6.2",
    "asyncpg": "0.27.0",  # the lowest supported
    "anyio": "3.7.1",
    "pydantic": "1.10.13",
}

pytestmark = pytest.mark.install


def pip(environment: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(environment / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def installed(environment: Path) -> dict[str, str]:
    listing = pip(environment, "list", "--format=json")
    assert listing.returncode == 0, listing.stderr
    return {item["name"].lower(): item["version"] for item in json.loads(listing.stdout)}


def test_the_extras_an_old_app_needs_leave_every_pin_alone(tmp_path: Path) -> None:
    environment = tmp_path / "app"
    venv.create(environment, with_pip=True)
    pins = [f"{name}=={version}" for name, version in APP_PINS.items()]
    result = pip(environment, "install", "--quiet", *pins)
    assert result.returncode == 0, result.stderr
    before = installed(environment)
    assert {name: before[name] for name in APP_PINS} == APP_PINS

    for extras in ("asyncpg,otlp", "asyncpg,otlp,sqlalchemy"):
        result = pip(environment, "install", "--quiet", f"{ROOT}[{extras}]")
        assert result.returncode == 0, result.stderr

        after = installed(environment)
        assert {name: after[name] for name in APP_PINS} == APP_PINS, extras
        moved = {
            name: (before[name], after[name]) for name in before if before[name] != after[name]
        }
        assert moved == {}, (extras, moved)
        check = pip(environment, "check")
        assert check.returncode == 0, check.stdout + check.stderr

    # and the package works there: loading it imports none of the app's libraries,
    # and the app's own imports then find them in range (no "skips" warning) and patched
    probe = subprocess.run(
        [
            str(environment / "bin" / "python"),
            "-c",
            "import logging, sys, otel_backpressure\n"
            "from otel_backpressure.testing import MetricsCapture\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "metrics = MetricsCapture()\n"
            "otel_backpressure.BackpressureInstrumentor().instrument("
            "meter_provider=metrics.meter_provider)\n"
            "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'fastapi', 'starlette')"
            " if m in sys.modules))\n"
            "import asyncpg, sqlalchemy\n"
            "engine = sqlalchemy.create_engine('sqlite://')\n"
            "engine.connect().close()\n"
            "print('db.client.connection.count' in metrics.collect())\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["[]", "True"], probe.stdout + probe.stderr
    assert "skips" not in probe.stderr, probe.stderr
