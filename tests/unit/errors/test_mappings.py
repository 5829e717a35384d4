"""The OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS syntax, strict, and its place in the settings."""

from __future__ import annotations

import logging
import re

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

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
    settings = Settings.from_env({VARIABLE: "a.B=unset:404,oops"})
    assert settings.problems == ()  # the settings keep the text; its syntax is ours
    assert settings.error_mappings == "a.B=unset:404,oops"
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
