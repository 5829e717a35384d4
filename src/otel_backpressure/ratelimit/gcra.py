"""The generic cell rate algorithm (GCRA): one timestamp per key and policy.

Pure functions over integer nanoseconds, with the time passed in, so the
in-memory store, the tests' reference model and the Redis script (the same
arithmetic in Lua, over microseconds) agree exactly. Integers, not floats:
``tat += interval`` never drifts, so a request at the very instant a slot
frees up is decided the same way every time.

The state of a key under a policy is its *theoretical arrival time* (TAT):
when the key would be back to a full burst. A request costing ``cost`` is
allowed when ``max(tat, now) + cost * interval - now <= burst * interval``.

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
from typing import NamedTuple

from otel_backpressure.ratelimit.policy import Policy

__all__ = ["Verdict", "decide", "decide_one", "is_idle"]


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
    base = now if tat is None or tat < now else tat
    new_tat = base + cost * interval
    wait = new_tat - now - burst * interval
    if wait > 0:
        return False, base, (burst * interval - (base - now)) // interval, wait, base - now
    return True, new_tat, -wait // interval, 0, new_tat - now


def decide(tats: Sequence[int | None], now: int, policies: Sequence[Policy], cost: int) -> Verdict:
    """Decide one request for one key under every policy; all or nothing.

    ``tats[i]`` is the key's stored TAT under ``policies[i]`` (None when the
    store holds none: an idle key). Every policy is evaluated before anything
    is committed, so a rejection by one consumes nothing under the others.
    """
    new_tats: list[int] = []
    rejected = -1
    longest_wait = 0
    fewest = -1
    fewest_remaining = 0
    outcomes = []
    for i, policy in enumerate(policies):
        outcome = decide_one(tats[i], now, policy.interval_ns, policy.burst, cost)
        outcomes.append(outcome)
        allowed, new_tat, remaining, wait, _ = outcome
        new_tats.append(new_tat)
        if not allowed:
            if wait > longest_wait:
                rejected, longest_wait = i, wait
        elif fewest < 0 or remaining < fewest_remaining:
            fewest, fewest_remaining = i, remaining
    if rejected >= 0:
        _, _, remaining, wait, reset = outcomes[rejected]
        return Verdict(False, rejected, remaining, wait, reset, None)
    _, _, remaining, _, reset = outcomes[fewest]
    return Verdict(True, fewest, remaining, 0, reset, new_tats)


def is_idle(tat: int, now: int, idle_timeout_ns: int = 0) -> bool:
    """Whether a stored TAT no longer affects any decision (so may be dropped).

    A TAT at or before ``now`` decides exactly like no TAT at all
    (``max(tat, now) == now``), so dropping it never changes a decision.
    """
    return tat + idle_timeout_ns <= now
