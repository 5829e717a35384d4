"""The seam between the parts and the instrumentor.

A part declares *what* it patches (``Patch`` rows) and what it sets up and tears
down (``Integration``); ``instrumentor.py`` is the only code that applies the
patches, from one table built of every part's rows, and removes them by walking
the same table, so undoing is symmetric and safe to repeat.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import wrapt
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from otel_backpressure._shared import Wrapper
from otel_backpressure.settings import Settings

__all__ = ["InstrumentationContext", "Integration", "Patch", "Wrapper", "apply", "remove"]

_logger = logging.getLogger(__name__)

# What wrapt's FunctionWrapper derives from: ``BaseObjectProxy`` in wrapt 2
# (where ``ObjectProxy`` is a subclass that FunctionWrapper is not), else ``ObjectProxy``.
_PROXY: type[Any] = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


@dataclass(frozen=True)
class InstrumentationContext:
    """What a part needs to build its wrappers: providers (None = global) and settings."""

    settings: Settings
    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Patch:
    """Wrap ``module.attribute`` (``attribute`` may be ``Class.method``)."""

    module: str
    attribute: str
    build_wrapper: Callable[[InstrumentationContext], Wrapper]


class Integration(Protocol):
    """A part of the package as the instrumentor sees it."""

    @property
    def name(self) -> str:
        """Settings part name: ``pool``, ``rate_limit`` or ``errors``."""

    @property
    def patches(self) -> tuple[Patch, ...]: ...

    def enable(self, context: InstrumentationContext) -> None:
        """Set up what is not a patch (instruments, registries); called before patching."""

    def disable(self) -> None:
        """Undo ``enable``; called after the patches are removed. Safe to call twice."""


def _resolve(patch: Patch) -> tuple[Any, str] | None:
    try:
        owner: Any = importlib.import_module(patch.module)
    except ImportError:
        return None  # optional library not installed: nothing to patch
    *path, name = patch.attribute.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    if not hasattr(owner, name):
        return None
    return owner, name


def apply(patches: tuple[Patch, ...], context: InstrumentationContext) -> list[Patch]:
    """Install every patch whose target exists; return the ones installed."""
    installed: list[Patch] = []
    for patch in patches:
        target = _resolve(patch)
        if target is None:
            _logger.debug("Not patching %s.%s: not importable", patch.module, patch.attribute)
            continue
        owner, name = target
        if isinstance(getattr(owner, name), _PROXY):
            _logger.debug("%s.%s is already wrapped", patch.module, patch.attribute)
            continue
        try:
            wrapt.wrap_function_wrapper(owner, name, patch.build_wrapper(context))
        except Exception:
            # One target that cannot be wrapped must not cost the others, and
            # what was installed stays recorded so that remove() undoes it.
            _logger.exception("Could not patch %s.%s", patch.module, patch.attribute)
            continue
        installed.append(patch)
    return installed


def remove(patches: list[Patch]) -> None:
    """Remove patches installed by ``apply``, newest first."""
    for patch in reversed(patches):
        target = _resolve(patch)
        if target is None:
            continue
        owner, name = target
        current = getattr(owner, name)
        if isinstance(current, _PROXY):
            setattr(owner, name, current.__wrapped__)
