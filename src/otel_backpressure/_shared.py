"""What every part shares: the instrumentation scope, type aliases, small helpers.

One place, so that the scope name and version, wrapt's wrapper signature, the
ASGI callables and the way an exception's type is named cannot drift between
the parts.
"""

from __future__ import annotations

import builtins
import importlib
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final, cast

from opentelemetry import metrics
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.trace import TracerProvider

from otel_backpressure.version import __version__

__all__ = [
    "SCOPE",
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Wrapper",
    "check_meter_provider",
    "check_tracer_provider",
    "get_meter",
    "newest_builtin",
    "python_name",
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


def _check_provider(provider: Any, argument: str, kind: str, method: str) -> Any:
    if provider is None or (
        not isinstance(provider, type) and callable(getattr(provider, method, None))
    ):
        return provider
    raise TypeError(f"{argument} must be a {kind} (with {method}), got {type(provider).__name__}")


def check_meter_provider(
    meter_provider: Any, argument: str = "meter_provider"
) -> MeterProvider | None:
    """``meter_provider`` if it is None or a provider; else ``TypeError`` naming ``argument``.

    Any object with ``get_meter`` is a provider (the API's, the SDK's, a
    proxy), as ``metrics.get_meter`` takes it; a class is not.
    """
    return cast(
        "MeterProvider | None",
        _check_provider(meter_provider, argument, "MeterProvider", "get_meter"),
    )


def check_tracer_provider(
    tracer_provider: Any, argument: str = "tracer_provider"
) -> TracerProvider | None:
    """``tracer_provider`` if it is None or a provider; else ``TypeError`` naming ``argument``."""
    return cast(
        "TracerProvider | None",
        _check_provider(tracer_provider, argument, "TracerProvider", "get_tracer"),
    )


# Classes that an older supported Python defines apart from, or names
# differently than, the newest one: (module, qualname) -> the newest name. Found
# by comparing every exception class of the standard library on 3.10 to 3.13
# (and the exceptiongroup backport 3.10 needs); tests/unit/test_shared.py holds
# the survey's findings.
_RENAMED: Final[Mapping[tuple[str, str], str]] = {
    # 3.10: separate classes; 3.11 made both aliases of the builtin
    ("asyncio.exceptions", "TimeoutError"): "TimeoutError",
    ("concurrent.futures._base", "TimeoutError"): "TimeoutError",
    # 3.10-3.12: the same class as 3.13's re.PatternError, under its old name
    ("re", "error"): "re.PatternError",
    # 3.10: the backport of 3.11's builtins
    ("exceptiongroup", "ExceptionGroup"): "ExceptionGroup",
    ("exceptiongroup", "BaseExceptionGroup"): "BaseExceptionGroup",
}


def type_name(cls: type) -> str:
    """A class's fully qualified name as ``error.type`` spells it, the same on every Python.

    ``module.QualName``, or the bare name for builtins (``ValueError``), as the
    semantic conventions' ``exception.type`` examples do. A class that an older
    Python keeps apart from (or names differently than) the newest one gets
    the newest name: on 3.10, ``asyncio.TimeoutError`` and
    ``concurrent.futures.TimeoutError`` are ``TimeoutError`` as on 3.11+;
    ``re.error`` is ``re.PatternError`` as on 3.13. Aliases such as
    ``IOError``, ``EnvironmentError``, ``socket.error`` and ``socket.timeout``
    are the builtin classes themselves and need nothing.
    """
    renamed = _RENAMED.get((cls.__module__, cls.__qualname__))
    return python_name(cls) if renamed is None else renamed


def python_name(cls: type) -> str:
    """``module.QualName`` as this Python spells it (and the SDK and other instrumentations)."""
    module = cls.__module__
    return f"{module}.{cls.__qualname__}" if module and module != "builtins" else cls.__qualname__


def newest_builtin(cls: type) -> type | None:
    """The builtin class that replaced ``cls`` on newer Pythons, when it is not ``cls`` itself.

    ``TimeoutError`` for 3.10's ``asyncio.TimeoutError``; None for everything
    else (including 3.11+'s ``asyncio.TimeoutError``, which is the builtin).
    """
    name = _RENAMED.get((cls.__module__, cls.__qualname__))
    if name is None or "." in name:
        return None
    builtin = getattr(builtins, name, None)
    return builtin if isinstance(builtin, type) and builtin is not cls else None


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) for re-exports made on first use.

    ``exports`` maps each public name to the module that defines it. Loading the
    instrumentor then imports only the modules the instrumentor needs, not every
    module every part re-exports. Raises AttributeError for any other name.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # the next lookup is an ordinary attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
