"""OpenTelemetry instrumentation for a service's backpressure.

Connection-pool telemetry, a metered per-client rate limiter and an
exception-to-span-status mapping, auto-loaded by ``opentelemetry-instrument``
or wired by hand::

    import otel_backpressure

    handle = otel_backpressure.instrument(engine)   # pool metrics for one engine
    otel_backpressure.pool_health(engine)           # {"status": "healthy", ...}
    handle.uninstrument()

The implementation lives in private modules; this is the public surface.
"""

from __future__ import annotations

from otel_backpressure.errors import (
    BackpressureError,
    ErrorMappingMiddleware,
    ErrorOutcome,
    ErrorRegistry,
    GameEngineError,
    mapped_errors,
    record_error,
)
from otel_backpressure.instrumentor import BackpressureInstrumentor
from otel_backpressure.pool import (
    PoolHealth,
    PoolHealthSnapshot,
    PoolInstrumentation,
    instrument,
    pool_health,
)
from otel_backpressure.ratelimit import (
    Decision,
    MemoryStore,
    Policy,
    RateLimiter,
    RateLimitMiddleware,
    RedisStore,
)
from otel_backpressure.settings import Settings
from otel_backpressure.telemetry import Telemetry, configure_telemetry
from otel_backpressure.version import __version__

__all__ = [
    "BackpressureError",
    "BackpressureInstrumentor",
    "Decision",
    "ErrorMappingMiddleware",
    "ErrorOutcome",
    "ErrorRegistry",
    "GameEngineError",
    "MemoryStore",
    "Policy",
    "PoolHealth",
    "PoolHealthSnapshot",
    "PoolInstrumentation",
    "RateLimitMiddleware",
    "RateLimiter",
    "RedisStore",
    "Settings",
    "Telemetry",
    "__version__",
    "configure_telemetry",
    "instrument",
    "mapped_errors",
    "pool_health",
    "record_error",
]
