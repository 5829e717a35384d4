"""Settings with only the runtime parts (event loop, thread pools) switched on."""

from __future__ import annotations

from otel_backpressure.settings import Settings

RUNTIME_ONLY = Settings(pool_enabled=False, rate_limit_enabled=False, errors_enabled=False)
