from __future__ import annotations

import asyncio
import gc
import math
import sys
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter
from otel_backpressure.ratelimit import memory as memory_module
from otel_backpressure.ratelimit.gcra import decide, decide_one
from otel_backpressure.ratelimit.metrics import Count, StoreCounts
from otel_backpressure.testing import FakeClock, MetricsCapture

INF, NAN = math.inf, math.nan
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
    ("variable", "value", "argument", "used"),
    [
        ("IDLE_TIMEOUT", "1e300", "idle_timeout", 0.0),  # issue 8: an OverflowError once
        ("IDLE_TIMEOUT", "86400", "idle_timeout", 86_400.0),
        ("EVICTION_INTERVAL", "1e300", "eviction_interval", 60.0),
        ("EVICTION_INTERVAL", "1e-300", "eviction_interval", 60.0),  # would spin a core
        ("EVICTION_INTERVAL", "0.1", "eviction_interval", 0.1),
        ("MAX_KEYS", "10000001", "max_keys", 100_000),
        ("MAX_KEYS", "10000000", "max_keys", 10_000_000),
    ],
)
def test_a_limiter_built_from_any_environment_starts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, argument: str, used: float
) -> None:
    # the settings keep their default for a value out of range (and log it);
    # the store takes the same ranges, so building a limiter never fails
    monkeypatch.setenv(f"OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_{variable}", value)
    limiter = RateLimiter([Policy("p", rate=1, period=1)])
    assert getattr(limiter.store, argument) == used
    assert limiter.hit_sync("k")


@pytest.mark.parametrize(
    ("argument", "value", "stored"),
    [
        ("max_keys", 1, 1),
        ("max_keys", 10_000_000, 10_000_000),
        ("eviction_interval", 0.1, 0.1),
        ("eviction_interval", 86_400, 86_400.0),
        ("idle_timeout", 0, 0.0),
        ("idle_timeout", -0.0, 0.0),  # zero, whatever its sign
        ("idle_timeout", 1e-300, 1e-300),  # below a nanosecond: as good as 0
        ("idle_timeout", 86_400, 86_400.0),
    ],
)
def test_each_argument_is_accepted_at_its_bounds(
    argument: str, value: float, stored: float
) -> None:
    store = MemoryStore(**{argument: value})  # type: ignore[arg-type]
    assert getattr(store, argument) == stored
    assert str(getattr(store, argument)) == str(stored)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        *[("max_keys", v) for v in (0, -1, 10_000_001, 10**300, 1.5, INF, NAN, 1e300, -0.0)],
        *[
            ("eviction_interval", v)
            for v in (
                math.nextafter(0.1, 0),
                math.nextafter(86_400, INF),
                0,
                -0.0,
                -1,
                INF,
                NAN,
                1e300,
                1e-300,  # a cleanup pass per 1e-300 s would spin a core
                10**400,
            )
        ],
        *[
            ("idle_timeout", v)
            for v in (
                math.nextafter(86_400, INF),
                -1e-300,
                -INF,
                INF,
                NAN,
                1e300,  # once an OverflowError when turned into nanoseconds
                10**400,
            )
        ],
        ("on_full", "drop"),
    ],
)
def test_each_argument_is_refused_just_past_its_bounds(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{argument}"):
        MemoryStore(**{argument: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("argument", ["max_keys", "eviction_interval", "idle_timeout"])
def test_a_value_of_the_wrong_type_is_a_type_error(argument: str) -> None:
    for value in ("1", True, [1]):
        with pytest.raises(TypeError, match=f"^{argument}"):
            MemoryStore(**{argument: value})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^clock"):
        MemoryStore(clock=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [1, 2])  # one policy takes its own path
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
    count: int, requests: list[tuple[str, int, bool]], idle_ms: int
) -> None:
    policies = (Policy("s", rate=3, period=1, burst=4), Policy("m", rate=10, period=5))[:count]
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


def test_one_policy_agrees_with_the_pure_algorithm() -> None:
    clock = FakeClock()
    store = MemoryStore(max_keys=10, clock=clock)
    policy = Policy("p", rate=7, period=3, burst=5)
    tat: int | None = None
    for step in range(200):
        clock.advance((step * 7919 % 13) / 10)
        now = store.now_ns()
        cost = 1 + step % 3
        expected = decide_one(tat, now, policy.interval_ns, policy.burst, cost)
        counts = (Count(), Count())
        got = store.decide("k", (policy,), cost, None, [counts])
        assert (got.allowed, got.remaining) == (expected[0], expected[2])
        assert (got.retry_after, got.reset_after) == (expected[3] / 1e9, expected[4] / 1e9)
        assert [c.value for c in counts] == ([1, 0] if expected[0] else [0, 1])
        if expected[0]:
            tat = expected[1]
        assert store.tat("k", policy) == tat


@pytest.mark.parametrize("full", [0, 1])
def test_a_refusal_puts_back_the_other_policys_tat(full: int) -> None:
    # a key held under one policy only (dropped from the other's table by a
    # sweep, say), arriving at the other's full table: refused, and the held
    # TAT is put back untouched (at the end of its table, as "seen")
    policies = (Policy("s", rate=1, period=1), Policy("m", rate=1, period=10, burst=5))
    limiter = RateLimiter(
        policies, store=MemoryStore(max_keys=2, on_full="reject", clock=FakeClock())
    )
    store = limiter.store
    assert isinstance(store, MemoryStore)
    now = store.now_ns()
    full_table, other = (store.table(p) for p in (policies[full], policies[1 - full]))
    full_table.update({"x": now + 10**9, "y": now + 10**9})  # busy: no room
    other.update({"k": now + 5 * 10**9, "x": now + 10**9})
    refused = limiter.hit_sync("k")
    assert not refused
    assert refused.policy is policies[full]
    assert refused.retry_after == store.eviction_interval
    assert list(other.items()) == [("x", now + 10**9), ("k", now + 5 * 10**9)]
    assert list(full_table) == ["x", "y"]
    assert limiter._counters[policies[full]][1].value == 1


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
        assert got == (
            expected.allowed,
            policies[expected.deciding],
            expected.remaining,
            expected.retry_after_ns / 1e9,
            expected.reset_after_ns / 1e9,
        )
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


class _SweepSignal(StoreCounts):
    """Store counts that say when an eviction was counted (a sweep dropped keys)."""

    __slots__ = ("swept",)

    def __init__(self) -> None:
        super().__init__()
        self.swept = asyncio.Event()

    def evicted(self, policy_name: str, reason: str, count: int = 1) -> None:
        super().evicted(policy_name, reason, count)
        self.swept.set()


async def test_cleanup_task_runs_on_the_loop_and_stops_on_close(clock: FakeClock) -> None:
    store = MemoryStore(max_keys=100, eviction_interval=0.1, clock=clock)
    store.counts = signal = _SweepSignal()
    limiter = RateLimiter([Policy("p", rate=1, period=1)], store=store)
    await limiter.hit("k")
    assert "cleanup_task=True" in repr(store)
    clock.advance(1)  # idle now: the task's next pass drops it (decisions do not sweep)
    await signal.swept.wait()
    assert len(store) == 0
    assert signal.evictions == {("p", "idle"): 1}
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


@pytest.mark.parametrize("policies", [1, 2, 3])
def test_hit_sync_is_exact_under_threads(policies: int) -> None:
    capture = MetricsCapture()
    policy = Policy("p", rate=500, period=3600)
    others = [Policy("q", rate=10_000, period=3600), Policy("r", rate=20_000, period=3600)]
    chosen = [policy, *others][:policies]
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
