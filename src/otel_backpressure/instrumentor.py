"""``BackpressureInstrumentor``: auto-loaded by ``opentelemetry-instrument``.

Usage::

    from otel_backpressure import BackpressureInstrumentor

    BackpressureInstrumentor().instrument(meter_provider=provider, engines=[engine])
    ...
    BackpressureInstrumentor().uninstrument()

``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=backpressure`` keeps the distro from
loading it; ``OTEL_PYTHON_BACKPRESSURE_*`` variables switch single parts off.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_backpressure import _patching
from otel_backpressure.package import _instruments
from otel_backpressure.settings import Settings

__all__ = ["BackpressureInstrumentor"]

_logger = logging.getLogger(__name__)


def _integrations() -> tuple[_patching.Integration, ...]:
    """Every part, in the order they are enabled (and disabled in reverse).

    Imported here, not at module level, so that loading the entry point costs
    nothing until ``instrument()`` is called.
    """
    from otel_backpressure.errors._integration import ErrorsIntegration
    from otel_backpressure.pool import PoolIntegration
    from otel_backpressure.ratelimit.limits import LimitsIntegration
    from otel_backpressure.runtime import EventLoopIntegration, ThreadPoolIntegration

    return (
        PoolIntegration(),
        LimitsIntegration(),
        ErrorsIntegration(),
        EventLoopIntegration(),
        ThreadPoolIntegration(),
    )


class BackpressureInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Pool telemetry, rate-limit metering and error mapping for the whole process."""

    _enabled: list[_patching.Integration]
    _installed: list[_patching.Installation]

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing the whole needs: each part checks its own library (``package.py``)."""
        return _instruments

    def instrument(self, **kwargs: Any) -> Any:
        """Instrument the process; called again while instrumented, instrument the
        ``engines`` given (for ``meter_provider``, or the first call's provider).

        Other options of a later call are ignored, as OpenTelemetry's warning says.
        """
        engines = kwargs.get("engines")
        if not (self.is_instrumented_by_opentelemetry and engines):
            return super().instrument(**kwargs)
        self._adopt_engines(engines, kwargs.get("meter_provider"))
        if set(kwargs) - {"engines", "meter_provider"}:
            return super().instrument(**kwargs)  # warns that the rest is ignored
        return None

    def _adopt_engines(self, engines: Any, meter_provider: Any) -> None:
        from otel_backpressure.pool import PoolIntegration

        enabled = getattr(self, "_enabled", [])
        pool = next((i for i in enabled if isinstance(i, PoolIntegration)), None)
        if pool is None:
            _logger.warning(
                "BackpressureInstrumentor is already instrumented without its pool part; "
                "engines= was ignored: use otel_backpressure.instrument(engine) for each engine"
            )
            return
        try:
            pool.adopt(engines, meter_provider)
        except Exception:
            _logger.exception("Backpressure pool telemetry: engines= was ignored")

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.pop("settings", None) or Settings.from_env()
        context = _patching.InstrumentationContext(
            settings=settings,
            meter_provider=kwargs.pop("meter_provider", None),
            tracer_provider=kwargs.pop("tracer_provider", None),
            options=kwargs,
        )
        self._enabled = []
        self._installed = []
        for integration in _integrations():
            if not getattr(settings, f"{integration.name}_enabled"):
                continue
            try:
                integration.enable(context)
                self._enabled.append(integration)
                self._installed.append(_patching.apply(integration.patches, context))
            except Exception:
                # opentelemetry-instrument re-raises an instrumentor's error and
                # the app fails to start: one broken part must not do that.
                _logger.exception("Backpressure %s telemetry failed to start", integration.name)

    def _uninstrument(self, **kwargs: Any) -> None:
        for installation in reversed(getattr(self, "_installed", [])):
            _patching.remove(installation)
        for integration in reversed(getattr(self, "_enabled", [])):
            try:
                integration.disable()
            except Exception:  # the others must still be undone
                _logger.exception("Backpressure %s telemetry failed to stop", integration.name)
        self._installed = []
        self._enabled = []
