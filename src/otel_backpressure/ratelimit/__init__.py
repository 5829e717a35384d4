"""Per-client rate limiting (GCRA), metered, in memory and on Redis.

Example::

    from otel_backpressure.ratelimit import Policy, RateLimiter

    limiter = RateLimiter([Policy("per-second", rate=10, period=1.0, burst=20)])
    decision = await limiter.hit("client-42")
    if not decision.allowed:
        ...  # 429, Retry-After: decision.retry_after

The core (``Policy``, ``Decision``, ``RateLimiter``, ``MemoryStore``,
``RedisStore``) is what the ASGI ``RateLimitMiddleware`` and the ``limits``
metering are built on; ``metrics.RateLimitMetrics`` is the shared local-count
metering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otel_backpressure._shared import lazy_exports

if TYPE_CHECKING:
    from otel_backpressure.ratelimit.limiter import (
        RateLimiter,
    )
    from otel_backpressure.ratelimit.memory import (
        MemoryStore,
    )
    from otel_backpressure.ratelimit.middleware import (
        RateLimitMiddleware,
    )
    from otel_backpressure.ratelimit.policy import (
        Decision,
        Policy,
    )
    from otel_backpressure.ratelimit.redis import (
        RedisStore,
    )

__all__ = [
    "Decision",
    "MemoryStore",
    "Policy",
    "RateLimitMiddleware",
    "RateLimiter",
    "RedisStore",
]

# Imported when first used (PEP 562): loading the instrumentor must not import
# every module of every part; see otel_backpressure/__init__.py.
_LAZY: dict[str, str] = {
    "Decision": "otel_backpressure.ratelimit.policy",
    "MemoryStore": "otel_backpressure.ratelimit.memory",
    "Policy": "otel_backpressure.ratelimit.policy",
    "RateLimitMiddleware": "otel_backpressure.ratelimit.middleware",
    "RateLimiter": "otel_backpressure.ratelimit.limiter",
    "RedisStore": "otel_backpressure.ratelimit.redis",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
