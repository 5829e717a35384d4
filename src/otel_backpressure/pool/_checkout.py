"""``HookedPoolSource``: what the psycopg_pool and redis-py sources share.

Both pools are plain objects whose callers go through one method to take a
connection (``getconn``, ``get_connection``) and one to give it back
(``putconn``, ``release``), called through the instance, so a source shadows
them with instance attributes, set and deleted with ``setattr``/``delattr``
(``close()`` deletes them and the class's methods show through again).
Never through ``pool.__dict__``: on CPython 3.11 and 3.12 asking an instance
for its ``__dict__`` turns its attribute storage into a dictionary, and every
``self.x`` in the pool's own code then takes the slow path (measured: 3.9k
more instructions per redis-py checkout/checkin with no hook at all on 3.11,
6.6k on 3.12; none on 3.13).

The shadows are rebuilt whenever the set of timing recorders changes, so each
costs only what it measures: with no recorder (timings off) a pool that can
time out gets a ``try``/``except`` around its checkout and nothing else, and one
that cannot is not hooked at all; with recorders the checkout and checkin are
timed into their buffers. Each hook has the signature of the method it shadows
(``getconn(timeout=None)``, ``putconn(conn)``, ``release(connection)``),
keyword calls included, so no call pays for packing ``*args``/``**kwargs``;
a method whose signature is not one of those gets a hook taking anything.

A checkout's end is stamped on the connection itself (an attribute, read and
cleared by the checkin) rather than in a map keyed by ``id(connection)``: one
attribute store and load instead of an ``id()`` call and a dict insert and
delete, and nothing to bound. A stamp older than the source (left by an
earlier source of the same pool) is ignored. Timeouts are counted in an
``itertools.count`` (its ``next()`` is atomic: no lock on the hot path). The
pool is held weakly; the registry hears of its collection through
``on_gone``.

Example::

    class MyPoolSource(HookedPoolSource):
        acquire, give_back, connect = "getconn", "putconn", "_connect"

        def read(self): ...             # a PoolReading of self._live_pool()
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final, NamedTuple

from otel_backpressure.pool._source import (
    MAX_BUFFERED,
    PoolReading,
    PoolSource,
    RecorderSlots,
    shadowed,
    weak_pool,
)

__all__ = ["HookedPoolSource"]

_logger = logging.getLogger(__name__)

#: What a checkin finds on a connection no hook has stamped since its last checkin.
_NEVER: Final = float("-inf")


class HookedPoolSource(RecorderSlots):
    """A ``PoolSource`` over a pool whose checkout methods are shadowed per instance."""

    family: ClassVar[str] = "db"
    #: The pool's methods that take and give back a connection, and that opens one
    #: (None: connections are opened inside ``acquire`` and not timed apart).
    acquire: ClassVar[str]
    give_back: ClassVar[str]
    connect: ClassVar[str | None] = None

    __slots__ = (
        "__weakref__",
        "_async",
        "_born",
        "_clock",
        "_installed",
        "_originals",
        "_pool",
        "_timeouts",
        "name",
    )

    def __init__(
        self,
        pool: Any,
        *,
        name: str,
        clock: Callable[[], float] = time.perf_counter,
        on_gone: Callable[[PoolSource], None] | None = None,
    ) -> None:
        if any(shadowed(pool, attribute) for attribute in self._hooked()):
            raise ValueError(f"pool {name!r} is already instrumented")
        self.name = name
        self._timeouts = itertools.count()
        super().__init__()
        self._clock = clock
        self._born = clock()  # checkouts stamped before this are not this source's
        self._originals = {attribute: getattr(pool, attribute) for attribute in self._hooked()}
        self._async = inspect.iscoroutinefunction(self._originals[self.acquire])
        self._installed: tuple[str, ...] = ()
        self._pool = weak_pool(pool, self, on_gone)
        self._install(pool)

    @classmethod
    def _hooked(cls) -> tuple[str, ...]:
        return tuple(a for a in (cls.acquire, cls.give_back, cls.connect) if a is not None)

    def read(self) -> PoolReading:
        raise NotImplementedError

    def _times_out(self, pool: Any) -> bool:
        """Whether a checkout from ``pool`` can time out (then it is hooked to count that)."""
        return True

    def _is_timeout(self, error: Exception) -> bool:
        raise NotImplementedError

    def _live_pool(self) -> Any:
        pool = self._pool()
        if pool is None:
            raise RuntimeError("the pool was garbage collected")
        return pool

    @property
    def timeouts(self) -> int:
        return int(repr(self._timeouts)[6:-1])  # "count(5)": the next value, not taken

    @property
    def alive(self) -> bool:
        return self._pool() is not None

    def add_recorder(self, recorder: Any) -> None:
        super().add_recorder(recorder)
        self._reinstall()

    def remove_recorder(self, recorder: Any) -> None:
        super().remove_recorder(recorder)
        self._reinstall()

    def close(self) -> None:
        """Remove the hooks; safe twice."""
        self.recorders = ()
        pool = self._pool()
        if pool is not None:
            self._set_hooks(pool, {})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, alive={self.alive}, "
            f"timeouts={self.timeouts}, recorders={len(self.recorders)})"
        )

    # -- the hooks --------------------------------------------------------------------------

    def _reinstall(self) -> None:
        pool = self._pool()
        if pool is not None:
            self._install(pool)

    def _install(self, pool: Any) -> None:
        recorders = self.recorders
        if recorders:
            hooks = self._timed(recorders)
        elif self._times_out(pool):
            hooks = {self.acquire: self._counting()}
        else:
            hooks = {}
        self._set_hooks(pool, hooks)

    def _set_hooks(self, pool: Any, hooks: dict[str, Callable[..., Any]]) -> None:
        for attribute in self._installed:
            if attribute not in hooks:
                with contextlib.suppress(AttributeError):  # removed by someone else
                    delattr(pool, attribute)
        for attribute, hook in hooks.items():
            setattr(pool, attribute, hook)
        self._installed = tuple(hooks)

    def _parts(self) -> _Parts:
        return _Parts(
            self._originals[self.acquire],
            self._is_timeout,
            self._timeouts.__next__,
        )

    def _counting(self) -> Callable[..., Any]:
        """The checkout, counting timeouts; nothing else (timings off)."""
        parts = self._parts()
        acquire = parts.acquire
        if _takes_timeout(acquire):
            return (_counting_timeout_async if self._async else _counting_timeout)(parts)
        return (_counting_any_async if self._async else _counting_any)(parts)

    def _timed(self, recorders: tuple[Any, ...]) -> dict[str, Callable[..., Any]]:
        """Checkout, checkin (and connect) timed into ``recorders``' buffers.

        One Python frame per call (the hook itself): the bookkeeping is inlined,
        not a helper call, since a psycopg_pool checkout/checkin costs about
        2.3 µs and each extra frame about 50 ns. Only appends and an attribute
        store on the hot path; a buffer past ``MAX_BUFFERED`` is handed over by
        its recorder's ``flush`` (which never raises), checked at checkout: the
        checkins pending between two flushes are at most the connections out.
        """
        wait: Any
        use: Any
        if len(recorders) == 1:  # the usual case (one provider): plain lists
            (recorder,) = recorders
            wait, use, create, flush = recorder.wait, recorder.use, recorder.create, recorder.flush
        else:
            wait, use, create = (_FanOut([getattr(r, f) for r in recorders]) for f in _FIELDS)
            flush = _flush_all(recorders)
        timing = _Timing(self._parts(), self._clock, self._born, wait, use, create, flush)
        originals = self._originals
        acquire, give_back = originals[self.acquire], originals[self.give_back]
        hooks: dict[str, Callable[..., Any]] = {}
        if _takes_timeout(acquire):
            builder = _timed_timeout_async if self._async else _timed_timeout
        else:
            builder = _timed_any_async if self._async else _timed_any
        hooks[self.acquire] = builder(timing)
        hooks[self.give_back] = _give_back_hook(give_back, timing, self._async)
        if self.connect is not None:
            hooks[self.connect] = (_timed_connect_async if self._async else _timed_connect)(
                originals[self.connect], timing
            )
        return hooks


def _parameters(method: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return None


def _takes_timeout(method: Callable[..., Any]) -> bool:
    """Whether ``method`` is ``(timeout=None)``, psycopg_pool's ``getconn``."""
    parameters = _parameters(method)
    return (
        parameters is not None
        and len(parameters) == 1
        and parameters[0].name == "timeout"
        and parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        and parameters[0].default is None
    )


def _one_argument(method: Callable[..., Any]) -> str | None:
    """The name of ``method``'s only parameter, when it takes exactly one, required."""
    parameters = _parameters(method)
    if (
        parameters is None
        or len(parameters) != 1
        or parameters[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
        or parameters[0].default is not inspect.Parameter.empty
    ):
        return None
    return parameters[0].name


class _Parts(NamedTuple):
    """What every checkout hook closes over."""

    acquire: Callable[..., Any]
    is_timeout: Callable[[Exception], bool]
    timed_out: Callable[[], object]


class _Timing(NamedTuple):
    """What the timed hooks close over besides ``_Parts``."""

    parts: _Parts
    clock: Callable[[], float]
    born: float
    wait: Any  # list[float] or _FanOut
    use: Any
    create: Any
    flush: Callable[[], None]


# -- timings off: count timeouts ------------------------------------------------------------


def _counting_timeout(parts: _Parts) -> Callable[..., Any]:
    acquire, is_timeout, timed_out = parts

    def getconn(timeout: float | None = None) -> Any:
        try:
            return acquire(timeout)
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise

    return getconn


def _counting_timeout_async(parts: _Parts) -> Callable[..., Any]:
    acquire, is_timeout, timed_out = parts

    async def getconn(timeout: float | None = None) -> Any:
        try:
            return await acquire(timeout)
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise

    return getconn


def _counting_any(parts: _Parts) -> Callable[..., Any]:
    acquire, is_timeout, timed_out = parts

    def checkout(*args: Any, **kwargs: Any) -> Any:
        # a plain call when there are no arguments (the usual checkout): an
        # unpacking call costs about 50 ns more
        try:
            return acquire(*args, **kwargs) if args or kwargs else acquire()
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise

    return checkout


def _counting_any_async(parts: _Parts) -> Callable[..., Any]:
    acquire, is_timeout, timed_out = parts

    async def checkout(*args: Any, **kwargs: Any) -> Any:
        try:
            return await (acquire(*args, **kwargs) if args or kwargs else acquire())
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise

    return checkout


# -- timings on: checkout ------------------------------------------------------------------
#
# The checkout's end is stamped on the connection as ``_otel_backpressure_out``
# (a connection class without instance attributes is simply not use-timed).


def _timed_timeout(timing: _Timing) -> Callable[..., Any]:
    (acquire, is_timeout, timed_out), clock, _, wait, _, _, flush = timing
    add_wait = wait.append

    def getconn(timeout: float | None = None) -> Any:
        start = clock()
        try:
            connection = acquire(timeout)
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise
        now = clock()
        try:  # noqa: SIM105 - contextlib.suppress would cost a call on the hot path
            connection._otel_backpressure_out = now
        except AttributeError:
            pass
        add_wait(now - start)
        if len(wait) > MAX_BUFFERED:
            flush()
        return connection

    return getconn


def _timed_timeout_async(timing: _Timing) -> Callable[..., Any]:
    (acquire, is_timeout, timed_out), clock, _, wait, _, _, flush = timing
    add_wait = wait.append

    async def getconn(timeout: float | None = None) -> Any:
        start = clock()
        try:
            connection = await acquire(timeout)
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise
        now = clock()
        try:  # noqa: SIM105 - contextlib.suppress would cost a call on the hot path
            connection._otel_backpressure_out = now
        except AttributeError:
            pass
        add_wait(now - start)
        if len(wait) > MAX_BUFFERED:
            flush()
        return connection

    return getconn


def _timed_any(timing: _Timing) -> Callable[..., Any]:
    (acquire, is_timeout, timed_out), clock, _, wait, _, _, flush = timing
    add_wait = wait.append

    def checkout(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            connection = acquire(*args, **kwargs) if args or kwargs else acquire()
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise
        now = clock()
        try:  # noqa: SIM105 - contextlib.suppress would cost a call on the hot path
            connection._otel_backpressure_out = now
        except AttributeError:
            pass
        add_wait(now - start)
        if len(wait) > MAX_BUFFERED:
            flush()
        return connection

    return checkout


def _timed_any_async(timing: _Timing) -> Callable[..., Any]:
    (acquire, is_timeout, timed_out), clock, _, wait, _, _, flush = timing
    add_wait = wait.append

    async def checkout(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            connection = await (acquire(*args, **kwargs) if args or kwargs else acquire())
        except Exception as error:
            if is_timeout(error):
                timed_out()
            raise
        now = clock()
        try:  # noqa: SIM105 - contextlib.suppress would cost a call on the hot path
            connection._otel_backpressure_out = now
        except AttributeError:
            pass
        add_wait(now - start)
        if len(wait) > MAX_BUFFERED:
            flush()
        return connection

    return checkout


# -- timings on: checkin -------------------------------------------------------------------
#
# The same body under the parameter name of the method it shadows, so that a
# keyword call (``putconn(conn=c)``) still binds; the generic one takes anything.


def _give_back_hook(
    give_back: Callable[..., Any], timing: _Timing, is_async: bool
) -> Callable[..., Any]:
    name = _one_argument(give_back)
    builders = _GIVE_BACK_ASYNC if is_async else _GIVE_BACK
    return builders.get(name or "", builders[""])(give_back, timing)


def _putconn(give_back: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, born, add_use = timing.clock, timing.born, timing.use.append

    def putconn(conn: Any) -> Any:
        try:
            start = conn._otel_backpressure_out
        except AttributeError:
            start = _NEVER  # checked out before any hook
        if start >= born:
            conn._otel_backpressure_out = _NEVER
            add_use(clock() - start)
        return give_back(conn)

    return putconn


def _putconn_async(give_back: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, born, add_use = timing.clock, timing.born, timing.use.append

    async def putconn(conn: Any) -> Any:
        try:
            start = conn._otel_backpressure_out
        except AttributeError:
            start = _NEVER
        if start >= born:
            conn._otel_backpressure_out = _NEVER
            add_use(clock() - start)
        return await give_back(conn)

    return putconn


def _release(give_back: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, born, add_use = timing.clock, timing.born, timing.use.append

    def release(connection: Any) -> Any:
        try:
            start = connection._otel_backpressure_out
        except AttributeError:
            start = _NEVER
        if start >= born:
            connection._otel_backpressure_out = _NEVER
            add_use(clock() - start)
        return give_back(connection)

    return release


def _release_async(give_back: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, born, add_use = timing.clock, timing.born, timing.use.append

    async def release(connection: Any) -> Any:
        try:
            start = connection._otel_backpressure_out
        except AttributeError:
            start = _NEVER
        if start >= born:
            connection._otel_backpressure_out = _NEVER
            add_use(clock() - start)
        return await give_back(connection)

    return release


def _checkin_any(give_back: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, born, add_use = timing.clock, timing.born, timing.use.append

    def checkin(*args: Any, **kwargs: Any) -> Any:
        connection: Any = args[0] if args else next(iter(kwargs.values()), None)
        start = getattr(connection, "_otel_backpressure_out", _NEVER)
        if start >= born:
            connection._otel_backpressure_out = _NEVER
            add_use(clock() - start)
        return give_back(*args, **kwargs)

    return checkin


def _checkin_any_async(give_back: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, born, add_use = timing.clock, timing.born, timing.use.append

    async def checkin(*args: Any, **kwargs: Any) -> Any:
        connection: Any = args[0] if args else next(iter(kwargs.values()), None)
        start = getattr(connection, "_otel_backpressure_out", _NEVER)
        if start >= born:
            connection._otel_backpressure_out = _NEVER
            add_use(clock() - start)
        return await give_back(*args, **kwargs)

    return checkin


_GiveBackBuilder = Callable[[Callable[..., Any], _Timing], Callable[..., Any]]
# the shadowed method's parameter name -> its hook ("" for any other signature)
_GIVE_BACK: Final[dict[str, _GiveBackBuilder]] = {
    "conn": _putconn,
    "connection": _release,
    "": _checkin_any,
}
_GIVE_BACK_ASYNC: Final[dict[str, _GiveBackBuilder]] = {
    "conn": _putconn_async,
    "connection": _release_async,
    "": _checkin_any_async,
}


# -- timings on: opening a connection ------------------------------------------------------


def _timed_connect(connect: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, add_create = timing.clock, timing.create.append

    def timed_connect(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        connection = connect(*args, **kwargs)
        add_create(clock() - start)
        return connection

    return timed_connect


def _timed_connect_async(connect: Callable[..., Any], timing: _Timing) -> Callable[..., Any]:
    clock, add_create = timing.clock, timing.create.append

    async def timed_connect(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        connection = await connect(*args, **kwargs)
        add_create(clock() - start)
        return connection

    return timed_connect


_FIELDS: Final = ("wait", "use", "create")


class _FanOut:
    """The same durations into several recorders' buffers (one per provider; rare)."""

    __slots__ = ("_targets",)

    def __init__(self, targets: list[list[float]]) -> None:
        self._targets = targets

    def append(self, value: float) -> None:
        for target in self._targets:
            target.append(value)

    def __len__(self) -> int:
        return max(len(target) for target in self._targets)


def _flush_all(recorders: tuple[Any, ...]) -> Callable[[], None]:
    flushes = [r.flush for r in recorders]

    def flush() -> None:
        for each in flushes:
            each()  # a recorder's flush never raises

    return flush
