"""Connection-pool telemetry: one registry of pools, one source per pool kind.

``_registry`` (``PoolRegistry``, ``instrument()``, and how to add a pool kind),
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

from typing import TYPE_CHECKING, Any

from otel_backpressure.pool._asyncpg import AsyncpgPoolSource
from otel_backpressure.pool._health import PoolHealth, PoolHealthSnapshot, pool_health
from otel_backpressure.pool._integration import PoolIntegration
from otel_backpressure.pool._metrics import FAMILIES, MetricFamily, PoolMetrics
from otel_backpressure.pool._registry import (
    REGISTRY,
    SOURCES,
    PoolInstrumentation,
    PoolRegistry,
    SourceKind,
    instrument,
)
from otel_backpressure.pool._source import PoolReading, PoolSource, RecorderSlots, TimingRecorder

if TYPE_CHECKING:
    from otel_backpressure.pool._sqlalchemy import SQLAlchemyPoolSource

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


def __getattr__(name: str) -> Any:
    # The SQLAlchemy source imports SQLAlchemy: only when asked for, so that
    # importing this package costs an application without SQLAlchemy nothing.
    if name == "SQLAlchemyPoolSource":
        from otel_backpressure.pool._sqlalchemy import SQLAlchemyPoolSource

        return SQLAlchemyPoolSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
