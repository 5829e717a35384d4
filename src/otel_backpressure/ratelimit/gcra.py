"""The generic cell rate algorithm (GCRA): one timestamp per key and policy.

Pure functions over integer nanoseconds, with the time passed in, so the
in-memory store, the tests' reference model and the Redis script (the same
arithmetic in Lua, over microseconds) agree exactly. Integers, not floats:
``tat += interval`` never drifts, so a request at the very instant a slot
frees up is decided the same way every time.

Terms, as in the ATM Forum's and ITU-T I.371's description of GCRA(T, τ):

- the *emission interval* ``T`` (``interval``): ``period / rate``, the time
  one request's share of the quota takes to refill;
- the *theoretical arrival time* (TAT), the state of a key under a policy:
  when the key would be back to a full burst;
- the *tolerance* ``τ`` (``tolerance``): how far a key's TAT may run ahead of
  the clock, here ``burst * T``. A request costing ``cost`` is allowed when
  ``max(tat, now) + cost * T - now <= tolerance``. (I.371 tests the TAT
  *before* adding the request, so its τ is one ``T`` less; the decisions are
  the same. Implementations that take a cost, such as redis-cell, test after,
  as here.)

Example::

    from otel_backpressure.ratelimit import Policy
    from otel_backpressure.ratelimit.gcra import decide

    policy = Policy("api", rate=2, period=1.0, burst=2)
    verdict = decide([None], 0, (policy,), 1)   # idle key at t=0
    assert verdict.allowed and verdict.remaining == 1
    # verdict.tats is what the store writes back (only when allowed)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from otel_backpressure.ratelimit.policy import Policy

__all__ = ["NS_PER_SECOND", "Verdict", "decide", "decide_one", "is_idle"]

# the unit of every time here; an int, so seconds * NS_PER_SECOND rounds once
# and ns / NS_PER_SECOND is a float of seconds
NS_PER_SECOND: Final = 1_000_000_000


class Verdict(NamedTuple):
    """What the store needs: the outcome, the deciding policy's index and new TATs."""

    allowed: bool
    # index of the deciding policy in the policies
    deciding: int
    remaining: int
    retry_after_ns: int
    reset_after_ns: int
    # the TATs to store when allowed (None when rejected: nothing is consumed)
    tats: list[int] | None


def decide_one(
    tat: int | None, now: int, interval: int, burst: int, cost: int
) -> tuple[bool, int, int, int, int]:
    """One policy: ``(allowed, new_tat, remaining, retry_after_ns, reset_after_ns)``.

    ``new_tat`` is what to store when allowed; when rejected it is the TAT
    unchanged (``max(tat, now)``), since a rejection consumes nothing.
    """
    tolerance = burst * interval
    base = now if tat is None or tat < now else tat
    new_tat = base + cost * interval
    wait = new_tat - now - tolerance
    if wait > 0:
        return False, base, (tolerance - (base - now)) // interval, wait, base - now
    return True, new_tat, -wait // interval, 0, new_tat - now


def decide(tats: Sequence[int | None], now: int, policies: Sequence[Policy], cost: int) -> Verdict:
    """Decide one request for one key under every policy; all or nothing.

    ``tats[i]`` is the key's stored TAT under ``policies[i]`` (None when the
    store holds none: an idle key). Every policy is evaluated before anything
    is committed, so a rejection by one consumes nothing under the others.
    The deciding policy is the one with the longest wait when rejected, the
    one with the fewest remaining when allowed (the first on a tie).
    """
    new_tats: list[int] = []
    rejected = False
    deciding = -1
    # the deciding policy's (allowed, new_tat, remaining, retry_after_ns, reset_after_ns)
    chosen = (True, 0, 0, 0, 0)
    for index, policy in enumerate(policies):
        outcome = decide_one(tats[index], now, policy.interval_ns, policy.burst, cost)
        new_tats.append(outcome[1])
        if outcome[0]:
            if not rejected and (deciding < 0 or outcome[2] < chosen[2]):
                deciding, chosen = index, outcome
        elif not rejected or outcome[3] > chosen[3]:
            deciding, chosen, rejected = index, outcome, True
    _, _, remaining, wait, reset = chosen
    return Verdict(not rejected, deciding, remaining, wait, reset, None if rejected else new_tats)


def is_idle(tat: int, now: int, idle_timeout_ns: int = 0) -> bool:
    """Whether a stored TAT no longer affects any decision (so may be dropped).

    A TAT at or before ``now`` decides exactly like no TAT at all
    (``max(tat, now) == now``), so dropping it never changes a decision.
    """
    return tat + idle_timeout_ns <= now
