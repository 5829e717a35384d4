"""ErrorRegistry: MRO lookup, precedence, lazy dotted paths, the cache."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from otel_backpressure.errors import (
    DEFAULT_MAPPINGS,
    DatabaseError,
    ErrorOutcome,
    ErrorRegistry,
    NotFoundError,
    PoolExhaustedError,
)

GONE = ErrorOutcome("gone", StatusCode.UNSET, 410, False)
BROKEN = ErrorOutcome("broken", StatusCode.ERROR, 500)
MODULE = "otel_backpressure_test_lazy_errors"


class Base(Exception):
    pass


class Child(Base):
    pass


def test_lookup_walks_the_mro_to_the_most_specific_mapping() -> None:
    registry = ErrorRegistry([(Base, BROKEN)])
    assert registry.lookup(Child()) is BROKEN
    assert registry.lookup(Child) is BROKEN
    registry.register(Child, GONE)
    assert registry.lookup(Child("x")) is GONE
    assert registry.lookup(Base("x")) is BROKEN
    assert registry.lookup(ValueError("x")) is None


def test_hierarchy_classes_map_themselves_and_registrations_override_them() -> None:
    registry = ErrorRegistry()

    class GameMissing(NotFoundError):
        pass

    assert registry.lookup(GameMissing()) is NotFoundError.outcome
    registry.register(NotFoundError, GONE)
    assert registry.lookup(GameMissing()) is GONE
    assert registry.unregister(NotFoundError) is GONE
    assert registry.lookup(GameMissing()) is NotFoundError.outcome
    assert registry.unregister(NotFoundError) is None


def test_a_path_matches_the_class_of_that_name_without_importing() -> None:
    registry = ErrorRegistry([(f"{__name__}.Base", GONE)])
    assert registry.lookup(Child()) is GONE


def test_a_class_registration_beats_a_path_registration_for_the_same_class() -> None:
    registry = ErrorRegistry([(f"{__name__}.Base", GONE), (Base, BROKEN)])
    assert registry.lookup(Child()) is BROKEN


@pytest.fixture
def lazy_module() -> Iterator[str]:
    """A module that re-exports an exception under a name other than its __module__."""
    yield MODULE
    sys.modules.pop(MODULE, None)


def test_a_reexported_path_resolves_once_its_module_is_imported(lazy_module: str) -> None:
    class Hidden(Exception):
        pass

    registry = ErrorRegistry([(f"{lazy_module}.Public", GONE)])
    assert registry.lookup(Hidden()) is None  # module not imported: nothing imported for it
    assert lazy_module not in sys.modules
    module = types.ModuleType(lazy_module)
    module.Public = Hidden  # type: ignore[attr-defined]
    sys.modules[lazy_module] = module
    assert registry.lookup(Hidden()) is GONE  # the cached "unmapped" was dropped
    assert "resolved=1" in repr(registry)


def test_registration_clears_the_cache() -> None:
    registry = ErrorRegistry()
    assert registry.lookup(Child()) is None
    registry.register(Base, BROKEN)
    assert registry.lookup(Child()) is BROKEN
    assert registry.register(Base, GONE) is BROKEN
    assert registry.lookup(Child()) is GONE


def test_the_cache_stays_bounded() -> None:
    registry = ErrorRegistry()
    for index in range(5000):
        registry.lookup(type(f"Dynamic{index}", (Exception,), {}))
    assert int(repr(registry).split("cached=")[1].rstrip(")")) <= 4096


@pytest.mark.parametrize(
    "target", ["nodots", "a..b", "a.1b", "", "a.b-c"], ids=lambda value: repr(value)
)
def test_bad_paths_are_rejected_naming_the_argument(target: str) -> None:
    with pytest.raises(ValueError, match="target must be a dotted path"):
        ErrorRegistry().register(target, GONE)


def test_bad_targets_and_outcomes_are_rejected() -> None:
    with pytest.raises(TypeError, match="target must be an exception class"):
        ErrorRegistry().register(int, GONE)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="outcome must be an ErrorOutcome"):
        ErrorRegistry().register(Base, "unset")  # type: ignore[arg-type]


def test_defaults_are_registered_by_path_only() -> None:
    assert all(isinstance(target, str) for target, _ in DEFAULT_MAPPINGS)
    registry = ErrorRegistry(DEFAULT_MAPPINGS)
    assert registry.lookup(PoolExhaustedError()) is PoolExhaustedError.outcome
    assert registry.lookup(DatabaseError()) is DatabaseError.outcome
    assert repr(registry).startswith(f"ErrorRegistry(classes=0, paths={len(DEFAULT_MAPPINGS)}")


TIMEOUT = ErrorOutcome("timeout", StatusCode.ERROR, 504)


@pytest.mark.parametrize(
    "target", [TimeoutError, "builtins.TimeoutError", OSError, "builtins.OSError"]
)
def test_a_timeout_mapping_decides_alike_on_every_python(target: type | str) -> None:
    """On 3.10 these timeouts are neither TimeoutError nor OSError; from 3.11 they are."""
    registry = ErrorRegistry([(target, TIMEOUT)])
    assert registry.lookup(asyncio.TimeoutError()) is TIMEOUT
    assert registry.lookup(concurrent.futures.TimeoutError()) is TIMEOUT


def test_renamed_classes_match_their_newest_path() -> None:
    registry = ErrorRegistry([("re.PatternError", BROKEN)])  # 3.13's name
    assert registry.lookup(re.error("bad pattern")) is BROKEN  # 3.10-3.12's name


def test_exception_groups_match_the_builtin_path_on_every_python() -> None:
    registry = ErrorRegistry([("builtins.ExceptionGroup", BROKEN)])
    if sys.version_info >= (3, 11):
        group: Exception = builtins.ExceptionGroup("many", [ValueError()])
    else:  # the backport anyio and Starlette raise on 3.10
        import exceptiongroup

        group = exceptiongroup.ExceptionGroup("many", [ValueError()])
    assert registry.lookup(group) is BROKEN


def _group_classes() -> Any:
    if sys.version_info >= (3, 11):
        return builtins.ExceptionGroup
    import exceptiongroup  # the backport anyio brings on 3.10

    return exceptiongroup.ExceptionGroup


def test_a_group_of_one_is_looked_up_as_its_exception() -> None:
    # anyio 4 task groups (Starlette < 0.38 streaming) wrap a lone error like this
    group = _group_classes()
    registry = ErrorRegistry()
    registry.register(KeyError, GONE)
    nested = group("outer", [group("inner", [KeyError("k")])])
    assert registry.lookup(nested) is GONE
    assert registry.lookup(group("two", [KeyError("a"), KeyError("b")])) is None
    assert registry.lookup(group("other", [ValueError("v")])) is None
