"""``HookedPoolSource``: what the psycopg_pool and redis-py sources share.

Both pools are plain objects whose callers go through ``pool.getconn`` /
``pool.get_connection`` and back, so a source shadows those methods with
instance attributes (``close()`` deletes them again: the class methods show
through), holds the pool weakly (the registry hears of its collection through
``on_gone``), counts checkouts that timed out in an ``itertools.count`` (its
``next()`` is atomic: no lock on the hot path) and hands the durations it
measures to every recorder in ``self.recorders``.

Example::

    class MyPoolSource(HookedPoolSource):
        hooked = ("getconn", "putconn")

        def _hook(self, pool): ...      # shadow the methods, calling _checked_out/_checked_in
        def read(self): ...             # a PoolReading of self._pool()
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final

from otel_backpressure.pool._source import MAX_BUFFERED, PoolReading, PoolSource, RecorderSlots

__all__ = ["HookedPoolSource"]

_logger = logging.getLogger(__name__)

# Checkouts the app never returned are forgotten past this many, so the map of
# checkout times stays bounded.
_MAX_OPEN_CHECKOUTS: Final = 65536


class HookedPoolSource(RecorderSlots):
    """A ``PoolSource`` over a pool whose checkout methods are shadowed per instance."""

    family: ClassVar[str] = "db"
    #: The instance attributes ``_hook`` sets (and ``close`` removes).
    hooked: ClassVar[tuple[str, ...]] = ()

    __slots__ = ("__weakref__", "_clock", "_pool", "_starts", "_timeouts", "name")

    def __init__(
        self,
        pool: Any,
        *,
        name: str,
        clock: Callable[[], float] = time.perf_counter,
        on_gone: Callable[[PoolSource], None] | None = None,
    ) -> None:
        if any(attribute in pool.__dict__ for attribute in self.hooked):
            raise ValueError(f"pool {name!r} is already instrumented")
        self.name = name
        self._timeouts = itertools.count()
        super().__init__()
        self._clock = clock
        self._starts: dict[int, float] = {}  # id(connection) -> checked out at
        callback = None
        if on_gone is not None:
            source_ref = weakref.ref(self)

            def callback(_: object) -> None:
                source = source_ref()
                if source is not None:
                    on_gone(source)

        self._pool = weakref.ref(pool, callback)
        self._hook(pool)

    def _hook(self, pool: Any) -> None:
        raise NotImplementedError

    def read(self) -> PoolReading:
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

    def close(self) -> None:
        """Remove the hooks; safe twice."""
        self.recorders = ()
        pool = self._pool()
        if pool is not None:
            for attribute in self.hooked:
                pool.__dict__.pop(attribute, None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, alive={self.alive}, "
            f"timeouts={self.timeouts}, recorders={len(self.recorders)})"
        )

    # -- hot path: never raise into the pool's caller -----------------------------------

    def _checked_out(self, connection: Any, start: float) -> None:
        try:
            recorders = self.recorders
            if recorders:
                now = self._clock()
                starts = self._starts
                if len(starts) >= _MAX_OPEN_CHECKOUTS:
                    starts.clear()
                starts[id(connection)] = now
                for recorder in recorders:
                    waits = recorder.wait
                    waits.append(now - start)
                    if len(waits) > MAX_BUFFERED:
                        recorder.flush()
        except Exception:
            _logger.debug("%s: checkout telemetry failed", self.name, exc_info=True)

    def _checked_in(self, connection: Any) -> None:
        try:
            start = self._starts.pop(id(connection), None)
            if start is not None:
                used_for = self._clock() - start
                for recorder in self.recorders:
                    uses = recorder.use
                    uses.append(used_for)
                    if len(uses) > MAX_BUFFERED:
                        recorder.flush()
        except Exception:
            _logger.debug("%s: checkin telemetry failed", self.name, exc_info=True)

    def _created(self, start: float) -> None:
        try:
            recorders = self.recorders
            if recorders:
                took = self._clock() - start
                for recorder in recorders:
                    recorder.create.append(took)
        except Exception:
            _logger.debug("%s: connect telemetry failed", self.name, exc_info=True)
