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
                    return await acquire(*args, **kwargs)
                except Exception as error:
                    if is_timeout(error):
                        timed_out()
                    raise

            return counting_async

        def counting(*args: Any, **kwargs: Any) -> Any:
            try:
                return acquire(*args, **kwargs)
            except Exception as error:
                if is_timeout(error):
                    timed_out()
                raise

        return counting

    def _timed(self, recorders: tuple[Any, ...]) -> dict[str, Callable[..., Any]]:
        """Checkout, checkin (and connect) timed into ``recorders``' deques.

        Only appends and a dict entry on the hot path; a buffer past
        ``MAX_BUFFERED`` is handed over by its recorder's ``flush`` (which
        never raises).
        """
        originals = self._originals
        acquire, give_back = originals[self.acquire], originals[self.give_back]
        clock, starts, is_timeout = self._clock, self._starts, self._is_timeout
        timed_out = self._timeouts.__next__
        creates = [r.create for r in recorders]
        if len(recorders) == 1:  # the usual case (one provider): no loop on the hot path
            (recorder,) = recorders
            wait, use, flush = recorder.wait, recorder.use, recorder.flush
            add_wait, add_use = wait.append, use.append

            def checked_out(connection: Any, start: float) -> None:
                now = clock()
                starts[id(connection)] = now
                add_wait(now - start)
                if len(wait) > MAX_BUFFERED:
                    overdue()
                    flush()

            def checked_in(connection: Any) -> None:
                start = starts.pop(id(connection), None)
                if start is not None:
                    add_use(clock() - start)
                    if len(use) > MAX_BUFFERED:
                        flush()

        else:
            waits = [(r.wait, r.flush) for r in recorders]
            uses = [(r.use, r.flush) for r in recorders]

            def checked_out(connection: Any, start: float) -> None:
                now = clock()
                starts[id(connection)] = now
                for values, flush in waits:
                    values.append(now - start)
                    if len(values) > MAX_BUFFERED:
                        overdue()
                        flush()

            def checked_in(connection: Any) -> None:
                start = starts.pop(id(connection), None)
                if start is not None:
                    used_for = clock() - start
                    for values, flush in uses:
                        values.append(used_for)
                        if len(values) > MAX_BUFFERED:
                            flush()

        def overdue() -> None:
            # checked once per MAX_BUFFERED checkouts, not on each one
            if len(starts) >= _MAX_OPEN_CHECKOUTS:
                starts.clear()  # connections the app never returned: stop timing them

        hooks: dict[str, Callable[..., Any]] = {}
        connect = originals.get(self.connect) if self.connect else None
        if self._async:

            async def timed_acquire_async(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                try:
                    connection = await acquire(*args, **kwargs)
                except Exception as error:
                    if is_timeout(error):
                        timed_out()
                    raise
                checked_out(connection, start)
                return connection

            async def timed_give_back_async(connection: Any, *args: Any, **kwargs: Any) -> Any:
                checked_in(connection)
                return await give_back(connection, *args, **kwargs)

            hooks[self.acquire] = timed_acquire_async
            hooks[self.give_back] = timed_give_back_async
            if connect is not None:

                async def timed_connect_async(*args: Any, **kwargs: Any) -> Any:
                    start = clock()
                    connection = await connect(*args, **kwargs)
                    took = clock() - start
                    for values in creates:
                        values.append(took)
                    return connection

                hooks[self.connect or ""] = timed_connect_async
            return hooks

        def timed_acquire(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                connection = acquire(*args, **kwargs)
            except Exception as error:
                if is_timeout(error):
                    timed_out()
                raise
            checked_out(connection, start)
            return connection

        def timed_give_back(connection: Any, *args: Any, **kwargs: Any) -> Any:
            checked_in(connection)
            return give_back(connection, *args, **kwargs)

        hooks[self.acquire] = timed_acquire
        hooks[self.give_back] = timed_give_back
        if connect is not None:

            def timed_connect(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                connection = connect(*args, **kwargs)
                took = clock() - start
                for values in creates:
                    values.append(took)
                return connection

            hooks[self.connect or ""] = timed_connect
        return hooks
