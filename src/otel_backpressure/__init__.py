"""OpenTelemetry instrumentation for a service's backpressure.

Connection-pool telemetry, a metered per-client rate limiter and an
exception-to-span-status mapping, auto-loaded by ``opentelemetry-instrument``
or wired by hand::

    import otel_backpressure

    handle = otel_backpressure.instrument(engine)   # pool metrics for one engine
    otel_backpressure.pool_health(engine)           # {"status": "healthy", ...}
    handle.uninstrument()

The implementation lives in private modules; this is the public surface. Each
name is imported when first used (PEP 562), so that ``opentelemetry-instrument``
loading the entry point costs an application only the instrumentor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otel_backpressure._shared import lazy_exports
from otel_backpressure.version import __version__

if TYPE_CHECKING:
    from otel_backpressure.errors import (
        BackpressureError,
        ErrorMappingMiddleware,
        ErrorOutcome,
        ErrorRegistry,
        GameEngineError,
        mapped_errors,
        record_error,
    )
    from otel_backpressure.instrumentor import (
        BackpressureInstrumentor,
    )
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
    from otel_backpressure.settings import (
        Settings,
    )
    from otel_backpressure.telemetry import (
        Telemetry,
        configure_telemetry,
    )

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

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "BackpressureError": "otel_backpressure.errors",
    "BackpressureInstrumentor": "otel_backpressure.instrumentor",
    "Decision": "otel_backpressure.ratelimit",
    "ErrorMappingMiddleware": "otel_backpressure.errors",
    "ErrorOutcome": "otel_backpressure.errors",
    "ErrorRegistry": "otel_backpressure.errors",
    "GameEngineError": "otel_backpressure.errors",
    "MemoryStore": "otel_backpressure.ratelimit",
    "Policy": "otel_backpressure.ratelimit",
    "PoolHealth": "otel_backpressure.pool",
    "PoolHealthSnapshot": "otel_backpressure.pool",
    "PoolInstrumentation": "otel_backpressure.pool",
    "RateLimitMiddleware": "otel_backpressure.ratelimit",
    "RateLimiter": "otel_backpressure.ratelimit",
    "RedisStore": "otel_backpressure.ratelimit",
    "Settings": "otel_backpressure.settings",
    "Telemetry": "otel_backpressure.telemetry",
    "configure_telemetry": "otel_backpressure.telemetry",
    "instrument": "otel_backpressure.pool",
    "mapped_errors": "otel_backpressure.errors",
    "pool_health": "otel_backpressure.pool",
    "record_error": "otel_backpressure.errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
