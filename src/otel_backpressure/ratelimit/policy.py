"""Policies (what is allowed) and decisions (what was decided).

Example::

    from otel_backpressure.ratelimit import Policy

    per_second = Policy("per-second", rate=10, period=1.0, burst=20)
    per_minute = Policy("per-minute", rate=300, period=60.0)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

__all__ = ["Decision", "Policy"]

_NS_PER_SECOND = 1_000_000_000


class Policy:
    """``rate`` requests per ``period`` seconds, at most ``burst`` at once.

    From an idle key exactly ``burst`` requests are allowed at once, then one
    every ``period / rate`` seconds. That interval is rounded *up* to the
    store's clock resolution (1 ns in memory, 1 µs on Redis), so rounding can
    only ever allow fewer requests, never more.
    """

    __slots__ = ("_hash", "burst", "interval_ns", "name", "period", "rate")

    name: str
    rate: int
    period: float
    burst: int
    # emission interval in nanoseconds, rounded up; the GCRA's T
    interval_ns: int
    _hash: int

    def __init__(self, name: str, *, rate: int, period: float, burst: int | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise TypeError(f"rate must be an int, got {type(rate).__name__}")
        if rate < 1:
            raise ValueError(f"rate must be >= 1, got {rate!r}")
        if (
            isinstance(period, bool)
            or not isinstance(period, (int, float))
            or not math.isfinite(period)
            or period <= 0
        ):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        if burst is None:
            burst = rate
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(f"burst must be an int, got {type(burst).__name__}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        period_ns = round(period * _NS_PER_SECOND)
        if period_ns < rate:
            raise ValueError(
                f"period must allow at least 1 ns per request (period={period!r}, rate={rate!r})"
            )
        setter = object.__setattr__
        setter(self, "name", name)
        setter(self, "rate", rate)
        setter(self, "period", float(period))
        setter(self, "burst", burst)
        setter(self, "interval_ns", -(-period_ns // rate))
        setter(self, "_hash", hash((name, rate, float(period), burst)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Policy is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Policy is immutable; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return (self.name, self.rate, self.period, self.burst) == (
            other.name,
            other.rate,
            other.period,
            other.burst,
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        # picklable (multiprocessing): rebuild through the validating constructor
        return (_rebuild_policy, (self.name, self.rate, self.period, self.burst))

    def __repr__(self) -> str:
        return (
            f"Policy({self.name!r}, rate={self.rate}, period={self.period:g}, burst={self.burst})"
        )


def _rebuild_policy(name: str, rate: int, period: float, burst: int) -> Policy:
    return Policy(name, rate=rate, period=period, burst=burst)


class Decision(NamedTuple):
    """The outcome of one ``hit``; truthy when allowed.

    ``policy`` is the deciding policy: the one that rejected (the one with the
    longest wait when several did) or, when allowed, the one with the fewest
    requests remaining. A tuple underneath, because a decision is made on
    every request and a tuple is the cheapest immutable record Python has.
    """

    allowed: bool
    policy: Policy
    # requests still allowed right now under ``policy``
    remaining: int
    # seconds until this request would be allowed; 0 when allowed
    retry_after: float
    # seconds until the key is back to a full burst under ``policy``
    reset_after: float

    @property
    def limit(self) -> int:
        """The deciding policy's burst: what ``remaining`` counts down from."""
        return self.policy.burst

    def __bool__(self) -> bool:
        return self.allowed
