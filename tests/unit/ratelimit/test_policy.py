from __future__ import annotations

import math
import pickle

import pytest

from otel_backpressure.ratelimit import Decision, Policy
from otel_backpressure.ratelimit.policy import MAX_PERIOD, MAX_TOLERANCE

INF, NAN = math.inf, math.nan
# the full burst of rate=1, period=1 (one request a second) refills in burst seconds
LONGEST_BURST = int(MAX_TOLERANCE)


def test_burst_defaults_to_rate_and_interval_rounds_up() -> None:
    policy = Policy("api", rate=3, period=1.0)
    assert policy.burst == 3
    # 1 s / 3 = 333_333_333.3 ns: rounded up, so never more than the policy allows
    assert policy.interval_ns == 333_333_334


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"name": "", "rate": 1, "period": 1.0}, ValueError, "name"),
        ({"name": "  ", "rate": 1, "period": 1.0}, ValueError, "name"),
        ({"name": "p", "rate": 0, "period": 1.0}, ValueError, "rate"),
        ({"name": "p", "rate": 1.5, "period": 1.0}, ValueError, "rate"),
        ({"name": "p", "rate": "1", "period": 1.0}, TypeError, "rate"),
        ({"name": "p", "rate": True, "period": 1.0}, TypeError, "rate"),
        ({"name": "p", "rate": 1, "period": 0}, ValueError, "period"),
        ({"name": "p", "rate": 1, "period": -1.0}, ValueError, "period"),
        ({"name": "p", "rate": 1, "period": float("inf")}, ValueError, "period"),
        ({"name": "p", "rate": 1, "period": float("nan")}, ValueError, "period"),
        ({"name": "p", "rate": 1, "period": 1.0, "burst": 0}, ValueError, "burst"),
        ({"name": "p", "rate": 1, "period": 1.0, "burst": 2.0}, ValueError, "burst"),
        ({"name": "p", "rate": 1, "period": "1"}, TypeError, "period"),
        ({"name": 7, "rate": 1, "period": 1.0}, TypeError, "name"),
        ({"name": "p", "rate": 10**10, "period": 1.0}, ValueError, "period"),
    ],
)
def test_bad_arguments_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], argument: str
) -> None:
    name = kwargs.pop("name")
    with pytest.raises(error, match=argument):
        Policy(name, **kwargs)  # type: ignore[arg-type]


def test_policies_are_immutable_values() -> None:
    policy = Policy("api", rate=10, period=1, burst=20)
    with pytest.raises(AttributeError):
        policy.rate = 5  # type: ignore[misc]
    assert policy == Policy("api", rate=10, period=1.0, burst=20)
    assert hash(policy) == hash(Policy("api", rate=10, period=1.0, burst=20))
    assert policy != Policy("api", rate=10, period=1.0, burst=10)
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert repr(policy) == "Policy('api', rate=10, period=1, burst=20)"


def test_decision_is_truthy_when_allowed_and_exposes_limit() -> None:
    policy = Policy("api", rate=10, period=1, burst=20)
    allowed = Decision(True, policy, 19, 0.0, 0.1)
    rejected = Decision(False, policy, 0, 0.1, 2.0)
    assert allowed
    assert not rejected
    assert allowed.limit == 20
    with pytest.raises(AttributeError):
        allowed.remaining = 3  # type: ignore[misc]
    assert not hasattr(allowed, "__dict__")


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("rate", 1),
        ("rate", 10**12),  # with period=1000 s: one request per ns
        ("period", 1e-9),  # one request per ns
        ("period", MAX_PERIOD),
        ("burst", 1),
        ("burst", LONGEST_BURST),
    ],
)
def test_each_number_is_accepted_at_its_bounds(argument: str, value: float) -> None:
    arguments: dict[str, float] = {"rate": 1, "period": 1000 if argument == "rate" else 1}
    arguments[argument] = value
    if argument == "rate":
        arguments["burst"] = 1
    policy = Policy("p", **arguments)  # type: ignore[arg-type]
    assert getattr(policy, argument) == value


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        *[("rate", v) for v in (0, -1, 10**12 + 1, 10**300, 1.5, INF, NAN, 1e300, -0.0)],
        *[
            ("period", v)
            for v in (
                math.nextafter(1e-9, 0),
                math.nextafter(MAX_PERIOD, INF),
                0,
                -0.0,
                -1.0,
                INF,
                -INF,
                NAN,
                1e300,
                1e-300,
                10**400,
            )
        ],
        *[("burst", v) for v in (0, -1, LONGEST_BURST + 1, 10**300, 2.0, INF, NAN, 1e300, -0.0)],
    ],
)
def test_each_number_is_refused_just_past_its_bounds(argument: str, value: float) -> None:
    arguments: dict[str, float] = {"rate": 1, "period": 1}
    arguments[argument] = value
    with pytest.raises(ValueError, match=f"^{argument}") as raised:
        Policy("p", **arguments)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 200  # a huge number is not spelled out in full
