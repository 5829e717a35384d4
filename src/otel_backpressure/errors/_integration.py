"""The errors part as ``BackpressureInstrumentor`` sees it.

Enabling parses and registers the mappings of
``OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS`` over the defaults (the settings
keep the text; its syntax is this part's, so a bad value is reported from
here, once, and no extra mapping is added) and names the meter provider ``backpressure.exceptions``
counts into; the instrumentor installs ``PATCHES``. Disabling restores the
registry exactly as it was.

Example::

    from otel_backpressure.errors._integration import ErrorsIntegration

    integrations.append(ErrorsIntegration())
"""

from __future__ import annotations

from typing import Final

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure.errors._defaults import registry as default_registry
from otel_backpressure.errors._mappings import parse_mappings
from otel_backpressure.errors._metrics import set_default_meter_provider
from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._registry import ErrorRegistry
from otel_backpressure.errors._spans import (
    record_exception_wrapper,
    set_status_wrapper,
    spans_of,
)
from otel_backpressure.settings import PREFIX, report_invalid

__all__ = ["PATCHES", "ErrorsIntegration"]

_MAPPINGS_VARIABLE: Final = PREFIX + "ERROR_MAPPINGS"


def _registry_of(context: InstrumentationContext) -> ErrorRegistry:
    chosen = context.options.get("error_registry", default_registry)
    if not isinstance(chosen, ErrorRegistry):
        raise TypeError(f"error_registry must be an ErrorRegistry, got {chosen!r}")
    return chosen


# The two SDK calls that mark a span an exception escapes; see _spans. With a
# tracer_provider, only that provider's spans are mapped.
PATCHES: Final = (
    Patch(
        "opentelemetry.sdk.trace",
        "Span.set_status",
        lambda context: set_status_wrapper(
            _registry_of(context), spans_of(context.tracer_provider)
        ),
    ),
    Patch(
        "opentelemetry.sdk.trace",
        "Span.record_exception",
        lambda context: record_exception_wrapper(
            _registry_of(context), spans_of(context.tracer_provider)
        ),
    ),
)


class ErrorsIntegration:
    """Error mapping on SDK spans, plus the settings' mappings.

    ``instrument(tracer_provider=p)`` maps the spans of ``p`` only (the errors
    part creates no spans; the spans it works on are that provider's); without
    it, every SDK span. A provider that is not the SDK's is refused with a
    ``TypeError`` naming ``tracer_provider``.
    """

    __slots__ = ("_registered", "_registry")

    name: Final = "errors"
    patches: Final = PATCHES

    def __init__(self) -> None:
        self._registry: ErrorRegistry = default_registry
        # (path, the mapping it replaced) for every mapping the settings added
        self._registered: list[tuple[str, ErrorOutcome | None]] = []

    def enable(self, context: InstrumentationContext) -> None:
        spans_of(context.tracer_provider)  # refuse a provider whose spans cannot be told apart
        registry = self._registry = _registry_of(context)
        text = context.settings.error_mappings
        try:
            mappings = parse_mappings(text)
        except ValueError as exc:  # the setting's default: no extra mappings
            report_invalid(_MAPPINGS_VARIABLE, text, str(exc))
            mappings = ()
        for path, outcome in mappings:
            self._registered.append((path, registry.register(path, outcome)))
        set_default_meter_provider(context.meter_provider)

    def disable(self) -> None:
        for path, previous in reversed(self._registered):
            if previous is None:
                self._registry.unregister(path)
            else:
                self._registry.register(path, previous)
        self._registered = []
        set_default_meter_provider(None)

    def __repr__(self) -> str:
        return f"ErrorsIntegration(settings_mappings={len(self._registered)})"
