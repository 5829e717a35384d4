from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter
from otel_backpressure.ratelimit import memory as memory_module
from otel_backpressure.ratelimit.gcra import decide, decide_one
from otel_backpressure.ratelimit.metrics import Count
from otel_backpressure.testing import FakeClock, MetricsCapture

POLICY = "backpressure.rate_limit.policy"
REASON = "backpressure.rate_limit.eviction.reason"

# The bytes one key costs in a one-policy store, documented in docs/ratelimit.md
# (a 10-20 character key string, its dict slot and its int TAT).
DOCUMENTED_BYTES_PER_KEY = 200


def test_defaults_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_MAX_KEYS", "1234")
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_EVICTION_INTERVAL", "7")
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_IDLE_TIMEOUT", "3")
    store = MemoryStore()
    assert (store.max_keys, store.eviction_interval, store.idle_timeout) == (1234, 7.0, 3.0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"max_keys": 0}, "max_keys"),
        ({"max_keys": 1.5}, "max_keys"),
        ({"eviction_interval": 0}, "eviction_interval"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"on_full": "drop"}, "on_full"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        MemoryStore(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 700),  # ms before the request
            st.booleans(),  # sweep before it
        ),
        max_size=80,
    ),
    st.integers(0, 300),  # idle timeout, ms
)
def test_eviction_never_changes_a_decision(
    requests: list[tuple[str, int, bool]], idle_ms: int
) -> None:
    policies = (Policy("s", rate=3, period=1, burst=4), Policy("m", rate=10, period=5))
    plain_clock, swept_clock = FakeClock(), FakeClock()
    plain = RateLimiter(policies, store=MemoryStore(max_keys=100, clock=plain_clock))
    swept_store = MemoryStore(max_keys=100, idle_timeout=idle_ms / 1000 or 0, clock=swept_clock)
    swept = RateLimiter(policies, store=swept_store)
    for key, gap_ms, sweep in requests:
        plain_clock.advance(gap_ms / 1000)
        swept_clock.advance(gap_ms / 1000)
        if sweep:
            swept_store.sweep_sync()
        assert plain.hit_sync(key) == swept.hit_sync(key)


def test_the_fast_path_agrees_with_the_pure_algorithm() -> None:
    clock = FakeClock()
    store = MemoryStore(max_keys=10, clock=clock)
    policy = Policy("p", rate=7, period=3, burst=5)
    table = store.table(policy)
    tat: int | None = None
    for step in range(200):
        clock.advance((step * 7919 % 13) / 10)
        now = store.now_ns()
        expected = decide_one(tat, now, policy.interval_ns, policy.burst, 1 + step % 3)
        counts = (Count(), Count(), Count())
        got = store.decide_one(table, "k", policy, 1 + step % 3, counts, 1)
        assert (got.allowed, got.remaining) == (expected[0], expected[2])
        assert (got.retry_after, got.reset_after) == (expected[3] / 1e9, expected[4] / 1e9)
        assert [c.value for c in counts] == ([1, 0, 0] if expected[0] else [0, 1, 0])
        if expected[0]:
            tat = expected[1]


def _state(limiter: RateLimiter) -> object:
    """Everything a decision can change: tables in order, counts, evictions, errors."""
    store = limiter.store
    assert isinstance(store, MemoryStore)
    return (
        [list(store.table(policy).items()) for policy in limiter.policies],
        [[count.value for count in limiter._counters[p]] for p in limiter.policies],
        dict(store.counts.evictions),
        dict(store.counts.errors),
    )


@pytest.mark.parametrize(
    "policies",
    [
        (Policy("s", rate=3, period=1, burst=4),),
        (Policy("s", rate=3, period=1, burst=4), Policy("m", rate=10, period=5)),
        (Policy("m", rate=10, period=5), Policy("s", rate=3, period=1, burst=4)),
        (Policy("a", rate=2, period=1, burst=2), Policy("b", rate=4, period=2, burst=2)),
    ],
    ids=["one", "two", "two-swapped", "two-tied"],
)
@pytest.mark.parametrize("on_full", ["evict_lru", "reject"])
def test_the_specialised_hit_sync_agrees_with_the_general_path(
    policies: tuple[Policy, ...], on_full: memory_module.OnFull
) -> None:
    # one and two policies get a one-frame closure; the general path is _hit_sync
    # (MemoryStore.decide_one / decide_many). Random sequences over few keys and
    # small tables: held and idle keys, rejections, dry runs, full tables, and
    # amortised sweeps (every 0.5 s) that drop a key under one policy only.
    rng = random.Random(f"{[p.name for p in policies]}-{on_full}")
    for _ in range(150):
        clocks = FakeClock(), FakeClock()
        max_keys = rng.randint(1, 4)
        fast, general = (
            RateLimiter(
                policies,
                store=MemoryStore(
                    max_keys=max_keys, on_full=on_full, eviction_interval=0.5, clock=clock
                ),
            )
            for clock in clocks
        )
        assert fast.hit_sync is not fast._hit_sync
        for _ in range(rng.randint(0, 80)):
            key = rng.choice("abcde")
            gap = rng.choice([0.0, 0.0, 0.0, 0.05, 0.2, 0.4, 1.5])
            dry_run = rng.random() < 0.2
            for clock in clocks:
                clock.advance(gap)
            expected = general._hit_sync(key, dry_run=dry_run)
            assert fast.hit_sync(key, dry_run=dry_run) == expected
            assert _state(fast) == _state(general)


@pytest.mark.parametrize("full", [0, 1])
def test_the_two_policy_refusal_puts_back_the_other_policys_tat(full: int) -> None:
    # a key held under one policy only (dropped from the other's table by a
    # sweep, say), arriving at the other's full table: refused, and the held
    # TAT is put back untouched (at the end of its table, as "seen")
    policies = (Policy("s", rate=1, period=1), Policy("m", rate=1, period=10, burst=5))
    limiters = [
        RateLimiter(policies, store=MemoryStore(max_keys=2, on_full="reject", clock=FakeClock()))
        for _ in range(2)
    ]
    for limiter in limiters:
        store = limiter.store
        assert isinstance(store, MemoryStore)
        now = store.now_ns()
        full_table, other = (store.table(p) for p in (policies[full], policies[1 - full]))
        full_table.update({"x": now + 10**9, "y": now + 10**9})  # busy: no room
        other.update({"k": now + 5 * 10**9, "x": now + 10**9})
    fast, general = limiters
    expected = general._hit_sync("k")
    assert not expected
    assert expected.policy is policies[full]
    assert fast.hit_sync("k") == expected
    assert _state(fast) == _state(general)
    assert list(fast.store.table(policies[1 - full])) == ["x", "k"]  # type: ignore[union-attr]


@pytest.mark.parametrize("policies", [1, 2])
def test_the_specialised_hit_sync_hands_other_calls_to_the_general_path(
    clock: FakeClock, policies: int
) -> None:
    chosen = [Policy("p", rate=2, period=1, burst=3), Policy("q", rate=5, period=1, burst=3)]
    limiter = RateLimiter(chosen[:policies], store=MemoryStore(max_keys=10, clock=clock))
    assert limiter.hit_sync is not limiter._hit_sync
    assert limiter.hit_sync("k", cost=3).remaining == 0
    assert not limiter.hit_sync("k")
    route = (Policy("route", rate=1, period=60),)
    assert limiter.hit_sync("k", policies=route).policy is route[0]
    with pytest.raises(TypeError, match="key"):
        limiter.hit_sync(b"k")  # type: ignore[arg-type]


def _hammer(limiter: RateLimiter, threads: int, hits: int) -> int:
    """Decisions allowed when ``threads`` threads and this one each hit one key."""
    allowed = [0] * (threads + 1)
    start = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        start.wait()
        for _ in range(hits):
            if limiter.hit_sync("shared"):
                allowed[index] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    worker(threads)  # the owner (this thread created the store) hammers too
    for thread in workers:
        thread.join()
    return sum(allowed)


@pytest.mark.parametrize("policies", [1, 2, 3])
def test_the_hand_over_to_locking_is_exact_however_threads_arrive(policies: int) -> None:
    # a fresh store every round: several threads arrive while the owner may be
    # mid-decision without the lock, and each of them (not only the first)
    # must wait that decision out
    chosen = [
        Policy("p", rate=100, period=3600),
        Policy("q", rate=10_000, period=3600),
        Policy("r", rate=20_000, period=3600),
    ][:policies]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            limiter = RateLimiter(chosen, store=MemoryStore(max_keys=10))
            counts = limiter._counters[chosen[0]]  # shared by every round (one provider)
            before = [count.value for count in counts]
            assert _hammer(limiter, 4, 60) == 100
            after = [count.value for count in counts]
            assert [b - a for a, b in zip(before, after, strict=True)] == [100, 200, 0]
    finally:
        sys.setswitchinterval(interval)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 900), st.integers(1, 2)), max_size=60))
def test_the_many_policy_path_agrees_with_the_pure_algorithm(
    steps: list[tuple[int, int]],
) -> None:
    clock = FakeClock()
    store = MemoryStore(max_keys=10, clock=clock)
    policies = (
        Policy("a", rate=3, period=1, burst=2),
        Policy("b", rate=5, period=4),
        Policy("c", rate=2, period=2, burst=3),
    )
    tats: list[int | None] = [None, None, None]
    for gap_ms, cost in steps:
        clock.advance(gap_ms / 1000)
        expected = decide(tats, store.now_ns(), policies, cost)
        got = store.decide("k", policies, cost)
        assert got._replace(tats=None) == expected._replace(tats=None)
        if expected.tats is not None:
            tats = list(expected.tats)
        assert [store.tat("k", policy) for policy in policies] == tats


def test_sweep_drops_only_idle_keys_and_meters_them(clock: FakeClock) -> None:
    capture = MetricsCapture()
    store = MemoryStore(max_keys=100, clock=clock)
    policy = Policy("p", rate=1, period=10, burst=1)
    limiter = RateLimiter([policy], store=store, meter_provider=capture.meter_provider)
    limiter.hit_sync("old")
    clock.advance(5)
    limiter.hit_sync("new")
    clock.advance(5)  # "old" is idle now (TAT = t0 + 10), "new" is not
    assert store.sweep_sync() == 1
    assert store.tat("old", policy) is None
    assert store.tat("new", policy) is not None
    assert capture.value("backpressure.rate_limit.evictions", {POLICY: "p", REASON: "idle"}) == 1
    assert capture.value("backpressure.rate_limit.keys", {POLICY: "p"}) == 1
    capture.shutdown()


def test_idle_timeout_keeps_keys_longer(clock: FakeClock) -> None:
    store = MemoryStore(max_keys=100, idle_timeout=30, clock=clock)
    limiter = RateLimiter([Policy("p", rate=1, period=10, burst=1)], store=store)
    limiter.hit_sync("k")
    clock.advance(39)
    assert store.sweep_sync() == 0
    clock.advance(1)
    assert store.sweep_sync() == 1


def test_full_store_evicts_least_recently_seen_and_meters_capacity(clock: FakeClock) -> None:
    capture = MetricsCapture()
    store = MemoryStore(max_keys=4, clock=clock)
    policy = Policy("p", rate=1, period=60, burst=2)
    limiter = RateLimiter([policy], store=store, meter_provider=capture.meter_provider)
    for key in ("a", "b", "c", "d"):
        limiter.hit_sync(key)
    limiter.hit_sync("a")  # seen again: "b" is now the least recently seen
    limiter.hit_sync("e")
    assert len(store) == 4
    assert store.tat("b", policy) is None
    assert store.tat("a", policy) is not None
    assert capture.value("backpressure.rate_limit.evictions", {POLICY: "p", REASON: "capacity"})
    capture.shutdown()


def test_full_store_prefers_idle_keys_over_busy_ones(clock: FakeClock) -> None:
    capture = MetricsCapture()
    store = MemoryStore(max_keys=2, clock=clock)
    policy = Policy("p", rate=1, period=1, burst=1)
    limiter = RateLimiter([policy], store=store, meter_provider=capture.meter_provider)
    limiter.hit_sync("a")
    limiter.hit_sync("b")
    clock.advance(2)  # both idle
    limiter.hit_sync("c")
    assert capture.value("backpressure.rate_limit.evictions", {POLICY: "p", REASON: "idle"}) == 2
    assert (
        capture.value("backpressure.rate_limit.evictions", {POLICY: "p", REASON: "capacity"})
        is None
    )
    capture.shutdown()


def test_reject_mode_refuses_new_keys_when_full_and_meters_it(clock: FakeClock) -> None:
    capture = MetricsCapture()
    store = MemoryStore(max_keys=2, on_full="reject", eviction_interval=15, clock=clock)
    policy = Policy("p", rate=1, period=60)
    limiter = RateLimiter([policy], store=store, meter_provider=capture.meter_provider)
    assert limiter.hit_sync("a")
    assert limiter.hit_sync("b")
    refused = limiter.hit_sync("c")
    assert not refused
    assert refused.retry_after == 15
    assert len(store) == 2
    assert store.tat("a", policy) is not None
    assert (
        capture.value(
            "backpressure.rate_limit.store.errors", {POLICY: "p", "error.type": "store_full"}
        )
        == 1
    )
    clock.advance(61)  # a and b are idle: room again
    assert limiter.hit_sync("c")
    capture.shutdown()


def test_without_a_loop_cleanup_is_amortised_into_calls(clock: FakeClock) -> None:
    store = MemoryStore(max_keys=1000, eviction_interval=10, clock=clock)
    limiter = RateLimiter([Policy("p", rate=1, period=1, burst=1)], store=store)
    for i in range(100):
        limiter.hit_sync(f"k{i}")
    clock.advance(11)
    limiter.hit_sync("trigger")
    assert len(store) == 1


async def test_cleanup_task_runs_on_the_loop_and_stops_on_close() -> None:
    store = MemoryStore(max_keys=100, eviction_interval=0.01)
    limiter = RateLimiter([Policy("p", rate=1000, period=0.001, burst=1)], store=store)
    await limiter.hit("k")
    assert "cleanup_task=True" in repr(store)
    for _ in range(500):  # the key is idle within 1 µs; the task drops it within 10 ms
        if len(store) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(store) == 0
    await store.aclose()
    assert "cleanup_task=False" in repr(store)


async def test_async_context_manager_starts_and_stops_the_task() -> None:
    async with MemoryStore(max_keys=10) as store:
        task = store._task
        assert task is not None
        assert not task.done()
    assert task.done()


async def test_a_sweep_yields_to_the_loop_between_slices(clock: FakeClock) -> None:
    store = MemoryStore(max_keys=100_000, clock=clock)
    limiter = RateLimiter([Policy("p", rate=1, period=1, burst=1)], store=store)
    keys = 10 * memory_module.SWEEP_SLICE
    for i in range(keys):
        limiter.hit_sync(f"k{i}")
    clock.advance(2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    dropped = await store.sweep()
    task.cancel()
    assert dropped == keys
    # the other task ran between every slice: the loop was never held for a whole pass
    assert ticks >= keys // memory_module.SWEEP_SLICE


@pytest.mark.parametrize("policies", [1, 2])
def test_hit_sync_is_exact_under_threads(policies: int) -> None:
    capture = MetricsCapture()
    policy = Policy("p", rate=500, period=3600)
    chosen = [policy, Policy("q", rate=10_000, period=3600)][:policies]
    # created here: this thread owns the store and decides without the lock until
    # the workers show up, so the hand-over to locking is exercised too
    limiter = RateLimiter(
        chosen, store=MemoryStore(max_keys=10), meter_provider=capture.meter_provider
    )
    allowed = [0] * 9
    start = threading.Barrier(9)

    def worker(index: int) -> None:
        start.wait()
        for _ in range(250):
            if limiter.hit_sync("shared"):
                allowed[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races surface
    try:
        for thread in threads:
            thread.start()
        worker(8)  # the owner hammers too
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(allowed) == 500
    attrs = {POLICY: "p", "backpressure.rate_limit.result": "allowed"}
    assert capture.value("backpressure.rate_limit.requests", attrs) == 500
    attrs["backpressure.rate_limit.result"] = "rejected"
    assert capture.value("backpressure.rate_limit.requests", attrs) == 1750
    capture.shutdown()


def test_a_million_keys_stay_within_max_keys() -> None:
    capture = MetricsCapture()
    # the real clock (the cheapest), and a period no key can go idle within
    store = MemoryStore(max_keys=50_000)
    policy = Policy("p", rate=10, period=3600)
    limiter = RateLimiter([policy], store=store, meter_provider=capture.meter_provider)
    hit = limiter.hit_sync
    for i in range(1_000_000):
        hit(f"client-{i}")
    assert len(store) <= 50_000
    assert capture.value("backpressure.rate_limit.keys", {POLICY: "p"}) == len(store)
    evicted = capture.value("backpressure.rate_limit.evictions", {POLICY: "p", REASON: "capacity"})
    assert evicted == 1_000_000 - len(store)
    capture.shutdown()


def test_bytes_per_key_stay_within_the_documented_figure(clock: FakeClock) -> None:
    count = 50_000
    keys = [f"client-{i:08d}" for i in range(count)]  # the caller's strings
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        store = MemoryStore(max_keys=count, clock=clock)
        limiter = RateLimiter([Policy("p", rate=10, period=60)], store=store)
        for key in keys:
            limiter.hit_sync(key)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the key strings belong to the caller here; count them as the store's too
    key_bytes = sum(len(key) + 49 for key in keys)
    per_key = (after - before + key_bytes) / count
    assert len(store) == count
    assert per_key <= DOCUMENTED_BYTES_PER_KEY, per_key
