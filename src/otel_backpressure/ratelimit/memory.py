"""The in-memory store: one dict per policy, key -> TAT, bounded and swept.

Decisions are ``gcra.decide``'s; the store holds the state it reads and
writes, under one ``threading.Lock`` (any thread may decide; nothing relies on
the GIL).

Each table is kept in *last-seen order*: a decision pops the key and puts it
back at the end. A key's TAT is never more than ``burst * interval`` past the
moment it was last seen, so once the oldest-seen key of a table is still
busy, every key after it was seen within ``burst * interval + idle_timeout``
too. A sweep therefore walks from the front, drops idle keys and stops at the
first busy one: it touches only what it drops (plus one), in slices that yield
to the event loop, and never changes a decision (an idle TAT decides exactly
like no TAT). ``max_keys`` bounds each policy's table; a full table either
drops its least-recently-seen keys (``on_full="evict_lru"``, a small batch at
a time, so the cost is amortised) or refuses new keys (``on_full="reject"``).

Example::

    from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter

    async with MemoryStore(max_keys=50_000, eviction_interval=30) as store:
        limiter = RateLimiter([Policy("api", rate=10, period=1)], store=store)
        decision = await limiter.hit("client-42")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final, Literal

from otel_backpressure.ratelimit import gcra
from otel_backpressure.ratelimit._checks import check_seconds, check_whole
from otel_backpressure.ratelimit.gcra import NS_PER_SECOND
from otel_backpressure.ratelimit.metrics import Count, StoreCounts
from otel_backpressure.ratelimit.policy import Decision, Policy
from otel_backpressure.settings import VARIABLES, Settings

__all__ = ["MemoryStore"]

_logger = logging.getLogger(__name__)

OnFull = Literal["evict_lru", "reject"]
# keys examined per sweep slice: about a millisecond of work (see docs/ratelimit.md)
SWEEP_SLICE: Final = 2_000
# "no amortised sweep due": the cleanup task is running
_NEVER: Final = 1 << 62
# a Decision from its fields without NamedTuple's Python-level __new__: less
# than half the cost, on every decision (BENCHMARKS.md, ratelimit)
_decision = tuple.__new__


def _range(field: str) -> tuple[float, float]:
    """The valid range of a setting, which the argument it defaults takes too."""
    variable = next(variable for variable in VARIABLES if variable.field == field)
    if variable.minimum is None or variable.maximum is None:  # every number has both
        raise LookupError(f"{field} has no range")
    return variable.minimum, variable.maximum


# argument ranges (closed), one declaration with the settings': an environment
# value the settings accept is one the store accepts
MAX_KEYS_RANGE: Final = _range("rate_limit_max_keys")
EVICTION_INTERVAL_RANGE: Final = _range("rate_limit_eviction_interval")
IDLE_TIMEOUT_RANGE: Final = _range("rate_limit_idle_timeout")


class MemoryStore:
    """Per-policy tables of TATs in this process; see the module docstring.

    Arguments (all keyword-only; those left ``None`` come from the
    ``OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_*`` settings):

    - ``max_keys`` (int, keys per policy): the memory bound, from 1 to
      10,000,000.
    - ``eviction_interval`` (seconds): how often the cleanup task sweeps idle
      keys (or, with no event loop, how often a decision amortises a slice of
      that work), from 0.1 to 86,400; the floor keeps an idle process idle.
    - ``idle_timeout`` (seconds): how much longer than its state matters a key
      is kept, from 0 to 86,400.

    The ranges are the settings' (``Settings``), declared once there.
    - ``on_full``: ``"evict_lru"`` (drop the least-recently-seen keys) or
      ``"reject"`` (refuse new keys, counted as ``error.type=store_full``).
    - ``clock``: a callable returning monotonic seconds (a float), for tests;
      default the monotonic clock (read as ``time.monotonic_ns``).

    Raises ``ValueError`` naming the argument for a number outside its range
    (inf, nan, negative, too large or too small; -0.0 is 0) or an unknown
    ``on_full``, and ``TypeError`` for an argument of
    the wrong type.
    """

    __slots__ = (
        "__weakref__",
        "_batch",
        "_clock",
        "_closed",
        "_idle_ns",
        "_interval_ns",
        "_lock",
        "_loop",
        "_next_sweep",
        "_tables",
        "_task",
        "clock",
        "counts",
        "eviction_interval",
        "idle_timeout",
        "max_keys",
        "on_full",
    )

    def __init__(
        self,
        *,
        max_keys: int | None = None,
        eviction_interval: float | None = None,
        idle_timeout: float | None = None,
        on_full: OnFull = "evict_lru",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if None in (max_keys, eviction_interval, idle_timeout):
            settings = Settings.from_env()
            max_keys = settings.rate_limit_max_keys if max_keys is None else max_keys
            if eviction_interval is None:
                eviction_interval = settings.rate_limit_eviction_interval
            if idle_timeout is None:
                idle_timeout = settings.rate_limit_idle_timeout
        self.max_keys: int = check_whole("max_keys", max_keys, *map(int, MAX_KEYS_RANGE))
        self.eviction_interval: float = check_seconds(
            "eviction_interval", eviction_interval, *EVICTION_INTERVAL_RANGE
        )
        self.idle_timeout: float = check_seconds("idle_timeout", idle_timeout, *IDLE_TIMEOUT_RANGE)
        if on_full not in ("evict_lru", "reject"):
            raise ValueError(f"on_full must be 'evict_lru' or 'reject', got {on_full!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        self.on_full: OnFull = on_full
        self.clock: Callable[[], float] = clock or time.monotonic
        self._clock = clock
        self._idle_ns = round(self.idle_timeout * NS_PER_SECOND)
        self._interval_ns = round(self.eviction_interval * NS_PER_SECOND)
        # a batch of evictions per full table amortises finding the oldest keys
        self._batch = max(1, min(1024, self.max_keys // 128))
        self._tables: dict[Policy, dict[str, int]] = {}
        # guards the tables, _next_sweep, _loop and _task
        self._lock = threading.Lock()
        self.counts = StoreCounts()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_sweep = self.now_ns() + self._interval_ns
        self._closed = False

    def now_ns(self) -> int:
        """The store's clock in integer nanoseconds."""
        clock = self._clock
        if clock is None:
            return time.monotonic_ns()
        return int(clock() * NS_PER_SECOND)

    def table(self, policy: Policy) -> dict[str, int]:
        """The policy's table (key -> TAT), created on first use; never replaced.

        Read it under no lock only to look (``len``, a copy): the store
        changes it under its lock.
        """
        table = self._tables.get(policy)
        if table is None:
            table = self._tables.setdefault(policy, {})
        return table

    # -- decisions --

    def decide(
        self,
        key: str,
        policies: Sequence[Policy],
        cost: int = 1,
        tables: Sequence[dict[str, int]] | None = None,
        counts: Sequence[tuple[Count, Count]] | None = None,
    ) -> Decision:
        """Decide one request under every policy, commit and count it; all or nothing.

        ``tables`` are ``[self.table(p) for p in policies]``, for a caller that
        resolved them once. ``counts[i]`` is the (allowed, rejected) pair of
        ``policies[i]``: the decision adds one to its deciding policy's pair,
        inside the lock, so a count is exact when only this store's lock
        guards it. An allowed request stores its new TATs; a rejected one puts
        back what was there (it consumes nothing). A key new to a full table
        first makes room (``on_full``) or is refused, with ``retry_after`` one
        eviction interval.
        """
        if tables is None:
            tables = [self.table(policy) for policy in policies]
        lock = self._lock
        lock.acquire()
        try:
            now = self.now_ns()
            if now >= self._next_sweep:
                self._sweep_due(now)
            if len(tables) == 1:
                allowed, remaining, wait, reset = self._decide_one(
                    key, policies[0], cost, tables[0], now
                )
                deciding = 0
            else:
                allowed, deciding, remaining, wait, reset, _ = self._decide_many(
                    key, policies, cost, tables, now
                )
            if counts is not None:
                counts[deciding][0 if allowed else 1].value += 1
        finally:
            lock.release()
        return _decision(
            Decision,
            (allowed, policies[deciding], remaining, wait / NS_PER_SECOND, reset / NS_PER_SECOND),
        )

    def _decide_one(
        self, key: str, policy: Policy, cost: int, table: dict[str, int], now: int
    ) -> tuple[bool, int, int, int]:
        """One policy (most limiters), without ``_decide_many``'s lists.

        Returns ``(allowed, remaining, retry_after_ns, reset_after_ns)``.
        """
        tat = table.pop(key, None)
        if tat is None and len(table) >= self.max_keys and not self._make_room(policy, table, now):
            return False, 0, self._interval_ns, 0
        allowed, new_tat, remaining, wait, reset = gcra.decide_one(
            tat, now, policy.interval_ns, policy.burst, cost
        )
        if allowed:
            table[key] = new_tat  # at the end: last seen now
        elif tat is not None:
            table[key] = tat  # a rejection consumes nothing
        return allowed, remaining, wait, reset

    def _decide_many(
        self,
        key: str,
        policies: Sequence[Policy],
        cost: int,
        tables: Sequence[dict[str, int]],
        now: int,
    ) -> gcra.Verdict:
        tats = [table.pop(key, None) for table in tables]
        verdict = None
        if None in tats:
            verdict = self._admit(tables, tats, policies, now)
        if verdict is None:
            verdict = gcra.decide(tats, now, policies, cost)
        kept = tats if verdict.tats is None else verdict.tats
        for table, tat in zip(tables, kept, strict=True):
            if tat is not None:
                table[key] = tat  # at the end: last seen now
        return verdict

    def _sweep_due(self, now: int) -> None:
        """No cleanup task runs: amortise one slice per table into this decision."""
        self._next_sweep = now + self._interval_ns
        for policy, table in list(self._tables.items()):
            self._sweep_slice(policy, table, now)

    def _admit(
        self,
        tables: Sequence[dict[str, int]],
        tats: Sequence[int | None],
        policies: Sequence[Policy],
        now: int,
    ) -> gcra.Verdict | None:
        """Make room in every full table the key is new to; a refusal's verdict, or None."""
        max_keys = self.max_keys
        for index, table in enumerate(tables):
            full = tats[index] is None and len(table) >= max_keys
            if full and not self._make_room(policies[index], table, now):
                return gcra.Verdict(False, index, 0, self._interval_ns, 0, None)
        return None

    def _make_room(self, policy: Policy, table: dict[str, int], now: int) -> bool:
        """Free a slot in a full table; False when refusing the new key (``on_full="reject"``)."""
        swept = self._sweep_slice(policy, table, now)
        if self.on_full == "reject" and not swept and len(table) >= self.max_keys:
            self.counts.failed(policy.name, "store_full")
            return False
        if len(table) < self.max_keys:
            return True
        # the least-recently-seen keys are at the front
        oldest = list(itertools.islice(table, self._batch))
        idle = 0
        limit = now - self._idle_ns
        for old in oldest:
            if table.pop(old) <= limit:
                idle += 1
        if idle:
            self.counts.evicted(policy.name, "idle", idle)
        if len(oldest) > idle:
            self.counts.evicted(policy.name, "capacity", len(oldest) - idle)
        return True

    # -- cleanup --

    def _sweep_slice(self, policy: Policy, table: dict[str, int], now: int) -> int:
        """Drop idle keys from the front, at most one slice; return how many."""
        limit = now - self._idle_ns
        idle: list[str] = []
        for key, tat in itertools.islice(table.items(), SWEEP_SLICE):
            if tat > limit:
                break
            idle.append(key)
        for key in idle:
            del table[key]
        if idle:
            self.counts.evicted(policy.name, "idle", len(idle))
        return len(idle)

    def _slices(self) -> Iterator[int]:
        """One full pass, a slice at a time under the lock; yields keys dropped per slice."""
        for policy, table in list(self._tables.items()):
            count = SWEEP_SLICE
            while count == SWEEP_SLICE:
                with self._lock:
                    count = self._sweep_slice(policy, table, self.now_ns())
                yield count

    async def sweep(self) -> int:
        """One full cleanup pass, yielding to the loop after each full slice; keys dropped."""
        dropped = 0
        for count in self._slices():
            dropped += count
            if count == SWEEP_SLICE:
                await asyncio.sleep(0)
        return dropped

    def sweep_sync(self) -> int:
        """The same pass without an event loop; keys dropped."""
        return sum(self._slices())

    def ensure_cleanup(self) -> None:
        """Start the cleanup task on the running loop, once per loop (cheap to repeat)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: decisions amortise cleanup
        if loop is self._loop or self._closed:
            return
        with self._lock:
            if loop is self._loop or self._closed:
                return
            self._loop = loop
            self._next_sweep = _NEVER  # the task sweeps now; decisions need not
            self._task = loop.create_task(
                _cleanup_loop(weakref.ref(self), self.eviction_interval),
                name="otel_backpressure.ratelimit.MemoryStore.cleanup",
            )

    def _stop_cleanup(self, task: asyncio.Task[None] | None) -> None:
        """Forget ``task`` (None: any) and let decisions amortise cleanup again."""
        with self._lock:
            if task is None or self._task is task:
                self._task = self._loop = None
                self._next_sweep = 0

    def close(self) -> None:
        """Stop the cleanup task; the store keeps deciding (cleanup is amortised)."""
        self._closed = True
        task = self._task
        self._stop_cleanup(None)
        if task is not None and not task.done():
            task.cancel()

    async def aclose(self) -> None:
        task = self._task
        self.close()
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> MemoryStore:
        self.ensure_cleanup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- introspection --

    def key_counts(self) -> Iterable[tuple[str, int]]:
        """(policy name, keys held) per table, for the ``keys`` metric."""
        return [(policy.name, len(table)) for policy, table in list(self._tables.items())]

    def __len__(self) -> int:
        return sum(len(table) for table in list(self._tables.values()))

    def tat(self, key: str, policy: Policy) -> int | None:
        """The stored TAT (ns) of a key under a policy, None when not held."""
        table = self._tables.get(policy)
        return None if table is None else table.get(key)

    def __repr__(self) -> str:
        running = self._task is not None and not self._task.done()
        return (
            f"MemoryStore(keys={len(self)}, policies={len(self._tables)}, "
            f"max_keys={self.max_keys}, on_full={self.on_full!r}, cleanup_task={running})"
        )


async def _cleanup_loop(store_ref: weakref.ref[MemoryStore], interval: float) -> None:
    """Sweep every interval; ends when the store is closed or garbage-collected."""
    try:
        while True:
            await asyncio.sleep(interval)
            store = store_ref()
            if store is None or store._closed:
                return
            try:
                await store.sweep()
            except Exception:  # never let a cleanup failure kill the task
                _logger.exception("Rate-limit memory store cleanup pass failed")
            del store
    finally:
        # the loop is ending (or the store closing): decisions amortise cleanup again
        store = store_ref()
        if store is not None:
            store._stop_cleanup(asyncio.current_task())
