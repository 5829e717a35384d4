"""The OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS syntax, strict, and its place in the settings."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

import otel_backpressure
from otel_backpressure import BackpressureInstrumentor, Settings
from otel_backpressure.errors import ErrorOutcome, NotFoundError, parse_mappings, registry
from otel_backpressure.errors._mappings import SYNTAX

VARIABLE = "OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS"


def test_the_documented_example_parses() -> None:
    assert parse_mappings(
        "myapp.errors.NotFound=unset:404, httpx.ConnectTimeout=error:504:timeout"
    ) == (
        (
            "myapp.errors.NotFound",
            ErrorOutcome("myapp.errors.NotFound", StatusCode.UNSET, 404, False),
        ),
        ("httpx.ConnectTimeout", ErrorOutcome("timeout", StatusCode.ERROR, 504, True)),
    )


def test_empty_means_no_mappings() -> None:
    assert parse_mappings("") == ()
    assert parse_mappings("   ") == ()


@pytest.mark.parametrize(
    "entry",
    [
        "NotFound=unset:404",  # no module
        "a.B=warn:404",  # unknown status
        "a.B=unset:200",  # not an error status
        "a.B=unset:600",
        "a.B=unset",  # no HTTP status
        "a.B=unset:4o4",
        "a.B=unset:404:two words",
        "a.B=unset:404:x:y",
        "a.B",
        "=unset:404",
        "",  # an empty entry, as from a trailing comma
    ],
)
def test_bad_entries_are_rejected_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(SYNTAX)) as caught:
        parse_mappings(f"ok.Fine=unset:404,{entry}")
    assert repr(entry) in str(caught.value)


def test_a_path_mapped_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"a\.B mapped twice"):
        parse_mappings("a.B=unset:404,a.B=error:500")


def test_settings_keep_a_valid_value() -> None:
    settings = Settings.from_env({VARIABLE: " a.B=unset:404 "})
    assert settings.error_mappings == "a.B=unset:404"
    assert settings.errors_enabled


def test_a_bad_value_is_logged_once_and_adds_no_mapping_while_the_part_works(
    caplog: pytest.LogCaptureFixture, tracer_provider: TracerProvider
) -> None:
    with caplog.at_level(logging.ERROR):
        settings = Settings.from_env({VARIABLE: "a.B=unset:404,oops"})
    # refused where every setting is, naming the variable that was set
    assert settings.error_mappings == ""
    assert [problem[:2] for problem in settings.problems] == [(VARIABLE, "a.B=unset:404,oops")]
    instrumentor = BackpressureInstrumentor()
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            instrumentor.instrument(tracer_provider=tracer_provider, settings=settings)
            try:
                assert registry.lookup(NotFoundError) is not None  # the part is on
                assert "a.B" not in repr(registry.lookup(LookupError))
                tracer = tracer_provider.get_tracer(__name__)
                with pytest.raises(NotFoundError), tracer.start_as_current_span("s") as span:
                    raise NotFoundError("gone")
                assert span.status.status_code is StatusCode.UNSET  # patches active
            finally:
                instrumentor.uninstrument()
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert VARIABLE in errors[0]
    assert "'oops'" in errors[0]
    assert "using the default (none)" in errors[0]


def test_a_bad_value_in_code_raises_naming_the_argument_not_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^error_mappings must be ") as caught:
        Settings(error_mappings="garbage")
    assert "entry 'garbage'" in str(caught.value)
    assert VARIABLE not in str(caught.value)


class Mistyped(Exception):
    """Lives in this module, which is imported: a path to a name it lacks is a typo."""


TYPO_WARNING = "error_mappings (OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS) maps"


def _warnings_enabling(text: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    instrumentor = BackpressureInstrumentor()
    with caplog.at_level(logging.WARNING, logger="otel_backpressure.errors._integration"):
        instrumentor.instrument(settings=Settings(error_mappings=text))
    try:
        return [r.getMessage() for r in caplog.records if r.name.startswith("otel_backpressure")]
    finally:
        instrumentor.uninstrument()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (f"{__name__}.Mistypo=error:500", f"{__name__} has no 'Mistypo'"),
        (f"{__name__}.Mistyped.Inner=error:500", f"{__name__}.Mistyped has no 'Inner'"),
        (f"{__name__}.VARIABLE=error:500", f"{__name__}.VARIABLE is 'str', not an exception"),
        ("json.decoder.JSONDecodeErr=error:500", "json.decoder has no 'JSONDecodeErr'"),
    ],
)
def test_a_mapping_naming_nothing_in_an_imported_module_is_logged_once(
    entry: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    (message,) = _warnings_enabling(f"{__name__}.Mistyped=error:500,{entry}", caplog)
    path = entry.partition("=")[0]
    assert message.startswith(f"{TYPO_WARNING} {path!r}, but {reason}")


@pytest.mark.parametrize(
    "entry",
    [
        f"{__name__}.Mistyped=error:500",  # right
        "json.JSONDecodeError=error:500",  # re-exported
        "nosuch.mod.Cls=error:500",  # not imported: nothing is imported to find out
        "json.nosuch.Cls=error:500",  # json is a package: perhaps a submodule, later
        "otel_backpressure.Nope=error:500",  # answers names on demand (PEP 562)
    ],
)
def test_a_mapping_that_may_still_match_is_not_logged(
    entry: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(sys.modules)
    assert _warnings_enabling(entry, caplog) == []
    assert "nosuch" not in {name.partition(".")[0] for name in set(sys.modules) - before}


def test_a_mapping_into_the_running_script_is_not_logged(tmp_path: Path) -> None:
    """``__main__`` runs until the program ends: its classes may come after instrument()."""
    script = tmp_path / "app.py"
    script.write_text(
        "import logging\n"
        "logging.basicConfig(level=logging.WARNING, format='%(name)s: %(message)s')\n"
        "from otel_backpressure import BackpressureInstrumentor, Settings\n"
        "from otel_backpressure.errors import registry\n"
        "mappings = '__main__.QuotaExceeded=error:429'\n"
        "BackpressureInstrumentor().instrument(settings=Settings(error_mappings=mappings))\n"
        "class QuotaExceeded(Exception):\n"
        "    pass\n"
        "print(registry.lookup(QuotaExceeded()).http_status)\n"
    )
    package_root = Path(otel_backpressure.__file__).parent.parent
    environment = {**os.environ, "PYTHONPATH": str(package_root)}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "429"  # the mapping matches the class
    assert TYPO_WARNING not in result.stderr, result.stderr


def test_a_lazily_loaded_module_is_not_executed_to_check_a_mapping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """importlib's LazyLoader runs a module at its first attribute access: not ours to make."""
    name = "otel_backpressure_test_lazy_module"
    (tmp_path / f"{name}.py").write_text(
        "import sys\nsys.modules[__name__].executed = True\nclass Boom(Exception):\n    pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.loader is not None
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        warnings = _warnings_enabling(f"{name}.Boom=error:503,{name}.Nope=error:503", caplog)
        assert "executed" not in object.__getattribute__(module, "__dict__")
        assert warnings == []  # whether it holds either is not known without running it
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
