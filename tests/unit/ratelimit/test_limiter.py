from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter, RedisStore
from otel_backpressure.testing import FakeClock, MetricsCapture

PER_SECOND = Policy("per-second", rate=2, period=1, burst=2)
PER_MINUTE = Policy("per-minute", rate=3, period=60)
RESULT = "backpressure.rate_limit.result"
POLICY = "backpressure.rate_limit.policy"


def requests(capture: MetricsCapture, policy: str, result: str) -> float | None:
    return capture.value("backpressure.rate_limit.requests", {POLICY: policy, RESULT: result})


@pytest.fixture
def capture() -> MetricsCapture:
    capture = MetricsCapture()
    yield capture  # type: ignore[misc]
    capture.shutdown()


def limiter_for(clock: FakeClock, capture: MetricsCapture, *policies: Policy) -> RateLimiter:
    return RateLimiter(
        policies or (PER_SECOND,),
        store=MemoryStore(max_keys=1000, clock=clock),
        meter_provider=capture.meter_provider,
    )


def test_decision_fields_follow_the_policy(clock: FakeClock, capture: MetricsCapture) -> None:
    limiter = limiter_for(clock, capture)
    first = limiter.hit_sync("k")
    assert (first.allowed, first.remaining, first.retry_after, first.limit) == (True, 1, 0.0, 2)
    assert first.reset_after == pytest.approx(0.5)
    limiter.hit_sync("k")
    rejected = limiter.hit_sync("k")
    assert not rejected.allowed
    assert rejected.remaining == 0
    assert rejected.retry_after == pytest.approx(0.5)
    assert rejected.reset_after == pytest.approx(1.0)
    assert rejected.policy is PER_SECOND
    clock.advance(0.5)
    assert limiter.hit_sync("k").allowed


def test_keys_are_independent(clock: FakeClock, capture: MetricsCapture) -> None:
    limiter = limiter_for(clock, capture)
    assert [limiter.hit_sync("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.hit_sync("b").allowed


def test_rejection_by_one_policy_consumes_nothing_under_the_others(
    clock: FakeClock, capture: MetricsCapture
) -> None:
    limiter = limiter_for(clock, capture, PER_SECOND, PER_MINUTE)
    outcomes = []
    for _ in range(6):  # bursts of per-second rejections must not eat the per-minute budget
        outcomes.append(limiter.hit_sync("k"))
    assert [d.allowed for d in outcomes] == [True, True, False, False, False, False]
    # allowed: the deciding policy is the one with the fewest remaining
    assert (outcomes[0].policy, outcomes[0].remaining) == (PER_SECOND, 1)
    assert (outcomes[1].policy, outcomes[1].remaining) == (PER_SECOND, 0)
    assert outcomes[2].policy == PER_SECOND
    clock.advance(1)
    third = limiter.hit_sync("k")
    assert (third.allowed, third.policy, third.remaining) == (True, PER_MINUTE, 0)
    fourth = limiter.hit_sync("k")
    assert (fourth.allowed, fourth.policy) == (False, PER_MINUTE)
    assert fourth.retry_after == pytest.approx(20.0 - 1.0)
    assert requests(capture, "per-second", "rejected") == 4
    # each decision is counted once, under its deciding policy
    assert requests(capture, "per-second", "allowed") == 2
    assert requests(capture, "per-minute", "allowed") == 1
    assert requests(capture, "per-minute", "rejected") == 1


def test_per_call_policies_override(clock: FakeClock, capture: MetricsCapture) -> None:
    limiter = limiter_for(clock, capture)
    strict = Policy("login", rate=1, period=60)
    assert limiter.hit_sync("k", policies=[strict]).allowed
    assert not limiter.hit_sync("k", policies=[strict]).allowed
    assert limiter.hit_sync("k").allowed  # the default policies keep their own state
    assert requests(capture, "login", "rejected") == 1


def test_cost_takes_several_slots(clock: FakeClock, capture: MetricsCapture) -> None:
    limiter = limiter_for(clock, capture, Policy("p", rate=5, period=1))
    assert limiter.hit_sync("k", cost=3).remaining == 2
    rejected = limiter.hit_sync("k", cost=3)
    assert (rejected.allowed, rejected.remaining) == (False, 2)
    assert rejected.retry_after == pytest.approx(0.2)
    assert limiter.hit_sync("k", cost=2).allowed


def test_dry_run_meters_and_never_consumes_over_limit(
    clock: FakeClock, capture: MetricsCapture
) -> None:
    limiter = limiter_for(clock, capture)
    assert limiter.hit_sync("k", dry_run=True).allowed
    assert limiter.hit_sync("k", dry_run=True).allowed
    shadow = [limiter.hit_sync("k", dry_run=True) for _ in range(5)]
    assert not any(shadow)  # the decision enforcement would have made
    assert requests(capture, "per-second", "dry_run_rejected") == 5
    assert requests(capture, "per-second", "rejected") == 0  # series exist from the start
    clock.advance(0.5)  # over-limit dry-run requests consumed nothing: a slot is back
    assert limiter.hit_sync("k").allowed


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda lim: lim.hit_sync(b"k"), TypeError, "key"),
        (lambda lim: lim.hit_sync("k", cost=0), ValueError, "cost"),
        (lambda lim: lim.hit_sync("k", cost=3), ValueError, "cost"),
        (lambda lim: lim.hit_sync("k", policies=[]), ValueError, "policies"),
        (lambda lim: lim.hit_sync("k", policies=["x"]), TypeError, "policies"),
    ],
)
def test_bad_calls_name_the_argument(
    clock: FakeClock, capture: MetricsCapture, call: object, error: type[Exception], match: str
) -> None:
    limiter = limiter_for(clock, capture)
    with pytest.raises(error, match=match):
        call(limiter)  # type: ignore[operator]


@pytest.mark.parametrize("cost", [1, 2])  # PER_SECOND's burst is 2
def test_cost_is_accepted_up_to_the_burst(
    clock: FakeClock, capture: MetricsCapture, cost: int
) -> None:
    assert limiter_for(clock, capture).hit_sync("k", cost=cost).remaining == 2 - cost


@pytest.mark.parametrize(
    ("cost", "error"),
    [
        *[(v, ValueError) for v in (0, -1, 3, 10**300, 1.0, 1.5, math.inf, math.nan, 1e300, -0.0)],
        *[(v, TypeError) for v in ("1", True, None)],
    ],
)
def test_cost_is_refused_past_its_bounds(
    clock: FakeClock, capture: MetricsCapture, cost: object, error: type[Exception]
) -> None:
    limiter = limiter_for(clock, capture)
    with pytest.raises(error, match=r"^cost"):
        limiter.hit_sync("k", cost=cost)  # type: ignore[arg-type]
    assert limiter.hit_sync("k").remaining == 1  # nothing was consumed


def test_bad_construction_names_the_argument(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="policies"):
        RateLimiter([])
    with pytest.raises(TypeError, match="policies"):
        RateLimiter(PER_SECOND)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policies"):
        RateLimiter([PER_SECOND, Policy("per-second", rate=9, period=1)])
    with pytest.raises(TypeError, match="store"):
        RateLimiter([PER_SECOND], store=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock"):
        RateLimiter([PER_SECOND], store=MemoryStore(max_keys=1), clock=clock)


def test_hit_sync_on_redis_names_the_store() -> None:
    limiter = RateLimiter([PER_SECOND], store=RedisStore("redis://127.0.0.1:1/0"))
    with pytest.raises(TypeError, match="RedisStore"):
        limiter.hit_sync("k")


def test_default_store_uses_the_given_clock(clock: FakeClock) -> None:
    limiter = RateLimiter([PER_SECOND], clock=clock)
    assert isinstance(limiter.store, MemoryStore)
    assert limiter.store.clock is clock
    assert limiter.policies == (PER_SECOND,)
    limiter.hit_sync("k")
    limiter.hit_sync("k")
    assert not limiter.hit_sync("k")
    clock.advance(1)
    assert limiter.hit_sync("k")
    assert "per-second" in repr(limiter)


async def test_async_hit_is_the_same_core(clock: FakeClock, capture: MetricsCapture) -> None:
    limiter = limiter_for(clock, capture)
    outcomes = [await limiter.hit("k") for _ in range(3)]
    assert [d.allowed for d in outcomes] == [True, True, False]
    assert outcomes[0] == limiter_for(FakeClock(), MetricsCapture()).hit_sync("k")
    await limiter.store.aclose()  # type: ignore[union-attr]


async def test_check_raises_the_mapped_error_on_rejection(clock: FakeClock) -> None:
    from otel_backpressure.errors import RateLimitExceededError

    limiter = RateLimiter([PER_SECOND], clock=clock)
    assert (await limiter.check("k")).allowed
    await limiter.check("k")
    with pytest.raises(RateLimitExceededError) as caught:
        await limiter.check("k")
    assert caught.value.policy == "per-second"
    assert caught.value.retry_after == pytest.approx(0.5)
    await limiter.store.aclose()  # type: ignore[union-attr]


def test_metering_switched_off_by_the_setting_still_limits(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, capture: MetricsCapture
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_ENABLED", "false")
    limiter = limiter_for(clock, capture)
    assert [limiter.hit_sync("k").allowed for _ in range(3)] == [True, True, False]
    assert not [name for name in capture.collect() if name.startswith("backpressure.rate_limit")]


def test_per_call_policy_lists_are_read_afresh_and_tuples_reused(
    clock: FakeClock, capture: MetricsCapture
) -> None:
    limiter = limiter_for(clock, capture)
    route = (Policy("route", rate=1, period=60),)
    assert limiter.hit_sync("k", policies=route)
    assert not limiter.hit_sync("k", policies=route)  # the same tuple: the cached set
    changing = [Policy("a", rate=1, period=60)]
    assert limiter.hit_sync("k", policies=changing)
    changing[0] = Policy("b", rate=1, period=60)
    assert limiter.hit_sync("k", policies=changing)  # a list is re-read on every call
    assert requests(capture, "b", "allowed") == 1


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 5),  # rate
    st.integers(0, 3),  # extra burst
    st.lists(st.tuples(st.integers(0, 1500), st.sampled_from("ab")), max_size=80),
)
def test_through_the_limiter_no_key_ever_gets_more_than_the_policy(
    rate: int, extra: int, requests_: list[tuple[int, str]]
) -> None:
    clock = FakeClock()
    policy = Policy("p", rate=rate, period=2, burst=rate + extra)
    limiter = RateLimiter([policy], store=MemoryStore(max_keys=10, clock=clock))
    # the reference: a leaky bucket per key in exact integer nanoseconds
    level: dict[str, tuple[int, int]] = {}
    allowed_at: dict[str, list[int]] = {"a": [], "b": []}
    capacity = policy.burst * policy.interval_ns
    for gap_ms, key in requests_:
        clock.advance(gap_ms / 1000)
        now = int(clock() * 1e9)
        content, last = level.get(key, (0, now))
        drained = max(0, content - (now - last))
        expected = drained + policy.interval_ns <= capacity
        assert limiter.hit_sync(key).allowed is expected
        if expected:
            level[key] = (drained + policy.interval_ns, now)
            allowed_at[key].append(now)
    for times in allowed_at.values():
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                window_ns = times[j] - start
                assert j - i + 1 <= policy.burst + window_ns * rate // 2_000_000_000
