"""The IETF ``RateLimit-Policy`` and ``RateLimit`` header fields for a set of policies.

``RateLimitMiddleware`` adds them to every response and ``RateLimiter.check``
puts them on its ``RateLimitExceededError``; both build them here. Names and
values follow draft-ietf-httpapi-ratelimit-headers: a policy item is the
policy's name as a Structured Field string (RFC 8941) with ``q`` (the quota:
the burst an idle client may spend at once) and ``w`` (seconds that quota
takes to refill); the ``RateLimit`` item gives the deciding policy's ``r``
(remaining) and ``t`` (seconds until the quota is full again).

Example::

    fields = RateLimitFields(limiter.policies)
    headers = fields.headers(decision)   # [(b"ratelimit-policy", ...), (b"ratelimit", ...)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from otel_backpressure.ratelimit.policy import Decision, Policy

__all__ = ["Header", "RateLimitFields", "int_bytes"]

Header = tuple[bytes, bytes]

# Small integers as bytes: header values without a str() + encode() per request.
_SMALL_INTS: Final = tuple(str(number).encode() for number in range(4096))


def int_bytes(number: int) -> bytes:
    """``number`` in decimal ASCII."""
    return _SMALL_INTS[number] if 0 <= number < 4096 else str(number).encode()


def _sf_string(text: str) -> bytes:
    """``text`` as a Structured Field string (RFC 8941): printable ASCII, quoted."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'.encode("ascii")


def _policy_item(policy: Policy) -> bytes:
    # q is the burst (what an idle client may spend at once) and w the seconds
    # that quota takes to refill, so r (remaining) and t (reset) stay within them.
    window = max(1, math.ceil(policy.burst * policy.period / policy.rate))
    return _sf_string(policy.name) + b";q=" + int_bytes(policy.burst) + b";w=" + int_bytes(window)


class RateLimitFields:
    """The header fields for one set of policies, the constant parts built once."""

    __slots__ = ("_items", "policy_header")

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policy_header: Header = (
            b"ratelimit-policy",
            b", ".join(_policy_item(policy) for policy in policies),
        )
        # policy name -> b'"name";r=', the start of its RateLimit item
        self._items = {policy.name: _sf_string(policy.name) + b";r=" for policy in policies}

    def headers(self, decision: Decision, *, legacy: bool = False) -> list[Header]:
        """The fields for ``decision`` (its policy one of this set's), and the
        ``X-RateLimit-*`` ones too when ``legacy``."""
        reset = int_bytes(max(0, math.ceil(decision.reset_after)))
        remaining = int_bytes(max(0, decision.remaining))
        item = self._items.get(decision.policy.name) or (_sf_string(decision.policy.name) + b";r=")
        headers = [self.policy_header, (b"ratelimit", item + remaining + b";t=" + reset)]
        if legacy:
            headers.append((b"x-ratelimit-limit", int_bytes(decision.limit)))
            headers.append((b"x-ratelimit-remaining", remaining))
            headers.append((b"x-ratelimit-reset", reset))
        return headers
