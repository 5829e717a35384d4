"""One monitor per running event loop: a delay sampler and, on selector loops, a busy clock.

The sampler is a timer the loop runs every ``resolution`` seconds. When it runs
it records how long the loop had been unresponsive: on a selector loop, the
time since the loop last polled for I/O if it was busy when the timer fell due
(so a 200 ms blocking call shows as a sample of at least 0.2 s, whenever in
the period it began), or the time since it woke if it was waiting (so an idle
loop reads microseconds, not the selector's millisecond timeout rounding). On
other loops (uvloop) the sample is how late the timer ran, which for a block
of ``B`` lies between ``B - resolution`` and ``B``.

The busy clock wraps the ``select`` method of the loop's own selector object
(an instance attribute, undone by deleting it): time spent inside ``select`` is
idle, the rest of the wall time is busy. uvloop polls inside libuv, where no
Python code can time it, so there is no utilization for uvloop loops.

Example::

    monitors = LoopMonitors()
    monitors.enable(metrics, resolution=0.01)
    monitor = monitors.start(loop)     # from the loop's thread, before it runs
    ...
    monitors.stop(monitor)             # when run_forever returns
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = ["LOOP_NAME", "MAX_LOOP_NAMES", "OTHER", "LoopMonitor", "LoopMonitors"]

_logger = logging.getLogger(__name__)

LOOP_NAME: Final = "backpressure.event_loop.name"
# Loop names are thread names, which a process can mint without end
# ("Thread-7 (worker)"); past this many distinct names, loops share OTHER.
MAX_LOOP_NAMES: Final = 16
OTHER: Final = "_OTHER"

_monotonic = time.monotonic


class LoopMonitor:
    """The sampler and busy clock of one loop while it runs."""

    __slots__ = (
        "__weakref__",
        "_begin",
        "_clock",
        "_due",
        "_handle",
        "_idle",
        "_loop",
        "_prev_start",
        "_record",
        "_resolution",
        "_selector",
        "_start",
        "active",
        "attributes",
        "idle_mark",
        "name",
        "started_at",
        "thread_id",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        resolution: float,
        record: Callable[[float, dict[str, str]], None],
    ) -> None:
        self._loop = loop
        self.name = name
        self.attributes = {LOOP_NAME: name}
        self._resolution = resolution
        self._record = record
        self._handle: asyncio.TimerHandle | None = None
        self._selector: Any = None
        self.thread_id = threading.get_ident()
        self.active = False
        # (idle seconds so far, start of the wait in progress or None), replaced
        # whole so that a collection in another thread reads a consistent pair
        self.idle_mark: tuple[float, float | None] = (0.0, None)
        self._idle = 0.0
        now = _monotonic()
        self.started_at = now
        self._begin = self._start = self._prev_start = now
        self._due = now
        self._clock: Callable[[], float] = loop.time

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    @property
    def measures_utilization(self) -> bool:
        return self._selector is not None

    def start(self) -> None:
        """Wrap the selector when it is asyncio's own, schedule the first sample."""
        loop = self._loop
        selector = getattr(loop, "_selector", None)
        # Only where loop.time() is time.monotonic(), so selector stamps and
        # timer deadlines share a clock.
        if (
            selector is not None
            and type(loop).time is asyncio.BaseEventLoop.time
            and "select" not in vars(selector)
        ):
            self._wrap(selector)
            self._clock = _monotonic
        self.active = True
        self._due = self._clock() + self._resolution
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        """Stop sampling and unwrap the selector; safe from any thread, safe twice."""
        self.active = False
        handle, self._handle = self._handle, None
        # A timer can only be cancelled from its loop's thread; elsewhere the
        # next tick sees ``active`` is False and does not reschedule.
        if handle is not None and threading.get_ident() == self.thread_id:
            handle.cancel()
        selector, self._selector = self._selector, None
        if selector is not None:
            # Deleting the instance attribute uncovers the class's select.
            vars(selector).pop("select", None)

    def idle_seconds(self, now: float) -> float:
        """Seconds spent waiting in the selector since the monitor started, up to ``now``."""
        idle, waiting_since = self.idle_mark
        if waiting_since is not None:
            idle += max(0.0, now - waiting_since)
        return idle

    def _wrap(self, selector: Any) -> None:
        select = selector.select
        monitor = self

        def timed_select(timeout: float | None = None) -> Any:
            begin = _monotonic()
            monitor._begin = begin
            monitor.idle_mark = (monitor._idle, begin)
            try:
                return select(timeout)
            finally:
                start = _monotonic()
                monitor._idle += start - begin
                monitor.idle_mark = (monitor._idle, None)
                monitor._prev_start = monitor._start
                monitor._start = start

        selector.select = timed_select
        self._selector = selector

    def _tick(self) -> None:
        if not self.active:
            return
        now = self._clock()
        due = self._due
        if self._selector is None:
            reference = due
        elif self._begin <= due:
            # The loop was waiting when the sample fell due: count from its waking.
            reference = self._start
        else:
            # The loop was busy: count from when it last polled for I/O.
            reference = min(due, self._prev_start)
        try:
            self._record(max(0.0, now - reference), self.attributes)
        except Exception:  # telemetry never raises into the loop
            _logger.debug("Recording event-loop delay failed", exc_info=True)
        self._due = now + self._resolution
        self._handle = self._loop.call_at(self._due, self._tick)

    def __repr__(self) -> str:
        return (
            f"LoopMonitor(name={self.name!r}, active={self.active}, "
            f"utilization={self.measures_utilization})"
        )


class LoopMonitors:
    """Every monitored loop of the process, and the bounded set of names they use."""

    __slots__ = ("_lock", "_monitors", "_names", "_record", "_resolution")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMonitor] = (
            weakref.WeakKeyDictionary()
        )
        self._names: set[str] = set()
        self._record: Callable[[float, dict[str, str]], None] | None = None
        self._resolution = 0.01

    @property
    def enabled(self) -> bool:
        return self._record is not None

    def enable(self, record: Callable[[float, dict[str, str]], None], resolution: float) -> None:
        """Start monitoring loops from now on; ``record(delay, attributes)`` takes samples."""
        with self._lock:
            self._record = record
            self._resolution = resolution

    def disable(self) -> None:
        """Stop every monitor; loops that start later are not monitored."""
        with self._lock:
            self._record = None
            monitors = list(self._monitors.values())
            self._monitors.clear()
            self._names.clear()
        for monitor in monitors:
            monitor.stop()

    def start(self, loop: asyncio.AbstractEventLoop) -> LoopMonitor | None:
        """Monitor ``loop``, which is about to run in this thread; None when disabled."""
        with self._lock:
            record = self._record
            if record is None or loop in self._monitors:
                return None
            monitor = LoopMonitor(loop, self._name(), self._resolution, record)
            self._monitors[loop] = monitor
        try:
            monitor.start()
        except Exception:
            _logger.exception("Cannot monitor event loop %s", monitor.name)
            self.stop(monitor)
            return None
        return monitor

    def stop(self, monitor: LoopMonitor | None) -> None:
        """Stop ``monitor`` (from ``start``); its series end at the next collection."""
        if monitor is None:
            return
        monitor.stop()
        with self._lock:
            for loop, known in list(self._monitors.items()):
                if known is monitor:
                    del self._monitors[loop]

    def active(self) -> Iterator[LoopMonitor]:
        """The running monitors; those of closed loops (ones already running when
        monitoring began, whose ``run_forever`` return was not seen) are stopped."""
        with self._lock:
            monitors = list(self._monitors.values())
        for monitor in monitors:
            if monitor.closed:
                self.stop(monitor)
            elif monitor.active:
                yield monitor

    def _name(self) -> str:
        """The current thread's name, suffixed when a live loop has it. Hold ``_lock``."""
        base = threading.current_thread().name
        live = {monitor.name for monitor in self._monitors.values()}
        name, n = base, 1
        while name in live:
            n += 1
            name = f"{base}#{n}"
        if name not in self._names:
            if len(self._names) >= MAX_LOOP_NAMES:
                return OTHER
            self._names.add(name)
        return name

    def __repr__(self) -> str:
        return f"LoopMonitors(enabled={self.enabled}, loops={len(self._monitors)})"
