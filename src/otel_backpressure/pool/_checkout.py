"""``HookedPoolSource``: what the psycopg_pool and redis-py sources share.

Both pools are plain objects whose callers go through one method to take a
connection (``getconn``, ``get_connection``) and one to give it back
(``putconn``, ``release``), called through the instance, so a source shadows
them with instance attributes (``close()`` deletes them again and the class's
methods show through). The shadows are rebuilt whenever the set of timing
recorders changes, so each costs only what it measures: with no recorder
(timings off) a pool that can time out gets a ``try``/``except`` around its
checkout and nothing else, and one that cannot is not hooked at all; with
recorders the checkout and checkin are timed into their deques. Timeouts are
counted in an ``itertools.count`` (its ``next()`` is atomic: no lock on the
hot path). The pool is held weakly; the registry hears of its collection
through ``on_gone``.

Example::

    class MyPoolSource(HookedPoolSource):
        acquire, give_back, connect = "getconn", "putconn", "_connect"

        def read(self): ...             # a PoolReading of self._live_pool()
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final

from otel_backpressure.pool._source import (
    MAX_BUFFERED,
    PoolReading,
    PoolSource,
    RecorderSlots,
    weak_pool,
)

__all__ = ["HookedPoolSource"]

_logger = logging.getLogger(__name__)

# Checkouts the app never returned are forgotten past this many, so the map of
# checkout times stays bounded.
_MAX_OPEN_CHECKOUTS: Final = 65536


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
        "_clock",
        "_originals",
        "_pool",
        "_starts",
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
        if any(attribute in pool.__dict__ for attribute in self._hooked()):
            raise ValueError(f"pool {name!r} is already instrumented")
        self.name = name
        self._timeouts = itertools.count()
        super().__init__()
        self._clock = clock
        self._starts: dict[int, float] = {}  # id(connection) -> checked out at
        self._originals = {attribute: getattr(pool, attribute) for attribute in self._hooked()}
        self._async = inspect.iscoroutinefunction(self._originals[self.acquire])
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
            for attribute in self._hooked():
                pool.__dict__.pop(attribute, None)

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
        for attribute in self._hooked():
            pool.__dict__.pop(attribute, None)
        recorders = self.recorders
        if recorders:
            hooks = self._timed(recorders)
        elif self._times_out(pool):
            hooks = {self.acquire: self._counting()}
        else:
            hooks = {}
        pool.__dict__.update(hooks)

    def _counting(self) -> Callable[..., Any]:
        """The checkout, counting timeouts; nothing else (timings off)."""
        acquire, is_timeout, timed_out = (
            self._originals[self.acquire],
            self._is_timeout,
            self._timeouts.__next__,
        )
        if self._async:

            async def counting_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await (acquire(*args, **kwargs) if args or kwargs else acquire())
                except Exception as error:
                    if is_timeout(error):
                        timed_out()
                    raise

            return counting_async

        def counting(*args: Any, **kwargs: Any) -> Any:
            # a plain call when there are no arguments (the usual checkout): an
            # unpacking call costs about 50 ns more
            try:
                return acquire(*args, **kwargs) if args or kwargs else acquire()
            except Exception as error:
                if is_timeout(error):
                    timed_out()
                raise

        return counting

    def _timed(self, recorders: tuple[Any, ...]) -> dict[str, Callable[..., Any]]:
        """Checkout, checkin (and connect) timed into ``recorders``' deques.

        One Python frame per call (the hook itself): the bookkeeping is inlined,
        not a helper call, since a psycopg_pool checkout/checkin costs about
        2 µs and each extra frame about 50 ns. Only appends and a dict entry on
        the hot path; a buffer past ``MAX_BUFFERED`` is handed over by its
        recorder's ``flush`` (which never raises).
        """
        originals = self._originals
        acquire, give_back = originals[self.acquire], originals[self.give_back]
        clock, starts, is_timeout = self._clock, self._starts, self._is_timeout
        timed_out = self._timeouts.__next__
        remember, forget = starts.__setitem__, starts.pop
        wait: Any
        use: Any
        if len(recorders) == 1:  # the usual case (one provider): plain deques
            (recorder,) = recorders
            wait, use, create, flush = recorder.wait, recorder.use, recorder.create, recorder.flush
        else:
            wait, use, create = (_FanOut([getattr(r, f) for r in recorders]) for f in _FIELDS)
            flush = _flush_all(recorders)
        add_wait, add_use, add_create = wait.append, use.append, create.append

        def overdue() -> None:
            # checked once per MAX_BUFFERED checkouts, not on each one
            if len(starts) >= _MAX_OPEN_CHECKOUTS:
                starts.clear()  # connections the app never returned: stop timing them
            flush()

        hooks: dict[str, Callable[..., Any]] = {}
        connect = originals.get(self.connect) if self.connect else None
        if self._async:

            async def timed_acquire_async(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                try:
                    connection = await (acquire(*args, **kwargs) if args or kwargs else acquire())
                except Exception as error:
                    if is_timeout(error):
                        timed_out()
                    raise
                now = clock()
                remember(id(connection), now)
                add_wait(now - start)
                if len(wait) > MAX_BUFFERED:
                    overdue()
                return connection

            async def timed_give_back_async(connection: Any, *args: Any, **kwargs: Any) -> Any:
                start = forget(id(connection), None)
                if start is not None:
                    add_use(clock() - start)
                    if len(use) > MAX_BUFFERED:
                        flush()
                return await (
                    give_back(connection, *args, **kwargs)
                    if args or kwargs
                    else give_back(connection)
                )

            hooks[self.acquire] = timed_acquire_async
            hooks[self.give_back] = timed_give_back_async
            if connect is not None:

                async def timed_connect_async(*args: Any, **kwargs: Any) -> Any:
                    start = clock()
                    connection = await connect(*args, **kwargs)
                    add_create(clock() - start)
                    return connection

                hooks[self.connect or ""] = timed_connect_async
            return hooks

        def timed_acquire(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                connection = acquire(*args, **kwargs) if args or kwargs else acquire()
            except Exception as error:
                if is_timeout(error):
                    timed_out()
                raise
            now = clock()
            remember(id(connection), now)
            add_wait(now - start)
            if len(wait) > MAX_BUFFERED:
                overdue()
            return connection

        def timed_give_back(connection: Any, *args: Any, **kwargs: Any) -> Any:
            start = forget(id(connection), None)
            if start is not None:
                add_use(clock() - start)
                if len(use) > MAX_BUFFERED:
                    flush()
            if args or kwargs:
                return give_back(connection, *args, **kwargs)
            return give_back(connection)

        hooks[self.acquire] = timed_acquire
        hooks[self.give_back] = timed_give_back
        if connect is not None:

            def timed_connect(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                connection = connect(*args, **kwargs)
                add_create(clock() - start)
                return connection

            hooks[self.connect or ""] = timed_connect
        return hooks


_FIELDS: Final = ("wait", "use", "create")


class _FanOut:
    """The same durations into several recorders' deques (one per provider; rare)."""

    __slots__ = ("_targets",)

    def __init__(self, targets: list[deque[float]]) -> None:
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
