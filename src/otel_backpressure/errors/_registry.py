"""``ErrorRegistry``: any exception class -> ``ErrorOutcome``, along the class's MRO.

Third-party classes are registered by dotted path and never imported for it:
a path matches a class whose ``module.qualname`` equals it, or, once its module
is in ``sys.modules``, the object the path names (so re-exported names such as
``asyncpg.exceptions.PostgresError`` work). Lookups are cached per class; any
registration clears the cache.

Example::

    from opentelemetry.trace import StatusCode
    from otel_backpressure.errors import ErrorOutcome, registry

    registry.register("httpx.ConnectTimeout",
                      ErrorOutcome("upstream_timeout", StatusCode.ERROR, 504))
    registry.lookup(exc)            # ErrorOutcome(...) or None
"""

from __future__ import annotations

import builtins
import logging
import sys
import threading
from collections.abc import Iterable
from types import ModuleType
from typing import Final

from otel_backpressure._shared import newest_builtin, type_name
from otel_backpressure.errors._outcome import ErrorOutcome

__all__ = ["ErrorRegistry", "Target", "missing_from_loaded", "target_key"]

_logger = logging.getLogger(__name__)

Target = type[BaseException] | str

# Bound on cached classes: programs that build exception classes at run time
# must not grow the cache without limit.
_CACHE_LIMIT: Final = 4096


def target_key(target: Target) -> type[BaseException] | str:
    """Validate a registration target: an exception class or a dotted ``module.Class`` path."""
    if isinstance(target, str):
        parts = target.split(".")
        if len(parts) < 2 or not all(part.isidentifier() for part in parts):
            raise ValueError(f"target must be a dotted path like 'module.Class', got {target!r}")
        return target
    if isinstance(target, type) and issubclass(target, BaseException):
        return target
    raise TypeError(f"target must be an exception class or a dotted path, got {target!r}")


def _resolve_loaded(path: str) -> type[BaseException] | None:
    """The exception class ``path`` names if its module is already imported, else None."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        owner: object = module
        for name in parts[split:]:
            owner = getattr(owner, name, None)
            if owner is None:
                return None
        if isinstance(owner, type) and issubclass(owner, BaseException):
            return owner
        return None
    return None


_MISSING: Final = object()


def missing_from_loaded(path: str) -> str | None:
    """Why ``path`` certainly names no exception class now, or None when it may.

    Only what is already imported is looked at, and only where the answer is
    sure: the longest prefix of ``path`` in ``sys.modules``, fully initialised,
    is followed name by name through its namespace (``__dict__``, so a lazy
    module's ``__getattr__`` is never called to import something). The answer
    is None, "may", when no prefix is imported, when a module is still being
    imported or answers names through ``__getattr__`` (PEP 562), and when a
    missing name may be a submodule of a package that is not imported yet.
    It is None too for ``__main__``, the script, which runs until the program
    ends (its classes may follow the ``instrument()`` call), and for anything
    that is not a plain module or a class: a module subclass (importlib's
    ``LazyLoader`` runs the module at its first attribute access, ``__dict__``
    too) or another object may run code to answer.
    """
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        owner: object = sys.modules.get(module_name)
        if owner is None:
            continue
        if module_name == "__main__":
            return None
        where = module_name
        for name in parts[split:]:
            # type(), not isinstance(): isinstance() may read __class__ off the object
            if type(owner) is not ModuleType and not issubclass(type(owner), type):
                return None
            if isinstance(owner, ModuleType):
                namespace = owner.__dict__
                if getattr(owner.__spec__, "_initializing", False) or "__getattr__" in namespace:
                    return None  # mid-import (importlib's own flag), or names made on demand
                if name not in namespace and "__path__" in namespace:
                    return None  # perhaps a submodule, imported later
                found = namespace.get(name, _MISSING)
            else:  # a class: its attributes, inherited ones too
                found = getattr(owner, name, _MISSING)
            if found is _MISSING:
                return f"{where} has no {name!r}"
            owner = found
            where = f"{where}.{name}"
        if isinstance(owner, type) and issubclass(owner, BaseException):
            return None
        return f"{path} is {type(owner).__name__!r}, not an exception class"
    return None


def _lineage(cls: type[BaseException]) -> list[type[BaseException]]:
    """``cls.__mro__`` as the newest Python has it, so a mapping decides alike on every Python.

    On 3.10 ``asyncio.TimeoutError`` is not a ``TimeoutError`` (nor an
    ``OSError``); from 3.11 it is. Each such class is followed by the builtin
    that replaced it, and that builtin's bases.
    """
    lineage: list[type[BaseException]] = []
    for klass in cls.__mro__:
        if not issubclass(klass, BaseException):
            continue
        twin = newest_builtin(klass)
        for member in (klass, *(twin.__mro__ if twin is not None else ())):
            if issubclass(member, BaseException) and member not in lineage:
                lineage.append(member)
    return lineage


def _path_of(cls: type[BaseException]) -> str:
    """The dotted path a registration by name matches: ``builtins.X`` for a builtin."""
    name = type_name(cls)
    return name if "." in name else f"builtins.{name}"


def sole_exception(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, else ``exc`` itself.

    Python 3.11+'s ``BaseExceptionGroup``, or on 3.10 the ``exceptiongroup``
    backport when something (anyio) has imported it.
    """
    group = getattr(builtins, "BaseExceptionGroup", None)
    if group is None:
        backport = sys.modules.get("exceptiongroup")
        group = getattr(backport, "BaseExceptionGroup", None)
        if group is None:
            return exc
    while isinstance(exc, group) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class ErrorRegistry:
    """Maps exception classes to outcomes; safe to share between threads."""

    __slots__ = ("_by_class", "_by_path", "_cache", "_lock", "_modules_seen", "_resolved")

    def __init__(self, mappings: Iterable[tuple[Target, ErrorOutcome]] = ()) -> None:
        self._lock = threading.Lock()
        self._by_class: dict[type[BaseException], ErrorOutcome] = {}
        self._by_path: dict[str, ErrorOutcome] = {}
        # dotted path -> the class it named once its module was imported
        self._resolved: dict[str, type[BaseException]] = {}
        self._cache: dict[type[BaseException], ErrorOutcome | None] = {}
        self._modules_seen = -1  # len(sys.modules) when paths were last resolved
        for target, outcome in mappings:
            self.register(target, outcome)

    def register(self, target: Target, outcome: ErrorOutcome) -> ErrorOutcome | None:
        """Map ``target`` (and its subclasses) to ``outcome``; return the mapping it replaced."""
        key = target_key(target)
        if not isinstance(outcome, ErrorOutcome):
            raise TypeError(f"outcome must be an ErrorOutcome, got {outcome!r}")
        with self._lock:
            if isinstance(key, str):
                previous = self._by_path.get(key)
                self._by_path[key] = outcome
                self._resolved.pop(key, None)
            else:
                previous = self._by_class.get(key)
                self._by_class[key] = outcome
            self._cache = {}
        return previous

    def unregister(self, target: Target) -> ErrorOutcome | None:
        """Remove the mapping registered for exactly ``target``; return it (None if absent)."""
        key = target_key(target)
        with self._lock:
            if isinstance(key, str):
                previous = self._by_path.pop(key, None)
                self._resolved.pop(key, None)
            else:
                previous = self._by_class.pop(key, None)
            self._cache = {}
        return previous

    def lookup(self, exc: BaseException | type[BaseException]) -> ErrorOutcome | None:
        """The outcome for an exception (or class), or None when it is unmapped.

        An exception group holding one exception is looked up as that
        exception first (anyio 4's task groups wrap a lone error that way, and
        Starlette before 0.38 lets such a group escape a streaming response);
        the group's own class decides when that exception is unmapped.

        The most specific class of the MRO that has a mapping decides; for one
        class, a registration by class beats one by path, which beats the
        class's own ``outcome`` attribute. The MRO is the newest Python's (see
        ``_lineage``), so 3.10's ``asyncio.TimeoutError`` matches a mapping
        for ``TimeoutError`` or ``OSError`` as it does on 3.11+.
        """
        if not isinstance(exc, type):
            sole = sole_exception(exc)
            if sole is not exc:
                outcome = self.lookup(sole)
                if outcome is not None:
                    return outcome
        cls = exc if isinstance(exc, type) else type(exc)
        try:
            cached = self._cache[cls]
        except KeyError:
            pass
        else:
            # "Unmapped" is final only while no module was imported that a
            # pending path may name (len() is O(1): the common case stays cheap).
            if cached is not None or len(sys.modules) == self._modules_seen:
                return cached
        with self._lock:
            self._resolve_imported()
            outcome = self._find(cls)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache = {}
            self._cache[cls] = outcome
        return outcome

    def _resolve_imported(self) -> None:
        """Bind dotted paths whose module has been imported since the last look."""
        self._modules_seen = len(sys.modules)
        for path in self._by_path.keys() - self._resolved.keys():
            cls = _resolve_loaded(path)
            if cls is not None:
                self._resolved[path] = cls
                self._cache = {}  # a cached "unmapped" may be wrong now

    def _find(self, cls: type[BaseException]) -> ErrorOutcome | None:
        by_resolved_class = {
            resolved: self._by_path[path] for path, resolved in self._resolved.items()
        }
        for klass in _lineage(cls):
            outcome = self._by_class.get(klass)
            if outcome is None:
                outcome = by_resolved_class.get(klass) or self._by_path.get(_path_of(klass))
            if outcome is None:
                declared = klass.__dict__.get("outcome")
                outcome = declared if isinstance(declared, ErrorOutcome) else None
            if outcome is not None:
                return outcome
        return None

    def __repr__(self) -> str:
        return (
            f"ErrorRegistry(classes={len(self._by_class)}, paths={len(self._by_path)}, "
            f"resolved={len(self._resolved)}, cached={len(self._cache)})"
        )
