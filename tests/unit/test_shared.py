"""The shared helpers: the scope and meter, and ``type_name``, the same on every Python.

``type_name`` is what ``error.type`` (and ``exception.type`` in the events the
errors part writes) says for an exception class. The table below is the
finding of a survey of every exception class the standard library exposes on
3.10, 3.11, 3.12 and 3.13: the names that differ between them, and the aliases
that already agree. This suite runs on each of those Pythons, so each row is
checked where it matters.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import importlib
import re
import select
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from otel_backpressure._shared import SCOPE, get_meter, newest_builtin, python_name, type_name
from otel_backpressure.version import __version__

# dotted path of a class (as users spell it) -> error.type on every supported Python
SAME_EVERYWHERE: dict[str, str] = {
    # 3.10: separate classes in asyncio.exceptions / concurrent.futures._base
    "asyncio.TimeoutError": "TimeoutError",
    "asyncio.exceptions.TimeoutError": "TimeoutError",
    "concurrent.futures.TimeoutError": "TimeoutError",
    # 3.13 renamed re.error to re.PatternError
    "re.error": "re.PatternError",
    # aliases of builtins on every supported Python
    "socket.timeout": "TimeoutError",
    "builtins.TimeoutError": "TimeoutError",
    "builtins.IOError": "OSError",
    "builtins.EnvironmentError": "OSError",
    "socket.error": "OSError",
    "select.error": "OSError",
    # distinct classes with one name everywhere
    "asyncio.CancelledError": "asyncio.exceptions.CancelledError",
    "concurrent.futures.CancelledError": "concurrent.futures._base.CancelledError",
    "asyncio.InvalidStateError": "asyncio.exceptions.InvalidStateError",
    "asyncio.IncompleteReadError": "asyncio.exceptions.IncompleteReadError",
    "socket.gaierror": "socket.gaierror",
    "builtins.ValueError": "ValueError",
    "builtins.KeyboardInterrupt": "KeyboardInterrupt",
}


def _resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type)
    return cls


@pytest.mark.parametrize("path", sorted(SAME_EVERYWHERE))
def test_type_name_is_the_same_on_every_python(path: str) -> None:
    assert type_name(_resolve(path)) == SAME_EVERYWHERE[path]


def test_exception_groups_are_named_as_the_builtins() -> None:
    if sys.version_info >= (3, 11):
        groups = (builtins.ExceptionGroup, builtins.BaseExceptionGroup)
    else:  # anyio and Starlette bring the backport on 3.10
        import exceptiongroup

        groups = (exceptiongroup.ExceptionGroup, exceptiongroup.BaseExceptionGroup)
    assert [type_name(cls) for cls in groups] == ["ExceptionGroup", "BaseExceptionGroup"]


def test_the_timeouts_are_one_class_from_3_11_and_have_the_builtin_as_twin_before() -> None:
    for cls in (asyncio.TimeoutError, concurrent.futures.TimeoutError):
        if sys.version_info >= (3, 11):
            assert cls is TimeoutError
            assert newest_builtin(cls) is None
        else:
            assert cls is not TimeoutError
            assert newest_builtin(cls) is TimeoutError
    assert newest_builtin(re.error) is None  # renamed, not replaced by a builtin
    assert newest_builtin(ValueError) is None


def test_python_name_is_what_this_python_says() -> None:
    assert python_name(socket.timeout) == "TimeoutError"
    assert python_name(select.error) == "OSError"
    assert python_name(re.error) == (
        "re.PatternError" if sys.version_info >= (3, 13) else "re.error"
    )
    expected = "TimeoutError" if sys.version_info >= (3, 11) else "asyncio.exceptions.TimeoutError"
    assert python_name(asyncio.TimeoutError) == expected


def test_user_classes_are_module_and_qualified_name() -> None:
    class Local(Exception):
        pass

    assert type_name(Local) == f"{__name__}.{Local.__qualname__}"
    assert "<locals>" in type_name(Local)


def test_every_meter_carries_the_scope_and_version() -> None:
    provider = MeterProvider()
    try:
        meter = get_meter(provider)
        assert (meter.name, meter.version) == (SCOPE, __version__)
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    "package",
    [
        "otel_backpressure",
        "otel_backpressure.errors",
        "otel_backpressure.pool",
        "otel_backpressure.ratelimit",
        "otel_backpressure.runtime",
    ],
)
def test_every_public_name_of_a_lazy_package_is_exported_and_defined(package: str) -> None:
    """Each package's ``__all__`` is what its table imports on first use, and each
    entry names a module that defines it (the table is not checked by mypy)."""
    module = importlib.import_module(package)
    table = vars(module)["_LAZY"]
    assert set(table) == set(module.__all__) - {"__version__"}
    for name, defined_in in table.items():
        assert getattr(importlib.import_module(defined_in), name) is getattr(module, name), name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")  # noqa: B009


async def _in_loop(call: Callable[[], object]) -> object:
    return call()


# Every public call that takes a provider, called right but for the provider: an
# explicit call by the developer raises, naming the argument (the instrumentor,
# which must never break an application, logs instead: test_instrumentor.py).
def _provider_calls() -> dict[str, Callable[[Any], object]]:
    import anyio
    from sqlalchemy import create_engine

    import otel_backpressure
    from otel_backpressure import (
        ErrorMappingMiddleware,
        Policy,
        RateLimiter,
        mapped_errors,
        record_error,
    )
    from otel_backpressure.runtime import instrument_thread_pool

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    return {
        "instrument(engine)": lambda p: otel_backpressure.instrument(
            create_engine("sqlite://"), meter_provider=p
        ),
        # anyio before 4 makes a CapacityLimiter only inside an event loop
        "instrument(limiter)": lambda p: asyncio.run(
            _in_loop(
                lambda: otel_backpressure.instrument(anyio.CapacityLimiter(2), meter_provider=p)
            )
        ),
        "instrument_thread_pool": lambda p: instrument_thread_pool(
            concurrent.futures.ThreadPoolExecutor(1), meter_provider=p
        ),
        "RateLimiter": lambda p: RateLimiter([Policy("p", rate=1, period=1.0)], meter_provider=p),
        "ErrorMappingMiddleware": lambda p: ErrorMappingMiddleware(app, meter_provider=p),
        "record_error": lambda p: record_error(ValueError("x"), meter_provider=p),
        "mapped_errors": lambda p: mapped_errors(meter_provider=p),
    }


@pytest.mark.parametrize("call", sorted(_provider_calls()))
@pytest.mark.parametrize("provider", ["x", 3, MeterProvider, object()])
def test_every_public_call_refuses_what_is_no_meter_provider_naming_it(
    call: str, provider: object
) -> None:
    with pytest.raises(TypeError) as caught:
        _provider_calls()[call](provider)
    assert str(caught.value) == (
        f"meter_provider must be a MeterProvider (with get_meter), got {type(provider).__name__}"
    )


@pytest.mark.parametrize("call", sorted(_provider_calls()))
def test_every_public_call_takes_a_meter_provider(call: str) -> None:
    provider = MeterProvider()
    try:
        handle = _provider_calls()[call](provider)
        if hasattr(handle, "uninstrument"):
            handle.uninstrument()
    finally:
        provider.shutdown()
