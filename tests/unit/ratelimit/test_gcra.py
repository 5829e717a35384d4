"""GCRA against a reference model: a continuous-state leaky bucket in exact integers.

The model is the textbook other formulation of the same algorithm (bucket
content drains one ns per ns, a request adds ``cost * interval`` and must fit
in ``burst * interval``), written as plainly as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_backpressure.ratelimit import Policy
from otel_backpressure.ratelimit.gcra import decide, decide_one, is_idle


@dataclass
class LeakyBucket:
    interval: int
    burst: int
    content: int = 0
    last: int = 0

    def level_at(self, now: int) -> int:
        return max(0, self.content - (now - self.last))

    def fits(self, now: int, cost: int) -> bool:
        return self.level_at(now) + cost * self.interval <= self.burst * self.interval

    def take(self, now: int, cost: int) -> None:
        self.content = self.level_at(now) + cost * self.interval
        self.last = now


policies = st.builds(
    lambda rate, period_ms, extra: Policy(
        f"p{rate}-{period_ms}-{extra}", rate=rate, period=period_ms / 1000, burst=rate + extra
    ),
    st.integers(1, 20),
    st.integers(1, 5_000),
    st.integers(0, 5),
)
# (gap before the request in ns, cost)
requests = st.lists(
    st.tuples(st.integers(0, 400_000_000), st.integers(1, 3)), min_size=1, max_size=120
)


@settings(max_examples=300, deadline=None)
@given(st.lists(policies, min_size=1, max_size=3, unique_by=lambda p: p.name), requests)
def test_agrees_exactly_with_the_leaky_bucket_model(
    chosen: list[Policy], sequence: list[tuple[int, int]]
) -> None:
    buckets = [LeakyBucket(p.interval_ns, p.burst) for p in chosen]
    tats: list[int | None] = [None] * len(chosen)
    now = 10**12
    for gap, cost in sequence:
        now += gap
        cost = min(cost, *(p.burst for p in chosen))
        verdict = decide(tats, now, chosen, cost)
        expected = all(bucket.fits(now, cost) for bucket in buckets)
        assert verdict.allowed is expected
        if expected:
            for bucket in buckets:
                bucket.take(now, cost)
            assert verdict.tats is not None
            tats = list(verdict.tats)
            remaining = [(b.burst * b.interval - b.level_at(now)) // b.interval for b in buckets]
            assert verdict.remaining == min(remaining)
            assert remaining[verdict.deciding] == verdict.remaining
            assert verdict.retry_after_ns == 0
        else:
            assert verdict.tats is None  # a rejection consumes nothing anywhere
            bucket = buckets[verdict.deciding]
            assert not bucket.fits(now, cost)
            # waiting exactly retry_after makes it fit under the deciding policy
            assert bucket.fits(now + verdict.retry_after_ns, cost)
            assert not bucket.fits(now + verdict.retry_after_ns - 1, cost)
            assert verdict.reset_after_ns == bucket.level_at(now)


@settings(max_examples=300, deadline=None)
@given(policies, requests)
def test_never_more_than_burst_plus_rate_in_any_window(
    policy: Policy, sequence: list[tuple[int, int]]
) -> None:
    tat: int | None = None
    now = 0
    allowed_at: list[int] = []
    for gap, _ in sequence:
        now += gap
        allowed, new_tat, *_ = decide_one(tat, now, policy.interval_ns, policy.burst, 1)
        if allowed:
            tat = new_tat
            allowed_at.append(now)
    period_ns = round(policy.period * 1e9)
    for i, start in enumerate(allowed_at):
        for j in range(i, len(allowed_at)):
            window = allowed_at[j] - start
            # rate / period requests per ns: floor(window * rate / period)
            assert j - i + 1 <= policy.burst + window * policy.rate // period_ns


@settings(deadline=None)
@given(policies)
def test_an_idle_key_allows_exactly_burst_at_once_then_one_per_interval(policy: Policy) -> None:
    tat: int | None = None
    now = 5 * 10**12
    results = []
    for _ in range(policy.burst + 1):
        allowed, new_tat, remaining, retry, _ = decide_one(
            tat, now, policy.interval_ns, policy.burst, 1
        )
        results.append(allowed)
        if allowed:
            tat = new_tat
    assert results == [True] * policy.burst + [False]
    assert retry == policy.interval_ns
    assert remaining == 0
    allowed, *_ = decide_one(tat, now + policy.interval_ns, policy.interval_ns, policy.burst, 1)
    assert allowed


def test_single_and_multi_policy_paths_agree() -> None:
    policy = Policy("p", rate=2, period=1, burst=2)
    one = decide_one(None, 0, policy.interval_ns, policy.burst, 1)
    many = decide([None], 0, [policy], 1)
    assert (one[0], one[2], one[3], one[4]) == (
        many.allowed,
        many.remaining,
        many.retry_after_ns,
        many.reset_after_ns,
    )


def test_a_tat_in_the_past_decides_like_no_tat() -> None:
    policy = Policy("p", rate=5, period=1, burst=3)
    for tat in (0, 999, 1_000):
        assert decide([tat], 1_000, [policy], 1) == decide([None], 1_000, [policy], 1)
        assert is_idle(tat, 1_000)
    assert not is_idle(1_001, 1_000)
    assert not is_idle(900, 1_000, idle_timeout_ns=200)
