"""The seam between the parts and the instrumentor.

A part declares *what* it patches (``Patch`` rows) and what it sets up and tears
down (``Integration``); ``instrumentor.py`` is the only code that applies the
patches, from one table built of every part's rows, and removes them by walking
the same table, so undoing is symmetric and safe to repeat.

Three rules make this safe in a process other code also patches:

- **Nothing is imported for us.** A target whose module the application has not
  imported yet is patched by a wrapt post-import hook when (if ever) it is; a
  library that is not installed costs one debug line; one installed at a
  version outside ``package.py``'s range is left alone with a warning.
- **Only our own layer is ours.** Every wrapper this package installs is a
  ``BackpressureWrapper`` (a ``wrapt.FunctionWrapper`` subclass). A target that
  someone else (a vendor agent, another instrumentation) has wrapped is wrapped
  again on top; only an active ``BackpressureWrapper`` counts as "already
  instrumented".
- **Removing takes off our layer only**, wherever it now sits: on top, it is
  replaced by what it wrapped; under a wrapt proxy installed after ours, it is
  cut out of the chain (that proxy then wraps what we wrapped). Under anything
  else (a plain function that closed over ours), it cannot be reached, so it is
  switched to a pass-through that calls straight through, and a debug line
  says so.

Example::

    installation = apply((Patch("limits.strategies", "FixedWindowRateLimiter.hit", build),),
                         context)
    ...
    remove(installation)
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import wrapt
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from otel_backpressure._shared import Wrapper
from otel_backpressure.package import requirement_for
from otel_backpressure.settings import Settings

__all__ = [
    "BackpressureWrapper",
    "InstrumentationContext",
    "Installation",
    "Integration",
    "Patch",
    "Wrapper",
    "apply",
    "remove",
]

_logger = logging.getLogger(__name__)

# What wrapt's FunctionWrapper derives from: ``BaseObjectProxy`` in wrapt 2
# (where ``ObjectProxy`` is a subclass that FunctionWrapper is not), else ``ObjectProxy``.
_PROXY: type[Any] = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


# Plain classes, not dataclasses or NamedTuples: this module is imported
# whenever the instrumentor loads, and both of those generate code when the
# class is created (a dataclass execs each method it writes, a NamedTuple
# compiles each string annotation); these are all in the bytecode.


class InstrumentationContext:
    """What a part needs to build its wrappers: providers (None = global) and settings."""

    __slots__ = ("meter_provider", "options", "settings", "tracer_provider")

    def __init__(
        self,
        settings: Settings,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self.options: Mapping[str, Any] = {} if options is None else options

    def __repr__(self) -> str:
        return (
            f"InstrumentationContext(settings={self.settings!r}, "
            f"meter_provider={self.meter_provider!r}, tracer_provider={self.tracer_provider!r}, "
            f"options={self.options!r})"
        )


class Patch:
    """Wrap ``module.attribute`` (``attribute`` may be ``Class.method``).

    ``deferred``: build the wrapper at the target's first call, not when the
    patch is installed. For a target whose module every process imports at
    start-up (the SDK's ``Span``) while its wrapper needs modules that only
    matter once it is called. A wrapper that fails to build is logged once and
    the target is called straight through from then on.
    """

    __slots__ = ("attribute", "build_wrapper", "deferred", "module")

    def __init__(
        self,
        module: str,
        attribute: str,
        build_wrapper: Callable[[InstrumentationContext], Wrapper],
        deferred: bool = False,
    ) -> None:
        self.module = module
        self.attribute = attribute
        self.build_wrapper = build_wrapper
        self.deferred = deferred

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attribute}"

    def __repr__(self) -> str:
        return f"Patch({self.target!r}, deferred={self.deferred})"


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


if TYPE_CHECKING:  # wrapt 2 ships generic stubs; wrapt 1 has none and is not subscriptable
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
else:
    _FunctionWrapper = wrapt.FunctionWrapper


class BackpressureWrapper(_FunctionWrapper):
    """This package's layer on a patched target; nothing else is recognised as ours.

    ``_self_removed`` turns it into a pass-through for the case where ``remove``
    cannot take it out of the chain. Given ``build`` instead of ``wrapper``, the
    wrapper is built by the first call (``Patch.deferred``; ``target`` names it
    in the log line should that fail).
    """

    def __init__(
        self,
        wrapped: Any,
        wrapper: Wrapper | None = None,
        *,
        build: Callable[[], Wrapper] | None = None,
        target: str = "",
    ) -> None:
        if wrapper is None and build is None:
            raise TypeError("BackpressureWrapper needs a wrapper or a build")
        built: Wrapper | None = wrapper  # a deferred one is built at its first call

        def switchable(
            call: Callable[..., Any],
            instance: Any,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            nonlocal built
            if self._self_removed:
                return call(*args, **kwargs)
            if built is None:  # two first calls at once both build: the same wrapper
                built = _built(build, target)  # type: ignore[arg-type]  # checked above
            return built(call, instance, args, kwargs)

        super().__init__(wrapped, switchable)
        self._self_removed = False


def _built(build: Callable[[], Wrapper], target: str) -> Wrapper:
    """``build()``, or a call-through wrapper (and one log line) if it fails."""
    try:
        return build()
    except Exception:
        _logger.exception("Could not build the wrapper of %s; it calls straight through", target)
        return _call_through


def _call_through(
    call: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return call(*args, **kwargs)


def _is_ours(candidate: Any) -> bool:
    return isinstance(candidate, BackpressureWrapper) and not candidate._self_removed


def _layers(top: Any) -> list[Any]:
    """``top`` and every wrapt proxy beneath it, outermost first."""
    chain = [top]
    while isinstance(chain[-1], _PROXY):
        chain.append(chain[-1].__wrapped__)
    return chain


class _Installed:
    __slots__ = ("layer", "name", "owned", "owner", "patch")

    def __init__(
        self, patch: Patch, owner: Any, name: str, layer: BackpressureWrapper, owned: bool
    ) -> None:
        self.patch = patch
        self.owner = owner
        self.name = name
        self.layer = layer
        self.owned = owned  # the owner held the attribute itself (not inherited from a base)


class Installation:
    """What one ``apply`` installed, and the targets it still waits to be imported."""

    __slots__ = ("_active", "_checked", "_context", "_installed", "_lock", "_waiting")

    def __init__(self, context: InstrumentationContext) -> None:
        self._context = context
        self._lock = threading.Lock()
        self._active = True
        self._installed: list[_Installed] = []
        self._waiting: dict[str, list[Patch]] = {}  # module name -> its patches
        self._checked: dict[str, bool] = {}  # requirement -> the installed version meets it

    @property
    def installed(self) -> list[Patch]:
        """The patches in place now, in the order they were installed."""
        return [item.patch for item in self._installed]

    @property
    def waiting(self) -> list[Patch]:
        """Patches whose module the application has not imported (yet)."""
        return [patch for patches in self._waiting.values() for patch in patches]

    def _wait(self, module: str, patch: Patch) -> None:
        self._waiting.setdefault(module, []).append(patch)
        _hooks.wait(module, self)

    def _imported(self, module: ModuleType) -> None:
        with self._lock:
            patches = self._waiting.pop(module.__name__, []) if self._active else []
            for patch in patches:
                self._install(patch, module)

    def _supported(self, module: str) -> bool:
        """Whether the library ``module`` belongs to is installed in its declared range."""
        requirement = requirement_for(module)
        if requirement is None:
            return True
        if requirement not in self._checked:
            met = _meets(requirement)
            if not met:  # not met, or not told by the Version line: contrib decides and says why
                from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

                conflict = get_dependency_conflicts([requirement])
                if conflict is not None:
                    _logger.warning("Backpressure telemetry skips %s: %s", module, conflict)
                met = conflict is None
            self._checked[requirement] = met
        return self._checked[requirement]

    def _install(self, patch: Patch, module: ModuleType) -> None:
        if not self._supported(patch.module):
            return
        *path, name = patch.attribute.split(".")
        owner: Any = module
        for part in path:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, name):
            _logger.debug("Not patching %s: no such attribute in this version", patch.target)
            return
        original = _raw_attribute(owner, name)
        if any(_is_ours(layer) for layer in _layers(original)):
            _logger.debug("%s is already wrapped by this package", patch.target)
            return
        try:
            if patch.deferred:
                context = self._context
                layer = BackpressureWrapper(
                    original, build=lambda: patch.build_wrapper(context), target=patch.target
                )
            else:
                layer = BackpressureWrapper(original, patch.build_wrapper(self._context))
            owned = isinstance(owner, ModuleType) or name in vars(owner)
            setattr(owner, name, layer)
        except Exception:
            # One target that cannot be wrapped must not cost the others.
            _logger.exception("Could not patch %s", patch.target)
            return
        self._installed.append(_Installed(patch, owner, name, layer, owned))

    def _remove(self) -> None:
        with self._lock:
            self._active = False
            for module in self._waiting:
                _hooks.forget(module, self)
            self._waiting.clear()
            installed, self._installed = self._installed, []
        for item in reversed(installed):
            _take_off(item)


def _meets(requirement: str) -> bool | None:
    """Whether the installed distribution meets ``requirement`` (``"redis >= 5.0.1"``), or
    None when its metadata has no plain ``Version`` line to tell.

    What ``importlib.metadata.version()`` reports, without parsing the whole
    ``METADATA`` file as an email message to get it: that parse, not the
    lookup, is what the check costs (redis-py's long description made it about
    half a millisecond), and the instrumentor checks every library it finds
    imported while the process starts.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion

    try:
        wanted = Requirement(requirement)
        text = distribution(wanted.name).read_text("METADATA")
    except (InvalidRequirement, PackageNotFoundError, OSError, ValueError):
        return None
    for line in (text or "").split("\n"):
        if not line.strip():
            break  # the end of the headers
        name, colon, value = line.partition(":")
        if colon and name == "Version" and value.strip():
            try:
                return wanted.specifier.contains(value.strip())
            except InvalidVersion:
                return None
    return None


def _raw_attribute(owner: Any, name: str) -> Any:
    """The attribute as stored (a class's function, not a bound method), searching bases."""
    if isinstance(owner, type):
        for cls in owner.__mro__:
            if name in vars(cls):
                return vars(cls)[name]
    return getattr(owner, name)


def _take_off(item: _Installed) -> None:
    layer = item.layer
    layer._self_removed = True  # whatever happens below, it now only calls through
    top = vars(item.owner).get(item.name)
    if top is layer:
        if item.owned:
            setattr(item.owner, item.name, layer.__wrapped__)
        else:
            delattr(item.owner, item.name)  # the base class's attribute shows through again
        return
    chain = _layers(top)
    for outer, inner in itertools.pairwise(chain):
        if inner is layer:
            try:
                outer.__wrapped__ = layer.__wrapped__
            except Exception:
                break
            return
    _logger.debug(
        "%s was wrapped again by other code after this package, in a way that cannot be "
        "unpicked; this package's layer stays inside it as a pass-through",
        item.patch.target,
    )


class _Hooks:
    """One wrapt post-import hook per module name, handing the module to whoever waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Installation]] = {}

    def wait(self, module: str, installation: Installation) -> None:
        with self._lock:
            waiting = self._waiting.get(module)
            if waiting is None:
                self._waiting[module] = [installation]
                # wrapt runs the hook at once if the module got imported meanwhile
                register = True
            else:
                waiting.append(installation)
                register = False
        if register:
            wrapt.register_post_import_hook(self._imported, module)

    def forget(self, module: str, installation: Installation) -> None:
        with self._lock:
            waiting = self._waiting.get(module, [])
            if installation in waiting:
                waiting.remove(installation)

    def _imported(self, module: ModuleType) -> None:
        with self._lock:
            waiting = self._waiting.pop(module.__name__, [])
        for installation in waiting:
            try:
                installation._imported(module)
            except Exception:  # never into the application's import
                _logger.exception("Patching %s after its import failed", module.__name__)


_hooks = _Hooks()


def _installed_at_all(top: str) -> bool:
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def apply(patches: tuple[Patch, ...], context: InstrumentationContext) -> Installation:
    """Install every patch whose module is imported; hook the rest to their import.

    Never imports a target's module itself. A library that is not installed is
    logged once at debug level with the targets it would have had.
    """
    installation = Installation(context)
    absent: dict[str, list[str]] = {}
    installed: dict[str, bool] = {}  # top-level name -> found (one search of sys.path each)
    for patch in patches:
        top = patch.module.partition(".")[0]
        if top not in installed:
            installed[top] = _installed_at_all(top)
        if not installed[top]:
            absent.setdefault(top, []).append(patch.target)
            continue
        module = sys.modules.get(patch.module)
        if module is None:
            installation._wait(patch.module, patch)
        else:
            with installation._lock:
                installation._install(patch, module)
    for library, targets in absent.items():
        _logger.debug("%s is not installed: not patching %s", library, ", ".join(targets))
    return installation


def remove(installation: Installation) -> None:
    """Take off every layer ``apply`` installed, newest first, and stop waiting for imports."""
    installation._remove()
