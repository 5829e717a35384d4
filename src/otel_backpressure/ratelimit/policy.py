"""Policies (what is allowed) and decisions (what was decided).

Example::

    from otel_backpressure.ratelimit import Policy

    per_second = Policy("per-second", rate=10, period=1.0, burst=20)
    per_minute = Policy("per-minute", rate=300, period=60.0)
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from otel_backpressure.ratelimit._checks import MAX_COUNT, check_seconds, check_whole
from otel_backpressure.ratelimit.gcra import NS_PER_SECOND

__all__ = ["MAX_PERIOD", "MAX_TOLERANCE", "Decision", "Policy"]

# the longest period: a year with a leap day
MAX_PERIOD: Final = 366 * 86_400.0
# the longest a full burst may take to refill (burst * period / rate), seconds:
# far inside 2**53 µs (285 years), where the Redis script's doubles stay exact
MAX_TOLERANCE: Final = 100 * 365 * 86_400.0


class Policy:
    """``rate`` requests per ``period`` seconds, at most ``burst`` at once.

    From an idle key exactly ``burst`` requests are allowed at once, then one
    every ``period / rate`` seconds. That interval is rounded *up* to the
    store's clock resolution (1 ns in memory, 1 µs on Redis), so rounding can
    only ever allow fewer requests, never more.

    Arguments:

    - ``name`` (str): the policy's name in metrics and the ``RateLimit``
      header fields; non-empty printable ASCII, one name per policy.
    - ``rate`` (int, requests): how many requests one ``period`` refills,
      at least 1 and at most one per nanosecond of the period.
    - ``period`` (seconds, int or float): from 1 ns per request up to
      ``MAX_PERIOD`` (366 days).
    - ``burst`` (int, requests; default ``rate``): how many an idle key may
      spend at once, at least 1, and small enough that a full burst refills
      within ``MAX_TOLERANCE`` (100 years: the Redis script's microsecond
      arithmetic stays exact far beyond it).

    Raises ``TypeError`` for a name that is not a str or a number argument
    that is not a number, and ``ValueError`` naming the argument for any
    number outside its range (inf, nan, negative, a float where a whole
    number is needed, too large to compute with).
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
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name.strip() or not (name.isascii() and name.isprintable()):
            raise ValueError(
                f"name must be a non-empty string of printable ASCII "
                f"(it is sent in the RateLimit header fields), got {name!r}"
            )
        rate = check_whole("rate", rate, 1, MAX_COUNT)
        period = check_seconds("period", period, 1e-9, MAX_PERIOD)
        burst = rate if burst is None else check_whole("burst", burst, 1, MAX_COUNT)
        period_ns = round(period * NS_PER_SECOND)
        if period_ns < rate:
            raise ValueError(
                f"period must allow at least 1 ns per request (period={period!r}, rate={rate!r})"
            )
        interval_ns = -(-period_ns // rate)
        if burst * interval_ns > MAX_TOLERANCE * NS_PER_SECOND:
            raise ValueError(
                f"burst must refill within {MAX_TOLERANCE:_.0f} seconds (burst * period / rate), "
                f"got burst={burst!r} with period={period!r}, rate={rate!r}"
            )
        setter = object.__setattr__
        setter(self, "name", name)
        setter(self, "rate", rate)
        setter(self, "period", period)
        setter(self, "burst", burst)
        setter(self, "interval_ns", interval_ns)
        setter(self, "_hash", hash((name, rate, period, burst)))

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
