"""The same behaviour over every store: each store's test module imports these tests.

``tests/unit/ratelimit/test_stores.py`` runs them on the in-memory store (the
fake clock drives it), ``tests/integration/ratelimit/test_stores.py`` on the
real Redis. Redis decides on its own clock, so these tests use periods long
enough that no slot frees up while they run. A module that imports them
provides a ``make_limiter`` fixture: policies in, a ``RateLimiter`` on its
store out, metering into the ``metrics`` fixture's provider.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from otel_backpressure.ratelimit import Policy, RateLimiter
from otel_backpressure.testing import MetricsCapture

HOURLY = Policy("hourly", rate=3, period=3600)
DAILY = Policy("daily", rate=4, period=86_400)
RESULT = "backpressure.rate_limit.result"
POLICY = "backpressure.rate_limit.policy"

__all__ = [
    "test_a_rejection_consumes_nothing_under_any_policy",
    "test_allowed_decision_names_the_policy_with_fewest_remaining",
    "test_burst_then_reject_with_retry_after",
    "test_cost_and_dry_run",
    "test_every_decision_is_metered_without_client_identity",
    "test_keys_do_not_share_state",
    "test_per_route_policies_keep_separate_state",
]

MakeLimiter = Callable[[Sequence[Policy]], RateLimiter]


async def test_burst_then_reject_with_retry_after(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter([HOURLY])
    decisions = [await limiter.hit("client") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    rejected = decisions[-1]
    assert rejected.policy == HOURLY
    assert 1199 < rejected.retry_after <= 1200  # one slot every 1200 s
    assert 3599 < rejected.reset_after <= 3600
    assert decisions[0].retry_after == 0
    assert 1199 < decisions[0].reset_after <= 1200


async def test_keys_do_not_share_state(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter([Policy("one", rate=1, period=3600)])
    assert (await limiter.hit("a")).allowed
    assert not (await limiter.hit("a")).allowed
    assert (await limiter.hit("b")).allowed


async def test_a_rejection_consumes_nothing_under_any_policy(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter([HOURLY, DAILY])
    outcomes = [(await limiter.hit("client")).allowed for _ in range(3)]
    assert outcomes == [True, True, True]
    for _ in range(5):  # rejected by the hourly policy: the daily budget stays at 1
        rejected = await limiter.hit("client")
        assert not rejected.allowed
        assert rejected.policy == HOURLY
    # the daily policy alone, on the same key, still has exactly one left
    only_daily = await limiter.hit("client", policies=[DAILY])
    assert (only_daily.allowed, only_daily.remaining) == (True, 0)
    assert not (await limiter.hit("client", policies=[DAILY])).allowed


async def test_allowed_decision_names_the_policy_with_fewest_remaining(
    make_limiter: MakeLimiter,
) -> None:
    tight_daily = Policy("tight-daily", rate=2, period=86_400)
    limiter = make_limiter([HOURLY, tight_daily])
    first = await limiter.hit("client")
    assert (first.policy, first.remaining, first.limit) == (tight_daily, 1, 2)


async def test_cost_and_dry_run(make_limiter: MakeLimiter, metrics: MetricsCapture) -> None:
    limiter = make_limiter([Policy("costly", rate=5, period=3600)])
    assert (await limiter.hit("client", cost=4)).remaining == 1
    shadow = await limiter.hit("client", cost=2, dry_run=True)
    assert (shadow.allowed, shadow.remaining) == (False, 1)
    assert (await limiter.hit("client")).allowed  # the dry-run rejection consumed nothing
    attrs = {POLICY: "costly", RESULT: "dry_run_rejected"}
    assert metrics.value("backpressure.rate_limit.requests", attrs) == 1
    attrs[RESULT] = "allowed"
    assert metrics.value("backpressure.rate_limit.requests", attrs) == 2


async def test_per_route_policies_keep_separate_state(make_limiter: MakeLimiter) -> None:
    login = Policy("login", rate=1, period=3600)
    limiter = make_limiter([HOURLY])
    assert (await limiter.hit("client", policies=[login])).allowed
    assert not (await limiter.hit("client", policies=[login])).allowed
    assert (await limiter.hit("client")).remaining == 2


async def test_every_decision_is_metered_without_client_identity(
    make_limiter: MakeLimiter, metrics: MetricsCapture
) -> None:
    limiter = make_limiter([HOURLY])
    for _ in range(5):
        await limiter.hit("203.0.113.9")
    points = metrics.points(metrics.collect()["backpressure.rate_limit.requests"])
    values = {dict(key)[RESULT]: point.value for key, point in points.items()}
    assert values == {"allowed": 3, "rejected": 2, "dry_run_rejected": 0}
    for key in points:
        assert "203.0.113.9" not in str(dict(key))
