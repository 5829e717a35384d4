"""Connection-pool telemetry: one registry of pools, one source per pool kind.

``_registry`` (``PoolRegistry``, ``instrument()``, and how to add a pool kind),
``_kinds`` (every pool kind as data, which the instrumentor patches),
``_source`` (the ``PoolSource`` protocol and the ``PoolReading`` it returns),
``_metrics`` (the instruments and one collection over every live pool),
``_health`` (``pool_health()``, ``PoolHealth``), the sources ``_sqlalchemy``
and ``_asyncpg``, ``_naming`` (what a default pool name says) and
``_integration`` (the part as ``BackpressureInstrumentor`` sees it). The
public names are re-exported here and by ``otel_backpressure``::

    import otel_backpressure

    handle = otel_backpressure.instrument(engine)
    otel_backpressure.pool_health(engine)["status"]   # "healthy"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otel_backpressure._shared import lazy_exports

if TYPE_CHECKING:
    from otel_backpressure.pool._asyncpg import (
        AsyncpgPoolSource,
    )
    from otel_backpressure.pool._health import (
        PoolHealth,
        PoolHealthSnapshot,
        pool_health,
    )
    from otel_backpressure.pool._integration import (
        PoolIntegration,
    )
    from otel_backpressure.pool._kinds import (
        SOURCES,
        SourceKind,
    )
    from otel_backpressure.pool._metrics import (
        FAMILIES,
        MetricFamily,
        PoolMetrics,
    )
    from otel_backpressure.pool._registry import (
        REGISTRY,
        PoolInstrumentation,
        PoolRegistry,
        instrument,
    )
    from otel_backpressure.pool._source import (
        PoolReading,
        PoolSource,
        RecorderSlots,
        TimingRecorder,
    )
    from otel_backpressure.pool._sqlalchemy import (
        SQLAlchemyPoolSource,
    )

__all__ = [
    "FAMILIES",
    "REGISTRY",
    "SOURCES",
    "AsyncpgPoolSource",
    "MetricFamily",
    "PoolHealth",
    "PoolHealthSnapshot",
    "PoolInstrumentation",
    "PoolIntegration",
    "PoolMetrics",
    "PoolReading",
    "PoolRegistry",
    "PoolSource",
    "RecorderSlots",
    "SQLAlchemyPoolSource",
    "SourceKind",
    "TimingRecorder",
    "instrument",
    "pool_health",
]

# Imported when first used (PEP 562): loading the instrumentor must not import
# every module of every part; see otel_backpressure/__init__.py.
_LAZY: dict[str, str] = {
    "AsyncpgPoolSource": "otel_backpressure.pool._asyncpg",
    "FAMILIES": "otel_backpressure.pool._metrics",
    "MetricFamily": "otel_backpressure.pool._metrics",
    "PoolHealth": "otel_backpressure.pool._health",
    "PoolHealthSnapshot": "otel_backpressure.pool._health",
    "PoolInstrumentation": "otel_backpressure.pool._registry",
    "PoolIntegration": "otel_backpressure.pool._integration",
    "PoolMetrics": "otel_backpressure.pool._metrics",
    "PoolReading": "otel_backpressure.pool._source",
    "PoolRegistry": "otel_backpressure.pool._registry",
    "PoolSource": "otel_backpressure.pool._source",
    "REGISTRY": "otel_backpressure.pool._registry",
    "RecorderSlots": "otel_backpressure.pool._source",
    "SOURCES": "otel_backpressure.pool._kinds",
    "SQLAlchemyPoolSource": "otel_backpressure.pool._sqlalchemy",
    "SourceKind": "otel_backpressure.pool._kinds",
    "TimingRecorder": "otel_backpressure.pool._source",
    "instrument": "otel_backpressure.pool._registry",
    "pool_health": "otel_backpressure.pool._health",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
