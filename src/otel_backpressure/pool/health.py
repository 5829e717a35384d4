"""A pool's health as a dict for a status endpoint, a bounded history, and a monitor task.

Everything is read from the pool itself (capacity included), and reading has
no side effects: only ``PoolHealth.record()`` (and the monitor, which calls it)
adds to the history.

Example::

    from otel_backpressure import PoolHealth, pool_health

    pool_health(engine)
    # {"status": "healthy", "pool_size": 5, "max_overflow": 10, "available": 2,
    #  "in_use": 1, "overflow_active": 0, "total_capacity": 15,
    #  "usage_percent": 6.7, "timestamp": "2026-11-27T00:35:00.000000+00:00", ...}

    health = PoolHealth(engine, max_history=100)
    task = health.start_monitor(interval=60)   # records, warns past the threshold
    health.history(limit=10)
    task.cancel()
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.pool import Pool, QueuePool, StaticPool

from otel_backpressure.pool.api import resolve_engine, source_of
from otel_backpressure.pool.asyncpg import is_asyncpg_pool, read_asyncpg
from otel_backpressure.pool.sqlalchemy import read_pool
from otel_backpressure.settings import Settings, check_fraction, check_positive

__all__ = ["PoolHealth", "pool_health"]

_logger = logging.getLogger(__name__)

HEALTHY = "healthy"
WARNING = "warning"
CRITICAL = "critical"


def _thresholds(warning: float | None, critical: float | None) -> tuple[float, float]:
    if warning is None or critical is None:
        settings = Settings.from_env()
        warning = settings.pool_warning_threshold if warning is None else warning
        critical = settings.pool_critical_threshold if critical is None else critical
    warning = check_fraction("warning_threshold", warning)
    critical = check_fraction("critical_threshold", critical)
    if warning > critical:
        raise ValueError(
            f"warning_threshold must not exceed critical_threshold (got {warning} > {critical})"
        )
    return warning, critical


def _check_target(target: object) -> None:
    known = resolve_engine(target) is not None or isinstance(target, Pool)
    if not known and not is_asyncpg_pool(target):
        raise TypeError(
            "target must be a SQLAlchemy Engine, AsyncEngine or Pool, or an asyncpg.Pool, "
            f"got {type(target).__name__}"
        )


def _snapshot(target: object, warning: float, critical: float) -> dict[str, Any]:
    """Read the pool once; no state changes anywhere."""
    source = source_of(target)
    engine = resolve_engine(target)
    pool_size: int | None
    max_overflow: int | None
    used: int | None
    if engine is not None or isinstance(target, Pool):
        pool: Pool = engine.pool if engine is not None else target  # type: ignore[assignment]
        read_from_pool = isinstance(pool, (QueuePool, StaticPool))
        tracked = source is not None and not read_from_pool
        reading = read_pool(
            pool,
            used=getattr(source, "used", 0),
            pending=source.pending if source is not None else 0,
            timeouts=source.timeouts if source is not None else 0,
        )
        used = reading.used if read_from_pool or tracked else None
        if isinstance(pool, QueuePool):
            pool_size = pool.size()
            max_overflow = None if reading.max is None else reading.max - pool_size
        else:
            pool_size = max_overflow = None
    else:
        reading = read_asyncpg(
            target,
            pending=source.pending if source is not None else 0,
            timeouts=source.timeouts if source is not None else 0,
        )
        used = reading.used
        minimum, maximum = reading.idle_min or 0, reading.max or 0  # always known for asyncpg
        pool_size, max_overflow = minimum, maximum - minimum
    usage = reading.usage if used is not None else None
    if usage is None or usage < warning:
        status = HEALTHY
    elif usage < critical:
        status = WARNING
    else:
        status = CRITICAL
    return {
        "status": status,
        "pool_name": source.name if source is not None else None,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "available": reading.idle,
        "in_use": used,
        "overflow_active": reading.overflow,
        "pending": reading.pending,
        "total_capacity": reading.max,
        "usage_percent": None if usage is None else round(usage * 100, 1),
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }


def pool_health(
    target: Any,
    *,
    warning_threshold: float | None = None,
    critical_threshold: float | None = None,
) -> dict[str, Any]:
    """The pool's health now: ``healthy`` below the warning threshold, ``critical`` from
    the critical one. Unbounded pools (no ``total_capacity``) are always ``healthy``.

    Thresholds default to ``OTEL_PYTHON_BACKPRESSURE_POOL_{WARNING,CRITICAL}_THRESHOLD``
    (0.75 and 0.9). ``None`` values mean "not known for this kind of pool".
    """
    _check_target(target)
    warning, critical = _thresholds(warning_threshold, critical_threshold)
    return _snapshot(target, warning, critical)


class PoolHealth:
    """``pool_health()`` for one pool, plus a bounded history and a monitor task."""

    __slots__ = ("_critical", "_history", "_target", "_warning")

    def __init__(
        self,
        target: Any,
        *,
        warning_threshold: float | None = None,
        critical_threshold: float | None = None,
        max_history: int = 100,
    ) -> None:
        _check_target(target)
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be a positive int, got {max_history!r}")
        self._target = target
        self._warning, self._critical = _thresholds(warning_threshold, critical_threshold)
        self._history: deque[dict[str, Any]] = deque(maxlen=max_history)

    def snapshot(self) -> dict[str, Any]:
        """The health now; does not touch the history."""
        return _snapshot(self._target, self._warning, self._critical)

    def record(self) -> dict[str, Any]:
        """Take a snapshot and keep it in the history (oldest dropped past ``max_history``)."""
        snapshot = self.snapshot()
        self._history.append(snapshot)
        return snapshot

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The most recent recorded snapshots, oldest first."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
        items = list(self._history)
        if limit is None:
            return items
        return items[-limit:] if limit > 0 else []

    async def monitor(self, interval: float = 60.0) -> None:
        """Record every ``interval`` seconds until cancelled; warn when not healthy."""
        check_positive("interval", interval)
        _logger.info("Monitoring pool health every %ss", interval)
        while True:
            try:
                snapshot = self.record()
                if snapshot["status"] != HEALTHY:
                    _logger.warning(
                        "Connection pool %s is %s: %s%% in use (%s of %s)",
                        snapshot["pool_name"] or "(unnamed)",
                        snapshot["status"],
                        snapshot["usage_percent"],
                        snapshot["in_use"],
                        snapshot["total_capacity"],
                    )
            except Exception:
                _logger.exception("Pool health monitoring failed; retrying")
            await asyncio.sleep(interval)

    def start_monitor(self, interval: float = 60.0) -> asyncio.Task[None]:
        """Run ``monitor()`` as a task on the running loop; cancel it to stop."""
        check_positive("interval", interval)
        return asyncio.get_running_loop().create_task(self.monitor(interval))

    def __repr__(self) -> str:
        return (
            f"PoolHealth(warning={self._warning}, critical={self._critical}, "
            f"history={len(self._history)}/{self._history.maxlen})"
        )
