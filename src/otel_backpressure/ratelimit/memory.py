"""The in-memory store: one dict per policy, key -> TAT, bounded and swept.

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
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from threading import get_ident
from types import TracebackType
from typing import Final, Literal, Protocol

from otel_backpressure.ratelimit import gcra
from otel_backpressure.ratelimit.metrics import Count, StoreCounts
from otel_backpressure.ratelimit.policy import Decision, Policy
from otel_backpressure.settings import Settings, check_positive

__all__ = ["MemoryStore"]

_logger = logging.getLogger(__name__)

OnFull = Literal["evict_lru", "reject"]
_NS: Final = 1_000_000_000
_S: Final = 1e9  # ns per second, as a float divisor
# a Decision straight from its fields, skipping NamedTuple's Python-level __new__
_new = tuple.__new__
_monotonic_ns = time.monotonic_ns  # one global lookup on the hot path, not two
# keys examined per sweep slice: about a millisecond of work (see docs/ratelimit.md)
SWEEP_SLICE: Final = 2_000
# "no amortised sweep due": the cleanup task is running
_NEVER: Final = 1 << 62


class HitSync(Protocol):
    """The signature of ``RateLimiter.hit_sync`` (a store can build a specialised one)."""

    def __call__(
        self,
        key: str,
        *,
        policies: Sequence[Policy] | None = None,
        cost: int = 1,
        dry_run: bool = False,
    ) -> Decision: ...


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # Python 3.13+
    return True if is_enabled is None else bool(is_enabled())


class MemoryStore:
    """Per-policy tables of TATs in this process; see the module docstring."""

    __slots__ = (
        "__weakref__",
        "_batch",
        "_busy",
        "_clock",
        "_closed",
        "_idle_ns",
        "_interval_ns",
        "_loop",
        "_next_sweep",
        "_owner",
        "_shared",
        "_tables",
        "_task",
        "clock",
        "counts",
        "eviction_interval",
        "idle_timeout",
        "lock",
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
        settings = (
            Settings.from_env()
            if None in (max_keys, eviction_interval, idle_timeout)
            else Settings()
        )
        if max_keys is None:
            max_keys = settings.rate_limit_max_keys
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a positive int, got {max_keys!r}")
        if eviction_interval is None:
            eviction_interval = settings.rate_limit_eviction_interval
        check_positive("eviction_interval", eviction_interval)
        if idle_timeout is None:
            idle_timeout = settings.rate_limit_idle_timeout
        if idle_timeout != 0:
            try:
                check_positive("idle_timeout", idle_timeout)
            except ValueError:
                raise ValueError(
                    f"idle_timeout must be 0 or a positive number of seconds, got {idle_timeout!r}"
                ) from None
        if on_full not in ("evict_lru", "reject"):
            raise ValueError(f"on_full must be 'evict_lru' or 'reject', got {on_full!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        self.max_keys: int = max_keys
        self.eviction_interval: float = float(eviction_interval)
        self.idle_timeout: float = float(idle_timeout)
        self.on_full: OnFull = on_full
        self.clock: Callable[[], float] = clock or time.monotonic
        self._clock = clock
        self._idle_ns = round(self.idle_timeout * _NS)
        self._interval_ns = round(self.eviction_interval * _NS)
        # a batch of evictions per full table amortises finding the oldest keys
        self._batch = max(1, min(1024, max_keys // 128))
        self._tables: dict[Policy, dict[str, int]] = {}
        self.lock = threading.Lock()
        self._owner = get_ident()
        # a free-threaded interpreter has no GIL to order the handshake: always lock
        self._shared = not _gil_enabled()
        self._busy = False
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
        return int(clock() * _NS)

    # -- decisions (the caller holds ``lock``) --

    def table(self, policy: Policy) -> dict[str, int]:
        """The policy's table (key -> TAT), created on first use; never replaced."""
        table = self._tables.get(policy)
        if table is None:
            table = self._tables.setdefault(policy, {})
        return table

    def _now(self) -> int:
        """The time, after amortising cleanup into this call when no task runs."""
        clock = self._clock
        now = time.monotonic_ns() if clock is None else int(clock() * _NS)
        if now >= self._next_sweep:
            # no cleanup task (no event loop): amortise one bounded slice into a call
            self._next_sweep = now + self._interval_ns
            for policy, table in list(self._tables.items()):
                self._sweep_slice(policy, table, now)
        return now

    # -- mutual exclusion --
    #
    # A lock costs a quarter of a decision, and most stores are only ever used
    # by one thread (the event loop's). So the thread that created the store
    # decides without the lock until another thread shows up; that thread sets
    # ``_shared`` and waits until the owner is out of its unlocked section
    # (``_busy``), and from then on everyone takes the lock. Every other
    # thread waits so, not just the first: a second one may arrive while the
    # owner's last unlocked decision is still in flight. Under the GIL,
    # attribute writes are seen in order, which makes this handshake sound; a
    # free-threaded interpreter always takes the lock.

    def _acquire(self) -> bool:
        """Enter the critical section; True when it was entered without the lock."""
        if self._owner == get_ident():
            self._busy = True
            if not self._shared:
                return True
            self._busy = False
        else:
            if not self._shared:
                self._shared = True
            while self._busy:  # the owner may be mid-decision without the lock
                time.sleep(0)
        self.lock.acquire()
        return False

    def _release(self, exclusive: bool) -> None:
        if exclusive:
            self._busy = False
        else:
            self.lock.release()

    # -- decisions --

    def decide_one(
        self,
        table: dict[str, int],
        key: str,
        policy: Policy,
        cost: int,
        counts: tuple[Count, Count, Count],
        rejected: int,
    ) -> Decision:
        """One policy, the hot path, straight to the ``Decision``.

        ``table`` is ``self.table(policy)``, resolved once by the caller. The
        decision is counted in ``counts[0]`` when allowed, else in
        ``counts[rejected]``, inside the critical section so counts are exact.
        """
        # _acquire, inlined for the common case
        exclusive = self._owner == get_ident()
        if exclusive:
            self._busy = True
            if self._shared:
                self._busy = exclusive = False
        if not exclusive:
            self._acquire()
        try:
            clock = self._clock
            now = _monotonic_ns() if clock is None else int(clock() * _NS)
            if now >= self._next_sweep:
                now = self._now()
            tat = table.pop(key, None)
            if tat is None and len(table) >= self.max_keys:
                refused = self._make_room(policy, table, now)
                if refused is not None:
                    counts[rejected].value += 1
                    return _new(Decision, (False, policy, 0, refused.retry_after_ns / _S, 0.0))
            # gcra.decide_one, inlined: this is the hot path (a function call costs
            # a tenth of a decision); tests check the two agree on every input
            interval = policy.interval_ns
            base = now if tat is None or tat < now else tat
            new_tat = base + cost * interval
            wait = new_tat - now - policy.burst * interval
            if wait > 0:
                if tat is not None:
                    table[key] = tat
                counts[rejected].value += 1
                remaining = (policy.burst * interval - (base - now)) // interval
                return _new(Decision, (False, policy, remaining, wait / _S, (base - now) / _S))
            table[key] = new_tat
            counts[0].value += 1
            return _new(Decision, (True, policy, -wait // interval, 0.0, (new_tat - now) / _S))
        finally:
            if exclusive:
                self._busy = False
            else:
                self.lock.release()

    def one_policy_hit(
        self, policy: Policy, counts: tuple[Count, Count, Count], fallback: HitSync
    ) -> HitSync:
        """A ``hit_sync`` for one policy, cost 1: ``decide_one`` specialised into one frame.

        The policy's table, constants and counts live in closure cells, so a
        call is a single Python frame with no method binding and no further
        call (each of those costs a tenth of a decision). Any other call
        (``policies``, ``cost``, a key that is not a ``str``) goes to
        ``fallback``. Same critical section, same owner-thread lock elision
        and same amortised cleanup as ``decide_one``; tests check the two agree.
        """
        store = self
        table = self.table(policy)
        pop = table.pop
        interval = policy.interval_ns
        capacity = policy.burst * interval
        allowed, rejected, dry_run_rejected = counts
        owner = self._owner
        clock = self._clock
        now_ns: Callable[[], int] = _monotonic_ns if clock is None else (lambda: int(clock() * _NS))
        # a key holding no TAT in the future always gets this same decision (full
        # burst minus this request), so it is built once: building a Decision
        # costs about half of one
        fresh = _new(Decision, (True, policy, policy.burst - 1, 0.0, interval / _S))

        # not keyword-only, unlike HitSync (what callers are typed against):
        # CPython 3.11 calls a function with keyword-only parameters through
        # its generic path, about 80 ns more per call on this machine
        def hit_sync(
            key: str,
            policies: Sequence[Policy] | None = None,
            cost: int = 1,
            dry_run: bool = False,
        ) -> Decision:
            if policies is not None or cost != 1 or type(key) is not str:
                return fallback(key, policies=policies, cost=cost, dry_run=dry_run)
            # _acquire, inlined (see "mutual exclusion")
            exclusive = owner == get_ident()
            if exclusive:
                store._busy = True
                if store._shared:
                    store._busy = exclusive = False
            if not exclusive:
                store._acquire()
            try:
                now = now_ns()
                if now >= store._next_sweep:
                    now = store._now()
                tat = pop(key, None)
                if tat is None:
                    if len(table) >= store.max_keys:
                        refused = store._make_room(policy, table, now)
                        if refused is not None:
                            (dry_run_rejected if dry_run else rejected).value += 1
                            return _new(
                                Decision, (False, policy, 0, refused.retry_after_ns / _S, 0.0)
                            )
                elif tat > now:
                    # gcra.decide_one with cost 1 from a held TAT (base = tat)
                    new_tat = tat + interval
                    wait = new_tat - now - capacity
                    if wait > 0:
                        table[key] = tat  # a rejection consumes nothing
                        (dry_run_rejected if dry_run else rejected).value += 1
                        held = tat - now
                        return _new(
                            Decision,
                            (False, policy, (capacity - held) // interval, wait / _S, held / _S),
                        )
                    table[key] = new_tat
                    allowed.value += 1
                    return _new(
                        Decision,
                        (True, policy, -wait // interval, 0.0, (new_tat - now) / _S),
                    )
                # no TAT, or one in the past (base = now): always allowed (burst >= 1)
                table[key] = now + interval
                allowed.value += 1
                return fresh
            finally:
                if exclusive:
                    store._busy = False
                else:
                    store.lock.release()

        return hit_sync

    def two_policy_hit(
        self,
        policies: tuple[Policy, Policy],
        counts: tuple[tuple[Count, Count, Count], tuple[Count, Count, Count]],
        fallback: HitSync,
    ) -> HitSync:
        """``one_policy_hit`` for two policies (per second and per minute, say).

        ``decide_many`` unrolled for two policies, cost 1, in one frame; tests
        check the two agree.
        """
        store = self
        policy_a, policy_b = policies
        table_a, table_b = (self.table(policy) for policy in policies)
        pop_a, pop_b = table_a.pop, table_b.pop
        interval_a, interval_b = policy_a.interval_ns, policy_b.interval_ns
        capacity_a = policy_a.burst * interval_a
        capacity_b = policy_b.burst * interval_b
        (allowed_a, rejected_a, dry_run_rejected_a), (allowed_b, rejected_b, dry_run_rejected_b) = (
            counts
        )
        owner = self._owner
        clock = self._clock
        now_ns: Callable[[], int] = _monotonic_ns if clock is None else (lambda: int(clock() * _NS))
        # a key holding no TAT in the future under either policy always gets the
        # same decision: the policy with the fewer remaining (the first on a tie)
        fresh_a = policy_a.burst <= policy_b.burst
        fresh = (
            _new(Decision, (True, policy_a, policy_a.burst - 1, 0.0, interval_a / _S))
            if fresh_a
            else _new(Decision, (True, policy_b, policy_b.burst - 1, 0.0, interval_b / _S))
        )
        fresh_allowed = allowed_a if fresh_a else allowed_b

        def hit_sync(
            key: str,
            policies: Sequence[Policy] | None = None,
            cost: int = 1,
            dry_run: bool = False,
        ) -> Decision:
            if policies is not None or cost != 1 or type(key) is not str:
                return fallback(key, policies=policies, cost=cost, dry_run=dry_run)
            # _acquire, inlined (see "mutual exclusion")
            exclusive = owner == get_ident()
            if exclusive:
                store._busy = True
                if store._shared:
                    store._busy = exclusive = False
            if not exclusive:
                store._acquire()
            try:
                now = now_ns()
                if now >= store._next_sweep:
                    now = store._now()
                tat_a = pop_a(key, None)
                tat_b = pop_b(key, None)
                if tat_a is None or tat_b is None:
                    refused = None
                    if tat_a is None and len(table_a) >= store.max_keys:
                        refused = store._make_room(policy_a, table_a, now)
                        if refused is not None:
                            (dry_run_rejected_a if dry_run else rejected_a).value += 1
                            if tat_b is not None:
                                table_b[key] = tat_b
                            policy = policy_a
                    if refused is None and tat_b is None and len(table_b) >= store.max_keys:
                        refused = store._make_room(policy_b, table_b, now)
                        if refused is not None:
                            (dry_run_rejected_b if dry_run else rejected_b).value += 1
                            if tat_a is not None:
                                table_a[key] = tat_a
                            policy = policy_b
                    if refused is not None:
                        return _new(Decision, (False, policy, 0, refused.retry_after_ns / _S, 0.0))
                if (tat_a is None or tat_a <= now) and (tat_b is None or tat_b <= now):
                    table_a[key] = now + interval_a
                    table_b[key] = now + interval_b
                    fresh_allowed.value += 1
                    return fresh
                # _decide_many's arithmetic for two policies and a cost of 1
                base_a = now if tat_a is None or tat_a < now else tat_a
                base_b = now if tat_b is None or tat_b < now else tat_b
                wait_a = base_a + interval_a - now - capacity_a
                wait_b = base_b + interval_b - now - capacity_b
                if wait_a > 0 or wait_b > 0:
                    if tat_a is not None:  # a rejection consumes nothing
                        table_a[key] = tat_a
                    if tat_b is not None:
                        table_b[key] = tat_b
                    if wait_a >= wait_b:  # the longest wait decides, the first on a tie
                        (dry_run_rejected_a if dry_run else rejected_a).value += 1
                        held = base_a - now
                        return _new(
                            Decision,
                            (
                                False,
                                policy_a,
                                (capacity_a - held) // interval_a,
                                wait_a / _S,
                                held / _S,
                            ),
                        )
                    (dry_run_rejected_b if dry_run else rejected_b).value += 1
                    held = base_b - now
                    return _new(
                        Decision,
                        (
                            False,
                            policy_b,
                            (capacity_b - held) // interval_b,
                            wait_b / _S,
                            held / _S,
                        ),
                    )
                table_a[key] = base_a + interval_a
                table_b[key] = base_b + interval_b
                remaining_a = -wait_a // interval_a
                remaining_b = -wait_b // interval_b
                if remaining_a <= remaining_b:  # the fewest remaining, the first on a tie
                    allowed_a.value += 1
                    return _new(
                        Decision,
                        (True, policy_a, remaining_a, 0.0, (base_a + interval_a - now) / _S),
                    )
                allowed_b.value += 1
                return _new(
                    Decision,
                    (True, policy_b, remaining_b, 0.0, (base_b + interval_b - now) / _S),
                )
            finally:
                if exclusive:
                    store._busy = False
                else:
                    store.lock.release()

        return hit_sync

    def decide_many(
        self,
        tables: Sequence[dict[str, int]],
        key: str,
        policies: Sequence[Policy],
        cost: int,
        counts: Sequence[tuple[Count, Count, Count]],
        rejected: int,
    ) -> Decision:
        """Several policies, all or nothing.

        ``tables[i]`` is ``self.table(policies[i])``; counted like ``decide_one``
        under the deciding policy.
        """
        exclusive = self._acquire()
        try:
            allowed, deciding, remaining, retry, reset = self._decide_many(
                tables, key, policies, cost
            )
            counts[deciding][0 if allowed else rejected].value += 1
        finally:
            self._release(exclusive)
        return _new(Decision, (allowed, policies[deciding], remaining, retry / _S, reset / _S))

    def _decide_many(
        self,
        tables: Sequence[dict[str, int]],
        key: str,
        policies: Sequence[Policy],
        cost: int,
    ) -> tuple[bool, int, int, int, int]:
        # the arithmetic is gcra.decide's, inlined like decide_one's
        clock = self._clock
        now = time.monotonic_ns() if clock is None else int(clock() * _NS)
        if now >= self._next_sweep:
            now = self._now()
        tats = [table.pop(key, None) for table in tables]
        for index, tat in enumerate(tats):
            if tat is None and len(tables[index]) >= self.max_keys:
                refused = self._make_room(policies[index], tables[index], now)
                if refused is not None:
                    self._put_back(key, tables, tats)
                    return False, index, 0, refused.retry_after_ns, 0
        rejected = -1
        longest_wait = 0
        fewest = -1
        fewest_remaining = 0
        new_tats: list[int] = []
        for index, policy in enumerate(policies):
            interval = policy.interval_ns
            tat = tats[index]
            base = now if tat is None or tat < now else tat
            new_tat = base + cost * interval
            wait = new_tat - now - policy.burst * interval
            if wait > 0:
                if wait > longest_wait:
                    rejected, longest_wait = index, wait
            else:
                remaining = -wait // interval
                if fewest < 0 or remaining < fewest_remaining:
                    fewest, fewest_remaining = index, remaining
            new_tats.append(new_tat)
        if rejected >= 0:
            self._put_back(key, tables, tats)  # a rejection consumes nothing
            policy = policies[rejected]
            tat = tats[rejected]
            held = 0 if tat is None or tat < now else tat - now
            interval = policy.interval_ns
            return False, rejected, (policy.burst * interval - held) // interval, longest_wait, held
        for table, new_tat in zip(tables, new_tats, strict=True):
            table[key] = new_tat
        return True, fewest, fewest_remaining, 0, new_tats[fewest] - now

    def decide(self, key: str, policies: Sequence[Policy], cost: int) -> gcra.Verdict:
        """Resolve the tables and decide, uncounted (for tests and tools)."""
        tables = [self.table(policy) for policy in policies]
        exclusive = self._acquire()
        try:
            allowed, deciding, remaining, retry, reset = self._decide_many(
                tables, key, policies, cost
            )
        finally:
            self._release(exclusive)
        return gcra.Verdict(allowed, deciding, remaining, retry, reset, None)

    @staticmethod
    def _put_back(key: str, tables: Sequence[dict[str, int]], tats: Sequence[int | None]) -> None:
        for table, tat in zip(tables, tats, strict=True):
            if tat is not None:
                table[key] = tat

    def _make_room(self, policy: Policy, table: dict[str, int], now: int) -> gcra.Verdict | None:
        """Free a slot in a full table, or refuse the new key (``on_full="reject"``)."""
        swept = self._sweep_slice(policy, table, now)
        if self.on_full == "reject" and not swept and len(table) >= self.max_keys:
            self.counts.failed(policy.name, "store_full")
            return gcra.Verdict(False, 0, 0, self._interval_ns, 0, None)
        if len(table) < self.max_keys:
            return None
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
        return None

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

    async def sweep(self) -> int:
        """One full cleanup pass, yielding to the loop between slices; return keys dropped."""
        dropped = 0
        for policy, table in list(self._tables.items()):
            while True:
                exclusive = self._acquire()
                try:
                    count = self._sweep_slice(policy, table, self.now_ns())
                finally:
                    self._release(exclusive)
                dropped += count
                if count < SWEEP_SLICE:
                    break
                await asyncio.sleep(0)
        return dropped

    def sweep_sync(self) -> int:
        """The same pass without an event loop (holds the lock one slice at a time)."""
        dropped = 0
        for policy, table in list(self._tables.items()):
            while True:
                exclusive = self._acquire()
                try:
                    count = self._sweep_slice(policy, table, self.now_ns())
                finally:
                    self._release(exclusive)
                dropped += count
                if count < SWEEP_SLICE:
                    break
        return dropped

    def ensure_cleanup(self) -> None:
        """Start the cleanup task on the running loop, once per loop (cheap to repeat)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: decide() amortises cleanup into calls
        if loop is self._loop or self._closed:
            return
        self._loop = loop
        self._next_sweep = _NEVER  # the task sweeps now; calls need not
        self._task = loop.create_task(
            _cleanup_loop(weakref.ref(self), self.eviction_interval),
            name="otel_backpressure.ratelimit.MemoryStore.cleanup",
        )

    def close(self) -> None:
        """Stop the cleanup task; the store keeps deciding (cleanup is amortised)."""
        self._closed = True
        task, self._task, self._loop = self._task, None, None
        self._next_sweep = 0
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
        # the loop is ending (or the store closing): calls amortise cleanup again
        store = store_ref()
        if store is not None and store._task is asyncio.current_task():
            store._next_sweep = 0
            store._loop = None
            store._task = None
