"""``_patching``: our own layer only, next to other code's wrappers, and nothing imported for us.

The real patch table is used wherever the real targets matter (a vendor agent
wraps ``Span.set_status`` or ``Engine.__init__`` with wrapt, before or after
us); a throwaway module stands in where the import itself is under test.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt

from otel_backpressure import BackpressureInstrumentor, Settings, instrumentor, package
from otel_backpressure._patching import (
    BackpressureWrapper,
    InstrumentationContext,
    Patch,
    _layers,
    _meets,
    _raw_attribute,
    apply,
    remove,
)


def real_patches() -> list[Patch]:
    """Every row of the real table whose library is installed (all are, with the test extra)."""
    rows = [patch for integration in instrumentor._integrations() for patch in integration.patches]
    found = []
    for patch in rows:
        owner = resolve_owner(patch)
        if owner is not None and hasattr(owner, patch.attribute.rsplit(".", 1)[-1]):
            found.append(patch)
    return found


def resolve_owner(patch: Patch) -> Any:
    owner: Any = importlib.import_module(patch.module)
    for part in patch.attribute.split(".")[:-1]:
        owner = getattr(owner, part, None)
    return owner


def raw(patch: Patch) -> Any:
    return _raw_attribute(resolve_owner(patch), patch.attribute.rsplit(".", 1)[-1])


def ours(chain: list[Any]) -> list[Any]:
    return [layer for layer in chain if isinstance(layer, BackpressureWrapper)]


class Foreign:
    """Another package's wrapt wrapper (a vendor agent), which calls through and counts."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        self.calls += 1
        return wrapped(*args, **kwargs)


def foreign_wrap(patch: Patch) -> tuple[Foreign, Callable[[], None]]:
    """Wrap the target as another package would; return the wrapper and its own unwrap."""
    owner = resolve_owner(patch)
    name = patch.attribute.rsplit(".", 1)[-1]
    had = name in vars(owner)
    foreign = Foreign()
    wrapt.wrap_function_wrapper(owner, name, foreign)
    installed = vars(owner)[name]

    def unwrap() -> None:  # what a well-behaved agent does: put back what it wrapped
        assert vars(owner)[name] is installed, "someone replaced the foreign wrapper"
        if had:
            setattr(owner, name, installed.__wrapped__)
        else:
            delattr(owner, name)

    return foreign, unwrap


PATCHES = real_patches()
IDS = [patch.target for patch in PATCHES]


@pytest.fixture
def backpressure() -> Iterator[BackpressureInstrumentor]:
    instance = BackpressureInstrumentor()
    yield instance
    instance.uninstrument()


def test_every_part_has_real_targets_here() -> None:
    targets = set(IDS)
    assert "opentelemetry.sdk.trace.Span.set_status" in targets
    assert "sqlalchemy.engine.base.Engine.__init__" in targets
    assert "asyncpg.pool.Pool.__init__" in targets
    assert "limits.strategies.FixedWindowRateLimiter.hit" in targets


@pytest.mark.parametrize("patch", PATCHES, ids=IDS)
def test_a_foreign_wrapper_installed_before_ours_stays_and_runs(
    patch: Patch, backpressure: BackpressureInstrumentor
) -> None:
    original = raw(patch)
    _, unwrap = foreign_wrap(patch)
    try:
        before = raw(patch)
        backpressure.instrument(settings=Settings())
        chain = _layers(raw(patch))
        assert isinstance(chain[0], BackpressureWrapper), "ours goes on top of theirs"
        assert chain[1] is before
        assert chain[2] is original

        backpressure.uninstrument()
        assert raw(patch) is before
        assert ours(_layers(raw(patch))) == []
    finally:
        unwrap()
    assert raw(patch) is original


@pytest.mark.parametrize("patch", PATCHES, ids=IDS)
def test_a_foreign_wrapper_installed_after_ours_survives_our_removal(
    patch: Patch, backpressure: BackpressureInstrumentor
) -> None:
    original = raw(patch)
    backpressure.instrument(settings=Settings())
    _, unwrap = foreign_wrap(patch)
    try:
        theirs = raw(patch)
        chain = _layers(theirs)
        assert chain[0] is theirs
        assert isinstance(chain[1], BackpressureWrapper)
        assert chain[2] is original

        backpressure.uninstrument()
        assert raw(patch) is theirs, "their wrapper is still where they put it"
        assert _layers(raw(patch)) == [theirs, original], "our layer is cut out of the chain"

        backpressure.instrument(settings=Settings())  # and back on top, over theirs
        assert isinstance(raw(patch), BackpressureWrapper)
        assert _layers(raw(patch))[1:] == [theirs, original]
        backpressure.uninstrument()
    finally:
        unwrap()
    assert raw(patch) is original


def test_both_wrappers_work_on_the_real_span_set_status(
    backpressure: BackpressureInstrumentor,
) -> None:
    """Behaviour, not just the chain: theirs sees the calls ours passes on, ours maps."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import StatusCode

    from otel_backpressure.errors import NotFoundError

    patch = next(patch for patch in PATCHES if patch.attribute == "Span.set_status")
    tracer = TracerProvider().get_tracer("test")

    def outcomes(foreign: Foreign) -> tuple[StatusCode, StatusCode, int]:
        foreign.calls = 0
        with pytest.raises(NotFoundError), tracer.start_as_current_span("mapped") as mapped:
            raise NotFoundError("no such player")
        with pytest.raises(ValueError), tracer.start_as_current_span("plain") as plain:
            raise ValueError("boom")
        return mapped.status.status_code, plain.status.status_code, foreign.calls

    foreign, unwrap = foreign_wrap(patch)  # theirs first, ours on top
    try:
        backpressure.instrument(settings=Settings())
        assert outcomes(foreign) == (StatusCode.UNSET, StatusCode.ERROR, 1)
        backpressure.uninstrument()
        assert outcomes(foreign) == (StatusCode.ERROR, StatusCode.ERROR, 2)
    finally:
        unwrap()

    backpressure.instrument(settings=Settings())  # ours first, theirs on top
    foreign, unwrap = foreign_wrap(patch)
    try:
        assert outcomes(foreign) == (StatusCode.UNSET, StatusCode.ERROR, 2)
        backpressure.uninstrument()
        assert outcomes(foreign) == (StatusCode.ERROR, StatusCode.ERROR, 2)
    finally:
        unwrap()


def test_the_engine_wrapper_still_catches_engines_under_a_foreign_wrapper(
    backpressure: BackpressureInstrumentor,
) -> None:
    from sqlalchemy import create_engine

    from otel_backpressure import pool_health

    patch = next(patch for patch in PATCHES if patch.attribute == "Engine.__init__")
    foreign, unwrap = foreign_wrap(patch)
    try:
        backpressure.instrument(settings=Settings())
        engine = create_engine("sqlite://")
        assert foreign.calls == 1
        assert pool_health(engine)["status"] == "healthy"  # ours instrumented it
        engine.dispose()
    finally:
        backpressure.uninstrument()
        unwrap()


# -- a throwaway module, for what the real targets cannot show ---------------------------


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("bp_patching_target")]:
        del sys.modules[name]


def write_module(directory: Path, name: str) -> None:
    (directory / f"{name}.py").write_text(
        "class Thing:\n    def call(self):\n        return 'plain'\n"
    )
    importlib.invalidate_caches()


def marking(context: InstrumentationContext) -> Any:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        return ("ours", wrapped(*args, **kwargs))

    return wrapper


CONTEXT = InstrumentationContext(settings=Settings())


def test_a_module_not_imported_yet_is_patched_when_the_app_imports_it(module_dir: Path) -> None:
    write_module(module_dir, "bp_patching_target_a")
    installation = apply((Patch("bp_patching_target_a", "Thing.call", marking),), CONTEXT)
    try:
        assert "bp_patching_target_a" not in sys.modules, "apply imported it"
        assert [patch.target for patch in installation.waiting] == [
            "bp_patching_target_a.Thing.call"
        ]
        module = importlib.import_module("bp_patching_target_a")
        assert module.Thing().call() == ("ours", "plain")
        assert installation.waiting == []
    finally:
        remove(installation)
    assert module.Thing().call() == "plain"


def test_removed_before_the_import_patches_nothing_later(module_dir: Path) -> None:
    write_module(module_dir, "bp_patching_target_b")
    installation = apply((Patch("bp_patching_target_b", "Thing.call", marking),), CONTEXT)
    remove(installation)
    module = importlib.import_module("bp_patching_target_b")
    assert module.Thing().call() == "plain"
    assert "call" in vars(module.Thing)
    assert not isinstance(vars(module.Thing)["call"], BackpressureWrapper)


def test_an_absent_library_costs_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    patches = (
        Patch("bp_no_such_library.sub", "Thing.call", marking),
        Patch("bp_no_such_library", "other", marking),
    )
    with caplog.at_level(logging.DEBUG, logger="otel_backpressure._patching"):
        installation = apply(patches, CONTEXT)
    lines = [record for record in caplog.records if "bp_no_such_library" in record.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.DEBUG
    assert "not installed" in lines[0].getMessage()
    assert installation.waiting == []
    assert installation.installed == []


def test_a_library_outside_its_declared_range_is_left_alone_with_a_warning(
    module_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_module(module_dir, "bp_patching_target_c")
    module = importlib.import_module("bp_patching_target_c")
    # the module stands in for a library whose installed version is below the range
    monkeypatch.setitem(package._supported, "bp_patching_target_c", "wrapt >= 99")
    with caplog.at_level(logging.WARNING, logger="otel_backpressure._patching"):
        installation = apply((Patch("bp_patching_target_c", "Thing.call", marking),), CONTEXT)
    assert module.Thing().call() == "plain"
    assert installation.installed == []
    assert "wrapt >= 99" in caplog.text
    assert "bp_patching_target_c" in caplog.text


def test_applying_twice_installs_one_layer(module_dir: Path) -> None:
    write_module(module_dir, "bp_patching_target_d")
    module = importlib.import_module("bp_patching_target_d")
    first = apply((Patch("bp_patching_target_d", "Thing.call", marking),), CONTEXT)
    second = apply((Patch("bp_patching_target_d", "Thing.call", marking),), CONTEXT)
    try:
        assert module.Thing().call() == ("ours", "plain")
        assert second.installed == []
    finally:
        remove(second)
        remove(first)
    assert module.Thing().call() == "plain"


def test_an_inherited_target_is_restored_as_inherited(module_dir: Path) -> None:
    (module_dir / "bp_patching_target_e.py").write_text(
        "class Base:\n    def call(self):\n        return 'plain'\n\nclass Thing(Base):\n    pass\n"
    )
    importlib.invalidate_caches()
    module = importlib.import_module("bp_patching_target_e")
    installation = apply((Patch("bp_patching_target_e", "Thing.call", marking),), CONTEXT)
    assert module.Thing().call() == ("ours", "plain")
    assert module.Base().call() == "plain"
    remove(installation)
    assert "call" not in vars(module.Thing)
    assert module.Thing().call() == "plain"


def test_under_a_wrapper_that_cannot_be_unpicked_ours_becomes_a_pass_through(
    module_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_module(module_dir, "bp_patching_target_f")
    module = importlib.import_module("bp_patching_target_f")
    installation = apply((Patch("bp_patching_target_f", "Thing.call", marking),), CONTEXT)
    ours_then = module.Thing.call

    def theirs(self: Any) -> Any:  # a plain decorator that closed over our layer
        return ("theirs", ours_then(self))

    module.Thing.call = theirs
    with caplog.at_level(logging.DEBUG, logger="otel_backpressure._patching"):
        remove(installation)
    assert module.Thing().call() == ("theirs", "plain")
    assert "pass-through" in caplog.text


def test_a_deferred_wrapper_is_built_by_the_first_call_once(module_dir: Path) -> None:
    write_module(module_dir, "bp_patching_target_g")
    module = importlib.import_module("bp_patching_target_g")
    builds: list[InstrumentationContext] = []

    def counting(context: InstrumentationContext) -> Any:
        builds.append(context)
        return marking(context)

    installation = apply(
        (Patch("bp_patching_target_g", "Thing.call", counting, deferred=True),), CONTEXT
    )
    try:
        assert [patch.target for patch in installation.installed] == [
            "bp_patching_target_g.Thing.call"
        ]
        assert builds == [], "built at install"
        assert module.Thing().call() == ("ours", "plain")
        assert module.Thing().call() == ("ours", "plain")
        assert builds == [CONTEXT]
    finally:
        remove(installation)
    assert module.Thing().call() == "plain"


def test_a_deferred_wrapper_that_cannot_be_built_calls_straight_through(
    module_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_module(module_dir, "bp_patching_target_h")
    module = importlib.import_module("bp_patching_target_h")

    def broken(context: InstrumentationContext) -> Any:
        raise RuntimeError("cannot build")

    installation = apply(
        (Patch("bp_patching_target_h", "Thing.call", broken, deferred=True),), CONTEXT
    )
    try:
        with caplog.at_level(logging.ERROR, logger="otel_backpressure._patching"):
            assert module.Thing().call() == "plain"
            assert module.Thing().call() == "plain"
        failures = [r for r in caplog.records if "bp_patching_target_h" in r.getMessage()]
        assert len(failures) == 1, "logged once, not at every call"
        assert "calls straight through" in failures[0].getMessage()
    finally:
        remove(installation)


def test_the_version_check_reads_what_importlib_metadata_reports() -> None:
    """``_meets`` reads the ``Version`` line instead of parsing the whole metadata:
    for every distribution installed here it agrees with ``version()``."""
    from importlib.metadata import distributions, version

    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    checked = set()
    for dist in distributions():
        name = dist.metadata["Name"]
        try:
            installed = Version(version(name))
        except InvalidVersion:
            continue
        for requirement in (f"{name} >= {installed}", f"{name} < {installed}"):
            expected = Requirement(requirement).specifier.contains(str(installed))
            assert _meets(requirement) is expected, requirement
        checked.add(Requirement(name).name.lower().replace("_", "-"))
    # every library the package checks is installed by the test extra
    declared = {Requirement(declared).name for declared in package._supported.values()}
    assert declared <= checked
    assert _meets("bp-no-such-distribution >= 1") is None  # contrib's check decides
