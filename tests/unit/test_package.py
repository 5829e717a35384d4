"""The package as an installer and ``opentelemetry-instrument`` see it.

Metadata read from the installed distribution (what pip and PyPI read), the
supported ranges as data, and the promise that loading the instrumentor imports
none of the libraries it instruments.
"""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement

from child_python import run_under_opentelemetry_instrument
from otel_backpressure import package

DIST = distribution("opentelemetry-instrumentation-backpressure")
ROOT = Path(__file__).resolve().parents[2]

# Every library some part of the package instruments or drives, plus the SDK.
INSTRUMENTED = ("sqlalchemy", "asyncpg", "redis", "limits", "psycopg_pool", "httpx", "aiohttp")
FRAMEWORKS = ("starlette", "fastapi", "anyio")


def requirements(extra: str | None) -> dict[str, Requirement]:
    found = {}
    for line in DIST.requires or ():
        requirement = Requirement(line)
        marker = requirement.marker
        wanted = (
            marker is None if extra is None else bool(marker and marker.evaluate({"extra": extra}))
        )
        if wanted:
            found[requirement.name] = requirement
    return found


def test_the_core_is_what_every_instrumentation_needs_and_no_more() -> None:
    assert sorted(requirements(None)) == [
        "opentelemetry-api",
        "opentelemetry-instrumentation",
        "opentelemetry-semantic-conventions",
        "wrapt",
    ]


def test_each_library_extra_is_the_range_package_py_declares() -> None:
    for module, declared in package._supported.items():
        wanted = Requirement(declared)
        extra = requirements("otlp" if wanted.name == "opentelemetry-sdk" else module)
        assert wanted.name in extra, (module, sorted(extra))
        assert extra[wanted.name].specifier == wanted.specifier, module
        assert str(requirements("instruments-any")[wanted.name].specifier) == str(wanted.specifier)
    assert requirements("instruments") == {}
    assert sorted(requirements("instruments-any")) == sorted(
        Requirement(declared).name for declared in package._supported.values()
    )


def requirement_lines(extra: str) -> set[str]:
    """Every requirement of ``extra`` without its marker (the wheel's metadata spells
    an extra that names others, such as ``all``, out in full; a name may repeat)."""
    found = set()
    for line in DIST.requires or ():
        requirement = Requirement(line)
        if requirement.marker and requirement.marker.evaluate({"extra": extra}):
            requirement.marker = None
            found.add(str(requirement))
    return found


# The extras that are not a part to install: the auto-loader's, the bundle itself
# and the project's own tools. Every other extra is one `all` brings.
NOT_IN_ALL = {"all", "instruments", "instruments-any", "test", "bench", "dev"}


def test_all_brings_every_library_extra_otlp_and_the_demo() -> None:
    extras = set(DIST.metadata.get_all("Provides-Extra") or ())
    library_extras = {
        "otlp" if Requirement(declared).name == "opentelemetry-sdk" else module.replace("_", "-")
        for module, declared in package._supported.items()
    }
    assert library_extras | {"otlp", "demo"} <= extras - NOT_IN_ALL
    everything = requirement_lines("all")
    for extra in sorted(extras - NOT_IN_ALL):
        missing = requirement_lines(extra) - everything
        assert not missing, f"[all] lacks [{extra}]: {sorted(missing)}"
    # psycopg_pool does not import without psycopg, which it does not require:
    # `all` brings psycopg's quick-start build, the psycopg-pool extra none
    assert "psycopg[binary]>=3.1" in everything
    assert sorted(requirements("psycopg-pool")) == ["psycopg-pool"]


def test_the_metadata_an_index_shows() -> None:
    metadata = DIST.metadata
    classifiers = set(metadata.get_all("Classifier") or ())
    for wanted in (
        "Framework :: OpenTelemetry",
        "Framework :: FastAPI",
        "Framework :: AsyncIO",
        "Typing :: Typed",
        *(f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12, 13)),
    ):
        assert wanted in classifiers, wanted
    assert any(classifier.startswith("Development Status ::") for classifier in classifiers)
    assert metadata.get("License-Expression") == "Apache-2.0"
    assert metadata.get("Keywords")
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or ())
    assert {"Homepage", "Source", "Changelog", "Documentation"} <= set(urls)
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "Version 2.0, January 2004" in (ROOT / "LICENSE").read_text()
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_an_app_importing_no_instrumented_library_imports_none_because_of_us() -> None:
    """Side by side with this instrumentor disabled: other installed instrumentations
    (contrib's FastAPI one imports FastAPI) import what they import either way."""
    names = (*INSTRUMENTED, *FRAMEWORKS, "opentelemetry.instrumentation.asgi")
    code = (
        "import json, sys\n"
        "from otel_backpressure import BackpressureInstrumentor\n"
        "print(BackpressureInstrumentor().is_instrumented_by_opentelemetry,"
        f" json.dumps(sorted(n for n in {names!r} if n in sys.modules)))\n"
    )
    # contrib's instrumentations of the same libraries (the benchmarks' anchors)
    # import them when they load: off in both runs, so only ours is compared
    others = "httpx,httpx2,aiohttp-client,redis,psycopg"
    enabled, imported = run_under_opentelemetry_instrument(
        code, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=others
    ).split(" ", 1)
    disabled, baseline = run_under_opentelemetry_instrument(
        code, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=f"backpressure,{others}"
    ).split(" ", 1)
    assert (enabled, disabled) == ("True", "False")
    assert json.loads(imported) == json.loads(baseline)
    assert not set(json.loads(imported)) & set(INSTRUMENTED)


# What loading the instrumentor imports of this package in an app that uses none
# of its libraries: the instrumentor, the settings, the patch table and each
# part's integration module. The rest (the pool registry and metrics, the error
# registry, hierarchy and span wrappers, the runtime metrics) is imported when
# the app creates a pool, a span records an exception, a loop starts or a
# default thread pool is first used. BENCHMARKS.md (startup) has what each
# costs; a module added to this list is paid for by every process.
LOADED_AT_START_UP = {
    "otel_backpressure",
    "otel_backpressure._patching",
    "otel_backpressure._shared",
    "otel_backpressure.errors",
    "otel_backpressure.errors._integration",
    "otel_backpressure.errors._metrics",
    "otel_backpressure.instrumentor",
    "otel_backpressure.package",
    "otel_backpressure.pool",
    "otel_backpressure.pool._integration",
    "otel_backpressure.pool._kinds",
    "otel_backpressure.ratelimit",
    "otel_backpressure.ratelimit.limits",
    "otel_backpressure.runtime",
    "otel_backpressure.runtime._integration",
    "otel_backpressure.runtime._loop",
    "otel_backpressure.settings",
    "otel_backpressure.version",
}


def test_loading_the_instrumentor_imports_only_what_it_needs_to_wait() -> None:
    code = (
        "import json, sys\n"
        "from otel_backpressure import BackpressureInstrumentor\n"
        "assert BackpressureInstrumentor().is_instrumented_by_opentelemetry\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith('otel_backpressure'))))\n"
    )
    # contrib's instrumentations of the same libraries import them; off, as above
    others = "httpx,httpx2,aiohttp-client,redis,psycopg"
    loaded = json.loads(
        run_under_opentelemetry_instrument(code, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=others)
    )
    assert set(loaded) == LOADED_AT_START_UP


def test_an_app_that_imports_a_library_gets_it_patched_then() -> None:
    code = (
        "import sys\n"
        "assert 'sqlalchemy' not in sys.modules\n"
        "import sqlalchemy.engine.base as base\n"
        "from otel_backpressure._patching import BackpressureWrapper\n"
        "print(isinstance(vars(base.Engine)['__init__'], BackpressureWrapper),"
        " 'asyncpg' in sys.modules)\n"
    )
    assert run_under_opentelemetry_instrument(code) == "True False"
