"""Thread pools as sources: anyio capacity limiters and ``ThreadPoolExecutor``s.

Each source reads its pool when asked (used, max, queue) and buffers how long
each call waited for a thread or token; nothing else is counted. A limiter
reports anyio's own ``statistics()``. An executor does not know how many of its
threads are busy (its idle semaphore over-counts idle threads once work has
queued), so a measured executor's ``submit`` wraps each call to count the
threads running one, and its queue is read from the executor's work queue.

A limiter's waits are timed by the two containers anyio's asyncio limiter keeps
its state in, swapped for subclasses when the limiter is made
(``time_waits``): the wait queue stamps a task when it starts waiting and
records the wait when a token is handed to it; the borrower set records a wait
of 0 for a token taken at once (any borrower the queue did not hand one to:
before anyio 4.10 a woken waiter takes its token itself, and other tasks may
take free tokens before it does). A wrapper around ``acquire`` measured 3-4 µs
per call on this machine (about 11% of a ``to_thread.run_sync`` call's CPU);
the subclass method costs a few hundred nanoseconds, on the fast path only.

Example::

    source = LimiterSource(limiter, name="uploads")
    source.read()          # ThreadPoolReading(used=3, max=10, queue=0)
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Union

__all__ = [
    "ExecutorSource",
    "LimiterSource",
    "LimiterWaits",
    "Source",
    "ThreadPoolReading",
    "WaitBuffer",
    "is_capacity_limiter",
    "time_waits",
    "waits_of",
]

# A wait deque longer than this is dropped from the front: memory stays bounded
# however long the exporter waits between collections.
MAX_BUFFERED: Final = 4096

_perf = time.perf_counter


def is_capacity_limiter(target: object) -> bool:
    """Whether ``target`` is an ``anyio.CapacityLimiter`` (without importing anyio)."""
    for cls in type(target).__mro__:
        module = cls.__module__  # anyio re-exports it as anyio.CapacityLimiter
        if cls.__name__ == "CapacityLimiter" and module.partition(".")[0] == "anyio":
            return True
    return False


class ThreadPoolReading:
    """One pool's state at collection time; ``max`` is None when unbounded."""

    __slots__ = ("max", "queue", "used")

    def __init__(self, used: int, max: int | None, queue: int) -> None:
        self.used = used
        self.max = max
        self.queue = queue

    @property
    def usage(self) -> float | None:
        """used / max, or None when unbounded."""
        return None if not self.max else self.used / self.max

    def __add__(self, other: ThreadPoolReading) -> ThreadPoolReading:
        bound = None if self.max is None or other.max is None else self.max + other.max
        return ThreadPoolReading(self.used + other.used, bound, self.queue + other.queue)

    def __repr__(self) -> str:
        return f"ThreadPoolReading(used={self.used}, max={self.max}, queue={self.queue})"


class WaitBuffer(deque[float]):
    """Waits of one source for one provider; ``flush`` hands them to its histogram."""

    __slots__ = ("flush",)

    def __init__(self) -> None:
        super().__init__()
        self.flush: Callable[[], None] = _nothing


def _nothing() -> None:
    return None


class _Waits:
    """Wait buffers of every provider that reports a source (a tuple swapped whole)."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: tuple[WaitBuffer, ...] = ()

    def add(self, buffer: WaitBuffer) -> None:
        self.buffers = (*self.buffers, buffer)

    def remove(self, buffer: WaitBuffer) -> None:
        self.buffers = tuple(b for b in self.buffers if b is not buffer)

    def waited(self, seconds: float) -> None:
        for buffer in self.buffers:
            buffer.append(seconds)
            if len(buffer) > MAX_BUFFERED:  # amortised: memory stays bounded
                buffer.flush()


class LimiterWaits:
    """Where one limiter's waits go: the buffers of every provider measuring it.

    Until a source claims it (an adapter's limiter is made on first use, in the
    middle of that use), the first ``EARLY`` waits are kept for the claimant.
    """

    __slots__ = ("buffers", "early", "granted")

    EARLY: Final = 64

    def __init__(self) -> None:
        self.buffers: tuple[WaitBuffer, ...] = ()
        self.early: deque[float] | None = deque(maxlen=self.EARLY)
        # borrowers the wait queue handed a token to, their wait recorded: their
        # add to the borrower set is not a wait of 0. anyio 4.10+ adds the
        # borrower as it hands the token over; before, the waiter adds itself
        # when it wakes, and other tasks may take tokens in between
        self.granted: set[Any] = set()

    def waited(self, seconds: float) -> None:
        early = self.early
        if early is not None:
            early.append(seconds)
            return
        for buffer in self.buffers:
            buffer.append(seconds)
            if len(buffer) > MAX_BUFFERED:
                buffer.flush()

    def claim(self, buffers: tuple[WaitBuffer, ...]) -> None:
        """Send waits to ``buffers`` from now on, with the ones kept so far."""
        early, self.early = self.early, None
        self.buffers = buffers
        for seconds in early or ():
            for buffer in buffers:
                buffer.append(seconds)


class _Borrowers(set[Any]):
    """anyio's borrower set; an ``add`` that no wait preceded is a wait of 0."""

    __slots__ = ("waits",)

    def __init__(self, waits: LimiterWaits) -> None:
        super().__init__()
        self.waits = waits

    def add(self, borrower: Any) -> None:
        set.add(self, borrower)
        granted = self.waits.granted
        if granted and borrower in granted:
            granted.remove(borrower)
        else:
            self.waits.waited(0.0)


class _WaitQueue(OrderedDict[Any, Any]):
    """anyio's queue of waiting tasks, stamping each when it starts waiting."""

    __slots__ = ("_since", "waits")

    def __init__(self, waits: LimiterWaits) -> None:
        super().__init__()
        self.waits = waits
        self._since: dict[Any, float] = {}

    def __setitem__(self, borrower: Any, event: Any) -> None:
        OrderedDict.__setitem__(self, borrower, event)
        self._since[borrower] = _perf()

    def popitem(self, last: bool = True) -> tuple[Any, Any]:
        borrower, event = OrderedDict.popitem(self, last)
        since = self._since.pop(borrower, None)
        waits = self.waits
        waits.granted.add(borrower)  # anyio adds the borrower to the borrower set next
        if since is not None:
            waits.waited(_perf() - since)
        return borrower, event

    def pop(self, borrower: Any, *default: Any) -> Any:
        self._since.pop(borrower, None)  # cancelled while waiting: no token, no wait
        # anyio < 4.10: cancelled after it was handed a token, before it took it
        self.waits.granted.discard(borrower)
        return OrderedDict.pop(self, borrower, *default)


def time_waits(limiter: Any) -> LimiterWaits | None:
    """Swap a fresh asyncio-backend limiter's containers for the timing ones.

    Only safe while nothing else can touch the limiter (just made, or on its
    own loop's thread); a limiter whose containers are not exactly anyio's
    ``set``/``OrderedDict`` (another anyio version) is left alone (None).
    """
    waits = waits_of(limiter)
    if waits is not None:
        return waits
    borrowers = getattr(limiter, "_borrowers", None)
    queue = getattr(limiter, "_wait_queue", None)
    if type(borrowers) is not set or type(queue) is not OrderedDict:
        return None
    waits = LimiterWaits()
    new_borrowers = _Borrowers(waits)
    set.update(new_borrowers, borrowers)
    new_queue = _WaitQueue(waits)
    for borrower, event in queue.items():
        new_queue[borrower] = event
    limiter._borrowers = new_borrowers
    limiter._wait_queue = new_queue
    return waits


def waits_of(limiter: Any) -> LimiterWaits | None:
    """The ``LimiterWaits`` of a limiter ``time_waits`` has prepared, else None."""
    borrowers = getattr(limiter, "_borrowers", None)
    return borrowers.waits if isinstance(borrowers, _Borrowers) else None


class LimiterSource(_Waits):
    """An anyio ``CapacityLimiter``: used = borrowed tokens, queue = tasks waiting."""

    __slots__ = ("_limiter", "_loop", "_timed", "name")

    def __init__(
        self, limiter: Any, *, name: str, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__()
        self._limiter = weakref.ref(limiter)
        # anyio's default limiter belongs to one loop: it is over when that loop closes
        self._loop = None if loop is None else weakref.ref(loop)
        self._timed: LimiterWaits | None = None
        self.name = name

    @property
    def target(self) -> Any:
        return self._limiter()

    def add(self, buffer: WaitBuffer) -> None:
        super().add(buffer)
        self._attach()

    def remove(self, buffer: WaitBuffer) -> None:
        super().remove(buffer)
        self._attach()

    def _attach(self) -> None:
        """Point the limiter's waits at this source's buffers, once its limiter exists
        (an adapter, made outside any loop, makes it on first use)."""
        backend = self.backend_limiter
        waits = None if backend is None else waits_of(backend)
        if waits is not None:
            waits.claim(self.buffers)
            self._timed = waits

    @property
    def backend_limiter(self) -> Any:
        """The backend's limiter that does the work; None until an adapter (a limiter
        made outside any event loop) has made it, or once the limiter is gone."""
        limiter = self._limiter()
        if limiter is None or not _is_adapter(limiter):
            return limiter
        return getattr(limiter, "_internal_limiter", None)

    @property
    def alive(self) -> bool:
        if self._limiter() is None:
            return False
        loop = None if self._loop is None else self._loop()
        return self._loop is None or (loop is not None and not loop.is_closed())

    def read(self) -> ThreadPoolReading:
        limiter = self._limiter()
        if limiter is None:
            return ThreadPoolReading(0, 0, 0)
        if self._timed is None:
            self._attach()
        statistics = limiter.statistics()
        total = statistics.total_tokens
        bound = None if math.isinf(total) else int(total)
        return ThreadPoolReading(statistics.borrowed_tokens, bound, statistics.tasks_waiting)

    def __repr__(self) -> str:
        return f"LimiterSource(name={self.name!r}, alive={self.alive})"


def _is_adapter(limiter: object) -> bool:
    return type(limiter).__name__ == "CapacityLimiterAdapter"


class ExecutorSource(_Waits):
    """A ``ThreadPoolExecutor``: used = threads running a call, queue = calls not started."""

    __slots__ = ("__weakref__", "_busy", "_executor", "_lock", "_loop", "name")

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        *,
        name: str,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        self._executor = weakref.ref(executor)
        self._loop = None if loop is None else weakref.ref(loop)
        self._lock = threading.Lock()
        self._busy = 0
        self.name = name

    @property
    def target(self) -> ThreadPoolExecutor | None:
        return self._executor()

    @property
    def alive(self) -> bool:
        executor = self._executor()
        return executor is not None and not getattr(executor, "_shutdown", False)

    def read(self) -> ThreadPoolReading:
        executor = self._executor()
        if executor is None:
            return ThreadPoolReading(0, 0, 0)
        queue = getattr(executor, "_work_queue", None)
        waiting = queue.qsize() if queue is not None else 0
        return ThreadPoolReading(self._busy, getattr(executor, "_max_workers", None), waiting)

    def attach(self) -> None:
        """Route the executor's ``submit`` through ``track`` (an instance attribute:
        only this executor pays, and ``detach`` deletes it)."""
        executor = self._executor()
        if executor is None or "submit" in vars(executor):
            return
        submit = type(executor).submit
        executor_ref = self._executor
        source_ref = weakref.ref(self)

        def tracked_submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            owner = executor_ref()
            if owner is None:  # pragma: no cover - the executor is calling us
                raise RuntimeError("executor is gone")
            source = source_ref()
            if source is not None:
                fn = source.track(fn)
            return submit(owner, fn, *args, **kwargs)

        executor.submit = tracked_submit  # type: ignore[method-assign]

    def detach(self) -> None:
        executor = self._executor()
        if executor is not None:
            vars(executor).pop("submit", None)

    def track(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as submitted: counts its thread busy while it runs, records its wait."""
        submitted = _perf()

        def run(*args: Any, **kwargs: Any) -> Any:
            self.waited(_perf() - submitted)
            with self._lock:
                self._busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        return run

    def __repr__(self) -> str:
        return f"ExecutorSource(name={self.name!r}, busy={self._busy}, alive={self.alive})"


Source = Union[LimiterSource, ExecutorSource]  # noqa: UP007 - a runtime alias on 3.10
