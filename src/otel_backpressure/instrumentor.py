"""``BackpressureInstrumentor``: auto-loaded by ``opentelemetry-instrument``.

Usage::

    from otel_backpressure import BackpressureInstrumentor

    BackpressureInstrumentor().instrument(meter_provider=provider, engines=[engine])
    BackpressureInstrumentor().instrument(engine=other_engine)   # one more, later
    ...
    BackpressureInstrumentor().uninstrument()

``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=backpressure`` keeps the distro from
loading it; ``OTEL_PYTHON_BACKPRESSURE_*`` variables switch single parts off.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from otel_backpressure import _patching
from otel_backpressure._shared import check_meter_provider
from otel_backpressure.package import _instruments
from otel_backpressure.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

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


# Every option instrument() takes; BaseInstrumentor takes its own
# (skip_dep_check, raise_exception_on_conflict) before _instrument sees them.
_OPTIONS: Final = frozenset(
    {"engine", "engines", "error_registry", "meter_provider", "settings", "tracer_provider"}
)


def _hands_pools(kwargs: dict[str, Any]) -> bool:
    """Whether a call names pools to instrument (an empty list names none)."""
    engines = kwargs.get("engines")
    return kwargs.get("engine") is not None or (
        engines is not None and not (isinstance(engines, (list, tuple)) and not engines)
    )


def _meter_provider(meter_provider: Any, instead: str) -> MeterProvider | None:
    """``meter_provider``, or None (``instead``) logged when it is not a provider."""
    try:
        return check_meter_provider(meter_provider)
    except TypeError as exc:
        _logger.error("BackpressureInstrumentor: %s; using %s meter provider", exc, instead)
        return None


class BackpressureInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Pool telemetry, rate-limit metering and error mapping for the whole process."""

    _enabled: list[_patching.Integration]
    _installed: list[_patching.Installation]

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing the whole needs: each part checks its own library (``package.py``)."""
        return _instruments

    def instrument(self, **kwargs: Any) -> Any:
        """Instrument the process; called again while instrumented, instrument the
        ``engine``/``engines`` given (for ``meter_provider``, or the first call's provider).

        Other options of a later call are ignored, as OpenTelemetry's warning says.
        Never raises for a bad option: it is logged, naming it (see ``_instrument``).
        """
        if not (self.is_instrumented_by_opentelemetry and _hands_pools(kwargs)):
            return super().instrument(**kwargs)
        self._adopt_pools(kwargs)
        if set(kwargs) - {"engine", "engines", "meter_provider"}:
            return super().instrument(**kwargs)  # warns that the rest is ignored
        return None

    def _adopt_pools(self, kwargs: dict[str, Any]) -> None:
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
            pool.adopt(kwargs, _meter_provider(kwargs.get("meter_provider"), "the first call's"))
        except Exception:
            _logger.exception("Backpressure pool telemetry: engines= was ignored")

    def _instrument(self, **kwargs: Any) -> None:
        """Enable every part the settings switch on; a part that fails is logged, the rest start.

        Options: ``settings`` (a ``Settings``; default ``Settings.from_env()``),
        ``meter_provider`` and ``tracer_provider`` (default the global ones),
        ``engine``/``engines`` (the pool part), ``error_registry`` (the errors
        part). A bad value is logged naming the option and its default is used
        (``tracer_provider`` and ``error_registry``: the errors part stays off);
        an unknown option is logged as ignored. Nothing here raises into the
        application, which cannot catch it under ``opentelemetry-instrument``.
        """
        settings = kwargs.pop("settings", None)
        if settings is not None and not isinstance(settings, Settings):
            _logger.error(
                "BackpressureInstrumentor: settings must be a Settings, got %s; "
                "using the environment's",
                type(settings).__name__,
            )
            settings = None
        unknown = sorted(set(kwargs) - _OPTIONS)
        if unknown:
            _logger.warning(
                "BackpressureInstrumentor ignores the unknown option(s) %s (it takes %s)",
                ", ".join(unknown),
                ", ".join(sorted(_OPTIONS)),
            )
        context = _patching.InstrumentationContext(
            settings=settings or Settings.from_env(),
            meter_provider=_meter_provider(kwargs.pop("meter_provider", None), "the global"),
            tracer_provider=kwargs.pop("tracer_provider", None),
            options=kwargs,
        )
        self._enabled = []
        self._installed = []
        for integration in _integrations():
            if not getattr(context.settings, f"{integration.name}_enabled"):
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
