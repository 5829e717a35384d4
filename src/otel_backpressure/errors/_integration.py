"""The errors part as ``BackpressureInstrumentor`` sees it.

Enabling parses and registers the mappings of the ``error_mappings`` setting
(``OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS``) over the defaults (``Settings``
already refused a value this part's parser rejects) and names the meter
provider ``backpressure.exceptions`` counts into; the instrumentor installs
``PATCHES``. A mapping whose module is already imported but names no exception
class there is kept and logged once as a likely typo (nothing is imported to
find out). Disabling restores the registry exactly as it was.

Every process ``opentelemetry-instrument`` starts has imported the SDK's
``Span`` by the time this part is enabled, so its two patches are installed at
once; their wrappers, and with them the registry, the default mappings and
the exception hierarchy, are built at the first ``set_status`` or
``record_exception`` call (``Patch.deferred``), which a span that ends without
an exception never makes. Loading the instrumentor imports only this module and
``_metrics``.

Example::

    from otel_backpressure.errors._integration import ErrorsIntegration

    integrations.append(ErrorsIntegration())
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from otel_backpressure._patching import InstrumentationContext, Patch
from otel_backpressure._shared import Wrapper
from otel_backpressure.errors._metrics import set_default_meter_provider
from otel_backpressure.settings import PREFIX

if TYPE_CHECKING:
    from otel_backpressure.errors._outcome import ErrorOutcome
    from otel_backpressure.errors._registry import ErrorRegistry

__all__ = ["PATCHES", "ErrorsIntegration"]

_logger = logging.getLogger(__name__)

_MAPPINGS_VARIABLE: Final = PREFIX + "ERROR_MAPPINGS"


def _parse(text: str) -> tuple[tuple[str, ErrorOutcome], ...]:
    if not text.strip():
        return ()  # the usual case: the parser is not even imported
    from otel_backpressure.errors._mappings import parse_mappings

    return parse_mappings(text)


def _registry_of(context: InstrumentationContext) -> ErrorRegistry:
    """The ``error_registry`` option, or the default registry; ``TypeError`` for anything else."""
    if "error_registry" not in context.options:
        from otel_backpressure.errors._defaults import registry

        return registry
    from otel_backpressure.errors._registry import ErrorRegistry

    chosen = context.options["error_registry"]
    if not isinstance(chosen, ErrorRegistry):
        raise TypeError(f"error_registry must be an ErrorRegistry, got {chosen!r}")
    return chosen


def _set_status(context: InstrumentationContext) -> Wrapper:
    from otel_backpressure.errors._spans import set_status_wrapper, spans_of

    return set_status_wrapper(_registry_of(context), spans_of(context.tracer_provider))


def _record_exception(context: InstrumentationContext) -> Wrapper:
    from otel_backpressure.errors._spans import record_exception_wrapper, spans_of

    return record_exception_wrapper(_registry_of(context), spans_of(context.tracer_provider))


# The two SDK calls that mark a span an exception escapes; see _spans. With a
# tracer_provider, only that provider's spans are mapped.
PATCHES: Final = (
    Patch("opentelemetry.sdk.trace", "Span.set_status", _set_status, deferred=True),
    Patch("opentelemetry.sdk.trace", "Span.record_exception", _record_exception, deferred=True),
)


class ErrorsIntegration:
    """Error mapping on SDK spans, plus the settings' mappings.

    ``instrument(tracer_provider=p)`` maps the spans of ``p`` only (the errors
    part creates no spans; the spans it works on are that provider's); without
    it, every SDK span. A provider that is not the SDK's is refused with a
    ``TypeError`` naming ``tracer_provider``, and an ``error_registry`` that is
    not an ``ErrorRegistry`` with one naming ``error_registry``.
    """

    __slots__ = ("_registered", "_registry")

    name: Final = "errors"
    patches: Final = PATCHES

    def __init__(self) -> None:
        self._registry: ErrorRegistry | None = None
        # (path, the mapping it replaced) for every mapping the settings added
        self._registered: list[tuple[str, ErrorOutcome | None]] = []

    def enable(self, context: InstrumentationContext) -> None:
        if context.tracer_provider is not None:
            from otel_backpressure.errors._spans import spans_of

            spans_of(context.tracer_provider)  # refuse a provider whose spans cannot be told apart
        if "error_registry" in context.options:
            _registry_of(context)  # refuse a wrong one now, not at the first exception
        mappings = _parse(context.settings.error_mappings)  # checked by Settings
        if mappings:
            from otel_backpressure.errors._registry import missing_from_loaded

            registry = self._registry = _registry_of(context)
            for path, outcome in mappings:
                self._registered.append((path, registry.register(path, outcome)))
                missing = missing_from_loaded(path)
                if missing is not None:
                    _logger.warning(
                        "error_mappings (%s) maps %r, but %s: a typo? The mapping is kept "
                        "and matches if such a class appears",
                        _MAPPINGS_VARIABLE,
                        path,
                        missing,
                    )
        set_default_meter_provider(context.meter_provider)

    def disable(self) -> None:
        registry = self._registry
        for path, previous in reversed(self._registered):
            if registry is None:
                break
            if previous is None:
                registry.unregister(path)
            else:
                registry.register(path, previous)
        self._registered = []
        self._registry = None
        set_default_meter_provider(None)

    def __repr__(self) -> str:
        return f"ErrorsIntegration(settings_mappings={len(self._registered)})"
