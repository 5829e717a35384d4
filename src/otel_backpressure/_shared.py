"""What every part shares: the instrumentation scope, type aliases, small helpers.

One place, so that the scope name and version, wrapt's wrapper signature, the
ASGI callables and the way an exception's type is named cannot drift between
the parts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import Meter, MeterProvider

from otel_backpressure.version import __version__

__all__ = [
    "SCOPE",
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Wrapper",
    "get_meter",
    "type_name",
]

#: The instrumentation scope of every meter (and tracer) the package creates.
SCOPE: Final = "otel_backpressure"

# wrapt's wrapper signature: (wrapped, instance, args, kwargs) -> result
Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

# ASGI, typed loosely so that dicts, Starlette's and asgiref's types all fit.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def get_meter(meter_provider: MeterProvider | None = None) -> Meter:
    """The package's meter from ``meter_provider`` (None: the global provider).

    Every meter carries the package's version as its scope version, so a
    collector sees one scope ``otel_backpressure`` with one version.
    """
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    return provider.get_meter(SCOPE, __version__)


def type_name(cls: type) -> str:
    """A class's fully qualified name as ``error.type`` spells it.

    ``module.QualName``, or the bare name for builtins (``ValueError``), as the
    semantic conventions' ``exception.type`` examples do.
    """
    module = cls.__module__
    return f"{module}.{cls.__qualname__}" if module and module != "builtins" else cls.__qualname__
